"""The known-read lane in front of the application (app/asgi.py ``KnownReadLane``),
over real servers: a known read answered there still has everything the stack gives
every request — its request id, its count and time in the HTTP metrics (once), the
body bound and coded refusals — and what the lane does not answer (the first time a
read is seen, a browser's request when CORS is on, a persisted query) goes through
the stack and is answered exactly as before, counted once too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import DeskbillApp, KnownReadLane, create_app
from app.settings import Settings
from schema.ids import encode
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.api.test_compiled_reads import Q1
from tests.api.test_known_reads import known
from tests.world import World, build_world

ADMIN_APP = "https://admin.harbour.test"


def lane(api: Api) -> KnownReadLane:
    assert isinstance(api.app, DeskbillApp) and api.app.lane is not None
    return api.app.lane


async def graphql_posts(api: Api) -> tuple[float, float]:
    """Requests counted for POST /graphql with status 200, and latencies observed."""
    response = await api.client.get("/metrics")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    ok = (("method", "POST"), ("route", "/graphql"), ("status", "200"))
    timed = (("route", "/graphql"),)
    return (
        samples.get(("deskbill_http_requests_total", ok), 0.0),
        samples.get(("deskbill_http_request_seconds_count", timed), 0.0),
    )


async def read(api: Api, world: World, **headers: str) -> httpx.Response:
    variables = {"id": encode("Invoice", world.ids["due"])}
    return await api.client.post(
        "/graphql",
        json={"query": Q1, "variables": variables},
        headers={"Authorization": f"Bearer {world.tokens['admin']}", **headers},
    )


async def test_a_known_read_is_answered_in_front_with_its_id_and_counted_once(
    api: Api, world: World
) -> None:
    before = await graphql_posts(api)
    first = await read(api, world)  # not known yet: through the stack, then learnt
    assert lane(api).answered == 0
    again = await read(api, world, **{"X-Request-Id": "lb-77.a"})
    assert lane(api).answered == 1 and known(api).lane_answered == 1
    assert again.status_code == first.status_code == 200
    assert again.json() == first.json() and again.json()["data"]["invoice"]["number"]
    assert again.headers["x-request-id"] == "lb-77.a"
    assert first.headers["x-request-id"] and first.headers["x-request-id"] != "lb-77.a"
    after = await graphql_posts(api)
    # One count and one latency per request, whichever way it was answered.
    assert (after[0] - before[0], after[1] - before[1]) == (2, 2)


async def test_a_known_read_over_the_body_bound_is_refused_coded(api: Api, world: World) -> None:
    await read(api, world)
    padding = "x" * (SETTINGS.max_body_bytes + 1)
    variables: dict[str, Any] = {"id": encode("Invoice", world.ids["due"]), "pad": padding}
    refused = await api.client.post(
        "/graphql",
        json={"query": Q1, "variables": variables},
        headers={"Authorization": f"Bearer {world.tokens['admin']}"},
    )
    assert refused.status_code == 413, refused.text
    assert refused.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert refused.headers["x-request-id"]
    assert lane(api).answered == 0


async def test_a_token_refused_on_a_known_read_gets_the_ordinary_coded_error(
    api: Api, world: World
) -> None:
    await read(api, world)
    await read(api, world)
    variables = {"id": encode("Invoice", world.ids["due"])}
    refused = await api.client.post(
        "/graphql",
        json={"query": Q1, "variables": variables},
        headers={"Authorization": "Bearer not-a-token"},
    )
    body = refused.json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
    assert lane(api).answered == 1


@pytest.fixture
async def with_cors(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Api]:
    config = Settings.from_env(
        {"DESKBILL_CORS_ORIGINS": ADMIN_APP},
        worker_enabled=False,
        token_secret=SETTINGS.token_secret,
        rate_limits=False,
    )
    app = create_app(config, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url=url, app=app, client=client)


async def test_a_browsers_known_read_goes_through_the_stack_for_its_cors_headers(
    with_cors: Api,
) -> None:
    api = with_cors
    world = await build_world(api.state.sessionmaker, SETTINGS)
    await read(api, world, Origin=ADMIN_APP)
    answered = known(api).answered
    again = await read(api, world, Origin=ADMIN_APP)
    assert again.status_code == 200 and again.json()["data"]["invoice"]["number"]
    assert again.headers["access-control-allow-origin"] == ADMIN_APP
    # Still a known read (answered without Strawberry), only not in front of the stack.
    assert known(api).answered == answered + 1 and lane(api).answered == 0
    # Without an Origin (a server or the mobile app) the same read takes the lane.
    await read(api, world)
    assert lane(api).answered == 1
