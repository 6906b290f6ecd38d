"""Bench: one `deskbill bill`-equivalent run over N accounts on PostgreSQL.

Builds a fresh database of its own (named per run, dropped at the end, also on
failure): one organization, and N accounts each with a monthly plan from 1 January
2026 and so a pending January invoice; one account in five also holds a custom credit
note, which the run auto-applies to its January invoice. Five template accounts are
built through the engine itself; the rest are copied from them in SQL (ids offset,
e-mails and numbers suffixed), so 100,000 accounts take seconds to build, not hours.

Then it times ``run_billing_batched`` at 2026-01-01T00:00:00Z (what ``deskbill bill``
runs) and counts the SQL statements the run sent (SQLAlchemy's
``before_cursor_execute``; transaction control is not counted).

    .venv/bin/python bench/billing_run.py --accounts 10000 --workers 1
    .venv/bin/python bench/billing_run.py --accounts 10000 --workers 2 --batch-size 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Table, event, text

import models
from app.database import create_engine, create_sessionmaker
from models import (
    AccountKind,
    PlanInterval,
)
from services import accounts, credit, plans, policy
from services.batch_billing import run_billing_batched
from services.billing import BillingLimits

SERVER = os.environ.get("DESKBILL_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
TEMPLATE = 5  # accounts built through the engine; one of them has credit
CLONED = ("users", "accounts", "plan_subscriptions", "invoices", "line_items")
SUFFIXED = {"email", "external_subject", "number"}
BUILT_AT = datetime(2025, 12, 10, 9, tzinfo=UTC)
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


async def _admin(sql: str) -> None:
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await admin.dispose()


async def build(url: str, copies: int) -> None:
    engine = create_engine(url)
    db = create_sessionmaker(engine)
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.create_all)
    async with db.begin() as session:
        org = await policy.create_organization(
            session, "Bench Coworking", "bench", "USD", BUILT_AT, default_tax_rate_ppm=200_000
        )
        template = await plans.create_plan_template(
            session,
            org,
            name="Monthly desk",
            price=31_000,
            interval=PlanInterval.MONTHLY,
            now=BUILT_AT,
        )
        for n in range(TEMPLATE):
            user = await accounts.create_user(
                session, org, email=f"member{n}@example.com", name=f"Member {n}", now=BUILT_AT
            )
            account = await accounts.create_account(
                session, org, kind=AccountKind.USER, user=user, now=BUILT_AT
            )
            await plans.subscribe(session, org, account, template, date(2026, 1, 1), BUILT_AT)
            if n == 0:
                await credit.issue_credit_note(
                    session, org, account, 12_000, "Goodwill", BUILT_AT, origin="CUSTOM"
                )
    async with engine.begin() as conn:
        # The app's statement timeout is for requests; copying 100,000 accounts is one statement.
        await conn.execute(text("SET LOCAL statement_timeout = 0"))
        offset = 0
        for name in CLONED:
            offset = max(offset, (await conn.scalar(text(f"SELECT max(id) FROM {name}"))) or 0)
        offset += 1
        for name in CLONED:
            table: Table = models.Base.metadata.tables[name]
            values = []
            for column in table.columns:
                targets = {
                    fk.column.table.name for fk in column.foreign_keys if fk.column.name == "id"
                }
                if column.primary_key or targets & set(CLONED):
                    values.append(f"{column.name} + g * {offset}")
                elif column.name in SUFFIXED:
                    values.append(f"{column.name} || '.' || g")
                else:
                    values.append(column.name)
            names = ", ".join(c.name for c in table.columns)
            await conn.execute(
                text(
                    f"INSERT INTO {name} ({names}) SELECT {', '.join(values)} "
                    f"FROM {name}, generate_series(1, {copies - 1}) AS g"
                )
            )
            # Fresh statistics, and so fresh plans: the foreign-key checks of the next
            # table were planned (and cached on this connection) while this one held the
            # five template rows, as sequential scans that a 100,000-row copy makes
            # quadratic.
            await conn.execute(text(f"ANALYZE {name}"))
            await conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"(SELECT max(id) FROM {name}))"
                )
            )
        await conn.execute(text("ANALYZE"))
    await engine.dispose()


async def run(url: str, workers: int, batch_size: int) -> tuple[float, int, int, int]:
    engine = create_engine(url)
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    db = create_sessionmaker(engine)
    limits = BillingLimits(concurrency=workers, batch_size=batch_size)
    started = time.perf_counter()
    result = await run_billing_batched(db, None, AS_OF, limits)
    seconds = time.perf_counter() - started
    await engine.dispose()
    if result.failed_accounts:
        raise SystemExit(f"{len(result.failed_accounts)} accounts failed")
    return seconds, result.accounts_processed, result.invoices_finalized, statements


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    copies = max(1, args.accounts // TEMPLATE)
    name = f"deskbill_bench_billing_{secrets.token_hex(3)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        url = f"{SERVER}/{name}"
        started = time.perf_counter()
        await build(url, copies)
        built = time.perf_counter() - started
        seconds, processed, finalized, statements = await run(url, args.workers, args.batch_size)
        print(
            f"accounts={processed} finalized={finalized} built_in={built:.1f}s "
            f"workers={args.workers} "
            f"batch_size={args.batch_size} run={seconds:.1f}s "
            f"accounts_per_s={processed / seconds:.0f} "
            f"statements={statements} per_account={statements / max(1, processed):.3f}"
        )
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
