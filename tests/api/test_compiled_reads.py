"""The compiled read path answers exactly as the Strawberry path does.

Two real servers share one database: the app as shipped (compiled reads on) and the
same app with ``compiled_reads=False``. The same requests — fixed queries and a few
hundred randomized selections with aliases, fragments, variables and @skip/@include,
as admin, analyst, two members and another tenant's admin and member — must come
back as identical JSON from both, on SQLite and PostgreSQL. Every request meant for
the compiled path is also checked to have been answered by it (its statement builds
JSON in SQL), so a silent fall-back cannot pass for agreement.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from schema.ids import encode
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.world import World, add_many_invoices

ROLES = ["admin", "analyst", "alice", "bob", "rival_admin", "mallory"]


@pytest.fixture
async def plain(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Api]:
    """The same app with the compiled path switched off: the reference answers."""
    app = create_app(replace(SETTINGS, compiled_reads=False), engine=engine, clock=clock,
                     start_worker=False)  # fmt: skip
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url=url, app=app, client=client)


def _compiled(statements: list[str]) -> bool:
    return any("json_build_object" in s or "json_object" in s for s in statements)


async def _both(
    api: Api, plain: Api, query: str, variables: dict[str, Any], token: str
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    seen = api.count_selects()
    try:
        fast = await api.gql(query, variables, token=token)
    finally:
        api.stop_counting()
    slow = await plain.gql(query, variables, token=token)
    return fast, slow, seen


Q1 = """query Q1($id: ID!) { invoice(id: $id) {
  id number status dueDate issueDate createdAt finalizedAt paidAt documentType currency documentUrl
  account { id name kind email active autopay hasPaymentMethod createdAt }
  lines { id kind description quantity unitPrice { amount } amount { amount currency }
          tax { amount } total { amount formatted } periodStart createdAt }
  payments { id amount { amount formatted } appliedAmount { amount } refundedAmount { amount }
             refundableAmount { amount } status type method attempt note receivedOn
             gatewayPaymentIntentId createdAt succeededAt }
  subtotal { amount } tax { amount } total { amount currency formatted }
  amountPaid { amount } creditApplied { amount } balanceDue { amount formatted }
  allocations { id amount { amount } kind active createdAt removedAt
                creditNote { id number status originalCredit { amount } remainingCredit { amount }
                             allocatedCredit { amount } refundedCredit { amount } } }
} }"""

Q2 = """query Q2($first: Int, $after: String) { invoices(first: $first, after: $after) {
  totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  nodes { id number status account { name } lines { description total { amount } }
          payments { amount { amount } status } balanceDue { amount } }
} }"""

Q3 = """query Q3($filter: InvoiceFilter, $sort: InvoiceSort) {
  invoices(first: 50, filter: $filter, sort: $sort) {
    __typename totalCount
    edges { __typename cursor node { __typename id number status total { amount } } }
    pageInfo { __typename endCursor hasNextPage }
  } }"""

FIXED = [
    (Q2, {"first": 3}),
    (Q2, {"first": 100}),
    (Q3, {"filter": {"status": ["DUE", "OVERDUE"]}}),
    (Q3, {"filter": {"status": ["PAID"]}, "sort": {"field": "NUMBER", "direction": "ASC"}}),
    (Q3, {"sort": {"field": "ISSUE_DATE", "direction": "ASC"}}),
    (Q3, {"sort": {"field": "TOTAL", "direction": "DESC"}}),
    (Q3, {"sort": {"field": "CREATED_AT", "direction": "ASC"}}),
    (Q3, {"filter": {"number": "INV-0001"}}),
    (Q3, {"filter": {"hasBalance": True, "total": {"min": "10.00"}}}),
    (Q3, {"filter": {"status": []}}),
    (
        """{ creditNotes { totalCount nodes { id number status currency issueDate documentUrl
             originalCredit { amount formatted } remainingCredit { amount }
             allocations { amount { amount } invoice { number balanceDue { amount } } }
             account { name } } } }""",
        {},
    ),
    (
        """{ payments(first: 10) { totalCount pageInfo { endCursor } nodes { id status method
             amount { amount currency formatted } invoice { number } account { name } } } }""",
        {},
    ),
    (
        """query($flag: Boolean!) { list: invoices(first: 4) { ...Page } }
        fragment Page on InvoiceConnection { total: totalCount
          nodes { ... on Invoice { ref: id } ...Money n: number @include(if: $flag)
                  s: status @skip(if: $flag) } }
        fragment Money on Invoice { total { a: amount f: formatted } }""",
        {"flag": True},
    ),
]


async def test_fixed_queries_agree_for_every_role(api: Api, plain: Api, world: World) -> None:
    await add_many_invoices(api.state.sessionmaker, world, count=12)
    invoice_ids = [
        encode("Invoice", world.ids[k])
        for k in ("paid", "due", "team_invoice", "bob_invoice", "pending", "rival_invoice")
    ]
    invoice_ids.append(encode("CreditNote", world.ids["credit_note"]))  # read as an Invoice
    requests = [*FIXED, *((Q1, {"id": i}) for i in invoice_ids)]
    for role in ROLES:
        token = world.tokens[role]
        for query, variables in requests:
            fast, slow, seen = await _both(api, plain, query, variables, token)
            assert fast == slow, (role, query, variables)
            assert "errors" not in fast, fast
            assert _compiled(seen), (role, query)
        # The next page, from the reference's own cursor.
        first = await plain.gql(Q2, {"first": 4}, token=token)
        cursor = first["data"]["invoices"]["pageInfo"]["endCursor"]
        if cursor:
            fast, slow, seen = await _both(api, plain, Q2, {"first": 4, "after": cursor}, token)
            assert fast == slow and _compiled(seen), role


async def test_refusals_are_the_same_coded_errors(api: Api, plain: Api, world: World) -> None:
    token = world.tokens["admin"]
    bad = [
        (Q1, {"id": "not-an-id"}),
        (Q1, {"id": encode("Payment", 1)}),
        (Q2, {"first": 0}),
        (Q2, {"first": 101}),
        (Q2, {"first": 2, "after": "garbage"}),
        (Q3, {"filter": {"accountId": ["nope"]}}),
        (Q3, {"filter": {"total": {"min": "1.234"}}}),
        (Q3, {"filter": {"status": ["NOPE"]}}),
        (Q2, {"first": "many"}),
    ]
    for query, variables in bad:
        fast, slow, _ = await _both(api, plain, query, variables, token)
        assert fast == slow, (query, variables)
        assert fast["errors"][0]["extensions"]["code"], fast
    # No token, a bad token: the same refusals too.
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        answers = [
            (await client.post("/graphql", json={"query": Q2}, headers=headers)).json()
            for client in (api.client, plain.client)
        ]
        assert answers[0] == answers[1], answers
        assert answers[0]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


# -- randomized selections --------------------------------------------------------------

SCALARS = {
    "Invoice": ["id", "number", "status", "documentType", "currency", "issueDate", "dueDate",
                "periodStart", "periodEnd", "origin", "createdAt", "updatedAt", "finalizedAt",
                "voidedAt", "paidAt", "__typename"],
    "CreditNote": ["id", "number", "status", "documentType", "currency", "issueDate",
                   "createdAt", "__typename"],
    "Account": ["id", "kind", "name", "email", "active", "autopay", "hasPaymentMethod",
                "createdAt", "__typename"],
    "LineItem": ["id", "kind", "description", "quantity", "periodStart", "periodEnd",
                 "createdAt", "__typename"],
    "Payment": ["id", "status", "type", "method", "attempt", "errorCode", "errorMessage", "note",
                "receivedOn", "gatewayPaymentIntentId", "createdAt", "updatedAt", "succeededAt",
                "__typename"],
    "CreditAllocation": ["id", "kind", "createdAt", "removedAt", "active", "__typename"],
}  # fmt: skip
MONEY = {
    "Invoice": ["subtotal", "tax", "total", "amountPaid", "creditApplied", "balanceDue"],
    "CreditNote": ["subtotal", "total", "originalCredit", "allocatedCredit", "refundedCredit",
                   "remainingCredit"],
    "Account": [],
    "LineItem": ["unitPrice", "amount", "tax", "total"],
    "Payment": ["amount", "appliedAmount", "refundedAmount", "refundableAmount"],
    "CreditAllocation": ["amount"],
}  # fmt: skip
RELATIONS = {
    "Invoice": [("account", "Account"), ("lines", "LineItem"), ("payments", "Payment"),
                ("allocations", "CreditAllocation")],
    "CreditNote": [("account", "Account"), ("allocations", "CreditAllocation")],
    "Account": [],
    "LineItem": [("invoice", "Invoice")],
    "Payment": [("invoice", "Invoice"), ("account", "Account")],
    "CreditAllocation": [("creditNote", "CreditNote"), ("invoice", "Invoice")],
}  # fmt: skip


class Selections:
    """Random selections over the known types, deterministic from a seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.aliases = 0
        self.uses_flag = False

    def _key(self, name: str) -> str:
        if self.aliases < 8 and self.rng.random() < 0.2:
            self.aliases += 1
            return f"a{self.aliases}: {name}"
        return name

    def _directive(self) -> str:
        roll = self.rng.random()
        if roll < 0.08:
            self.uses_flag = True
            return " @include(if: $flag)"
        if roll < 0.16:
            self.uses_flag = True
            return " @skip(if: $flag)"
        return ""

    def object(self, type_name: str, depth: int) -> str:
        rng = self.rng
        picks = rng.sample(SCALARS[type_name], rng.randint(1, 4))
        parts = [self._key(p) + self._directive() for p in picks]
        for money in rng.sample(MONEY[type_name], min(len(MONEY[type_name]), rng.randint(0, 2))):
            subs = rng.sample(["amount", "currency", "formatted", "__typename"], rng.randint(1, 3))
            parts.append(f"{self._key(money)} {{ {' '.join(subs)} }}")
        if depth < 2:
            for name, target in RELATIONS[type_name]:
                if rng.random() < 0.4:
                    parts.append(f"{self._key(name)} {{ {self.object(target, depth + 1)} }}")
        if rng.random() < 0.25:
            parts = [f"... on {type_name} {{ {' '.join(parts)} }}", "id"]
        return " ".join(parts)


ROOT_FIELDS = [
    ("invoice(id: $id)", "Invoice", False),
    ("invoices(first: $first, filter: $filter)", "Invoice", True),
    ("creditNotes(first: $first)", "CreditNote", True),
    ("payments(first: $first)", "Payment", True),
]


def _random_request(seed: int, world: World) -> tuple[str, dict[str, Any]]:
    gen = Selections(seed)
    rng = gen.rng
    root, type_name, listing = rng.choice(ROOT_FIELDS)
    node = gen.object(type_name, 0)
    if listing:
        parts = [f"nodes {{ {node} }}"]
        if rng.random() < 0.5:
            parts.insert(0, "totalCount")
        if rng.random() < 0.4:
            parts.append("pageInfo { hasNextPage endCursor }")
        if rng.random() < 0.3:
            parts.append(f"edges {{ cursor node {{ {gen.object(type_name, 1)} }} }}")
        body = " ".join(parts)
    else:
        body = node
    variables: dict[str, Any] = {}
    definitions = []
    if gen.uses_flag:
        variables["flag"] = rng.random() < 0.5
        definitions.append("$flag: Boolean!")
    if "$id" in root:
        definitions.append("$id: ID!")
        key = rng.choice(["paid", "due", "team_invoice", "pending", "rival_invoice"])
        variables["id"] = encode("Invoice", world.ids[key])
    if "$first" in root:
        definitions.append("$first: Int")
        variables["first"] = rng.choice([1, 2, 5, 100])
    if "$filter" in root:
        definitions.append("$filter: InvoiceFilter")
        variables["filter"] = rng.choice(
            [None, {"status": ["DUE", "OVERDUE"]}, {"status": ["PAID"]}, {"hasBalance": True}]
        )
    alias = "r: " if rng.random() < 0.3 else ""
    signature = f"({', '.join(definitions)})" if definitions else ""
    query = f"query R{signature} {{ {alias}{root} {{ {body} }} }}"
    return query, variables


async def test_randomized_selections_agree(api: Api, plain: Api, world: World) -> None:
    await add_many_invoices(api.state.sessionmaker, world, count=6)
    for seed in range(120):
        query, variables = _random_request(seed, world)
        role = ROLES[seed % len(ROLES)]
        fast, slow, seen = await _both(api, plain, query, variables, world.tokens[role])
        assert fast == slow, (seed, role, query, variables)
        assert "errors" not in fast, (seed, query, fast)
        assert _compiled(seen), (seed, query)


async def test_a_read_is_at_most_two_statements_for_every_viewer_whatever_the_page(
    api: Api, world: World
) -> None:
    """The token's user (with a member's visible accounts) and the one compiled
    statement, on one connection; once the read is known, the one statement alone,
    confirming the viewer kept from before; a page of 30 costs what a page of 2 does."""
    await add_many_invoices(api.state.sessionmaker, world, count=30)
    q1_id = encode("Invoice", world.ids["due"])
    for role in ("admin", "analyst", "alice"):
        for query, variables in ((Q2, {"first": 2}), (Q2, {"first": 30}), (Q1, {"id": q1_id})):
            seen = api.count_selects()
            try:
                body = await api.gql(query, variables, token=world.tokens[role])
            finally:
                api.stop_counting()
            assert "errors" not in body, body
            # The event hub may read the log meanwhile (it heard the inserts above).
            ours = [s for s in seen if "FROM events" not in s]
            assert _compiled(ours[-1:]), ours
            if len(ours) == 1:
                assert "holds" in ours[0], ours  # a known read, its viewer confirmed
            else:
                assert len(ours) == 2 and "holds" not in ours[1], (role, query, ours)


async def test_the_dataloader_path_still_costs_a_fixed_number_of_statements(
    plain: Api, world: World
) -> None:
    await add_many_invoices(plain.state.sessionmaker, world, count=30)
    counts = []
    for size in (5, 30):
        seen = plain.count_selects()
        body = await plain.gql(Q2.replace("totalCount", ""), {"first": size},
                               token=world.tokens["admin"])  # fmt: skip
        plain.stop_counting()
        assert len(body["data"]["invoices"]["nodes"]) == size
        # The event hub may read the log meanwhile (it heard the inserts above).
        counts.append(len([s for s in seen if "FROM events" not in s]))
    # The token's user, the page, accounts, lines and payments: one batch each.
    assert counts == [5, 5], counts
