"""Deadlines on every database connection, a bounded pool that gives up at once,
and recovery from connections the server ended — without a ping per checkout.

PostgreSQL is where these matter (the production database); SQLite only bounds
its busy timeout, which is checked too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import busy_reason, create_engine
from app.settings import DatabaseLimits, Settings
from tests.conftest import engine_for

LIMITS = DatabaseLimits(
    statement_timeout_ms=1500,
    lock_timeout_ms=300,
    idle_in_transaction_timeout_ms=4000,
    pool_size=2,
    max_overflow=0,
    pool_timeout_seconds=0.2,
)


def url_of(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
async def pg() -> AsyncIterator[AsyncEngine]:
    """A private engine with tight limits on the suite's PostgreSQL database."""
    shared = await engine_for("postgresql")
    engine = create_engine(url_of(shared), limits=LIMITS)
    yield engine
    await engine.dispose()


def test_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DESKBILL_DB_STATEMENT_TIMEOUT_MS": "900",
            "DESKBILL_DB_LOCK_TIMEOUT_MS": "250",
            "DESKBILL_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "7000",
            "DESKBILL_DB_POOL_SIZE": "3",
            "DESKBILL_DB_MAX_OVERFLOW": "1",
            "DESKBILL_DB_POOL_TIMEOUT": "0.5",
        }
    )
    assert settings.database_limits == DatabaseLimits(900, 250, 7000, 3, 1, 0.5)
    assert Settings.from_env({}).database_limits == DatabaseLimits()


async def test_every_postgresql_connection_carries_the_deadlines(pg: AsyncEngine) -> None:
    async with pg.connect() as conn:
        shown = {
            name: await conn.scalar(text(f"SHOW {name}"))
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        }
    assert shown == {
        "statement_timeout": "1500ms",
        "lock_timeout": "300ms",
        "idle_in_transaction_session_timeout": "4s",
    }


async def test_a_statement_past_its_deadline_is_stopped_with_a_sentence(pg: AsyncEngine) -> None:
    async with pg.connect() as conn:
        with pytest.raises(exc.DBAPIError) as raised:
            await conn.execute(text("SELECT pg_sleep(30)"))
    assert "time limit" in (busy_reason(raised.value) or "")


async def test_an_exhausted_pool_gives_up_instead_of_queueing(pg: AsyncEngine) -> None:
    async with pg.connect() as one, pg.connect() as two:
        await one.execute(text("SELECT 1"))
        await two.execute(text("SELECT 1"))
        with pytest.raises(exc.TimeoutError) as raised:
            async with pg.connect() as three:
                await three.execute(text("SELECT 1"))
    assert "busy" in (busy_reason(raised.value) or "")
    async with pg.connect() as again:  # and the pool serves again once freed
        assert await again.scalar(text("SELECT 1")) == 1


async def test_a_lock_held_elsewhere_fails_within_lock_timeout(pg: AsyncEngine) -> None:
    name = f"lock_probe_{id(pg)}"
    async with pg.begin() as setup:
        await setup.execute(text(f"CREATE TABLE {name} (id int primary key)"))
        await setup.execute(text(f"INSERT INTO {name} VALUES (1)"))
    try:
        async with pg.connect() as holder, pg.connect() as waiter:
            await holder.execute(text(f"SELECT * FROM {name} WHERE id = 1 FOR UPDATE"))
            with pytest.raises(exc.DBAPIError) as raised:
                await waiter.execute(text(f"SELECT * FROM {name} WHERE id = 1 FOR UPDATE"))
            assert "holding this record" in (busy_reason(raised.value) or "")
            await holder.rollback()
    finally:
        async with pg.begin() as teardown:
            await teardown.execute(text(f"DROP TABLE {name}"))


async def terminate(engine: AsyncEngine, pids: set[int]) -> None:
    admin = create_engine(url_of(engine), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            for pid in pids:
                await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        await admin.dispose()


async def test_no_ping_per_checkout_yet_terminated_backends_are_replaced(pg: AsyncEngine) -> None:
    assert not pg.pool._pre_ping  # type: ignore[attr-defined]
    async with pg.connect() as one, pg.connect() as two:
        pids = {await one.scalar(text("SELECT pg_backend_pid()")),
                await two.scalar(text("SELECT pg_backend_pid()"))}  # fmt: skip
    await terminate(pg, pids)
    await asyncio.sleep(0.2)  # let the driver read the server's goodbye
    # Both pooled connections are dead; checkouts notice for free and reconnect.
    async with pg.connect() as one, pg.connect() as two:
        fresh = {await one.scalar(text("SELECT pg_backend_pid()")),
                 await two.scalar(text("SELECT pg_backend_pid()"))}  # fmt: skip
    assert not fresh & pids


async def test_a_backend_terminated_mid_use_fails_that_statement_only(pg: AsyncEngine) -> None:
    async with pg.connect() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        sleeper = asyncio.ensure_future(conn.execute(text("SELECT pg_sleep(1)")))
        await asyncio.sleep(0.3)
        await terminate(pg, {pid})
        with pytest.raises(exc.DBAPIError) as raised:
            await sleeper
    assert "lost" in (busy_reason(raised.value) or "")
    async with pg.connect() as conn:
        assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid


async def test_sqlite_waits_for_its_write_lock_a_bounded_time(tmp_path: object) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/busy.db", limits=LIMITS)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("PRAGMA busy_timeout")) == 1500
    finally:
        await engine.dispose()
