"""How fast the analytics figures answer on a large PostgreSQL database.

One command builds what it measures and takes it down again:

1. a fresh database with a unique name (dropped at the end, also on failure), brought
   to the schema by ``deskbill migrate`` and filled by SQL with the dataset of
   ``bench/vs_postgraphile.py`` (10,000 accounts, 100,000 invoices over ten months,
   500,000 lines, 100,000 payments, 3,000 credit notes with allocations), plus what
   analytics reads and that dataset lacks: one plan per account (monthly, quarterly,
   yearly), a quarter of the payments made by card (no received-on date, so their
   local date comes from the instant), and a refund on every credit note; the fill
   runs with triggers off, so the rollups are then rebuilt from the ledger (as
   migration 0010 does on upgrade);
2. each figure asked through the engine (``services.analytics``, the statements the
   GraphQL field runs) and through GraphQL over HTTP (``create_app`` on uvicorn, an
   analyst's token), a year of monthly groups where a range applies; p50 and p95 of
   ``--rounds`` runs after a warm-up;
3. with ``--explain``, ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement a figure runs.

    .venv/bin/python bench/analytics.py                   # the full dataset
    .venv/bin/python bench/analytics.py --small --rounds 5
    .venv/bin/python bench/analytics.py --explain
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from vs_postgraphile import FULL, FULL_CREDIT_NOTES, SMALL, SMALL_CREDIT_NOTES, fill  # noqa: E402

from models import figures  # noqa: E402

EXTRA_SQL = """
INSERT INTO users (id, organization_id, email, name, role, active, created_at)
VALUES (2, 1, 'analyst@bench.example', 'Bench Analyst', 'ANALYST', true, now());
SELECT setval(pg_get_serial_sequence('users', 'id'), 2);

INSERT INTO plan_templates (organization_id, name, price, interval, setup_fee, deposit,
    active, created_at)
VALUES (1, 'Hot desk', 29000, 'MONTHLY', 0, 0, true, now()),
       (1, 'Fixed desk', 85000, 'QUARTERLY', 0, 0, true, now()),
       (1, 'Private office', 420000, 'YEARLY', 0, 0, true, now()),
       (1, 'Day pass pack', 9000, 'ONE_TIME', 0, 0, true, now());

INSERT INTO plan_subscriptions (organization_id, account_id, template_id, name, price,
    interval, start_date, end_date, billed_through, status, created_at)
SELECT 1, a.id, t.id, t.name, t.price, t.interval,
    current_date - 300 + (a.id % 200)::int,
    CASE WHEN a.id % 7 = 0 THEN current_date - 30 + (a.id % 60)::int END,
    NULL, 'ACTIVE', now()
FROM accounts AS a
JOIN plan_templates AS t ON t.id = (SELECT min(id) FROM plan_templates) + a.id % 4;

UPDATE payments SET method = 'CARD', type = 'AUTOMATIC', received_on = NULL,
    succeeded_at = received_on + time '22:30' + (id % 5) * interval '1 hour'
WHERE id % 4 = 0;

INSERT INTO refunds (organization_id, account_id, credit_note_id, amount, currency, status,
    method, reason, created_at, updated_at)
SELECT 1, account_id, id, -total / 4, currency, 'SUCCEEDED', 'BANK_TRANSFER', 'Bench',
    finalized_at + interval '20 hours', finalized_at + interval '20 hours'
FROM invoices WHERE document_type = 'CREDIT_NOTE';
UPDATE invoices SET credit_refunded = -total / 4 WHERE document_type = 'CREDIT_NOTE';
"""

QUERIES = {
    "revenue": """query($from: Date!, $to: Date!) { revenue(from: $from, to: $to) {
        periods { start invoiced { amount } tax { amount } received { amount }
                  refunded { amount } collected { amount } creditIssued { amount }
                  creditApplied { amount } } } }""",
    "invoiceCollections": """query($from: Date!, $to: Date!) {
        invoiceCollections(from: $from, to: $to) { periods { start
            statuses { status count total { amount } balanceDue { amount } } } } }""",
    "receivablesAging": """query { receivablesAging(first: 50) { balance { amount } count
        buckets { bucket balance { amount } count }
        accounts { nodes { accountName balance { amount } } } } }""",
    "creditOutstanding": """query { creditOutstanding(first: 50) { remaining { amount }
        oldestIssueDate accounts { nodes { accountName remaining { amount } } } } }""",
    "recurringRevenue": """query { recurringRevenue { total { subscriptions mrr { amount } }
        templates { name figures { subscriptions mrr { amount } arr { amount } } } } }""",
    "paymentsSummary": """query($from: Date!, $to: Date!) {
        paymentsSummary(from: $from, to: $to) { groups { method status count
            amount { amount } averageDaysAfterDue } } }""",
}


def log(message: str) -> None:
    print(f"[analytics-bench] {message}", file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(work: Callable[[], Awaitable[object]], rounds: int) -> tuple[float, float]:
    for _ in range(3):
        await work()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await work()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), percentile(samples, 0.95)


async def measure(database_url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    from sqlalchemy import event, text

    from app.asgi import create_app
    from app.auth import issue_token
    from app.database import create_engine, create_sessionmaker
    from app.settings import Settings
    from models import User
    from services import analytics
    from services.clock import local_date

    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    async with sessions() as session:
        timezone = "Europe/Berlin"
        today = local_date(datetime.now(UTC), timezone)
        analyst = await session.get(User, 2)
        assert analyst is not None
    year = analytics.Span.of(today - timedelta(days=364), today)
    scope = analytics.Scope(1, timezone)
    month = analytics.Grouping.MONTH

    engine_calls: dict[str, Callable[[Any], Awaitable[object]]] = {
        "revenue": lambda s: analytics.revenue(s, scope, year, month),
        "invoiceCollections": lambda s: analytics.invoice_collections(s, scope, year, month),
        "receivablesAging": lambda s: _both(
            analytics.receivables_aging(s, scope, today),
            analytics.receivables_by_account(s, scope, today, first=50),
        ),
        "creditOutstanding": lambda s: _both(
            analytics.credit_outstanding(s, scope), analytics.credit_by_account(s, scope, first=50)
        ),
        "recurringRevenue": lambda s: analytics.recurring_revenue(s, scope, today),
        "paymentsSummary": lambda s: analytics.payments_summary(s, scope, year),
    }

    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        statements.append((statement, parameters))

    results: dict[str, list[float]] = {}
    for name, call in engine_calls.items():

        async def once(call: Callable[[Any], Awaitable[object]] = call) -> None:
            async with sessions() as session:
                await call(session)

        p50, p95 = await timed(once, args.rounds)
        results[name] = [p50, p95]
        if args.explain:
            statements.clear()
            event.listen(engine.sync_engine, "before_cursor_execute", record)
            await once()
            event.remove(engine.sync_engine, "before_cursor_execute", record)
            async with engine.connect() as conn:
                for statement, parameters in statements:
                    plan = await conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
                    )
                    print(f"\n-- {name}\n" + "\n".join(r[0] for r in plan), flush=True)

    # The floor on this machine at this moment: one plain scan of each big table.
    bare: dict[str, list[float]] = {}
    for table, column in (("invoices", "total"), ("payments", "amount")):

        async def scan(table: str = table, column: str = column) -> None:
            async with sessions() as session:
                await session.execute(text(f"SELECT sum({column}) FROM {table}"))

        bare[f"(floor: SELECT sum({column}) FROM {table})"] = [
            *await timed(scan, args.rounds), float("nan"), float("nan"),
        ]  # fmt: skip

    if args.no_http:
        await engine.dispose()
        return {
            **{name: [*numbers, float("nan"), float("nan")] for name, numbers in results.items()},
            **bare,
        }
    settings = Settings(
        database_url=database_url, worker_enabled=False, token_secret=secrets.token_urlsafe(48)
    )
    app = create_app(settings, engine=engine, start_worker=False)
    token = issue_token(settings, analyst, datetime.now(UTC))
    variables = {"from": year.first.isoformat(), "to": year.last.isoformat()}
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for name, query in QUERIES.items():
                body = {"query": query, "variables": variables if "$from" in query else {}}

                async def post(body: dict[str, Any] = body) -> None:
                    response = await client.post(
                        "/graphql", json=body, headers={"Authorization": f"Bearer {token}"}
                    )
                    answer = response.json()
                    if "errors" in answer:
                        raise RuntimeError(answer["errors"])

                p50, p95 = await timed(post, args.rounds)
                results[name] += [p50, p95]
    await engine.dispose()
    return {**results, **bare}


async def serve(app: Any) -> AsyncIterator[str]:
    """uvicorn on a free loopback port in this event loop, for the HTTP timings."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _both(first: Awaitable[object], second: Awaitable[object]) -> None:
    await first
    await second


async def build(server: str, dbname: str, small: bool) -> dict[str, int]:
    database_url = f"{server}/{dbname}"
    sizes = dict(SMALL if small else FULL)
    sizes["credit_notes"] = SMALL_CREDIT_NOTES if small else FULL_CREDIT_NOTES
    log(f"database {dbname}; migrating")
    env = {**os.environ, "DATABASE_URL": database_url}
    await asyncio.to_thread(
        subprocess.run,
        [str(ROOT / ".venv" / "bin" / "deskbill"), "migrate"],
        env=env, cwd=ROOT, check=True, timeout=300,
    )  # fmt: skip
    t0 = time.monotonic()
    counts = await fill(database_url, sizes)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(EXTRA_SQL)
        # The fill loads with triggers off (session_replication_role), so the rollups
        # are built from the ledger afterwards, as migration 0010 does on upgrade.
        t1 = time.monotonic()
        await conn.execute("SELECT deskbill_rebuild_figures(ARRAY(SELECT id FROM organizations))")
        log(f"rollups rebuilt from the ledger in {time.monotonic() - t1:.1f} s")
        await conn.execute("VACUUM ANALYZE")
        for rollup in figures.ROLLUPS:
            counts[rollup.name] = int(await conn.fetchval(f"SELECT count(*) FROM {rollup.name}"))
        counts["plan_subscriptions"] = int(
            await conn.fetchval("SELECT count(*) FROM plan_subscriptions")
        )
        counts["refunds"] = int(await conn.fetchval("SELECT count(*) FROM refunds"))
    finally:
        await conn.close()
    log(f"filled in {time.monotonic() - t0:.1f} s: {counts}")
    return counts


async def run(args: argparse.Namespace) -> None:
    server = args.postgres.rstrip("/")
    reuse = args.database is not None
    dbname = args.database or f"deskbill_analytics_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        if reuse:
            counts = {"reused": 1}
        else:
            await admin.execute(f'CREATE DATABASE "{dbname}"')
            counts = await build(server, dbname, args.small)
        results = await measure(f"{server}/{dbname}", args)
    finally:
        if args.keep or reuse:
            log(f"kept {dbname} (drop it when done)")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            log(f"dropped {dbname}")
        await admin.close()

    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"\n{date.today().isoformat()}, {machine}, Python {platform.python_version()}, "
          f"rounds={args.rounds}; rows: {counts}\n")  # fmt: skip
    print("| figure | engine p50 ms | engine p95 ms | GraphQL/HTTP p50 ms | GraphQL/HTTP p95 ms |")
    print("|---|---|---|---|---|")
    for name, numbers in results.items():
        cells = ["–" if n != n else f"{n:.1f}" for n in numbers]  # nan: not measured
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--small", action="store_true", help="5,000 invoices instead")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--explain", action="store_true", help="print each statement's plan")
    parser.add_argument("--keep", action="store_true", help="keep the database it built")
    parser.add_argument("--database", help="measure an existing database built with --keep")
    parser.add_argument("--no-http", action="store_true", help="time the engine calls only")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
