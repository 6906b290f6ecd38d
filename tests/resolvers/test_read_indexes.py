"""Every sort and filter of the invoice list is an index scan on PostgreSQL.

The statements are the ones the list really sends (``invoices_statement`` and
``page_statement``), over 20,000 invoices so the planner's choice is the one it
makes on a real table; the plan is read with ``EXPLAIN`` and must show no sequential
scan of the invoices and no sort node (the index already gives the order).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_sessionmaker
from app.settings import Settings
from models import Invoice, Role
from resolvers.pagination import Ordering, encode_cursor, page_statement
from resolvers.query import invoice_sort_key, invoices_statement
from resolvers.viewer import Viewer
from schema import filters as f
from schema.enums import InvoiceStatus
from schema.ids import encode
from tests.world import build_world

# The world's first organization and its three accounts (ids 1-3), then 20,000
# invoices over 200 more accounts.
FILL = """
INSERT INTO accounts (id, organization_id, kind, name, active, autopay, created_at)
SELECT g, 1, 'TEAM', 'Team ' || g, true, false, now() FROM generate_series(10, 210) g;
INSERT INTO invoices (id, organization_id, account_id, number, status, document_type,
    currency, issue_date, due_date, subtotal, tax, total, amount_paid, credit_applied,
    credit_allocated, credit_refunded, due_today, autopay_attempts, created_at, updated_at)
SELECT 1000 + g, 1, 10 + g % 200, 'INV-B' || lpad(g::text, 6, '0'),
    (ARRAY['DUE','OVERDUE','PAID','UPCOMING'])[1 + g % 4], 'INVOICE', 'USD',
    date '2025-01-01' + g % 500, date '2025-01-01' + g % 500, 1000 + g, 0, 1000 + g, 0, 0,
    0, 0, false, 0, now() - g * interval '1 minute', now()
FROM generate_series(1, 20000) g;
"""


def _viewer(**kw: Any) -> Viewer:
    base: dict[str, Any] = dict(user_id=1, organization_id=1, role=Role.ADMIN, currency="USD",
                                timezone="UTC", account_ids=None)  # fmt: skip
    base.update(kw)
    return Viewer(**base)


async def _plan(engine: AsyncEngine, stmt: Any) -> str:
    sql = str(stmt.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
    async with engine.connect() as conn:
        rows = await conn.execute(text("EXPLAIN " + sql))
        return "\n".join(r[0] for r in rows)


@pytest.fixture
async def filled(engine: AsyncEngine) -> AsyncEngine:
    if engine.dialect.name != "postgresql":
        pytest.skip("EXPLAIN plans are read on PostgreSQL, the production database")
    await build_world(create_sessionmaker(engine), Settings(token_secret=secrets.token_urlsafe(32)))
    async with engine.begin() as conn:
        for statement in FILL.split(";\n"):
            if statement.strip():
                await conn.execute(text(statement))
    async with engine.connect() as conn:
        await conn.execute(text("COMMIT"))
        await conn.execute(text("ANALYZE invoices"))
    return engine


SORTS = ["DUE_DATE", "NUMBER", "ISSUE_DATE", "TOTAL", "CREATED_AT"]
# A cursor from the middle of the table: the keyset condition must be an index bound
# too, or deep pages would walk everything before them.
MIDDLE: dict[str, object] = {
    "DUE_DATE": {"d": "2025-06-01"}, "NUMBER": "INV-B010000", "ISSUE_DATE": {"d": "2025-06-01"},
    "TOTAL": 11000, "CREATED_AT": {"t": "2026-01-01T00:00:00+00:00"},
}  # fmt: skip


async def test_each_sort_is_an_index_range_scan(filled: AsyncEngine) -> None:
    for field in SORTS:
        for direction in ("ASC", "DESC"):
            ordering = Ordering(
                keys=[invoice_sort_key(f.InvoiceSortField[field].value), Invoice.id],
                descending=direction == "DESC",
            )
            for after in (None, encode_cursor([MIDDLE[field], 10_000])):
                stmt = page_statement(
                    invoices_statement(_viewer(), None), ordering, limit=100, after=after
                )
                plan = await _plan(filled, stmt)
                where = f"{field} {direction} after={after}"
                assert "Seq Scan on invoices" not in plan, (where, plan)
                assert "Sort" not in plan, (where, plan)
                assert "Index" in plan, (where, plan)


FILTERS = {
    "status-due-overdue": f.InvoiceFilter(status=[InvoiceStatus.DUE, InvoiceStatus.OVERDUE]),
    "status-paid": f.InvoiceFilter(status=[InvoiceStatus.PAID]),
    "account": f.InvoiceFilter(account_id=[encode("Account", 17)]),
    "number-prefix": f.InvoiceFilter(number="INV-B0100"),
}


async def test_filters_read_through_an_index(filled: AsyncEngine) -> None:
    ordering = Ordering(keys=[invoice_sort_key("due_date"), Invoice.id], descending=True)
    for name, flt in FILTERS.items():
        stmt = page_statement(invoices_statement(_viewer(), flt), ordering, limit=50, after=None)
        plan = await _plan(filled, stmt)
        assert "Seq Scan on invoices" not in plan, (name, plan)
        assert "Index" in plan, (name, plan)


async def test_a_members_list_reads_only_their_accounts_rows(filled: AsyncEngine) -> None:
    ordering = Ordering(keys=[invoice_sort_key("due_date"), Invoice.id], descending=True)
    who = _viewer(role=Role.MEMBER, account_ids=frozenset({13, 14}))
    plan = await _plan(filled, page_statement(invoices_statement(who, None), ordering,
                                              limit=50, after=None))  # fmt: skip
    assert "Seq Scan on invoices" not in plan, plan
    assert "ix_invoices_account" in plan, plan
