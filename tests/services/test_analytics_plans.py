"""Receivables aging and outstanding credit read PostgreSQL's partial indexes of open
invoices and of credit notes (migration 0005), not the whole invoice table; figures for
the whole organization read the per-day rollups (migration 0010) and no ledger table
but the page's own open invoices.

The statements are the ones the engine sends (recorded as it runs them), over 20,000
invoices and 2,000 credit notes so the planner's choice is the one it makes on a real
table; each plan is read with ``EXPLAIN``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_sessionmaker
from services import analytics

FILL = """
INSERT INTO organizations (id, name, slug, currency, billing_day, timezone,
    additional_charges, due_today_grace_minutes, overdue_after_days, auto_apply_credit,
    credit_unused_plan_periods, block_bookings_when_overdue, autopay_default,
    autopay_retry_hours, default_tax_rate_ppm, next_invoice_number,
    next_credit_note_number, created_at)
VALUES (1, 'Plan Works', 'plan-works', 'USD', 1, 'UTC', 'NEXT_PENDING_INVOICE', 0, 7,
    true, true, false, true, 4, 0, 1, 1, now());
INSERT INTO accounts (id, organization_id, kind, name, active, autopay, created_at)
SELECT g, 1, 'TEAM', 'Team ' || g, true, false, now() FROM generate_series(1, 400) g;
INSERT INTO invoices (id, organization_id, account_id, number, status, document_type,
    currency, issue_date, due_date, subtotal, tax, total, amount_paid, credit_applied,
    credit_allocated, credit_refunded, due_today, autopay_attempts, created_at, updated_at)
SELECT g, 1, 1 + g % 400, 'INV-' || lpad(g::text, 6, '0'),
    (ARRAY['DUE','OVERDUE','PAID','PAID','PAID','UPCOMING'])[1 + g % 6], 'INVOICE', 'USD',
    date '2025-01-01' + g % 500, date '2025-01-01' + g % 500, 1000 + g, 0, 1000 + g, 0, 0,
    0, 0, false, 0, now(), now()
FROM generate_series(1, 20000) g;
INSERT INTO invoices (id, organization_id, account_id, number, status, document_type,
    credit_note_status, currency, issue_date, due_date, subtotal, tax, total, amount_paid,
    credit_applied, credit_allocated, credit_refunded, due_today, autopay_attempts,
    created_at, updated_at)
SELECT 20000 + g, 1, 1 + g % 400, 'CN-' || lpad(g::text, 6, '0'), 'PAID', 'CREDIT_NOTE',
    'AVAILABLE', 'USD', date '2025-01-01' + g % 500, date '2025-01-01' + g % 500,
    -500 - g, 0, -500 - g, 0, 0, 0, 0, false, 0, now(), now()
FROM generate_series(1, 2000) g
"""


@pytest.fixture
async def filled(engine: AsyncEngine) -> AsyncEngine:
    if engine.dialect.name != "postgresql":
        pytest.skip("EXPLAIN plans are read on PostgreSQL, the production database")
    async with engine.begin() as conn:
        for statement in FILL.split(";\n"):
            await conn.execute(text(statement))
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE invoices"))
    return engine


async def _plans(engine: AsyncEngine, work: Any) -> list[str]:
    """Run ``work`` and return the EXPLAIN of every statement it sent."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with create_sessionmaker(engine)() as session:
            await work(session)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    plans = []
    async with engine.connect() as conn:
        for statement, parameters in sent:
            rows = await conn.exec_driver_sql("EXPLAIN " + statement, parameters)
            plans.append("\n".join(r[0] for r in rows))
    return plans


SCOPE = analytics.Scope(1, "UTC")
# The ledger path: what a figure for some accounts or a kind reads.
LEDGER = analytics.Scope(1, "UTC", from_ledger=True)


async def test_receivables_aging_reads_the_open_invoice_index(filled: AsyncEngine) -> None:
    async def work(session: Any) -> None:
        aging = await analytics.receivables_aging(session, LEDGER, date(2025, 6, 1))
        assert aging.count == 10_000  # DUE, OVERDUE and UPCOMING: half of the invoices
        await analytics.receivables_by_account(session, LEDGER, date(2025, 6, 1), first=20)

    plans = await _plans(filled, work)
    assert len(plans) == 2
    for plan in plans:
        assert "ix_invoices_open_by_account" in plan, plan
        assert "Seq Scan on invoices" not in plan, plan


async def test_whole_organization_figures_read_the_rollups(filled: AsyncEngine) -> None:
    span = analytics.Span.of(date(2025, 1, 1), date(2025, 12, 31))

    async def work(session: Any) -> None:
        await analytics.compact(session)
        await session.commit()
        aging = await analytics.receivables_aging(session, SCOPE, date(2025, 6, 1))
        assert aging.count == 10_000
        page = await analytics.receivables_by_account(session, SCOPE, date(2025, 6, 1), first=20)
        assert len(page.rows) == 20 and page.has_next
        await analytics.revenue(session, SCOPE, span, analytics.Grouping.MONTH)
        await analytics.invoice_collections(session, SCOPE, span)
        await analytics.payments_summary(session, SCOPE, span)

    plans = (await _plans(filled, work))[len(analytics.compact_statements()) :]
    assert len(plans) == 5
    aging, page, *per_day = plans
    assert "open_dues" in aging and "open_accounts" in aging and "invoices" not in aging, aging
    # The page's 21 accounts only, through the open-invoice index.
    assert "open_accounts" in page and "ix_invoices_open_by_account" in page, page
    assert "Seq Scan on invoices" not in page, page
    for plan, rollup in zip(
        per_day, ["revenue_days", "collection_days", "payment_days"], strict=True
    ):
        assert rollup in plan, plan
        assert "invoices" not in plan and "payments" not in plan, plan


async def test_outstanding_credit_reads_the_credit_note_index(filled: AsyncEngine) -> None:
    async def work(session: Any) -> None:
        totals = await analytics.credit_outstanding(session, SCOPE)
        assert totals.credit_note_count == 2000
        await analytics.credit_by_account(session, SCOPE, first=20)

    plans = await _plans(filled, work)
    assert len(plans) == 2
    for plan in plans:
        assert "ix_invoices_credit_notes_by_account" in plan, plan
        assert "Seq Scan on invoices" not in plan, plan
