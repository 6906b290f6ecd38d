"""A database that cannot be reached at all (refused connections, as when PostgreSQL has
run out of connection slots) answers coded 503 SERVICE_BUSY at every door — the read
connection a request opens first, the mutation path, readiness — never a bare 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.database import create_engine, create_sessionmaker
from tests.api.conftest import Api
from tests.world import World

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nothing"


@pytest.fixture
async def database_down(api: Api, world: World) -> AsyncIterator[Api]:
    state = api.state
    saved = (state.engine, state.read_engine, state.sessionmaker, state.read_sessionmaker)
    down = create_engine(UNREACHABLE)
    state.engine = state.read_engine = down
    state.sessionmaker = state.read_sessionmaker = create_sessionmaker(down)
    try:
        yield api
    finally:
        state.engine, state.read_engine, state.sessionmaker, state.read_sessionmaker = saved
        await down.dispose()


@pytest.mark.parametrize(
    "query",
    [
        "{ viewer { role } }",
        "{ invoices(first: 5) { nodes { number total { amount } } } }",
        'mutation { runBilling(asOf: "2026-08-15T09:00:00Z") { invoicesFinalized } }',
    ],
)
async def test_an_unreachable_database_is_service_busy_not_500(
    database_down: Api, world: World, query: str
) -> None:
    response = await database_down.client.post(
        "/graphql", json={"query": query},
        headers={"Authorization": f"Bearer {world.tokens['admin']}"},
    )  # fmt: skip
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after")
    body = response.json()
    assert body["errors"][0]["extensions"]["code"] == "SERVICE_BUSY"
    assert "password" not in response.text and "127.0.0.1:1" not in response.text


def test_out_of_connection_slots_is_busy() -> None:
    """PostgreSQL's "sorry, too many clients already" (SQLSTATE 53300), as asyncpg raises
    it and SQLAlchemy wraps it, reads as "not now"."""
    from asyncpg.exceptions import TooManyConnectionsError
    from sqlalchemy.exc import DBAPIError

    from app.database import busy_reason

    orig = TooManyConnectionsError("sorry, too many clients already")
    orig.sqlstate = "53300"  # type: ignore[attr-defined]
    wrapped = DBAPIError.instance("connect", None, orig, Exception)
    assert busy_reason(wrapped) is not None
    assert busy_reason(ValueError("not the database")) is None
