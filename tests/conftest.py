"""Fixtures shared by the whole suite: one engine per database per test session,
clean tables before each test, a movable clock.

Every test that takes ``db`` runs twice: on SQLite and on PostgreSQL. PostgreSQL is
found at ``DESKBILL_TEST_PG`` (default: the machine's local server); when it cannot be
reached the PostgreSQL half is skipped with the reason — unless ``CI=true``, where a
missing server fails the run. The suite creates its databases under a name of its
own per run (``deskbill_test_<pid>_<random>``, or ``DESKBILL_TEST_DATABASE``), so two
checkouts testing against one server keep apart, and drops them all at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import models
from app.database import create_engine, create_sessionmaker
from services.clock import FixedClock

PG_SERVER = os.environ.get("DESKBILL_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
PG_DATABASE = os.environ.get("DESKBILL_TEST_DATABASE") or (
    f"deskbill_test_{os.getpid()}_{secrets.token_hex(3)}"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ["sqlite", "postgresql"]


async def _ensure_pg_database() -> str:
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            found = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": PG_DATABASE}
            )
            if not found:
                await conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
    finally:
        await admin.dispose()
    return f"{PG_SERVER}/{PG_DATABASE}"


_engines: dict[str, AsyncEngine] = {}
_tmpdir = Path(tempfile.mkdtemp(prefix="deskbill-tests-"))


async def engine_for(backend: str) -> AsyncEngine:
    """One engine per backend for the whole run, with the schema built once."""
    if backend in _engines:
        return _engines[backend]
    if backend == "postgresql":
        try:
            url = await asyncio.wait_for(_ensure_pg_database(), timeout=10)
        except Exception as exc:  # any failure means "no server here"
            if IN_CI:
                pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {exc}")
            pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}: {exc}")
        engine = create_engine(url)
    else:
        engine = create_engine(f"sqlite+aiosqlite:///{_tmpdir / 'deskbill.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.drop_all)
        await conn.run_sync(models.Base.metadata.create_all)
    _engines[backend] = engine
    return engine


async def clean(engine: AsyncEngine) -> None:
    tables = list(reversed(models.Base.metadata.sorted_tables))
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                await conn.execute(table.delete())


@pytest.fixture(params=BACKENDS)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    eng = await engine_for(request.param)
    await clean(eng)
    yield eng


@pytest.fixture
async def db(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    """A session factory on a clean database (SQLite and PostgreSQL)."""
    return create_sessionmaker(engine)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 8, 15, 9, 0, tzinfo=UTC))


async def drop_run_databases() -> None:
    """Drop every database this run created: ``PG_DATABASE`` and those named after it."""
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with asyncio.timeout(60), admin.connect() as conn:
            names = await conn.scalars(
                text("SELECT datname FROM pg_database WHERE datname = :n OR datname LIKE :p"),
                {"n": PG_DATABASE, "p": PG_DATABASE.replace("_", r"\_") + r"\_%"},
            )
            for name in list(names):
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except Exception:
        pass  # no server, nothing was created
    finally:
        await admin.dispose()


@pytest.fixture(scope="session", autouse=True)
async def _dispose_engines() -> AsyncIterator[None]:
    yield
    for eng in _engines.values():
        await eng.dispose()
    await drop_run_databases()
