"""The event hub: replay from a cursor then live, each event once and in id order, on
every broadcast backend, through lost connections and out-of-order commits.

Rows are written straight into ``events`` and committed, then announced, as a service
and the app would. Timeouts here only guard against hanging; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from redis import asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import create_sessionmaker
from app.realtime import EventHub, _Subscription, channel_for
from models import Event, Organization
from tests.conftest import IN_CI, clean, engine_for

REDIS_URL = os.environ.get("DESKBILL_TEST_REDIS", "redis://127.0.0.1:6379/0")
PG_BROADCAST_URL = os.environ.get(
    "DESKBILL_TEST_PG_BROADCAST", "postgres://postgres@127.0.0.1:5432/test"
)
NOW = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)

Sessions = async_sessionmaker[AsyncSession]


# -- helpers ---------------------------------------------------------------------------


async def make_org(db: Sessions, slug: str = "hq") -> int:
    async with db() as session:
        org = Organization(name=slug, slug=slug, currency="EUR", created_at=NOW)
        session.add(org)
        await session.commit()
        return org.id


def new_event(org: int, type: str = "invoice.status_changed", **ids: Any) -> Event:
    return Event(organization_id=org, type=type, payload={}, created_at=NOW, **ids)


async def add_events(db: Sessions, org: int, count: int = 1, **fields: Any) -> list[int]:
    """Commit ``count`` events in one transaction; their ids."""
    async with db() as session:
        events = [new_event(org, **fields) for _ in range(count)]
        session.add_all(events)
        await session.commit()
        return [e.id for e in events]


async def publish(
    hub: EventHub, db: Sessions, org: int, count: int = 1, **fields: Any
) -> list[int]:
    ids = await add_events(db, org, count, **fields)
    await hub.announce(org, ids[-1])
    return ids


async def eventually(condition: Callable[[], bool], within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        # The conditions read state spread over several objects; polling it is simpler
        # than threading an Event through each, and the timeout only guards a hang.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Collector:
    """Drains one subscription in the background."""

    def __init__(self, stream: AsyncIterator[Event]) -> None:
        self.events: list[Event] = []
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: AsyncIterator[Event]) -> None:
        async for event in stream:
            self.events.append(event)

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events]

    async def wait_for(self, count: int, within: float = 15.0) -> list[int]:
        await eventually(lambda: len(self.events) >= count or self.task.done(), within)
        if self.task.done():
            self.task.result()
        return self.ids

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def running(url: str, db: Sessions, **options: Any) -> AsyncIterator[EventHub]:
    # Long safety polls by default, so a test passing proves the announcement path.
    options = {"poll_interval": 60.0, "health_interval": 60.0, **options}
    async with EventHub(url, db, **options) as hub:
        yield hub


def fast_failover(**extra: Any) -> dict[str, Any]:
    return {
        "health_interval": 0.2,
        "health_timeout": 1.0,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.5,
        **extra,
    }


@pytest.fixture
async def pg_db() -> Sessions:
    """A clean PostgreSQL database only: for what only PostgreSQL can do."""
    engine = await engine_for("postgresql")
    await clean(engine)
    return create_sessionmaker(engine)


def _unreachable(what: str, exc: BaseException) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but unreachable: {exc!r}")
    pytest.skip(f"{what} not reachable: {exc!r}")


@pytest.fixture
async def redis_url() -> str:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with asyncio.timeout(3):
            await client.ping()
    except Exception as exc:
        _unreachable(f"Redis at {REDIS_URL}", exc)
    finally:
        await client.aclose()
    # A client name of our own, so a test can drop exactly its own connections on a
    # Redis server that other suites may share.
    return f"{REDIS_URL}?client_name=deskbill-rt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_broadcast_url() -> str:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(PG_BROADCAST_URL), 5)
        await conn.close()
    except Exception as exc:
        _unreachable(f"PostgreSQL LISTEN/NOTIFY at {PG_BROADCAST_URL}", exc)
    return PG_BROADCAST_URL


# -- replay, live, order ---------------------------------------------------------------


async def test_replays_after_the_cursor_then_follows_live_in_order(db: Sessions) -> None:
    org = await make_org(db)
    earlier = await add_events(db, org, 5)
    async with running("memory://", db) as hub:
        sub = Collector(hub.subscribe(org, after=earlier[1]))
        assert await sub.wait_for(3) == earlier[2:]

        live = await publish(hub, db, org, 3)
        assert await sub.wait_for(6) == earlier[2:] + live

        more = await publish(hub, db, org, 2)
        await hub.poll()
        assert await sub.wait_for(8) == earlier[2:] + live + more
        assert len(set(sub.ids)) == len(sub.ids)
        assert hub.subscription_cursors(org) == [more[-1]]
        await sub.close()


async def test_one_broadcast_subscription_fans_out_to_many(db: Sessions) -> None:
    org = await make_org(db)
    async with running("memory://", db) as hub:
        subs = [Collector(hub.subscribe(org, after=0)) for _ in range(200)]
        await eventually(lambda: hub.listening_to(org))
        ids = []
        for _ in range(5):
            ids += await publish(hub, db, org, 2)
        for sub in subs:
            assert await sub.wait_for(10) == ids
        # One broadcaster queue for the channel, however many subscribers.
        assert hub._broadcast is not None
        assert len(hub._broadcast._subscribers[channel_for(org)]) == 1
        for sub in subs:
            await sub.close()
        assert hub.tail_sizes() == {}
        assert not hub.listening_to(org)


async def test_concurrent_first_subscribers_share_one_channel(db: Sessions) -> None:
    """broadcaster loses one of two queues racing to subscribe first; the hub must not."""
    org = await make_org(db)
    # Bounded as a whole: once, under a loaded CI run, this test waited forever, and a
    # TimeoutError's traceback names the step that never finished.
    async with asyncio.timeout(60), running("memory://", db) as hub:
        streams = [hub.subscribe(org, after=0) for _ in range(20)]
        firsts = [asyncio.ensure_future(anext(s)) for s in streams]
        await eventually(lambda: hub.listening_to(org))
        (event_id,) = await publish(hub, db, org)
        async with asyncio.timeout(15):
            events = await asyncio.gather(*firsts)
        assert [e.id for e in events] == [event_id] * 20
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]


async def test_predicate_filters_and_cursor_still_moves(db: Sessions) -> None:
    org = await make_org(db)
    async with running("memory://", db) as hub:
        sub = Collector(hub.subscribe(org, after=0, predicate=lambda e: e.account_id == 7))
        other = await publish(hub, db, org, 3, account_id=8)
        mine = await publish(hub, db, org, 2, account_id=7)
        later_other = await publish(hub, db, org, 1, account_id=8)
        await hub.poll()
        assert await sub.wait_for(2) == mine
        await eventually(lambda: hub.subscription_cursors(org) == later_other)
        assert all(e.account_id == 7 for e in sub.events)
        assert not set(sub.ids) & set(other + later_other)
        await sub.close()


async def test_other_organizations_events_are_not_delivered(db: Sessions) -> None:
    org = await make_org(db, "hq")
    neighbour = await make_org(db, "annex")
    async with running("memory://", db) as hub:
        sub = Collector(hub.subscribe(org, after=0))
        interleaved: list[int] = []
        for _ in range(3):
            await publish(hub, db, neighbour, 2)
            interleaved += await publish(hub, db, org, 1)
        await hub.poll()
        assert await sub.wait_for(3) == interleaved
        assert {e.organization_id for e in sub.events} == {org}
        await sub.close()


async def test_reconnecting_with_the_last_cursor_gets_exactly_what_was_missed(
    db: Sessions,
) -> None:
    org = await make_org(db)
    async with running("memory://", db) as hub:
        first = Collector(hub.subscribe(org, after=0))
        seen = await publish(hub, db, org, 2)
        assert await first.wait_for(2) == seen
        await first.close()  # the client goes away...

        missed = []
        for _ in range(3):
            missed += await publish(hub, db, org)  # ...while three events happen

        again = Collector(hub.subscribe(org, after=seen[-1]))
        assert await again.wait_for(3) == missed
        after = await publish(hub, db, org)
        assert await again.wait_for(4) == missed + after
        await again.close()


async def test_a_lost_announcement_is_recovered_by_the_safety_poll(db: Sessions) -> None:
    org = await make_org(db)
    async with running("memory://", db, poll_interval=0.2) as hub:
        sub = Collector(hub.subscribe(org, after=0))
        silent = await add_events(db, org, 2)  # committed, never announced
        assert await sub.wait_for(2) == silent
        await sub.close()


async def test_subscribers_end_when_the_hub_stops(db: Sessions) -> None:
    org = await make_org(db)
    hub = EventHub("memory://", db, poll_interval=60)
    await hub.start()
    sub = Collector(hub.subscribe(org, after=0))
    ids = await publish(hub, db, org)
    assert await sub.wait_for(1) == ids
    await hub.stop()
    async with asyncio.timeout(15):
        await sub.task
    assert sub.ids == ids


# -- memory stays bounded --------------------------------------------------------------


async def test_a_slow_subscriber_keeps_only_its_cursor(db: Sessions) -> None:
    org = await make_org(db)
    async with running("memory://", db, tail_size=50) as hub:
        slow = hub.subscribe(org, after=0)
        fast = Collector(hub.subscribe(org, after=0))
        (first,) = await publish(hub, db, org)
        assert (await anext(slow)).id == first

        backlog: list[int] = []
        for _ in range(10):
            backlog += await publish(hub, db, org, 50)
        await hub.poll()
        assert await fast.wait_for(501) == [first, *backlog]

        # The slow one has not read on: it still holds just its cursor, the shared tail
        # is bounded, and the broadcaster queue of the channel is drained.
        assert _Subscription.__slots__ == ("cursor",)
        assert hub.subscription_cursors(org) == sorted([first, backlog[-1]])
        assert hub.tail_sizes()[org] <= 2 * 50
        assert hub._broadcast is not None
        queues = hub._broadcast._subscribers[channel_for(org)]
        assert all(q.qsize() == 0 for q in queues)

        # When it reads again it gets the whole backlog, from the table, in order.
        rest: list[int] = []
        async with asyncio.timeout(15):
            while len(rest) < len(backlog):
                rest.append((await anext(slow)).id)
        assert rest == backlog
        await slow.aclose()  # type: ignore[attr-defined]
        await fast.close()


# -- out-of-order commits (PostgreSQL sequences) ---------------------------------------


async def test_a_later_id_waits_for_an_earlier_one_still_in_flight(pg_db: Sessions) -> None:
    org = await make_org(pg_db)
    async with running("memory://", pg_db, gap_grace=60.0) as hub:
        sub = Collector(hub.subscribe(org, after=0))
        async with pg_db() as slow_tx:
            early = new_event(org)
            slow_tx.add(early)
            await slow_tx.flush()  # id taken, not committed
            (late,) = await publish(hub, pg_db, org)
            assert late > early.id

            await hub.poll()
            # The later id is committed but not settled: handing it out would move a
            # client's cursor past the earlier one, which would then be lost.
            assert hub.horizon < early.id
            assert sub.ids == []

            await slow_tx.commit()
        await hub.announce(org, early.id)
        assert await sub.wait_for(2) == [early.id, late]
        await sub.close()


async def test_an_id_that_never_commits_is_skipped_after_the_grace(pg_db: Sessions) -> None:
    org = await make_org(pg_db)
    async with running("memory://", pg_db, gap_grace=0.3) as hub:
        sub = Collector(hub.subscribe(org, after=0))
        async with pg_db() as doomed:
            lost = new_event(org)
            doomed.add(lost)
            await doomed.flush()
            await doomed.rollback()
        (kept,) = await publish(hub, pg_db, org)
        assert kept > lost.id
        assert await sub.wait_for(1) == [kept]
        assert hub.horizon >= kept
        await sub.close()


# -- across processes: Redis and PostgreSQL --------------------------------------------


async def _across_two_hubs(url: str, db: Sessions) -> None:
    org = await make_org(db)
    async with running(url, db) as publisher, running(url, db) as listener:
        assert publisher.connected and listener.connected
        sub = Collector(listener.subscribe(org, after=0))
        await eventually(lambda: listener.listening_to(org))
        ids = await publish(publisher, db, org, 2)
        # The listener's safety poll is a minute away: only the channel can wake it.
        assert await sub.wait_for(2) == ids
        assert listener.announcements_received >= 1
        await sub.close()


async def test_redis_wakes_a_subscriber_of_another_hub(db: Sessions, redis_url: str) -> None:
    await _across_two_hubs(redis_url, db)


async def test_postgres_notify_wakes_a_subscriber_of_another_hub(
    db: Sessions, pg_broadcast_url: str
) -> None:
    await _across_two_hubs(pg_broadcast_url, db)


async def _kill_own_pubsub_clients(redis_url: str) -> int:
    name = redis_url.split("client_name=", 1)[1]
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        clients = await client.client_list(_type="pubsub")
        ids = [c["id"] for c in clients if c.get("name") == name]
        for client_id in ids:
            await client.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        await client.aclose()


async def test_redis_pubsub_connection_killed_under_live_subscribers(
    db: Sessions, redis_url: str
) -> None:
    org = await make_org(db)
    async with (
        running(redis_url, db, **fast_failover()) as publisher,
        running(redis_url, db, **fast_failover()) as listener,
    ):
        sub = Collector(listener.subscribe(org, after=0))
        await eventually(lambda: listener.listening_to(org))
        before = await publish(publisher, db, org)
        assert await sub.wait_for(1) == before

        assert await _kill_own_pubsub_clients(redis_url) >= 1
        during = await publish(publisher, db, org, 2)  # may be announced into the void
        await eventually(lambda: listener.reconnects >= 1 and listener.connected)
        await eventually(lambda: listener.listening_to(org))

        heard = listener.announcements_received
        after = await publish(publisher, db, org)
        assert await sub.wait_for(4) == before + during + after
        assert listener.announcements_received > heard
        await sub.close()


async def test_postgres_listen_connection_terminated_under_live_subscribers(
    db: Sessions, pg_broadcast_url: str
) -> None:
    org = await make_org(db)
    async with (
        running(pg_broadcast_url, db, **fast_failover()) as publisher,
        running(pg_broadcast_url, db, **fast_failover()) as listener,
    ):
        sub = Collector(listener.subscribe(org, after=0))
        await eventually(lambda: listener.listening_to(org))
        before = await publish(publisher, db, org)
        assert await sub.wait_for(1) == before

        # End exactly the listener's LISTEN session, as a failover or an admin would.
        backend = listener._backend
        assert backend is not None
        pid = backend._conn.get_server_pid()  # type: ignore[attr-defined]
        admin = await asyncpg.connect(pg_broadcast_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        during = await publish(publisher, db, org, 2)
        await eventually(lambda: listener.reconnects >= 1 and listener.connected)
        await eventually(lambda: listener.listening_to(org))

        heard = listener.announcements_received
        after = await publish(publisher, db, org)
        assert await sub.wait_for(4) == before + during + after
        assert listener.announcements_received > heard
        await sub.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A throwaway redis-server of our own, so it can be killed and restarted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.Redis(port=self.port)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(Exception):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """Kill our own server by its pid (never any other redis-server)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            async with asyncio.timeout(10):
                await self.process.wait()
        self.process = None


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is required under CI=true")
        pytest.skip("redis-server not installed")
    server = PrivateRedis(_free_port())
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


async def test_redis_server_restart_loses_nothing(
    db: Sessions, private_redis: PrivateRedis
) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    org = await make_org(db)
    async with (
        running(url, db, **fast_failover()) as publisher,
        running(url, db, **fast_failover()) as listener,
    ):
        sub = Collector(listener.subscribe(org, after=0))
        await eventually(lambda: listener.listening_to(org))
        before = await publish(publisher, db, org)
        assert await sub.wait_for(1) == before

        await private_redis.kill()
        await eventually(lambda: not listener.connected and not publisher.connected)
        during = await publish(publisher, db, org, 3)  # the publish fails; rows are safe

        await private_redis.start()
        await eventually(lambda: listener.connected and publisher.connected)
        # Nothing re-announced the outage's events: the resync after reconnecting did.
        assert await sub.wait_for(4) == before + during

        await eventually(lambda: listener.listening_to(org))
        after = await publish(publisher, db, org)
        assert await sub.wait_for(5) == before + during + after
        assert listener.reconnects >= 1
        await sub.close()


async def test_a_hub_starts_and_serves_while_the_broadcast_server_is_down(
    db: Sessions,
) -> None:
    org = await make_org(db)
    url = f"redis://127.0.0.1:{_free_port()}/0"
    async with running(url, db, **fast_failover(poll_interval=0.2)) as hub:
        assert not hub.connected
        sub = Collector(hub.subscribe(org, after=0))
        ids = await publish(hub, db, org, 2)
        assert await sub.wait_for(2) == ids
        await sub.close()


def test_unknown_broadcast_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="kafka"):
        EventHub("kafka://localhost:9092", async_sessionmaker())
