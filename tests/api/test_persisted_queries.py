"""Persisted queries over real HTTP: Apollo's automatic persisted queries protocol (hash
first, ``PersistedQueryNotFound``, then the document with its hash registers it), a hash
that does not match its document, the bounded store, and the allow-list mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.persisted import PersistedQueries, document_hash
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.world import World, build_world

VIEWER = "query Me { viewer { role } }"


def _apq(digest: str, query: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": digest}},
    }
    if query is not None:
        body["query"] = query
    return body


async def _post(client: httpx.AsyncClient, body: dict[str, Any], token: str) -> httpx.Response:
    return await client.post("/graphql", json=body, headers={"Authorization": f"Bearer {token}"})


async def test_the_apollo_protocol_registers_then_runs_by_hash(api: Api, world: World) -> None:
    token = world.tokens["admin"]
    digest = document_hash(VIEWER)
    first = await _post(api.client, _apq(digest), token)
    assert first.status_code == 200
    assert first.json()["errors"][0]["message"] == "PersistedQueryNotFound"
    assert first.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"

    registered = await _post(api.client, _apq(digest, VIEWER), token)
    assert registered.json() == {"data": {"viewer": {"role": "ADMIN"}}}
    by_hash = await _post(api.client, _apq(digest.upper()), token)
    assert by_hash.json() == {"data": {"viewer": {"role": "ADMIN"}}}
    # The document runs with the caller's own rights: a member's token sees a member.
    member = await _post(api.client, _apq(digest), world.tokens["alice"])
    assert member.json() == {"data": {"viewer": {"role": "MEMBER"}}}


async def test_a_hash_that_is_not_the_documents_is_refused(api: Api, world: World) -> None:
    token = world.tokens["admin"]
    wrong = await _post(api.client, _apq("0" * 64, VIEWER), token)
    assert wrong.status_code == 400
    assert wrong.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_HASH_MISMATCH"
    # Nothing was registered under that hash.
    again = await _post(api.client, _apq("0" * 64), token)
    assert again.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    for bad in ("xyz", "g" * 64, 5):
        refused = await _post(api.client, _apq(bad), token)  # type: ignore[arg-type]
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["extensions"]["code"] == "VALIDATION"
    version = await api.client.post(
        "/graphql", json={"extensions": {"persistedQuery": {"version": 2, "sha256Hash": "0"}}}
    )
    assert version.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_SUPPORTED"


def test_the_store_is_bounded() -> None:
    store = PersistedQueries("auto", size=3)
    documents = [f"{{ viewer {{ role }} }} # {n}" for n in range(5)]
    for document in documents:
        store.register(document_hash(document), document)
    assert len(store) == 3
    assert store.lookup(document_hash(documents[0])) is None
    assert store.lookup(document_hash(documents[4])) == documents[4]


@pytest.fixture
async def only_api(
    engine: AsyncEngine, clock: FixedClock, tmp_path: Path
) -> AsyncIterator[tuple[Api, World]]:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({document_hash(VIEWER): VIEWER}))
    settings = type(SETTINGS)(
        **{**SETTINGS.__dict__, "persisted_queries": "only",
           "persisted_queries_file": str(manifest)}
    )  # fmt: skip
    app = create_app(settings, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            api = Api(url=url, app=app, client=client)
            yield api, await build_world(api.state.sessionmaker, settings)


async def test_only_mode_runs_the_manifest_alone(only_api: tuple[Api, World]) -> None:
    api, world = only_api
    token = world.tokens["admin"]
    by_hash = await _post(api.client, _apq(document_hash(VIEWER)), token)
    assert by_hash.json() == {"data": {"viewer": {"role": "ADMIN"}}}
    in_full = await _post(api.client, {"query": VIEWER}, token)
    assert in_full.json() == {"data": {"viewer": {"role": "ADMIN"}}}

    other = "{ viewer { role user { email } } }"
    refused = await _post(api.client, {"query": other}, token)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_REQUIRED"
    # Nor can a client register one at run time.
    register = await _post(api.client, _apq(document_hash(other), other), token)
    assert register.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_REQUIRED"
    unknown = await _post(api.client, _apq(document_hash(other)), token)
    assert unknown.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


def test_a_manifest_whose_keys_lie_is_refused_at_start(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"0" * 64: VIEWER}))
    with pytest.raises(ValueError, match="does not hash to its key"):
        PersistedQueries.from_file("only", str(manifest))
    with pytest.raises(ValueError, match="mode must be one of"):
        PersistedQueries("sometimes")
