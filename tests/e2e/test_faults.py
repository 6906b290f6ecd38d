"""PostgreSQL backends terminated (``pg_terminate_backend``) under a real ``deskbill
worker`` in the middle of its billing runs: it carries on by itself and bills every
period exactly once, with a gap-free number series. The helpers here serve
test_faults_requests.py too (backends ended under requests).

Redis killed and restarted under live subscriptions is in test_multiprocess.py; Stripe
failing, timing out and answering slowly under the API in tests/api/test_stripe_faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from app.database import create_engine, create_sessionmaker
from models import Invoice, LineItem, Organization, PlanInterval, PlanSubscription
from services import plans
from tests.conftest import PG_DATABASE, PG_SERVER
from tests.e2e import (
    Process,
    Seeded,
    deskbill,
    environment,
    migrated_database,
    running,
    seed,
)


@pytest.fixture(scope="module")
async def seeded() -> Seeded:
    return await seed(await migrated_database(f"{PG_DATABASE}_faults"))


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 90) -> None:
    """Poll ``check`` until it holds (``within`` is a hang guard, not a speed bound)."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


def database_name(seeded: Seeded) -> str:
    return seeded.database_url.rsplit("/", 1)[1]


async def terminate_backends(seeded: Seeded, *, sparing: frozenset[int] = frozenset()) -> int:
    """End every session on the servers' database but ``sparing``; how many ended."""
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            pids = list(
                await conn.scalars(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :db"
                        " AND pid <> pg_backend_pid()"
                    ),
                    {"db": database_name(seeded)},
                )
            )
            ended = 0
            for pid in pids:
                if pid not in sparing:
                    ended += bool(
                        await conn.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    )
            return ended
    finally:
        await admin.dispose()


async def test_backends_terminated_mid_billing_run_bill_every_period_once(
    seeded: Seeded,
) -> None:
    engine = create_engine(seeded.database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            org = await session.get(Organization, seeded.id("org"))
            assert org is not None
            template = await plans.create_plan_template(
                session, org, name="Office", price=90000,
                interval=PlanInterval.MONTHLY, now=datetime.now(UTC),
            )  # fmt: skip
            sub = PlanSubscription(
                organization_id=org.id, account_id=seeded.id("team"),
                template_id=template.id, name=template.name, price=template.price,
                interval=template.interval, start_date=date(2004, 1, 1),
                billed_through=date(2004, 1, 1), status="ACTIVE", created_at=datetime.now(UTC),
            )  # fmt: skip
            session.add(sub)
        env = environment(seeded.database_url, "memory://", DESKBILL_WORKER_INTERVAL="0")
        worker = Process("faulty-worker", deskbill("worker"), env)
        async with running(worker):

            async def started() -> bool:
                return "worker started" in worker.output()

            await eventually(started)
            ended = 0
            for _ in range(6):
                await asyncio.sleep(0.5)
                ended += await terminate_backends(seeded)
                assert worker.process is not None and worker.process.poll() is None, (
                    worker.output()[-30000:]
                )
            # The clock carries on by itself until the plan has caught up.
            async with asyncio.timeout(240):
                while True:
                    async with create_sessionmaker(engine)() as session:
                        fresh = await session.get(PlanSubscription, sub.id, populate_existing=True)
                        assert fresh is not None and fresh.billed_through is not None
                        if fresh.billed_through > date.today() + timedelta(days=1):
                            break
                    await asyncio.sleep(0.2)
            output = worker.output()
        assert ended >= 6, ended  # the worker's sessions really were cut, again and again
        assert "billing run as of" in output  # and it kept reporting its runs

        async with create_sessionmaker(engine)() as session:
            starts = list(
                await session.scalars(
                    select(LineItem.period_start).where(LineItem.plan_subscription_id == sub.id)
                )
            )
            numbers = list(
                await session.scalars(
                    select(Invoice.number).where(
                        Invoice.organization_id == seeded.id("org"), Invoice.number.is_not(None)
                    )
                )
            )
            last = await session.scalar(
                select(func.max(LineItem.period_end)).where(LineItem.plan_subscription_id == sub.id)
            )
            fresh = await session.get(PlanSubscription, sub.id, populate_existing=True)
        assert len(starts) == len(set(starts)) > 250  # every month since 2004, once
        assert fresh is not None and last is not None
        assert fresh.billed_through == last + timedelta(days=1)
        assert len(numbers) == len(set(numbers))
        series = sorted(int(n.split("-")[1]) for n in numbers if n.startswith("INV-"))
        assert series == list(range(1, len(series) + 1))  # gap-free
    finally:
        await engine.dispose()
