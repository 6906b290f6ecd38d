"""Real-time delivery of the event log: the hub under the GraphQL subscriptions.

The event table is the outbox and the only source of truth. After a service's
transaction commits, the app calls ``EventHub.announce(organization_id, event_id)``,
which publishes a tiny hint (``"<org>:<id>"``) on the broadcast channel
``deskbill.events.<org>``; the event itself never travels on the channel. Every hub
that hears the hint (or its own periodic safety poll) re-reads the table, and every
subscriber walks the log from its own cursor. So nothing is lost across a reconnect
(the client passes its last id back), nothing is delivered twice, delivery is in id
order, and a slow subscriber owes nothing but its cursor.

How the pieces fit, one process:

* The **horizon** is the hub-wide id below which the log is settled: every id up to it
  has either committed or is known never to commit. Only settled ids are delivered.
  On PostgreSQL ids come from a sequence and concurrent transactions commit out of
  order (11 can be visible while 10 is still in flight). Handing out 11 first would
  move a client's cursor past 10, and a reconnect with ``after=11`` would lose 10
  forever. So a missing id *holds the horizon back* until it shows up or until it has
  been missing for ``gap_grace`` seconds; then it is taken for a rolled-back
  transaction and skipped (with a warning). The price is latency only when an id
  really is missing; SQLite serialises writers, so there it never happens.
* One **reader** task per hub advances the horizon: on an announcement, on its safety
  poll, or while a gap is pending. Per pass it runs one ids-only query over the new
  range (all organizations, to tell holes from other tenants' events) and one query
  for the full rows of the organizations that have local subscribers. That is a fixed
  number of queries per announcement per process, however many subscribers listen.
* A **feed** per organization keeps a bounded, shared tail of recent rows. Subscribers
  read the tail from their cursor; one that fell behind the tail reads the table in
  pages until it catches up. Wake-ups are an ``asyncio.Event`` swapped on every
  change: coalesced, so a subscriber's state is its cursor and nothing queues up.
* One **broadcaster subscription per organization channel**, owned by the hub and
  created without an ``await`` between the check and the insert (so two first
  subscribers cannot race, the flaw of ``Broadcast.subscribe``). Its queue is drained
  at once by the hub, so broadcaster's unbounded queues stay empty.
* A **supervisor** keeps the broadcast connection alive. broadcaster never reconnects
  and, for Redis, its listener task dies silently when the connection drops, leaving
  subscribers waiting forever. The supervisor therefore sends a heartbeat through its
  own channel every ``health_interval`` seconds and treats a missing echo, a failed
  publish or an ended subscription as a broken connection: it tears the connection
  down and reconnects with capped exponential backoff. Meanwhile the safety poll keeps
  delivering, and after every (re)connect the reader resyncs from the table.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlparse

from broadcaster import Broadcast, BroadcastBackend
from broadcaster._backends.redis import RedisBackend
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.event import Event

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "deskbill.events."

EventPredicate = Callable[[Event], bool]


def channel_for(organization_id: int) -> str:
    return f"{CHANNEL_PREFIX}{organization_id}"


class _RedisBackend(RedisBackend):
    """broadcaster's Redis backend with its first-subscribe race fixed.

    Upstream wakes its listener *before* ``SUBSCRIBE`` returns; the listener finds no
    channel yet, ends its ``listen()`` loop and sleeps until the next subscribe, so a
    lone first channel never receives anything (seen with redis-py 8).
    """

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


def make_backend(url: str) -> BroadcastBackend:
    """The broadcaster backend for ``url``; accepts SQLAlchemy-style Postgres URLs too."""
    scheme = urlparse(url).scheme
    if scheme == "memory":
        from broadcaster._backends.memory import MemoryBackend

        return MemoryBackend(url)
    if scheme in ("redis", "rediss"):
        return _RedisBackend(url)
    if scheme in ("postgres", "postgresql") or scheme.startswith("postgresql+"):
        from broadcaster._backends.postgres import PostgresBackend

        # asyncpg wants a plain libpq URL: drop a "+asyncpg" driver suffix.
        return PostgresBackend("postgresql" + url[len(scheme) :])
    raise ValueError(f"unsupported broadcast URL scheme {scheme!r} (memory, redis, postgres)")


@dataclass(slots=True, eq=False)
class _Subscription:
    """All a subscriber owns: its position in the log. Nothing is buffered per subscriber."""

    cursor: int


class _Feed:
    """The shared tail of one organization's settled events, read by its local subscribers.

    Invariant: ``events`` holds every event of the organization with
    ``floor < id <= hub horizon``, in id order.
    """

    def __init__(self, organization_id: int, floor: int) -> None:
        self.organization_id = organization_id
        self.floor = floor
        self.ids: list[int] = []
        self.events: list[Event] = []
        self.subscriptions: set[_Subscription] = set()
        self.changed = asyncio.Event()
        self.listening = False

    def extend(self, events: list[Event], tail_size: int) -> None:
        self.ids.extend(e.id for e in events)
        self.events.extend(events)
        # Trim in batches so appends stay amortised O(1); subscribers left below the
        # new floor fall back to reading the table.
        if len(self.ids) > 2 * tail_size:
            cut = len(self.ids) - tail_size
            self.floor = self.ids[cut - 1]
            del self.ids[:cut]
            del self.events[:cut]
        self.wake()

    def after(self, cursor: int, limit: int) -> list[Event]:
        start = bisect.bisect_right(self.ids, cursor)
        return self.events[start : start + limit]

    def wake(self) -> None:
        # Swap before setting: a waiter that captured the old event wakes, a reader
        # that comes later captures the fresh one. No queue, so nothing accumulates.
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


@dataclass(slots=True)
class _Hole:
    first: int
    last: int
    since: float


class EventHub:
    """Fan-out of the event log to live subscribers, over a broadcaster channel.

    ``broadcast_url`` is ``memory://`` (one process), ``redis://host:port`` or
    ``postgres://user@host:port/db`` (LISTEN/NOTIFY). ``sessionmaker`` opens sessions on
    the database holding the ``events`` table. Use as ``async with EventHub(...)`` or
    call ``start()``/``stop()`` from the application lifespan.

    Events yielded by ``subscribe`` are detached ORM rows shared by every subscriber
    of the organization: read them, never change them.
    """

    def __init__(
        self,
        broadcast_url: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        poll_interval: float = 5.0,
        gap_grace: float = 2.0,
        page_size: int = 500,
        tail_size: int = 1000,
        scan_size: int = 5000,
        lookback: int = 1000,
        health_interval: float = 5.0,
        health_timeout: float = 5.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
    ) -> None:
        make_backend(broadcast_url)  # fail fast on an unsupported URL
        self.broadcast_url = broadcast_url
        self.poll_interval = poll_interval
        self.gap_grace = gap_grace
        self.page_size = page_size
        self.tail_size = tail_size
        self.scan_size = scan_size
        self.lookback = lookback
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self._sessionmaker = sessionmaker

        self._horizon = 0
        self._holes: list[_Hole] = []
        self._gap_pending = False
        self._feeds: dict[int, _Feed] = {}
        # Called with each event just before a subscriber receives it (metrics).
        self.on_deliver: Callable[[Event], None] | None = None
        self._wake = asyncio.Event()
        self._read_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

        # The broadcast connection, replaced wholesale on every reconnect.
        self._broadcast: Broadcast | None = None
        self._backend: BroadcastBackend | None = None
        self._generation = 0
        self._broken = asyncio.Event()
        self._broken_reason = ""
        self._channel_tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping_channels: dict[int, asyncio.Task[None]] = {}
        self._heartbeat_channel = f"deskbill.hub.{uuid.uuid4().hex}"
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat_ready = asyncio.Event()
        self._pings: dict[str, asyncio.Future[None]] = {}
        self._up = False

        #: Observability: reconnections so far, and announcements heard on the channel.
        self.reconnects = 0
        self.announcements_received = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("EventHub already started")
        self._started = True
        async with self._sessionmaker() as session:
            newest = await session.scalar(select(func.max(Event.id)))
        # Start a little behind the newest id so transactions in flight right now are
        # waited for like any other gap, instead of being jumped over.
        self._horizon = max(0, (newest or 0) - self.lookback)
        await self._advance()
        first_attempt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._reader(), name="eventhub-reader"),
            asyncio.create_task(self._supervise(first_attempt), name="eventhub-supervisor"),
        ]
        # A broadcast server that is down must not stop the app: the supervisor keeps
        # retrying and subscribers are served by the safety poll meanwhile.
        await first_attempt

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._disconnect()
        for feed in self._feeds.values():
            feed.wake()

    async def __aenter__(self) -> EventHub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        """Whether the broadcast connection is up (subscribers are served either way)."""
        return self._up

    @property
    def horizon(self) -> int:
        """Every event id up to this one is settled and has been handed to the feeds."""
        return self._horizon

    def open_subscriptions(self) -> int:
        """How many subscriptions this hub is feeding right now."""
        return sum(len(feed.subscriptions) for feed in self._feeds.values())

    def tail_sizes(self) -> dict[int, int]:
        """How many events each organization's shared tail holds (bounded by design)."""
        return {org: len(feed.events) for org, feed in self._feeds.items()}

    def subscription_cursors(self, organization_id: int) -> list[int]:
        """The cursors of an organization's live subscriptions: all the state they keep."""
        feed = self._feeds.get(organization_id)
        return sorted(s.cursor for s in feed.subscriptions) if feed else []

    def listening_to(self, organization_id: int) -> bool:
        """Whether this hub currently hears announcements for the organization."""
        feed = self._feeds.get(organization_id)
        return feed is not None and feed.listening

    # -- publishing ------------------------------------------------------------------

    async def announce(self, organization_id: int, event_id: int) -> None:
        """Tell every hub that ``organization_id``'s log has grown up to ``event_id``.

        Call after commit. Never raises for a broadcast failure: the rows are already
        committed and every hub's safety poll will find them; the failure only makes
        the supervisor reconnect.
        """
        self._hint(organization_id, event_id)
        broadcast, generation = self._broadcast, self._generation
        if broadcast is None:
            return
        try:
            async with asyncio.timeout(self.health_timeout):
                await broadcast.publish(
                    channel_for(organization_id), f"{organization_id}:{event_id}"
                )
        except Exception as exc:
            log.warning("announcing event %s failed: %r", event_id, exc)
            self._fail(generation, f"publish failed: {exc!r}")

    def _hint(self, organization_id: int, event_id: int) -> None:
        if organization_id in self._feeds and event_id > self._horizon:
            self._wake.set()

    def _on_message(self, message: str) -> None:
        self.announcements_received += 1
        org, _, event_id = message.partition(":")
        try:
            self._hint(int(org), int(event_id))
        except ValueError:
            log.warning("ignoring malformed announcement %r", message)

    # -- subscribing -----------------------------------------------------------------

    async def subscribe(
        self,
        organization_id: int,
        after: int,
        predicate: EventPredicate | None = None,
    ) -> AsyncIterator[Event]:
        """Events of the organization with ``id > after`` matching ``predicate``.

        Replays from the table first, then follows the log live; each event once, in
        id order. Ends when the hub stops.
        """
        if not self._started or self._closed:
            raise RuntimeError("EventHub is not running")
        feed = self._acquire(organization_id)
        sub = _Subscription(cursor=after)
        feed.subscriptions.add(sub)
        try:
            while not self._closed:
                # Captured before looking, so a change while we read still wakes us.
                changed = feed.changed
                if sub.cursor < feed.floor:
                    bound = self._horizon
                    batch = await self._read_rows(organization_id, sub.cursor, bound)
                    if len(batch) < self.page_size:
                        # Every event up to ``bound`` is in this batch: continue after it.
                        catch_up_to = bound
                    else:
                        catch_up_to = batch[-1].id
                else:
                    batch = feed.after(sub.cursor, self.page_size)
                    if not batch:
                        await changed.wait()
                        continue
                    catch_up_to = batch[-1].id
                for event in batch:
                    sub.cursor = event.id
                    if predicate is None or predicate(event):
                        if self.on_deliver is not None:
                            self.on_deliver(event)
                        yield event
                sub.cursor = max(sub.cursor, catch_up_to)
        finally:
            feed.subscriptions.discard(sub)
            self._release(feed)

    def _acquire(self, organization_id: int) -> _Feed:
        # No await between the lookup and the insert: asyncio cannot interleave another
        # subscriber here, so an organization gets exactly one feed and one channel.
        feed = self._feeds.get(organization_id)
        if feed is None:
            feed = _Feed(organization_id, floor=self._horizon)
            self._feeds[organization_id] = feed
            self._open_channel(feed)
        return feed

    def _release(self, feed: _Feed) -> None:
        if feed.subscriptions or self._feeds.get(feed.organization_id) is not feed:
            return
        del self._feeds[feed.organization_id]
        task = self._channel_tasks.pop(feed.organization_id, None)
        if task is not None:
            task.cancel()
            # The next subscription to this channel waits for this one to unsubscribe.
            org = feed.organization_id
            self._stopping_channels[org] = task

            def forget(done: asyncio.Task[None]) -> None:
                if self._stopping_channels.get(org) is done:
                    del self._stopping_channels[org]

            task.add_done_callback(forget)

    async def _read_rows(self, organization_id: int, after: int, upto: int) -> list[Event]:
        async with self._sessionmaker() as session:
            rows = await session.scalars(
                select(Event)
                .where(
                    Event.organization_id == organization_id,
                    Event.id > after,
                    Event.id <= upto,
                )
                .order_by(Event.id)
                .limit(self.page_size)
            )
            return list(rows)

    # -- reading the log -------------------------------------------------------------

    async def poll(self) -> int:
        """Read the log now, as the safety poll does; returns the new horizon."""
        await self._advance()
        return self._horizon

    async def _reader(self) -> None:
        while True:
            # While a gap is pending, look again soon: it is usually a transaction
            # committing a few milliseconds late.
            timeout = min(0.1, self.gap_grace / 4) if self._gap_pending else self.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self._advance()
            except Exception:
                log.exception("reading the event log failed; retrying")
                await asyncio.sleep(min(self.poll_interval, 1.0))

    async def _advance(self) -> None:
        async with self._read_lock:
            while True:
                start = self._horizon
                async with self._sessionmaker() as session:
                    rows = (
                        await session.execute(
                            select(Event.id, Event.organization_id)
                            .where(Event.id > start)
                            .order_by(Event.id)
                            .limit(self.scan_size)
                        )
                    ).all()
                    if not rows:
                        self._gap_pending = False
                        return
                    horizon = self._settle([row.id for row in rows])
                    feeds = dict(self._feeds)
                    wanted = {org for id_, org in rows if id_ <= horizon and org in feeds}
                    events: list[Event] = []
                    if wanted:
                        events = list(
                            await session.scalars(
                                select(Event)
                                .where(
                                    Event.id > start,
                                    Event.id <= horizon,
                                    Event.organization_id.in_(wanted),
                                )
                                .order_by(Event.id)
                            )
                        )
                # From here to the end of the pass there is no await, so subscribers
                # never see the horizon and the tails disagree.
                by_org: dict[int, list[Event]] = {}
                for event in events:
                    by_org.setdefault(event.organization_id, []).append(event)
                for org, feed in self._feeds.items():
                    if feeds.get(org) is not feed:
                        # Born during the read: its tail is empty, so it starts here.
                        feed.floor = max(feed.floor, horizon)
                    elif org in by_org:
                        feed.extend(by_org[org], self.tail_size)
                self._horizon = horizon
                if self._gap_pending or len(rows) < self.scan_size or horizon == start:
                    return

    def _settle(self, ids: list[int]) -> int:
        """The new horizon over the ascending ``ids`` found above the current one.

        Records every hole (missing ids) with when it was first seen; the horizon stops
        before the first hole younger than ``gap_grace``.
        """
        now = time.monotonic()
        horizon = previous = self._horizon
        blocked = False
        holes: list[_Hole] = []
        for id_ in ids:
            if id_ > previous + 1:
                first, last = previous + 1, id_ - 1
                # A hole that partly filled keeps the age of the hole it came from.
                since = min(
                    (h.since for h in self._holes if h.first <= last and h.last >= first),
                    default=now,
                )
                holes.append(_Hole(first, last, since))
                if not blocked:
                    if now - since < self.gap_grace:
                        blocked = True
                    else:
                        log.warning(
                            "event ids %s..%s never committed within %.1fs; skipped",
                            first,
                            last,
                            self.gap_grace,
                        )
            if not blocked:
                horizon = id_
            previous = id_
        self._holes = [h for h in holes if h.first > horizon]
        self._gap_pending = blocked
        return horizon

    # -- the broadcast connection ----------------------------------------------------

    async def _supervise(self, first_attempt: asyncio.Future[None]) -> None:
        delay = self.reconnect_initial
        while True:
            try:
                await self._connect()
            except Exception as exc:
                log.warning(
                    "broadcast %s unreachable (%r); retrying in %.1fs",
                    self.broadcast_url,
                    exc,
                    delay,
                )
                await self._disconnect()
                if not first_attempt.done():
                    first_attempt.set_result(None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            if not first_attempt.done():
                first_attempt.set_result(None)
            connected_at = time.monotonic()
            # Announcements sent while we were away are gone: read the table instead.
            self._wake.set()
            reason = await self._watch()
            self.reconnects += 1
            log.warning("broadcast connection lost (%s); reconnecting", reason)
            await self._disconnect()
            if time.monotonic() - connected_at > self.reconnect_max:
                delay = self.reconnect_initial
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max)

    async def _connect(self) -> None:
        backend = make_backend(self.broadcast_url)
        broadcast = Broadcast(backend=backend)
        self._backend = backend
        self._generation += 1
        generation = self._generation
        self._broken.clear()
        # Set before connecting, so a failed attempt is torn down like a lost connection.
        self._broadcast = broadcast
        async with asyncio.timeout(self.health_timeout):
            await broadcast.connect()
        self._heartbeat_ready.clear()
        self._heartbeat_task = asyncio.create_task(
            self._listen(broadcast, generation, self._heartbeat_channel, None, None)
        )
        async with asyncio.timeout(self.health_timeout):
            await self._heartbeat_ready.wait()
        await self._ping(broadcast)
        for feed in self._feeds.values():
            self._open_channel(feed)
        self._up = True

    async def _disconnect(self) -> None:
        broadcast, backend = self._broadcast, self._backend
        self._broadcast = self._backend = None
        self._up = False
        self._broken.set()
        tasks = [*self._channel_tasks.values(), *self._stopping_channels.values()]
        if self._heartbeat_task is not None:
            tasks.append(self._heartbeat_task)
        self._channel_tasks.clear()
        self._stopping_channels.clear()
        self._heartbeat_task = None
        for feed in self._feeds.values():
            feed.listening = False
        for task in tasks:
            task.cancel()
        if tasks:
            # Unsubscribing on a dead connection can hang; do not wait for it forever.
            await asyncio.wait(tasks, timeout=self.health_timeout)
        for future in self._pings.values():
            future.cancel()
        if broadcast is None or backend is None:
            return
        try:
            async with asyncio.timeout(self.health_timeout):
                await broadcast.disconnect()
        except Exception:
            # Broadcast.disconnect re-raises its dead listener's error before closing
            # the backend; close the backend ourselves so no socket leaks.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.health_timeout):
                    await backend.disconnect()

    def _open_channel(self, feed: _Feed) -> None:
        broadcast = self._broadcast
        org = feed.organization_id
        if broadcast is None or self._broken.is_set() or org in self._channel_tasks:
            return
        previous = self._stopping_channels.pop(org, None)
        self._channel_tasks[org] = asyncio.create_task(
            self._listen(broadcast, self._generation, channel_for(org), feed, previous)
        )

    async def _listen(
        self,
        broadcast: Broadcast,
        generation: int,
        channel: str,
        feed: _Feed | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            async with broadcast.subscribe(channel) as subscriber:
                if feed is None:
                    self._heartbeat_ready.set()
                else:
                    feed.listening = True
                    # Anything announced before we listened was missed: read the table.
                    self._wake.set()
                while True:
                    message = (await subscriber.get()).message
                    if feed is None:
                        future = self._pings.get(message)
                        if future is not None and not future.done():
                            future.set_result(None)
                    else:
                        self._on_message(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(generation, f"subscription to {channel} ended: {exc!r}")
        finally:
            if feed is not None:
                feed.listening = False

    async def _watch(self) -> str:
        broadcast = self._broadcast
        assert broadcast is not None
        while True:
            try:
                await asyncio.wait_for(self._broken.wait(), self.health_interval)
                return self._broken_reason
            except TimeoutError:
                pass
            try:
                await self._ping(broadcast)
            except Exception as exc:
                return f"heartbeat failed: {exc!r}"

    async def _ping(self, broadcast: Broadcast) -> None:
        """A round trip through our own channel: proof that publish *and* listen work."""
        token = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[token] = future
        try:
            async with asyncio.timeout(self.health_timeout):
                await broadcast.publish(self._heartbeat_channel, token)
                await future
        except TimeoutError:
            raise TimeoutError(f"no heartbeat echo within {self.health_timeout}s") from None
        finally:
            self._pings.pop(token, None)

    def _fail(self, generation: int, reason: str) -> None:
        if generation == self._generation and not self._broken.is_set():
            self._up = False
            self._broken_reason = reason
            self._broken.set()
