"""What keeping websocket access current costs: N open graphql-transport-ws connections
(one live subscription each) on a uvicorn in this process re-check their tokens every
``--recheck`` seconds. Reported per window: re-checks per second, SELECT statements per
second on the app's engines, and the duration of one re-check (the app's whole
authentication: token, user, team memberships), p50 and p95.

    .venv/bin/python bench/ws_recheck.py                  # 100,500 connections, SQLite
    .venv/bin/python bench/ws_recheck.py 100 --postgres postgresql://postgres@127.0.0.1:5432

``--postgres SERVER_URL`` uses and rebuilds its own database ``deskbill_bench_ws_recheck``
(dropped at the end); the default is a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # ``tests`` is not part of the installed distribution

from sqlalchemy import event, text  # noqa: E402

import models  # noqa: E402
from app.asgi import DeskbillGraphQL, create_app  # noqa: E402
from app.database import create_engine  # noqa: E402
from app.settings import Settings  # noqa: E402
from services.clock import FixedClock  # noqa: E402
from tests.api.conftest import serve  # noqa: E402
from tests.e2e import GraphQLWS  # noqa: E402
from tests.world import NOW, build_world  # noqa: E402

SUBSCRIPTION = "subscription { events { cursor } }"
DATABASE = "deskbill_bench_ws_recheck"


@contextlib.asynccontextmanager
async def database(postgres: str | None) -> AsyncIterator[str]:
    if postgres is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        return
    server = postgres.replace("postgresql://", "postgresql+asyncpg://", 1)
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    try:
        yield f"{server}/{DATABASE}"
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        await admin.dispose()


async def run(count: int, url: str, recheck: float, window: float) -> dict[str, float]:
    settings = Settings(
        database_url=url,
        worker_enabled=False,
        ws_recheck_seconds=recheck,
        token_secret=secrets.token_urlsafe(32),
    )
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.drop_all)
        await conn.run_sync(models.Base.metadata.create_all)
    # The world's tokens are valid at its moment.
    app = create_app(settings, engine=engine, clock=FixedClock(NOW), start_worker=False)
    durations: list[float] = []
    original = DeskbillGraphQL._authenticate

    async def timed(
        self: DeskbillGraphQL, context: Any, token: str, connection: Any = None
    ) -> None:
        started = time.perf_counter()
        await original(self, context, token, connection)
        durations.append(time.perf_counter() - started)

    selects = 0

    def count_select(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal selects
        if statement.lstrip().upper().startswith("SELECT"):
            selects += 1

    DeskbillGraphQL._authenticate = timed  # type: ignore[method-assign]
    try:
        async for server in serve(app):
            state = app.state.deskbill
            world = await build_world(state.sessionmaker, settings)
            async with contextlib.AsyncExitStack() as stack:
                for n in range(count):
                    member = ("alice", "bob", "admin")[n % 3]
                    client = await stack.enter_async_context(
                        GraphQLWS.connect(server, world.tokens[member])
                    )
                    await client.subscribe(SUBSCRIPTION)
                await asyncio.sleep(recheck * 1.5)  # let the first re-checks spread out
                for e in {state.engine, state.read_engine}:
                    event.listen(e.sync_engine, "before_cursor_execute", count_select)
                durations.clear()
                started = time.perf_counter()
                await asyncio.sleep(window)
                elapsed = time.perf_counter() - started
                measured = sorted(durations)
                for e in {state.engine, state.read_engine}:
                    event.remove(e.sync_engine, "before_cursor_execute", count_select)
    finally:
        DeskbillGraphQL._authenticate = original  # type: ignore[method-assign]
        await engine.dispose()
    return {
        "connections": count,
        "rechecks_per_s": len(measured) / elapsed,
        "selects_per_s": selects / elapsed,
        "p50_ms": statistics.median(measured) * 1000 if measured else 0.0,
        "p95_ms": measured[int(len(measured) * 0.95)] * 1000 if measured else 0.0,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("counts", nargs="?", default="100,500")
    parser.add_argument("--postgres", default=None)
    parser.add_argument("--recheck", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    print("| connections | re-checks/s | SELECTs/s | re-check p50 ms | p95 ms |")
    print("|---|---|---|---|---|")
    async with database(args.postgres) as url:
        for count in (int(c) for c in args.counts.split(",")):
            r = await run(count, url, args.recheck, args.window)
            print(
                f"| {count} | {r['rechecks_per_s']:.1f} | {r['selects_per_s']:.1f} "
                f"| {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
