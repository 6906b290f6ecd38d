"""A page's statement kept for the same viewer and arguments (PostgreSQL,
``resolvers.compiled.roots._memo``): the kept statement reads fresh rows every time,
is never shared between viewers or arguments, and pages after a cursor are built each
time — the answers stay those of the Strawberry path.
"""

from __future__ import annotations

import pytest

from resolvers.compiled import roots
from tests.api.conftest import Api
from tests.api.test_compiled_reads import Q2, Q3
from tests.api.test_known_reads import post
from tests.world import World, add_many_invoices


@pytest.fixture(autouse=True)
def postgresql_only(api: Api) -> None:
    if api.state.engine.dialect.name != "postgresql":
        pytest.skip("pages' statements are kept on PostgreSQL only")
    roots._memo.clear()


async def test_a_kept_page_statement_reads_fresh_rows(api: Api, world: World) -> None:
    token = world.tokens["admin"]
    await post(api, Q2, {"first": 100}, token)  # through Strawberry, then known
    first = await post(api, Q2, {"first": 100}, token)  # known: checks its kept viewer
    kept = len(roots._memo)
    assert kept == 2  # one statement each way
    await add_many_invoices(api.state.sessionmaker, world, count=2)
    again = await post(api, Q2, {"first": 100}, token)
    assert len(roots._memo) == kept  # the same statement, not a new one
    before, after = first.json()["data"]["invoices"], again.json()["data"]["invoices"]
    assert after["totalCount"] == before["totalCount"] + 2
    assert len(after["nodes"]) == len(before["nodes"]) + 2


async def test_viewers_and_arguments_get_statements_of_their_own(api: Api, world: World) -> None:
    asked = [
        (Q2, {"first": 100}, "admin"),
        (Q2, {"first": 100}, "alice"),
        (Q3, {"filter": {"status": ["DUE"]}}, "admin"),
        (Q3, {"filter": {"status": ["PAID"]}}, "admin"),
    ]
    for query, variables, role in asked:  # through Strawberry, then as known reads
        await post(api, query, variables, world.tokens[role])
    admin, alice, due, paid = [await post(api, q, v, world.tokens[r]) for q, v, r in asked]
    kept = len(roots._memo)
    assert kept >= 4
    # Asked again, each gets its own answer back from its own statement, not another's.
    for (query, variables, role), answer in zip(asked, (admin, alice, due, paid), strict=True):
        assert (await post(api, query, variables, world.tokens[role])).json() == answer.json()
    assert len(roots._memo) == kept
    counts = [a.json()["data"]["invoices"]["totalCount"] for a in (admin, alice)]
    assert counts[1] < counts[0]  # a member sees only her accounts
    for answer, status in ((due, "DUE"), (paid, "PAID")):
        edges = answer.json()["data"]["invoices"]["edges"]
        assert edges and {e["node"]["status"] for e in edges} == {status}


async def test_pages_after_a_cursor_are_not_kept(api: Api, world: World) -> None:
    await add_many_invoices(api.state.sessionmaker, world, count=4)
    token = world.tokens["admin"]
    first = await post(api, Q2, {"first": 2}, token)
    cursor = first.json()["data"]["invoices"]["pageInfo"]["endCursor"]
    kept = len(roots._memo)
    for _ in range(3):
        second = await post(api, Q2, {"first": 2, "after": cursor}, token)
    assert len(roots._memo) == kept
    ids = {n["id"] for n in first.json()["data"]["invoices"]["nodes"]}
    assert ids.isdisjoint(n["id"] for n in second.json()["data"]["invoices"]["nodes"])
