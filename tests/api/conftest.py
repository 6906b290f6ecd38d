"""A real server for API tests: uvicorn on a free loopback port, in the test's
event loop, sharing the test's database engine and movable clock."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from app.asgi import AppState, create_app
from app.settings import Settings
from services.clock import FixedClock
from tests.world import World, build_world

# A fresh signing secret per run: no value in the source tree signs a token here. Cost
# rate limits are off: a test's queries arrive far faster than any client's, so the
# buckets would refuse them on the wall clock; tests/api/test_rate_limits.py turns them
# on with small buckets on a clock of its own.
SETTINGS = Settings(
    worker_enabled=False,
    graphiql=True,
    token_secret=secrets.token_urlsafe(32),
    rate_limits=False,
)


@dataclass
class Api:
    url: str
    app: Starlette
    client: httpx.AsyncClient

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.deskbill
        return state

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        # 503 is SERVICE_BUSY: still a GraphQL answer with coded errors.
        assert response.status_code in (200, 400, 503), response.text
        body: dict[str, Any] = response.json()
        return body

    def count_selects(self) -> list[str]:
        """Start recording SELECT statements on every engine of the app."""
        seen: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                seen.append(statement)

        for engine in {self.state.engine, self.state.read_engine}:
            event.listen(engine.sync_engine, "before_cursor_execute", record)
        self._listeners = [(e, record) for e in {self.state.engine, self.state.read_engine}]
        return seen

    def stop_counting(self) -> None:
        for engine, fn in getattr(self, "_listeners", []):
            event.remove(engine.sync_engine, "before_cursor_execute", fn)


async def serve(app: Starlette) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Api]:
    app = create_app(SETTINGS, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url=url, app=app, client=client)


@pytest.fixture
async def world(api: Api) -> World:
    return await build_world(api.state.sessionmaker, SETTINGS)
