"""Tenancy and roles: nobody reads across organizations, members read only their own
accounts and teams, and a missing or bad token is UNAUTHENTICATED (rules §1)."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from schema.ids import encode
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api
from tests.world import World

ROOT_LISTS = {
    "invoices": "invoices { nodes { id account { id } } }",
    "creditNotes": "creditNotes { nodes { id account { id } } }",
    "invoiceItems": "invoiceItems { nodes { id invoice { account { id } } } }",
    "payments": "payments { nodes { id account { id } } }",
    "refunds": "refunds { nodes { id account { id } } }",
    "accounts": "accounts { nodes { id } }",
    "bookings": "bookings { nodes { id account { id } } }",
    "events": "events { nodes { id accountId } }",
}


def _account_ids(field: str, data: dict) -> set[str]:
    found = set()
    for node in data[field]["nodes"]:
        if field == "accounts":
            found.add(node["id"])
        elif field == "invoiceItems":
            found.add(node["invoice"]["account"]["id"])
        elif field == "events":
            if node["accountId"]:
                found.add(node["accountId"])
        else:
            found.add(node["account"]["id"])
    return found


@pytest.mark.parametrize("field", list(ROOT_LISTS))
async def test_member_sees_only_own_and_team_accounts(api: Api, world: World, field: str) -> None:
    body = await api.gql("{ " + ROOT_LISTS[field] + " }", token=world.tokens["alice"])
    assert "errors" not in body, body
    visible = {encode("Account", world.ids["alice_account"]), encode("Account", world.ids["team"])}
    assert _account_ids(field, body["data"]) <= visible


@pytest.mark.parametrize("field", list(ROOT_LISTS))
async def test_other_organization_sees_none_of_ours(api: Api, world: World, field: str) -> None:
    body = await api.gql("{ " + ROOT_LISTS[field] + " }", token=world.tokens["rival_admin"])
    assert "errors" not in body, body
    ours = {encode("Account", world.ids[k]) for k in ("alice_account", "bob_account", "team")}
    assert not (_account_ids(field, body["data"]) & ours)


async def test_member_lists_exactly_its_invoices(api: Api, world: World) -> None:
    body = await api.gql("{ invoices { nodes { number } } creditNotes { nodes { number } } }",
                         token=world.tokens["alice"])  # fmt: skip
    assert sorted(n["number"] for n in body["data"]["invoices"]["nodes"]) == [
        "INV-000001", "INV-000002", "INV-000003",
    ]  # fmt: skip
    assert [n["number"] for n in body["data"]["creditNotes"]["nodes"]] == ["CN-000001"]
    bob = await api.gql("{ invoices { nodes { number } } }", token=world.tokens["bob"])
    assert sorted(str(n["number"]) for n in bob["data"]["invoices"]["nodes"]) == [
        "INV-000004", "None",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("type_name", "key", "token"),
    [
        ("Invoice", "rival_invoice", "admin"),  # another organization
        ("Invoice", "bob_invoice", "alice"),  # another member
        ("Account", "bob_account", "alice"),
        ("Account", "alice_account", "rival_admin"),
        ("CreditNote", "credit_note", "bob"),
        ("CreditNote", "credit_note", "mallory"),
        ("Payment", "card", "bob"),
        ("Payment", "cash", "rival_admin"),
        ("User", "alice", "bob"),
        ("User", "admin", "rival_admin"),
        ("Organization", "org", "rival_admin"),
    ],
)
async def test_node_hides_what_the_caller_may_not_see(
    api: Api, world: World, type_name: str, key: str, token: str
) -> None:
    gid = encode(type_name, world.ids[key])
    body = await api.gql("query($id: ID!) { node(id: $id) { id } }", {"id": gid},
                         token=world.tokens[token])  # fmt: skip
    assert body["data"]["node"] is None, body


async def test_invoice_by_id_across_tenants_is_null(api: Api, world: World) -> None:
    gid = encode("Invoice", world.ids["rival_invoice"])
    body = await api.gql("query($id: ID!) { invoice(id: $id) { id } }", {"id": gid},
                         token=world.tokens["admin"])  # fmt: skip
    assert body["data"]["invoice"] is None
    own = await api.gql("query($id: ID!) { invoice(id: $id) { number } }",
                        {"id": encode("Invoice", world.ids["due"])},
                        token=world.tokens["alice"])  # fmt: skip
    assert own["data"]["invoice"] == {"number": "INV-000002"}


async def test_filtering_by_a_foreign_account_returns_nothing(api: Api, world: World) -> None:
    body = await api.gql(
        "query($a: [ID!]) { invoices(filter: {accountId: $a}) { nodes { id } } }",
        {"a": [encode("Account", world.ids["bob_account"])]},
        token=world.tokens["alice"],
    )
    assert body["data"]["invoices"]["nodes"] == []


def _forged(secret: str) -> str:
    return jwt.encode({"sub": "1", "org": 1, "iss": "deskbill", "exp": 4102444800}, secret)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "Sign in"),
        ("Bearer not-a-jwt", "not valid"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer " + _forged("someone-elses-secret-0123456789abcdef"), "not valid"),
    ],
)
async def test_missing_or_bad_tokens_are_unauthenticated(
    api: Api, world: World, header: str | None, reason: str
) -> None:
    headers = {"Authorization": header} if header else {}
    response = await api.client.post("/graphql", json={"query": "{ invoices { nodes { id } } }"},
                                     headers=headers)  # fmt: skip
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert reason in error["message"]


async def test_expired_token_is_unauthenticated(api: Api, world: World, clock: FixedClock) -> None:
    clock.advance(timedelta(hours=SETTINGS.token_ttl_hours + 1))
    body = await api.gql("{ viewer { role } }", token=world.tokens["admin"])
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "expired" in body["errors"][0]["message"]


async def test_a_token_for_a_user_of_another_org_claiming_ours_is_refused(
    api: Api, world: World
) -> None:
    claims = {"sub": str(world.ids["alice"]), "org": world.ids["rival"], "iss": "deskbill",
              "exp": 4102444800}  # fmt: skip
    token = jwt.encode(claims, SETTINGS.token_secret)
    body = await api.gql("{ viewer { role } }", token=token)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_analyst_reads_everything_in_its_organization(api: Api, world: World) -> None:
    body = await api.gql("{ invoices { totalCount } }", token=world.tokens["analyst"])
    assert body["data"]["invoices"]["totalCount"] == 5


async def test_tokens_follow_the_servers_clock_not_the_wall_clock(
    api: Api, world: World, clock: FixedClock
) -> None:
    from datetime import UTC, datetime

    from app.auth import issue_token
    from models import User

    clock.set(datetime(2031, 1, 1, tzinfo=UTC))
    async with api.state.sessionmaker() as session:
        admin = await session.get(User, world.ids["admin"])
    assert admin is not None
    token = issue_token(SETTINGS, admin, clock.now())  # issued "in the future"
    body = await api.gql("{ viewer { role } }", token=token)
    assert body["data"] == {"viewer": {"role": "ADMIN"}}
