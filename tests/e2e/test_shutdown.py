"""Stopping: ``deskbill serve`` and ``deskbill worker`` exit with status 0 within 10 s
of SIGTERM, with a websocket subscription open and billing runs in flight, and leave
no account half billed; ``serve --workers N`` runs several processes and refuses an
in-process broadcast channel that could not reach them all.

A plan far behind keeps the billing clock busy (it catches up twelve periods per run),
so SIGTERM lands while a run is working. The 10 s is the promise under test, not a
measure of speed: the wait fails only if the process outlives it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.database import create_engine, create_sessionmaker
from models import LineItem, Organization, PlanInterval, PlanSubscription
from schema.ids import encode
from services import plans
from tests.conftest import PG_DATABASE
from tests.e2e import (
    GraphQLWS,
    Process,
    Seeded,
    Server,
    deskbill,
    environment,
    migrated_database,
    running,
    seed,
    shared_redis,
)

STOP_WITHIN = 10.0
RENAME = """
mutation ($id: ID!, $name: String!) { updateAccount(accountId: $id, input: {name: $name}) { name } }
"""
WATCH = """
subscription ($accountId: ID!) {
  events(after: "0", filter: {accountId: $accountId, types: ["account.updated"]}) { cursor }
}"""


@pytest.fixture(scope="module")
async def seeded() -> Seeded:
    seeded = await seed(await migrated_database(f"{PG_DATABASE}_shutdown"))
    engine = create_engine(seeded.database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            org = await session.get(Organization, seeded.id("org"))
            assert org is not None
            template = await plans.create_plan_template(
                session, org, name="Fixed desk", price=25000,
                interval=PlanInterval.MONTHLY, now=datetime.now(UTC),
            )  # fmt: skip
            # Put in place as an old import would have left it: billed to 2000.
            session.add(PlanSubscription(
                organization_id=org.id, account_id=seeded.id("bob_account"),
                template_id=template.id, name=template.name, price=template.price,
                interval=template.interval, start_date=date(2000, 1, 1),
                billed_through=date(2000, 1, 1), status="ACTIVE", created_at=datetime.now(UTC),
            ))  # fmt: skip
    finally:
        await engine.dispose()
    return seeded


async def billed(seeded: Seeded) -> tuple[int, list[tuple[date | None, date | None]]]:
    """Plan lines so far, and each plan's billed_through beside its last line's end."""
    engine = create_engine(seeded.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            lines = await session.scalar(
                select(func.count()).select_from(LineItem).where(LineItem.kind == "PLAN")
            )
            subs = list(await session.scalars(select(PlanSubscription)))
            pairs = []
            for sub in subs:
                last = await session.scalar(
                    select(func.max(LineItem.period_end)).where(
                        LineItem.plan_subscription_id == sub.id
                    )
                )
                pairs.append((sub.billed_through, last + timedelta(days=1) if last else None))
            return int(lines or 0), pairs
    finally:
        await engine.dispose()


async def until_more_lines_than(seeded: Seeded, count: int) -> int:
    """Wait until billing runs have put more plan lines on invoices than ``count``."""
    async with asyncio.timeout(90):  # a hang guard: processes start on a busy machine
        while True:
            now = (await billed(seeded))[0]
            if now > count:
                return now
            await asyncio.sleep(0.05)


async def terminated(process: Process) -> int:
    """SIGTERM our own process by its pid; its exit status (fails past 10 s)."""
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(process.process.wait, STOP_WITHIN)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{process.name} still running 10 s after SIGTERM") from None


def served(name: str, env: dict[str, str], *flags: str) -> Server:
    """``deskbill serve`` exactly as an operator starts it, on a free port."""
    server = Server(name, env)
    server.args = deskbill("serve", "--host", "127.0.0.1", "--port", str(server.port), *flags)
    server.env = env
    return server


def no_half_billed_account(pairs: list[tuple[date | None, date | None]]) -> None:
    # billed_through moves with the lines in one transaction: a cancelled run left
    # each account either fully done for its step or untouched.
    assert pairs and all(through == after_last for through, after_last in pairs), pairs


async def test_serve_stops_within_10s_of_sigterm_with_a_subscription_open_and_a_run_in_flight(
    seeded: Seeded,
) -> None:
    env = {
        **environment(seeded.database_url, await shared_redis()),
        "DESKBILL_WORKER": "true",
        "DESKBILL_WORKER_INTERVAL": "0",
    }
    server = served("serve", env)
    async with running(server):
        account = encode("Account", seeded.id("alice_account"))
        async with GraphQLWS.connect(server.url, seeded.tokens["alice"]) as alice:
            operation = await alice.subscribe(WATCH, {"accountId": account})
            await server.gql(RENAME, {"id": account, "name": "Alice, live"}, seeded.tokens["admin"])
            await alice.results(operation, 1, within=60)  # the subscription is live
            await until_more_lines_than(seeded, (await billed(seeded))[0])

            assert await terminated(server) == 0, server.output()[-3000:]
            closed = await alice.closed(within=STOP_WITHIN)
            assert closed.code in (1001, 1012), closed  # going away / service restart
    no_half_billed_account((await billed(seeded))[1])


async def test_the_worker_stops_within_10s_of_sigterm_mid_run(seeded: Seeded) -> None:
    env = environment(seeded.database_url, await shared_redis(), DESKBILL_WORKER_INTERVAL="0")
    worker = Process("worker", deskbill("worker"), env)
    async with running(worker):
        # Lines still being added: runs are going on right now.
        await until_more_lines_than(seeded, (await billed(seeded))[0])
        assert await terminated(worker) == 0, worker.output()[-3000:]
        output = worker.output()
    assert "worker stopping" in output
    assert "billing run as of" in output  # one summary line per run
    no_half_billed_account((await billed(seeded))[1])


async def test_serve_with_several_workers_starts_and_stops(seeded: Seeded) -> None:
    env = environment(seeded.database_url, await shared_redis())
    server = served("serve-workers", env, "--workers", "2", "--no-worker")
    async with running(server):
        token = seeded.tokens["admin"]
        for _ in range(4):  # answered, whichever process takes the connection
            body = await server.gql("{ viewer { role } }", {}, token)
            assert body["data"]["viewer"]["role"] == "ADMIN"
        assert await terminated(server) == 0, server.output()[-3000:]


def test_several_workers_refuse_an_in_process_broadcast_channel() -> None:
    env = environment("sqlite:///unused.db", "memory://")
    done = subprocess.run(
        deskbill("serve", "--workers", "2"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "DESKBILL_BROADCAST_URL" in done.stderr and "redis://" in done.stderr, done.stderr
