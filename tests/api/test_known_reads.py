"""Known reads (app/known_reads.py) over real servers, SQLite and PostgreSQL: a query
the compiled path answered once is answered again without Strawberry's execution,
and nothing about the answer changes — the same JSON as the Strawberry path (an app
with compiled reads off) for every role, the same coded errors for bad variables,
the same scoping for members and other tenants, a token whose user lost access
refused, the rate-limit buckets charged once per request, one statement and one
connection per request: the viewer kept from the token's previous request is
confirmed by the answer's own statement, and every change to the user, the
organization or a member's accounts is seen by the very next request.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.known_reads import KnownReads
from models import Organization, TeamMembership, User
from schema.ids import encode
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.api.test_compiled_reads import Q1, Q2, Q3, ROLES, _compiled, plain
from tests.world import World, add_many_invoices, build_world

__all__ = ["plain"]  # the reference app, a fixture of test_compiled_reads


def known(api: Api) -> KnownReads:
    found = api.state.services["known_reads"]
    assert isinstance(found, KnownReads)
    return found


async def post(api: Api, query: str, variables: dict[str, Any], token: str) -> httpx.Response:
    return await api.client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_a_repeated_read_answers_as_the_strawberry_path_in_one_statement(
    api: Api, plain: Api, world: World
) -> None:
    await add_many_invoices(api.state.sessionmaker, world, count=6)
    invoice = encode("Invoice", world.ids["due"])
    cases = [(Q1, {"id": invoice}), (Q2, {"first": 5}), (Q3, {"filter": {"status": ["DUE"]}})]
    for query, variables in cases:
        for role in ROLES:
            token = world.tokens[role]
            first = await post(api, query, variables, token)
            answered = known(api).answered
            seen = api.count_selects()
            again = await post(api, query, variables, token)
            api.stop_counting()
            reference = await post(plain, query, variables, token)
            assert known(api).answered == answered + 1, (query[:20], role)
            assert known(api).lane_answered == known(api).answered  # never via Strawberry
            assert again.status_code == first.status_code == 200
            assert again.json() == first.json() == reference.json(), (query[:20], role)
            # The answer, which also confirms the viewer kept from the first request.
            assert len(seen) == 1 and _compiled(seen) and "holds" in seen[0], seen
    # Other variables for a known document: still known, still the same answers.
    for first in (1, 3, 100):
        answered = known(api).answered
        fast = await post(api, Q2, {"first": first}, world.tokens["admin"])
        slow = await post(plain, Q2, {"first": first}, world.tokens["admin"])
        assert known(api).answered == answered + 1
        assert fast.json() == slow.json()


BAD_VARIABLES = [
    (Q2, {"first": 1000}),  # over the page size
    (Q2, {"first": -1}),
    (Q2, {"first": "ten"}),  # not an Int
    (Q2, {"after": "not a cursor"}),
    (Q1, {}),  # a required variable missing
    (Q1, {"id": "nope"}),  # not a global id
    (Q1, {"id": encode("Payment", 1)}),  # an id of another type
    (Q1, {"id": encode("Invoice", 99999999999999999999)}),  # beyond int64
    (Q3, {"filter": {"number": "INV\u0000"}}),  # a NUL
    (Q3, {"filter": {"status": ["NOT_A_STATUS"]}}),
    (Q3, {"filter": {"accountId": ["x"] * 1001}}),  # over the list bound
    (Q3, {"sort": {"field": "NUMBER", "direction": "SIDEWAYS"}}),
]


async def test_bad_variables_of_a_known_read_get_the_ordinary_coded_errors(
    api: Api, plain: Api, world: World
) -> None:
    token = world.tokens["admin"]
    for query, good in ((Q1, {"id": encode("Invoice", world.ids["due"])}), (Q2, {}), (Q3, {})):
        await post(api, query, good, token)
        await post(api, query, good, token)
    assert known(api).answered == 3
    for query, variables in BAD_VARIABLES:
        fast = await post(api, query, variables, token)
        slow = await post(plain, query, variables, token)
        assert fast.status_code == slow.status_code, variables
        body = fast.json()
        assert body == slow.json(), variables
        codes = {e["extensions"]["code"] for e in body["errors"]}
        assert codes and "INTERNAL_ERROR" not in codes, body
    assert known(api).answered == 3  # every one of them went down the ordinary path


async def test_scoping_holds_on_a_known_read(api: Api, plain: Api, world: World) -> None:
    alice = world.tokens["alice"]
    own = {"id": encode("Invoice", world.ids["due"])}
    await post(api, Q1, own, alice)
    mine = await post(api, Q1, own, alice)
    assert mine.json()["data"]["invoice"]["id"] == own["id"]
    # Known now: another member's invoice, and another tenant's, stay out of reach.
    for who, invoice in (("alice", "bob_invoice"), ("alice", "rival_invoice"),
                         ("mallory", "due"), ("rival_admin", "due")):  # fmt: skip
        variables = {"id": encode("Invoice", world.ids[invoice])}
        fast = await post(api, Q1, variables, world.tokens[who])
        slow = await post(plain, Q1, variables, world.tokens[who])
        assert fast.json() == slow.json()
        assert fast.json()["data"]["invoice"] is None, (who, invoice)
    # A user who loses access is refused at once, on the known path too.
    async with api.state.sessionmaker.begin() as session:
        await session.execute(
            update(User).where(User.id == world.ids["alice"]).values(active=False)
        )
    gone = await post(api, Q1, own, alice)
    assert gone.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert gone.json() == (await post(plain, Q1, own, alice)).json()


async def test_a_known_read_is_charged_once_and_refused_when_the_bucket_is_empty(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    limits = {"rate_limits": True, "cost_bucket_admin": 40, "cost_restore_admin": 0.001}
    app = create_app(replace(SETTINGS, **limits), engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            api = Api(url=url, app=app, client=client)
            world = await build_world(api.state.sessionmaker, SETTINGS)
            page = "query P($n: Int) { invoices(first: $n) { nodes { number } } }"
            include = {
                "Authorization": f"Bearer {world.tokens['admin']}",
                "X-Query-Cost": "include",
            }
            available = []
            for _ in range(3):  # 11 points each (a page of 10 and its list)
                answer = await client.post(
                    "/graphql", json={"query": page, "variables": {"n": 10}}, headers=include
                )
                assert answer.status_code == 200, answer.text
                cost = answer.json()["extensions"]["cost"]
                assert cost["requestedQueryCost"] == 11
                available.append(round(cost["throttleStatus"]["currentlyAvailable"]))
            assert known(api).answered == 2
            assert available == [29, 18, 7]  # once per request, the known ones too
            refused = await client.post(
                "/graphql", json={"query": page, "variables": {"n": 10}}, headers=include
            )
            assert refused.status_code == 429
            assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
            assert refused.headers["retry-after"]


async def test_every_change_behind_a_kept_viewer_is_seen_by_the_next_request(
    api: Api, plain: Api, world: World
) -> None:
    """Role, team membership, currency, deactivation: each one lands on the request
    right after it, on the known path exactly as on the Strawberry path."""
    team_invoice = {"id": encode("Invoice", world.ids["team_invoice"])}
    alice, admin = world.tokens["alice"], world.tokens["admin"]

    async def same(variables: dict[str, Any], token: str) -> dict[str, Any]:
        fast = await post(api, Q1, variables, token)
        slow = await post(plain, Q1, variables, token)
        assert fast.json() == slow.json()
        body: dict[str, Any] = fast.json()
        return body

    async def change(*statements: Any) -> None:
        async with api.state.sessionmaker.begin() as session:
            for statement in statements:
                await session.execute(statement)

    # Alice sees her team's invoice; the read is known and her viewer kept.
    for _ in range(2):
        assert (await same(team_invoice, alice))["data"]["invoice"]["id"] == team_invoice["id"]
    confirmed = known(api).viewers_confirmed
    assert confirmed >= 1
    # Off the team: the next request no longer sees its invoice.
    await change(delete(TeamMembership).where(TeamMembership.user_id == world.ids["alice"]))
    assert (await same(team_invoice, alice))["data"]["invoice"] is None
    # The kept viewer failed its check and was read again; the new one is kept and holds.
    assert (await same(team_invoice, alice))["data"]["invoice"] is None
    assert known(api).viewers_confirmed == confirmed + 1

    # An admin demoted to member sees only their own accounts (none) at once.
    for _ in range(2):
        assert (await same(team_invoice, admin))["data"]["invoice"] is not None
    await change(update(User).where(User.id == world.ids["admin"]).values(role="MEMBER"))
    assert (await same(team_invoice, admin))["data"]["invoice"] is None
    await change(update(User).where(User.id == world.ids["admin"]).values(role="ADMIN"))
    assert (await same(team_invoice, admin))["data"]["invoice"] is not None

    # A new currency (which the plan's money formatting reads from the viewer): the
    # kept viewer fails its check, is read again, and the one after is confirmed.
    await post(api, Q1, team_invoice, admin)
    confirmed = known(api).viewers_confirmed
    await change(
        update(Organization).where(Organization.id == world.ids["org"]).values(currency="EUR")
    )
    await same(team_invoice, admin)
    assert known(api).viewers_confirmed == confirmed
    await same(team_invoice, admin)
    assert known(api).viewers_confirmed == confirmed + 1

    # Deactivated: refused on the next request, with the ordinary refusal.
    await change(update(User).where(User.id == world.ids["admin"]).values(active=False))
    gone = await same(team_invoice, admin)
    assert gone["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_kept_viewer_is_only_used_by_a_known_read(api: Api, world: World) -> None:
    """Any other request reads the viewer itself, whatever was kept."""
    token = world.tokens["admin"]
    variables = {"id": encode("Invoice", world.ids["due"])}
    await post(api, Q1, variables, token)
    await post(api, Q1, variables, token)
    other = "query { invoices(first: 1) { totalCount } }"
    seen = api.count_selects()
    answer = await post(api, other, {}, token)
    api.stop_counting()
    assert answer.status_code == 200 and "errors" not in answer.json()
    assert "holds" not in seen[0] and "users" in seen[0], seen
