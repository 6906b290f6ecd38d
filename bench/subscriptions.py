"""Subscriptions fan-out on one process: latency from commit to every subscriber, memory
per subscription, and database queries per announcement.

For each subscriber count N: N subscriptions follow one organization through an
``EventHub``; then, one at a time, an event row is inserted and committed, announced,
and timed until every subscriber has yielded it. Memory per subscription is measured
with tracemalloc in a separate phase (tracing slows everything, so it is off while
latency is measured). ``--naive`` runs the design the hub replaces, where every
subscriber re-reads the table on every announcement, to show the query storm.

    .venv/bin/python bench/subscriptions.py                      # 100,1000,5000 on SQLite
    .venv/bin/python bench/subscriptions.py 100,1000 --naive
    .venv/bin/python bench/subscriptions.py --postgres postgresql://postgres@127.0.0.1:5432
    .venv/bin/python bench/subscriptions.py --broadcast redis://127.0.0.1:6379

Every run stops by itself: each N has a time budget (``--budget``), after which it is
reported as incomplete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import models
from app.database import create_engine, create_sessionmaker
from app.realtime import EventHub
from models import Event, Organization

NOW = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


@dataclass
class Result:
    mode: str
    subscribers: int
    events: int
    latencies: list[float]
    bytes_per_subscription: float
    queries_per_event: float
    complete: bool

    def row(self) -> str:
        def ms(q: float) -> str:
            if not self.latencies:
                return "-"
            return f"{_quantile(self.latencies, q) * 1000:.1f}"

        note = "" if self.complete else " (budget hit)"
        return (
            f"| {self.mode} | {self.subscribers} | {self.events}{note} | {ms(0.50)} | "
            f"{ms(0.95)} | {ms(0.99)} | {self.bytes_per_subscription / 1024:.1f} | "
            f"{self.queries_per_event:.1f} |"
        )


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class QueryCounter:
    """Counts SELECTs: what delivery costs the database (the inserts are the same in
    every mode)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        sa_event.listen(engine.sync_engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.count += 1


BENCH_DATABASE = "deskbill_bench_subscriptions"


async def fresh_database(server: str | None) -> tuple[AsyncEngine, Sessions, int]:
    """A database of the bench's own, rebuilt empty: a SQLite file, or a PostgreSQL
    database named ``BENCH_DATABASE`` on ``server`` (created if missing)."""
    if server is None:
        path = Path(tempfile.mkdtemp(prefix="deskbill-bench-")) / "bench.db"
        url = f"sqlite+aiosqlite:///{path}"
    else:
        admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": BENCH_DATABASE},
            )
            if not exists:
                await conn.execute(text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
        await admin.dispose()
        url = f"{server}/{BENCH_DATABASE}"
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.drop_all)
        await conn.run_sync(models.Base.metadata.create_all)
    db = create_sessionmaker(engine)
    async with db() as session:
        org = Organization(name="bench", slug="bench", currency="EUR", created_at=NOW)
        session.add(org)
        await session.commit()
    return engine, db, org.id


async def insert_event(db: Sessions, org: int) -> int:
    async with db() as session:
        row = Event(organization_id=org, type="invoice.status_changed", payload={}, created_at=NOW)
        session.add(row)
        await session.commit()
        return row.id


class Tracker:
    """Send times per event id and how many subscribers have yielded each."""

    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self.sent: dict[int, float] = {}
        self.seen: dict[int, int] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.latencies: list[float] = []
        self.record = True

    def expect(self, event_id: int, at: float) -> asyncio.Event:
        self.sent[event_id] = at
        return self.done.setdefault(event_id, asyncio.Event())

    def received(self, event_id: int) -> None:
        now = time.perf_counter()
        if self.record and event_id in self.sent:
            self.latencies.append(now - self.sent[event_id])
        count = self.seen.get(event_id, 0) + 1
        self.seen[event_id] = count
        if count == self.subscribers:
            self.done.setdefault(event_id, asyncio.Event()).set()


async def consume(stream: AsyncIterator[Event], tracker: Tracker) -> None:
    async for row in stream:
        tracker.received(row.id)


# -- the design the hub replaces: every subscriber reads the table itself ---------------


class NaiveHub:
    """Each subscriber waits for an announcement, then runs its own query."""

    def __init__(self, db: Sessions) -> None:
        self.db = db
        self.changed = asyncio.Event()

    async def announce(self, organization_id: int, event_id: int) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def subscribe(self, organization_id: int, after: int) -> AsyncIterator[Event]:
        cursor = after
        while True:
            changed = self.changed
            async with self.db() as session:
                rows = list(
                    await session.scalars(
                        select(Event)
                        .where(Event.organization_id == organization_id, Event.id > cursor)
                        .order_by(Event.id)
                        .limit(500)
                    )
                )
            for row in rows:
                cursor = row.id
                yield row
            if not rows:
                await changed.wait()


# -- one measurement -------------------------------------------------------------------


async def measure(n: int, events: int, args: argparse.Namespace, naive: bool) -> Result:
    engine, db, org = await fresh_database(args.postgres)
    queries = QueryCounter(engine)
    tracker = Tracker(n)
    hub: Any = NaiveHub(db) if naive else EventHub(args.broadcast, db, poll_interval=60.0)
    if not naive:
        await hub.start()
    tasks: list[asyncio.Task[None]] = []
    complete = True
    per_subscription = 0.0
    delivered = 0
    try:
        async with asyncio.timeout(args.budget):
            gc.collect()
            tracemalloc.start()
            baseline = tracemalloc.get_traced_memory()[0]
            tasks = [asyncio.create_task(consume(hub.subscribe(org, 0), tracker)) for _ in range(n)]
            # Warm-up event: every subscription has started and is parked, waiting.
            tracker.record = False
            warm = await insert_event(db, org)
            done = tracker.expect(warm, time.perf_counter())
            await hub.announce(org, warm)
            await done.wait()
            gc.collect()
            per_subscription = (tracemalloc.get_traced_memory()[0] - baseline) / n
            tracemalloc.stop()

            tracker.record = True
            queries.count = 0
            for _ in range(events):
                sent = time.perf_counter()
                event_id = await insert_event(db, org)
                done = tracker.expect(event_id, sent)
                await hub.announce(org, event_id)
                await done.wait()
                delivered += 1
    except TimeoutError:
        complete = False
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not naive:
            await hub.stop()
        await engine.dispose()
    qpe = queries.count / delivered if delivered else float("nan")
    return Result(
        mode="naive" if naive else "hub",
        subscribers=n,
        events=delivered,
        latencies=tracker.latencies,
        bytes_per_subscription=per_subscription,
        queries_per_event=qpe,
        complete=complete,
    )


def machine() -> str:
    python = platform.python_version()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {python}"


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="?", default="100,1000,5000")
    parser.add_argument("--events", type=int, default=50, help="timed events per run")
    parser.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        default=None,
        help=f"use database {BENCH_DATABASE} on this server (default: a fresh SQLite file)",
    )
    parser.add_argument("--broadcast", default="memory://")
    parser.add_argument("--naive", action="store_true", help="also run the per-subscriber reads")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per run")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]

    database = "SQLite (file, WAL)" if args.postgres is None else "PostgreSQL (local)"
    print(f"# {machine()}; database {database}; broadcast {args.broadcast}")
    print("| mode | subscribers | events | p50 ms | p95 ms | p99 ms | KiB/sub | SELECTs/event |")
    print("|---|---|---|---|---|---|---|---|")
    modes = [False, True] if args.naive else [False]
    for n in counts:
        for naive in modes:
            result = await measure(n, args.events, args, naive)
            print(result.row(), flush=True)


def run(entry: Callable[[], Any]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(entry())


if __name__ == "__main__":
    run(main)
