"""API keys over real HTTP and websockets, on SQLite and PostgreSQL: admins create,
list and revoke them; a key is stored only as a hash, reads with its own role,
works for CSV exports and subscriptions, stops on the request after its revocation,
and records its last use at most once a minute."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from models import ApiKey, Event
from services.clock import FixedClock
from tests.api.conftest import Api
from tests.e2e import GraphQLWS
from tests.world import World

CREATE = """mutation ($name: String!, $role: ApiKeyRole!) {
  createApiKey(name: $name, role: $role) {
    key apiKey { id name prefix role createdAt lastUsedAt revokedAt }
  }
}"""
LIST = "{ apiKeys { id name prefix role createdAt lastUsedAt revokedAt } }"
REVOKE = "mutation ($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"
WHO = """{ viewer { role user { id } organization { name } accounts { id } }
  invoices { totalCount } }"""


def _code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def _create(api: Api, token: str, name: str, role: str) -> dict[str, Any]:
    body = await api.gql(CREATE, {"name": name, "role": role}, token=token)
    assert "errors" not in body, body
    created: dict[str, Any] = body["data"]["createApiKey"]
    return created


async def test_an_admin_makes_a_key_that_reads_and_is_stored_only_as_a_hash(
    api: Api, world: World
) -> None:
    created = await _create(api, world.tokens["admin"], "Metabase", "ANALYST")
    key, meta = created["key"], created["apiKey"]
    scheme, prefix, secret = key.split("_", 2)
    assert (scheme, prefix) == ("dbk", meta["prefix"])
    assert len(secret) >= 40  # 256 random bits
    assert meta["role"] == "ANALYST" and meta["lastUsedAt"] is None and meta["revokedAt"] is None

    async with api.state.sessionmaker() as session:
        (row,) = await session.scalars(select(ApiKey))
        stored = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
        event = await session.scalar(select(Event).where(Event.type == "api_key.created"))
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in value for value in stored)
    assert event is not None and event.actor_user_id == world.ids["admin"]
    assert secret not in str(event.payload)

    listed = (await api.gql(LIST, token=world.tokens["admin"]))["data"]["apiKeys"]
    assert listed == [{**meta}]

    body = await api.gql(WHO, token=key)
    assert "errors" not in body, body
    assert body["data"]["viewer"]["role"] == "ANALYST"
    assert body["data"]["viewer"]["user"] is None  # a key is no person
    assert body["data"]["invoices"]["totalCount"] == 5  # the whole organization, not the rival's


async def test_an_analyst_key_only_reads(api: Api, world: World) -> None:
    key = (await _create(api, world.tokens["admin"], "BI", "ANALYST"))["key"]
    team = (await api.gql("{ accounts { nodes { id kind } } }", token=key))["data"]
    team_id = next(a["id"] for a in team["accounts"]["nodes"] if a["kind"] == "TEAM")
    autopay = "mutation ($id: ID!) { setAutopay(accountId: $id, enabled: false) { autopay } }"
    for query, variables in (
        (autopay, {"id": team_id}),
        (CREATE, {"name": "Another", "role": "ADMIN"}),
    ):
        body = await api.gql(query, variables, token=key)
        assert _code(body) == "FORBIDDEN", body
        assert "ANALYST" in body["errors"][0]["message"]
    assert _code(await api.gql(LIST, token=key)) == "FORBIDDEN"
    async with api.state.sessionmaker() as session:
        assert len(list(await session.scalars(select(ApiKey)))) == 1


async def test_an_admin_key_administers(api: Api, world: World) -> None:
    admin_key = (await _create(api, world.tokens["admin"], "Zapier", "ADMIN"))["key"]
    made = await _create(api, admin_key, "Made by a key", "ANALYST")
    body = await api.gql(REVOKE, {"id": made["apiKey"]["id"]}, token=admin_key)
    assert body["data"]["revokeApiKey"]["revokedAt"] is not None
    async with api.state.sessionmaker() as session:
        event = await session.scalar(select(Event).where(Event.type == "api_key.revoked"))
    assert (
        event is not None
        and event.actor_user_id is None
        and event.payload["name"] == ("Made by a key")
    )


async def test_only_admins_manage_keys_and_bad_input_changes_nothing(
    api: Api, world: World
) -> None:
    for who in ("analyst", "alice"):
        body = await api.gql(CREATE, {"name": "x", "role": "ANALYST"}, token=world.tokens[who])
        assert _code(body) == "FORBIDDEN"
        assert _code(await api.gql(LIST, token=world.tokens[who])) == "FORBIDDEN"
    await _create(api, world.tokens["admin"], "Metabase", "ANALYST")
    for variables, code in (
        ({"name": "  ", "role": "ANALYST"}, "VALIDATION"),
        ({"name": "Metabase", "role": "ADMIN"}, "CONFLICT"),
        ({"name": "Member key", "role": "MEMBER"}, "GRAPHQL_VALIDATION"),
    ):
        body = await api.gql(CREATE, variables, token=world.tokens["admin"])
        assert _code(body) == code, body
        assert body["errors"][0]["message"].endswith("."), body
    body = await api.gql(REVOKE, {"id": "not-an-id"}, token=world.tokens["admin"])
    assert _code(body) == "VALIDATION"
    # The rival's admin sees none of our keys and cannot revoke them.
    ours = (await api.gql(LIST, token=world.tokens["admin"]))["data"]["apiKeys"]
    assert (await api.gql(LIST, token=world.tokens["rival_admin"]))["data"]["apiKeys"] == []
    body = await api.gql(REVOKE, {"id": ours[0]["id"]}, token=world.tokens["rival_admin"])
    assert _code(body) == "NOT_FOUND"
    async with api.state.sessionmaker() as session:
        rows = list(await session.scalars(select(ApiKey)))
        created = list(await session.scalars(select(Event).where(Event.type.like("api_key.%"))))
    assert [(r.name, r.revoked_at) for r in rows] == [("Metabase", None)]
    assert len(created) == 1


async def test_revocation_is_effective_on_the_next_request(api: Api, world: World) -> None:
    created = await _create(api, world.tokens["admin"], "Metabase", "ANALYST")
    key = created["key"]
    assert "errors" not in await api.gql(WHO, token=key)
    body = await api.gql(REVOKE, {"id": created["apiKey"]["id"]}, token=world.tokens["admin"])
    assert body["data"]["revokeApiKey"]["revokedAt"] is not None
    refused = await api.gql(WHO, token=key)
    assert _code(refused) == "UNAUTHENTICATED"
    assert "revoked" in refused["errors"][0]["message"]
    export = await api.client.get(
        "/exports/invoices.csv", headers={"Authorization": f"Bearer {key}"}
    )
    assert export.status_code == 401 and "revoked" in export.json()["error"]
    # Revoking again changes nothing.
    again = await api.gql(REVOKE, {"id": created["apiKey"]["id"]}, token=world.tokens["admin"])
    assert again["data"]["revokeApiKey"] == body["data"]["revokeApiKey"]


async def test_a_key_with_a_wrong_secret_or_an_unknown_prefix_is_refused(
    api: Api, world: World
) -> None:
    key = (await _create(api, world.tokens["admin"], "Metabase", "ANALYST"))["key"]
    scheme, prefix, secret = key.split("_", 2)
    for forged in (
        f"{scheme}_{prefix}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",
        f"{scheme}_000000000000_{secret}",
        f"{scheme}_{prefix}_",
    ):
        body = await api.gql(WHO, token=forged)
        assert _code(body) == "UNAUTHENTICATED", forged


async def test_a_key_exports_csv_and_subscribes(api: Api, world: World) -> None:
    key = (await _create(api, world.tokens["admin"], "Warehouse", "ANALYST"))["key"]
    response = await api.client.get(
        "/exports/invoices.csv", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    assert len(response.text.strip().splitlines()) == 1 + 5  # header and the org's invoices

    async with GraphQLWS.connect(api.url, key) as client:
        operation = await client.subscribe("subscription { events { type } }")
        created = await _create(api, world.tokens["admin"], "Another", "ANALYST")
        (first,) = await client.results(operation, 1)
    assert first["events"]["type"] == "api_key.created"
    assert created["apiKey"]["name"] == "Another"


async def test_last_use_is_recorded_at_most_once_a_minute(
    api: Api, world: World, clock: FixedClock
) -> None:
    key = (await _create(api, world.tokens["admin"], "Metabase", "ANALYST"))["key"]
    writes: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and "api_keys" in statement:
            writes.append(statement)

    from sqlalchemy import event

    engines = {api.state.engine, api.state.read_engine}
    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        first_use = clock.now()
        for _ in range(5):
            assert "errors" not in await api.gql(WHO, token=key)
            clock.advance(timedelta(seconds=10))
        assert len(writes) == 1
        listed = (await api.gql(LIST, token=world.tokens["admin"]))["data"]["apiKeys"]
        assert listed[0]["lastUsedAt"] == first_use.isoformat()

        clock.advance(timedelta(seconds=15))  # 65 s after the first use
        assert "errors" not in await api.gql(WHO, token=key)
        assert len(writes) == 2
        listed = (await api.gql(LIST, token=world.tokens["admin"]))["data"]["apiKeys"]
        assert listed[0]["lastUsedAt"] == clock.now().isoformat()
    finally:
        for engine in engines:
            event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_revoking_a_key_closes_its_open_subscription(api: Api, world: World) -> None:
    created = await _create(api, world.tokens["admin"], "Dashboard", "ANALYST")
    async with GraphQLWS.connect(api.url, created["key"]) as client:
        await client.subscribe("subscription { events { type } }")
        body = await api.gql(REVOKE, {"id": created["apiKey"]["id"]}, token=world.tokens["admin"])
        assert "errors" not in body, body
        closed = await client.closed()
    assert closed.code == 4403
    assert "revoked" in closed.reason


async def test_a_busy_key_row_does_not_refuse_the_request(
    api: Api, world: World, clock: FixedClock
) -> None:
    """Recording the last use is best effort: with the key's row locked by another
    transaction, the request waits out the lock timeout and is answered anyway."""
    from sqlalchemy import text

    key = (await _create(api, world.tokens["admin"], "Metabase", "ANALYST"))["key"]
    assert "errors" not in await api.gql(WHO, token=key)
    clock.advance(timedelta(minutes=5))  # the next use is due to be recorded
    async with api.state.engine.connect() as holder:
        if api.state.engine.dialect.name == "postgresql":
            await holder.execute(text("SELECT id FROM api_keys FOR UPDATE"))
        else:
            await holder.execute(text("UPDATE api_keys SET name = name"))  # the write lock
        body = await api.gql(WHO, token=key)
        await holder.rollback()
    assert "errors" not in body, body
    assert body["data"]["viewer"]["role"] == "ANALYST"
