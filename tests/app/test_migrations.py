"""The Alembic revisions build exactly the models, on both databases, and unwind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

import models
from app.cli import alembic_config
from tests.conftest import clean


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, models.Base.metadata))


def _tables(connection: Any) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def test_upgrade_matches_models_and_downgrade_removes_everything(engine: AsyncEngine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.drop_all)
        await conn.run_sync(lambda c: c.exec_driver_sql("DROP TABLE IF EXISTS alembic_version"))
    config = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert await conn.run_sync(_tables) == set(models.Base.metadata.tables)
        await asyncio.to_thread(command.downgrade, config, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(models.Base.metadata.drop_all)
            await conn.run_sync(lambda c: c.exec_driver_sql("DROP TABLE IF EXISTS alembic_version"))
            await conn.run_sync(models.Base.metadata.create_all)
        await clean(engine)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
