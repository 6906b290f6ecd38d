"""Safe defaults (rules §12): bounded queries, no GET, coded and masked errors."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.world import World


async def test_over_deep_queries_are_refused(api: Api, world: World) -> None:
    inner = "account { id }"
    for _ in range(7):
        inner = f"lines {{ invoice {{ {inner} }} }}"
    deep = f"{{ invoices {{ nodes {{ {inner} }} }} }}"
    body = await api.gql(deep, token=world.tokens["admin"])
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION"
    assert "depth" in body["errors"][0]["message"]
    assert body.get("data") is None


async def test_syntax_errors_are_coded(api: Api, world: World) -> None:
    body = await api.gql("{ viewer { ", token=world.tokens["admin"])
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION"
    assert "Syntax Error" in body["errors"][0]["message"]


async def test_too_many_aliases_are_refused(api: Api, world: World) -> None:
    query = "{ " + " ".join(f"a{i}: viewer {{ role }}" for i in range(40)) + " }"
    body = await api.gql(query, token=world.tokens["admin"])
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION"
    assert "aliases" in body["errors"][0]["message"]


async def test_too_many_tokens_are_refused(api: Api, world: World) -> None:
    query = "{ viewer { " + " ".join(["role"] * 5000) + " } }"
    body = await api.gql(query, token=world.tokens["admin"])
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION"
    assert "token" in body["errors"][0]["message"].lower()


async def test_oversized_pages_are_refused(api: Api, world: World) -> None:
    body = await api.gql("{ invoices(first: 101) { nodes { id } } }", token=world.tokens["admin"])
    error = body["errors"][0]
    assert error["extensions"]["code"] == "VALIDATION"
    assert "between 1 and 100" in error["message"]


async def test_a_forged_cursor_is_a_validation_error(api: Api, world: World) -> None:
    body = await api.gql('{ invoices(after: "bm9wZQ") { nodes { id } } }',
                         token=world.tokens["admin"])  # fmt: skip
    assert body["errors"][0]["extensions"]["code"] == "VALIDATION"


async def test_queries_over_get_are_refused(api: Api, world: World) -> None:
    response = await api.client.get(
        "/graphql", params={"query": "{ viewer { role } }"},
        headers={"Authorization": f"Bearer {world.tokens['admin']}", "Accept": "application/json"},
    )  # fmt: skip
    assert response.status_code in (400, 405)
    assert "role" not in response.text


async def test_unexpected_errors_are_masked(api: Api, world: World, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from resolvers import mapping

    def explode(row: object) -> object:
        raise RuntimeError("SELECT secret FROM /etc/passwd line 42")

    monkeypatch.setattr(mapping, "organization", explode)
    body = await api.gql("{ organization { name } }", token=world.tokens["admin"])
    error = body["errors"][0]
    assert error["extensions"]["code"] == "INTERNAL_ERROR"
    assert set(error["extensions"]) == {"code", "requestId"}  # the id of the logged line
    assert "secret" not in str(body) and "passwd" not in str(body)
    assert "Traceback" not in str(body)


async def test_graphiql_is_served(api: Api) -> None:
    response = await api.client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


async def test_healthz(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.json() == {"status": "ok"}
