"""Cost rate limits over a real server (SQLite and PostgreSQL): a caller whose bucket
cannot pay gets 429 ``RATE_LIMITED`` with the cost, what is available and
``Retry-After``; nothing runs; the bucket refills with the clock the test moves;
colleagues and other tenants are unaffected; ``X-Query-Cost: include`` reports the
cost and the buckets' state, on the compiled read path too."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.database import create_sessionmaker
from app.ratelimit import CostBuckets
from models import Account
from schema.ids import encode
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.app.test_ratelimit import Ticker
from tests.world import World, build_world

PAGE = "{ invoices(first: 10) { nodes { number } } }"  # cost 11
RENAME = """mutation ($id: ID!, $name: String!) {
  updateAccount(accountId: $id, input: {name: $name}) { name } }"""  # cost 1
LIMITS = {
    "rate_limits": True,
    "cost_bucket_analyst": 25,
    "cost_restore_analyst": 1.0,
    "cost_bucket_admin": 25,
    "cost_restore_admin": 1.0,
    "cost_bucket_organization": 1_000,
    "cost_restore_organization": 10.0,
}


@contextlib.asynccontextmanager
async def limited(
    engine: AsyncEngine, clock: FixedClock, **settings: Any
) -> AsyncIterator[tuple[Api, World, Ticker]]:
    """A server with small buckets on a clock of the test's."""
    app = create_app(
        dataclasses.replace(SETTINGS, **{**LIMITS, **settings}),
        engine=engine,
        clock=clock,
        start_worker=False,
    )
    ticker = Ticker()
    buckets: CostBuckets = app.state.deskbill.services["cost_buckets"]
    buckets.clock = ticker
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            api = Api(url=url, app=app, client=client)
            world = await build_world(api.state.sessionmaker, SETTINGS)
            yield api, world, ticker


async def post(api: Api, token: str, query: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    body = {"query": query, **kw}
    return await api.client.post("/graphql", json=body, headers=headers)


async def test_an_empty_bucket_answers_429_with_the_cost_and_retry_after(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    async with limited(engine, clock) as (api, world, ticker):
        analyst = world.tokens["analyst"]
        for _ in range(2):  # 25 points: two pages of cost 11
            answered = await post(api, analyst, PAGE)
            assert answered.status_code == 200 and "errors" not in answered.json()
        seen = api.count_selects()
        refused = await post(api, analyst, PAGE)
        api.stop_counting()
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "8"  # 8 points missing at 1 a second
        body = refused.json()
        assert body.get("data") is None
        (error,) = body["errors"]
        assert error["extensions"] == {
            "code": "RATE_LIMITED",
            "cost": 11,
            "available": 3,
            "bucket": "your own bucket",
            "retryAfter": 8,
        }
        assert "11 points" in error["message"] and "8 seconds" in error["message"]
        # Refused before anything ran: no statement read an invoice.
        assert not [s for s in seen if "FROM invoices" in s], seen

        # The bucket refills with the clock: 7 seconds are not enough, 8 are.
        ticker.seconds += 7
        assert (await post(api, analyst, PAGE)).status_code == 429
        ticker.seconds += 1
        again = await post(api, analyst, PAGE)
        assert again.status_code == 200 and len(again.json()["data"]["invoices"]["nodes"]) > 0


async def test_colleagues_and_other_tenants_are_unaffected(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    async with limited(engine, clock) as (api, world, _ticker):
        await post(api, world.tokens["analyst"], PAGE)
        await post(api, world.tokens["analyst"], PAGE)
        assert (await post(api, world.tokens["analyst"], PAGE)).status_code == 429
        for colleague in ("admin", "rival_admin"):
            response = await post(api, world.tokens[colleague], PAGE)
            assert response.status_code == 200, (colleague, response.text)
            assert "errors" not in response.json()


async def test_a_refused_mutation_writes_nothing_and_is_never_a_500(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    async with limited(engine, clock, cost_bucket_admin=12) as (api, world, _ticker):
        admin = world.tokens["admin"]
        assert (await post(api, admin, PAGE)).status_code == 200  # 1 point left
        bob = encode("Account", world.ids["bob_account"])
        assert (await post(api, admin, PAGE)).status_code == 429
        renamed = await post(api, admin, RENAME, variables={"id": bob, "name": "Bob One"})
        assert renamed.json()["data"] == {"updateAccount": {"name": "Bob One"}}, renamed.text
        refused = await post(api, admin, RENAME, variables={"id": bob, "name": "Bob Two"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    async with create_sessionmaker(engine)() as session:
        name = await session.scalar(
            select(Account.name).where(Account.id == world.ids["bob_account"])
        )
    assert name == "Bob One"


async def test_a_query_over_the_bucket_is_too_complex_not_rate_limited(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    # A page of 30 costs 31, more than a 25-point bucket can ever hold: waiting would
    # not help, so the answer is the cost refusal naming the bucket's size.
    async with limited(engine, clock) as (api, world, _ticker):
        response = await post(api, world.tokens["analyst"], PAGE.replace("10", "30"))
        assert response.status_code == 200
        (error,) = response.json()["errors"]
        assert error["extensions"] == {"code": "QUERY_TOO_COMPLEX", "cost": 31, "limit": 25}


async def test_the_cost_and_the_buckets_state_are_reported_on_request(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    async with limited(engine, clock) as (api, world, ticker):
        admin = world.tokens["admin"]
        plain = await post(api, admin, PAGE)
        assert "extensions" not in plain.json()  # opt-in: ordinary answers unchanged
        include = {"X-Query-Cost": "include"}
        seen = api.count_selects()
        # The compiled read path (one statement) and the resolver path both report.
        compiled = await post(api, admin, PAGE, headers=include)
        api.stop_counting()
        assert compiled.status_code == 200
        body = compiled.json()
        assert body["data"] == plain.json()["data"]
        assert body["extensions"] == {
            "cost": {
                "requestedQueryCost": 11,
                "throttleStatus": {
                    "maximumAvailable": 25,
                    "currentlyAvailable": 3,
                    "restoreRate": 1.0,
                },
                "organizationThrottleStatus": {
                    "maximumAvailable": 1_000,
                    "currentlyAvailable": 1_000 - 22,
                    "restoreRate": 10.0,
                },
            }
        }
        assert len([s for s in seen if "FROM invoices" in s]) == 1, seen
        ticker.seconds += 100
        resolved = await post(api, admin, "{ viewer { role } }", headers=include)
        assert resolved.json()["data"] == {"viewer": {"role": "ADMIN"}}
        cost = resolved.json()["extensions"]["cost"]
        assert cost["requestedQueryCost"] == 1
        assert cost["throttleStatus"]["currentlyAvailable"] == 24
