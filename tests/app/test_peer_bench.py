"""The parts of bench/vs_postgraphile.py whose mistakes would not show in its numbers:
the dataset it loads has the sizes asked for and balances that are the sums of their
rows, and the wire-protocol proxy counts the statements a client runs.
PostgreSQL only: that is the database the bench measures."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest

from app.cli import migrate
from tests.conftest import IN_CI, PG_SERVER

ROOT = Path(__file__).resolve().parents[2]
SERVER = PG_SERVER.replace("postgresql+asyncpg://", "postgresql://")


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "vs_postgraphile", ROOT / "bench" / "vs_postgraphile.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = load_bench()


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(f"{SERVER}/postgres", timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            raise
        pytest.skip(f"PostgreSQL not reachable at {SERVER}: {exc}")


@pytest.fixture
async def bench_database() -> AsyncIterator[str]:
    admin = await _admin()
    name = f"deskbill_test_peerbench_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"{SERVER}/{name}"
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


SIZES = {"accounts": 20, "invoices": 230, "lines": 690, "payments": 260, "credit_notes": 12}


async def test_the_dataset_has_the_sizes_asked_and_keeps_every_balance(
    bench_database: str,
) -> None:
    counts = await bench.fill(bench_database, SIZES)
    assert counts == {
        "accounts": 20,
        "invoices": 230 + 12,
        "line_items": 690 + 12,
        "payments": 260,
        "credit_allocations": 12,
        "credit notes": 12,
    }
    conn = await asyncpg.connect(bench_database)
    try:
        # Stored balances are the sums of the rows behind them.
        off = await conn.fetch(
            """
            SELECT i.id FROM invoices i
            LEFT JOIN (SELECT invoice_id, sum(applied_amount) AS s FROM payments
                       GROUP BY invoice_id) p ON p.invoice_id = i.id
            LEFT JOIN (SELECT invoice_id, sum(amount) AS s FROM credit_allocations
                       GROUP BY invoice_id) a ON a.invoice_id = i.id
            LEFT JOIN (SELECT credit_note_id, sum(amount) AS s FROM credit_allocations
                       GROUP BY credit_note_id) n ON n.credit_note_id = i.id
            LEFT JOIN (SELECT invoice_id, sum(amount) AS amount, sum(tax) AS tax
                       FROM line_items GROUP BY invoice_id) l ON l.invoice_id = i.id
            WHERE i.amount_paid <> coalesce(p.s, 0)
               OR i.credit_applied <> coalesce(a.s, 0)
               OR i.credit_allocated <> coalesce(n.s, 0)
               OR i.subtotal <> l.amount OR i.tax <> l.tax
            """
        )
        assert off == []
        statuses = dict(
            await conn.fetch(
                "SELECT status, count(*) FROM invoices WHERE document_type = 'INVOICE'"
                " GROUP BY status"
            )
        )
        assert set(statuses) == {"UPCOMING", "DUE", "OVERDUE", "PAID"}
        # PAID means nothing left to pay; everything else still owes something.
        owing = dict(
            await conn.fetch(
                "SELECT status = 'PAID', bool_and(total - amount_paid - credit_applied > 0)"
                " FROM invoices WHERE document_type = 'INVOICE' GROUP BY 1"
            )
        )
        assert owing == {True: False, False: True}
        # Every credit note keeps credit to give, so allocateCredit has targets.
        assert (
            await conn.fetchval(
                "SELECT bool_and(-total - credit_allocated > 0) FROM invoices"
                " WHERE document_type = 'CREDIT_NOTE' AND credit_note_status = 'AVAILABLE'"
            )
            is True
        )
        # New rows get ids after the loaded ones.
        new_id = await conn.fetchval(
            "INSERT INTO accounts (organization_id, kind, name, active, autopay, created_at)"
            " VALUES (1, 'TEAM', 'New', true, false, now()) RETURNING id"
        )
        assert new_id == 21
    finally:
        await conn.close()


async def test_the_proxy_counts_simple_and_extended_statements() -> None:
    admin = await _admin()
    await admin.close()
    host, port = SERVER.rsplit("@", 1)[1].split(":")
    counter = bench.StatementCounter(host, int(port))
    await counter.start()
    try:
        # asyncpg asks for SSL first; the proxy refuses it so that it can read the stream.
        conn = await asyncpg.connect(
            f"postgresql://postgres@127.0.0.1:{counter.port}/postgres", timeout=10
        )
        try:
            before, connections = counter.snapshot()
            assert connections == 1
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42  # extended protocol
            assert await conn.fetchval("SELECT $1::int + 1", 1) == 2  # prepared: Execute only
            async with conn.transaction():
                await conn.execute("SELECT 1; SELECT 2")  # simple protocol: one Query
            after, _ = counter.snapshot()
        finally:
            await conn.close()
    finally:
        await counter.stop()
    assert after - before == Counter({"SELECT": 3, "BEGIN": 1, "COMMIT/ROLLBACK": 1})
