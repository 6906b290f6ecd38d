"""Browser clients on other origins, over real HTTP and websockets: CORS answers the
configured origins only (preflight and actual requests), with bearer tokens rather
than cookies (no ``Access-Control-Allow-Credentials``), and nothing at all by default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.settings import Settings
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, serve
from tests.e2e import PROTOCOL
from tests.world import World, build_world

ADMIN_APP = "https://admin.harbour.test"
STRANGER = "https://evil.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def server(
    engine: AsyncEngine, clock: FixedClock, env: dict[str, str]
) -> AsyncIterator[tuple[str, World]]:
    config = Settings.from_env(env, worker_enabled=False, token_secret=SETTINGS.token_secret)
    app = create_app(config, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        yield url, await build_world(app.state.deskbill.sessionmaker, config)


@pytest.fixture
async def with_cors(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[tuple[str, World]]:
    # Typed with a trailing slash, as people do: it still matches the browser's Origin.
    env = {"DESKBILL_CORS_ORIGINS": f"{ADMIN_APP}/, http://127.0.0.1:5173"}
    async for served in server(engine, clock, env):
        yield served


async def test_a_preflight_from_an_allowed_origin_is_answered(
    with_cors: tuple[str, World],
) -> None:
    async with httpx.AsyncClient(base_url=with_cors[0]) as client:
        answer = await client.options("/graphql", headers={"Origin": ADMIN_APP, **PREFLIGHT})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == ADMIN_APP
    assert "POST" in answer.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    # Bearer tokens, not cookies: the browser is never told to send credentials.
    assert "access-control-allow-credentials" not in answer.headers


async def test_an_allowed_origin_reads_the_answer_of_a_query_with_its_token(
    with_cors: tuple[str, World],
) -> None:
    url, world = with_cors
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.post(
            "/graphql",
            json={"query": "{ viewer { role } }"},
            headers={"Origin": ADMIN_APP, "Authorization": f"Bearer {world.tokens['admin']}"},
        )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ADMIN_APP
    assert answer.json() == {"data": {"viewer": {"role": "ADMIN"}}}


async def test_another_origin_gets_no_cors_headers(with_cors: tuple[str, World]) -> None:
    async with httpx.AsyncClient(base_url=with_cors[0]) as client:
        preflight = await client.options("/graphql", headers={"Origin": STRANGER, **PREFLIGHT})
        actual = await client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"Origin": STRANGER}
        )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    # The server still answers (CORS is the browser's rule), but no browser page on
    # that origin may read it.
    assert "access-control-allow-origin" not in actual.headers


async def test_without_configured_origins_there_is_no_cors_at_all(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    async for url, _ in server(engine, clock, {}):
        async with httpx.AsyncClient(base_url=url) as client:
            preflight = await client.options("/graphql", headers={"Origin": ADMIN_APP, **PREFLIGHT})
            actual = await client.post(
                "/graphql", json={"query": "{ __typename }"}, headers={"Origin": ADMIN_APP}
            )
        assert preflight.status_code == 405
        assert not any(h.startswith("access-control-") for h in preflight.headers)
        assert "access-control-allow-origin" not in actual.headers


async def test_websocket_handshakes_follow_the_same_origins(
    with_cors: tuple[str, World],
) -> None:
    url = with_cors[0].replace("http://", "ws://") + "/graphql"
    async with websockets.connect(
        url,
        origin=ADMIN_APP,  # type: ignore[arg-type]
        subprotocols=[PROTOCOL],  # type: ignore[list-item]
    ) as connection:
        assert connection.subprotocol == PROTOCOL
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            url,
            origin=STRANGER,  # type: ignore[arg-type]
            subprotocols=[PROTOCOL],  # type: ignore[list-item]
        ):
            pass
    assert refused.value.response.status_code == 403


def test_origins_are_read_from_a_comma_list() -> None:
    settings = Settings.from_env(
        {"DESKBILL_CORS_ORIGINS": " https://a.example/ ,http://127.0.0.1:5173,, "}
    )
    assert settings.cors_origins == ("https://a.example", "http://127.0.0.1:5173")
    assert Settings.from_env({}).cors_origins == ()
