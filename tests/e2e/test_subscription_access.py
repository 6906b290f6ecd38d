"""Subscriptions keep access current, over a real websocket against a running uvicorn,
on SQLite and PostgreSQL.

The token is accepted in every form clients send it (connection_init payload in any
header case, Apollo's ``connectionParams.headers``, the upgrade request's header); a
refusal closes with a reason a person can act on. While the connection is open the
server re-checks the token every few seconds and at its expiry: a member removed from
a team or a demoted admin stops hearing what is no longer theirs, a deactivated user
is closed with 4403 and an expired token with 4401. A database out of reach closes a
new connection with 1013 (try again later) and leaves open ones as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import websockets
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.asgi import create_app
from app.database import create_engine, create_sessionmaker
from models import TeamMembership, User
from services.clock import SystemClock
from tests.api import conftest as api_fixtures
from tests.api.conftest import Api, serve
from tests.e2e import GUARD, PROTOCOL, GraphQLWS, free_port
from tests.e2e.test_subscriptions import gid, listening, record_payment_as_admin
from tests.world import NOW, World, build_world

api = api_fixtures.api
world = api_fixtures.world

VIEWER = "{ viewer { role user { email } } }"
PAYMENTS = """
subscription { events(filter: {types: ["payment.created"]}) { accountId paymentId } }"""
REMOVE_TEAM_MEMBER = """
mutation ($teamId: ID!, $userId: ID!) { removeTeamMember(teamId: $teamId, userId: $userId) { id } }
"""


@contextlib.asynccontextmanager
async def raw_socket(url: str, **options: Any) -> AsyncIterator[GraphQLWS]:
    """A graphql-transport-ws connection before connection_init, so a test sends it."""
    ws_url = url.replace("http://", "ws://", 1) + "/graphql"
    async with websockets.connect(ws_url, subprotocols=[PROTOCOL], **options) as connection:  # type: ignore[list-item]
        yield GraphQLWS(connection)


async def who_is_connected(client: GraphQLWS) -> str:
    operation = await client.subscribe(VIEWER)
    (data,) = await client.results(operation, 1)
    email: str = data["viewer"]["user"]["email"]
    return email


async def test_the_token_is_accepted_in_every_documented_form(api: Api, world: World) -> None:
    token = world.tokens["alice"]
    forms: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"authorization": f"Bearer {token}"}, {}),
        ({"Authorization": f"Bearer {token}"}, {}),
        ({"token": token}, {}),
        # Apollo's connectionParams: {headers: {...}}, in any header case.
        ({"headers": {"Authorization": f"Bearer {token}"}}, {}),
        ({"headers": {"authorization": f"bearer {token}"}}, {}),
        # The Python gql client: the token on the HTTP upgrade request, init empty.
        ({}, {"Authorization": f"Bearer {token}"}),
    ]
    for payload, headers in forms:
        async with raw_socket(api.url, additional_headers=headers) as client:
            await client.init(payload)
            assert await who_is_connected(client) == "alice@harbour.test", (payload, headers)


async def test_a_refused_token_closes_with_a_reason_to_act_on(api: Api, world: World) -> None:
    expired = jwt.decode(world.tokens["alice"], options={"verify_signature": False})
    expired["exp"] = expired["iat"] - 60
    expired_token = jwt.encode(expired, api_fixtures.SETTINGS.token_secret, algorithm="HS256")
    cases: list[tuple[dict[str, Any], dict[str, str], str]] = [
        ({}, {}, "connection_init"),  # how to send one
        ({"headers": {}}, {}, "connection_init"),
        ({"authorization": f"Basic {world.tokens['alice']}"}, {}, "Bearer"),
        ({"authorization": 42}, {}, "string"),
        ({"authorization": f"Bearer {expired_token}"}, {}, "expired"),
        ({}, {"Authorization": "Bearer not-a-token"}, "not valid"),
    ]
    for payload, headers, words in cases:
        async with raw_socket(api.url, additional_headers=headers) as client:
            await client._send({"type": "connection_init", "payload": payload})
            closed = await client.closed()
        assert closed.code == 4403, (payload, closed)
        assert words in closed.reason, (payload, closed.reason)


async def heard_before_marker(
    api: Api, world: World, client: GraphQLWS, operation: str, invoice: str, marker: str
) -> bool:
    """One round: an admin pays 0.01 on ``invoice``, then on ``marker`` (an invoice the
    client keeps hearing). Whether the first payment was delivered before the marker's."""
    first = await record_payment_as_admin(api, world, invoice, "0.01")
    last = await record_payment_as_admin(api, world, marker, "0.01")
    heard = []
    while last not in heard:
        (data,) = await client.results(operation, 1)
        heard.append(data["events"]["paymentId"])
    return first in heard


async def until_unheard(
    api: Api, world: World, client: GraphQLWS, operation: str, invoice: str, marker: str
) -> None:
    """Rounds until payments on ``invoice`` are no longer delivered (the server's next
    re-check of the connection), then more rounds to show it stays so."""
    async with asyncio.timeout(GUARD):
        while await heard_before_marker(api, world, client, operation, invoice, marker):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    for _ in range(2):
        assert not await heard_before_marker(api, world, client, operation, invoice, marker)


async def set_user(api: Api, email: str, **values: object) -> int:
    """Change a user row as an operator would; the user's id."""
    async with api.state.sessionmaker.begin() as session:
        user_id = await session.scalar(select(User.id).where(User.email == email))
        assert user_id is not None
        await session.execute(update(User).where(User.id == user_id).values(**values))
    return user_id


async def test_a_member_removed_from_a_team_stops_hearing_its_events(
    api: Api, world: World
) -> None:
    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as alice:
        # Everything alice may see: her own invoice (the marker) and her team's.
        operation = await alice.subscribe(PAYMENTS)
        await listening(api, world, 1)
        assert await heard_before_marker(api, world, alice, operation, "team_invoice", "due")

        body = await api.gql(
            REMOVE_TEAM_MEMBER,
            {
                "teamId": gid("Account", world.ids["team"]),
                "userId": gid("User", world.ids["alice"]),
            },
            token=world.tokens["admin"],
        )
        assert "errors" not in body, body
        # The subscription goes on (her own payments keep coming), without the team's.
        await until_unheard(api, world, alice, operation, "team_invoice", "due")


async def test_a_demoted_analyst_stops_hearing_accounts_outside_its_team(
    api: Api, world: World
) -> None:
    async with GraphQLWS.connect(api.url, world.tokens["analyst"]) as watcher:
        operation = await watcher.subscribe(PAYMENTS)
        await listening(api, world, 1)
        assert await heard_before_marker(api, world, watcher, operation, "due", "team_invoice")

        # Made a member of the team only: alice's account goes quiet, the team's stays.
        analyst = await set_user(api, "analyst@harbour.test", role="MEMBER")
        async with api.state.sessionmaker.begin() as session:
            session.add(
                TeamMembership(
                    organization_id=world.ids["org"], team_account_id=world.ids["team"],
                    user_id=analyst, created_at=NOW,
                )
            )  # fmt: skip
        await until_unheard(api, world, watcher, operation, "due", "team_invoice")


async def test_a_deactivated_user_is_closed_with_4403(api: Api, world: World) -> None:
    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as alice:
        await alice.subscribe(PAYMENTS)
        await listening(api, world, 1)
        await set_user(api, "alice@harbour.test", active=False)
        closed = await alice.closed()
    assert closed.code == 4403
    assert closed.reason == "The user of this token no longer has access."


async def test_a_token_expiring_while_subscribed_closes_with_4401_at_its_expiry(
    engine: AsyncEngine,
) -> None:
    # The real clock, and re-checks far apart: only the expiry itself can close it.
    settings = dataclasses.replace(api_fixtures.SETTINGS, ws_recheck_seconds=300.0)
    app = create_app(settings, engine=engine, clock=SystemClock(), start_worker=False)
    async for url in serve(app):
        world = await build_world(app.state.deskbill.sessionmaker, settings)
        claims = jwt.decode(world.tokens["alice"], options={"verify_signature": False})
        claims["exp"] = int(time.time()) + 4
        short = jwt.encode(claims, settings.token_secret, algorithm="HS256")
        async with GraphQLWS.connect(url, short) as alice:
            assert await who_is_connected(alice) == "alice@harbour.test"
            await alice.subscribe(PAYMENTS)
            closed = await alice.closed()
        assert time.time() >= claims["exp"]
        assert closed.code == 4401
        assert "expired" in closed.reason


@pytest.fixture
async def unreachable_database() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a PostgreSQL port where nothing listens: every connect is refused."""
    dead = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    yield create_sessionmaker(dead)
    await dead.dispose()


async def test_a_token_that_cannot_be_checked_just_now_closes_with_try_again(
    api: Api,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    unreachable_database: async_sessionmaker[AsyncSession],
) -> None:
    monkeypatch.setattr(api.state, "read_sessionmaker", unreachable_database)
    async with raw_socket(api.url) as client:
        await client._send(
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {world.tokens['alice']}"},
            }
        )
        closed = await client.closed()
    assert closed.code == 1013  # WebSocket "Try Again Later": clients reconnect
    assert "connect again" in closed.reason
    monkeypatch.undo()
    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as alice:
        assert await who_is_connected(alice) == "alice@harbour.test"


async def test_a_re_check_that_cannot_reach_the_database_keeps_the_connection(
    api: Api,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    unreachable_database: async_sessionmaker[AsyncSession],
) -> None:
    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as alice:
        operation = await alice.subscribe(PAYMENTS)
        await listening(api, world, 1)
        monkeypatch.setattr(api.state, "read_sessionmaker", unreachable_database)
        async with asyncio.timeout(GUARD):
            while "re-checking a websocket's access failed" not in caplog.text:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        monkeypatch.undo()
        # Still open, still delivering.
        paid = await record_payment_as_admin(api, world, "due", "0.01")
        (data,) = await alice.results(operation, 1)
        assert data["events"]["paymentId"] == paid
