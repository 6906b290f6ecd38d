"""Alembic environment: runs revisions over the async engine of either database."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import models
from app.database import create_engine
from app.settings import DatabaseLimits, Settings, async_database_url

config = context.config
target_metadata = models.Base.metadata


def _url() -> str:
    from_x = context.get_x_argument(as_dictionary=True).get("url")
    return async_database_url(
        from_x or config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    # A revision may rewrite a large table: no statement deadline, but still no endless
    # wait for a lock the running service holds.
    engine = create_engine(_url(), immediate=False, limits=DatabaseLimits(statement_timeout_ms=0))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    existing = config.attributes.get("connection")
    if existing is not None:
        _run(existing)
    else:
        asyncio.run(_run_async())
