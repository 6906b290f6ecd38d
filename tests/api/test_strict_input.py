"""Strict input at every field, over HTTP on SQLite and PostgreSQL: each bad value
of the kinds a client can send — lenient money, ids beyond int64 or in other
scripts' digits, forged cursors, products that overflow, dates outside the supported
window or running backwards, text too long, list filters too long — is refused with
``VALIDATION``, a message naming the field, never a 500, and writes nothing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

import models
from schema.ids import encode
from tests.api.conftest import Api
from tests.world import World


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    variables: dict[str, Any]
    field: str  # what the message must name


RECORD = """mutation($input: RecordPaymentInput!, $key: String) {
  recordPayment(input: $input, idempotencyKey: $key) { id } }"""
CHARGE = "mutation($input: ChargeInput!) { addOneTimeCharge(input: $input) { id } }"
BOOK = "mutation($input: CreateBookingInput!) { createBooking(input: $input) { id } }"
SUBSCRIBE = "mutation($input: SubscribeInput!) { subscribeToPlan(input: $input) { id } }"
ACCOUNT = "mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }"
USER = "mutation($input: CreateUserInput!) { createUser(input: $input) { user { id } } }"
INVOICE = "query($id: ID!) { invoice(id: $id) { id } }"
INVOICES = "query($f: InvoiceFilter, $after: String) { invoices(filter: $f, after: $after) { nodes { id } } }"  # noqa: E501


MANUAL = """mutation($input: ManualInvoiceInput!) {
  createManualInvoice(input: $input) { id } }"""
TEMPLATE = """mutation($input: PlanTemplateInput!) {
  createPlanTemplate(input: $input) { id } }"""


def manual(*lines: dict[str, object], **over: object) -> dict[str, Any]:
    """A manual invoice for Alice; ``lines`` replace the one good line where given."""
    good = {"description": "Printing", "unitPrice": "2"}
    return {"input": {"accountId": "{alice}", "lines": list(lines) or [good], **over}}


def record(amount: object, **extra: object) -> dict[str, Any]:
    return {"input": {"invoiceId": "{due}", "amount": amount, "method": "CASH", **extra}}


def charge(**over: object) -> dict[str, Any]:
    base: dict[str, object] = {"accountId": "{alice}", "description": "Printing", "unitPrice": "2"}
    return {"input": {**base, **over}}


def booking(starts: str, ends: str, **over: object) -> dict[str, Any]:
    base = {"accountId": "{alice}", "resourceName": "Room", "startsAt": starts, "endsAt": ends}
    return {"input": {**base, "price": "10", **over}}


def subscribe(start: str, end: str | None = None) -> dict[str, Any]:
    plan = encode("PlanTemplate", 1)
    return {
        "input": {
            "accountId": "{alice}",
            "planTemplateId": plan,
            "startDate": start,
            "endDate": end,
        }
    }


CASES = [
    # Money: only -?digits[.digits], ASCII, within the currency's places and bound.
    *(
        Case(f"amount {value!r}", RECORD, record(value), "amount")
        for value in (
            " 5 ",
            "+3",
            "1_000",
            "٣",
            "1e-2",
            "1E+2",
            0.1,
            5,
            "",
            "5.",
            ".5",
            "5.001",
            "1000000000001",
            "NaN",
            "Infinity",
            "9" * 40,
        )
    ),
    Case("unitPrice literal JSON number", CHARGE, charge(unitPrice=12.5), "unitPrice"),
    Case("taxRate with an exponent", CHARGE, charge(taxRate="2E+1"), "taxRate"),
    # Ids: ASCII digits within int64, one spelling per object.
    Case("id beyond int64", INVOICE, {"id": _b64("Invoice:99999999999999999999")}, "id"),
    Case("id in Arabic-Indic digits", INVOICE, {"id": _b64("Invoice:٥٤")}, "id"),
    Case("id with a leading zero", INVOICE, {"id": _b64("Invoice:01")}, "id"),
    Case(
        "invoiceId beyond int64",
        RECORD,
        {
            "input": {
                "invoiceId": _b64("Invoice:99999999999999999999"),
                "amount": "5",
                "method": "CASH",
            }
        },
        "invoiceId",
    ),
    Case(
        "event cursor beyond int64",
        '{ events(after: "99999999999999999999") { nodes { id } } }',
        {},
        "after",
    ),
    Case(
        "event cursor in other digits",
        "query($a: String) { events(after: $a) { nodes { id } } }",
        {"a": "٥٤"},
        "after",
    ),
    Case(
        "keyset cursor beyond int64",
        INVOICES,
        {"after": _b64(json.dumps([{"d": "2026-08-01"}, 10**20]))},
        "after",
    ),
    Case(
        "keyset cursor of the wrong type",
        INVOICES,
        {"after": _b64(json.dumps(["x", "y"]))},
        "after",
    ),
    Case(
        "keyset cursor with a bad instant",
        INVOICES,
        {"after": _b64(json.dumps([{"t": "never"}, 1]))},
        "after",
    ),
    # Products: quantity × unit price, hourly rate × duration stay within 10^12.
    Case(
        "quantity × unitPrice overflows",
        CHARGE,
        charge(quantity=2147483647, unitPrice="1000000000000"),
        "quantity",
    ),
    Case("quantity above the cap", CHARGE, charge(quantity=2_000_000), "quantity"),
    Case(
        "hourlyRate × duration overflows",
        BOOK,
        booking(
            "2026-09-01T09:00:00Z", "2027-09-01T09:00:00Z", price=None, hourlyRate="999999999999"
        ),
        "hourlyRate",
    ),
    # Dates and instants: within 2000-01-01..2099-12-31, ends never before starts.
    Case("plan starting in 145", SUBSCRIBE, subscribe("0145-07-28"), "startDate"),
    Case("plan ending in 5912", SUBSCRIBE, subscribe("2026-09-01", "5912-01-01"), "endDate"),
    Case(
        "plan ending before it starts", SUBSCRIBE, subscribe("2026-09-01", "2026-08-01"), "endDate"
    ),
    Case(
        "booking from 0001 to 9999",
        BOOK,
        booking("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
        "startsAt",
    ),
    Case(
        "booking in another script's digits",
        BOOK,
        booking("٢٠٢٦-09-01T09:00:00Z", "2026-09-01T10:00:00Z"),
        "startsAt",
    ),
    Case(
        "runBilling at year 9999",
        'mutation { runBilling(asOf: "9999-12-31T00:00:00Z") { accountsProcessed } }',
        {},
        "`asOf`",
    ),
    # Literals in the document are named by their path, like variables.
    Case(
        "literal JSON number as money",
        "mutation($id: ID!) { recordPayment(input: {invoiceId: $id, amount: 0.1, method: CASH})"
        " { id } }",
        {"id": "{due}"},
        "`input.amount`",
    ),
    Case(
        "literal date in another shape",
        "mutation($a: ID!) { subscribeToPlan(input: {accountId: $a, planTemplateId: "
        '"UGxhblRlbXBsYXRlOjE", startDate: "2026/09/01"}) { id } }',
        {"a": "{alice}"},
        "`input.startDate`",
    ),
    Case(
        "date filter outside the window",
        INVOICES,
        {"f": {"dueDate": {"from": "1999-12-31"}}},
        "dueDate",
    ),
    Case(
        "date filter running backwards",
        INVOICES,
        {"f": {"dueDate": {"from": "2026-09-01", "to": "2026-08-01"}}},
        "filter.dueDate.to",
    ),
    # Text: each kind has its cap.
    Case("description too long", CHARGE, charge(description="x" * 501), "input.description"),
    Case("note too long", RECORD, record("5", note="n" * 2001), "input.note"),
    Case("idempotency key too long", RECORD, {**record("5"), "key": "k" * 256}, "idempotencyKey"),
    Case(
        "account name too long",
        ACCOUNT,
        {"input": {"kind": "TEAM", "name": "a" * 201}},
        "input.name",
    ),
    Case(
        "e-mail too long",
        USER,
        {"input": {"email": "a" * 250 + "@x.test", "name": "A"}},
        "input.email",
    ),
    Case(
        "search too long",
        "query($s: String) { accounts(filter: {search: $s}) { nodes { id } } }",
        {"s": "s" * 201},
        "filter.search",
    ),
    Case(
        "any other text too long",
        "query($t: [String!]) { events(filter: {types: $t}) { nodes { id } } }",
        {"t": ["T" * 65]},
        "filter.types[0]",
    ),
    # Nested input: every field of an input object, and of each object in a list of
    # them, is bounded like a top-level argument and named by its path.
    Case(
        "a nested line's description too long",
        MANUAL,
        manual(
            {"description": "Printing", "unitPrice": "2"},
            {"description": "x" * 501, "unitPrice": "2"},
        ),
        "input.lines[1].description",
    ),
    Case(
        "a nested line's lenient money",
        MANUAL,
        manual({"description": "Printing", "unitPrice": "1e-2"}),
        "unitPrice",
    ),
    Case(
        "a nested line's quantity above the cap",
        MANUAL,
        manual({"description": "Printing", "unitPrice": "2", "quantity": 2_000_000}),
        "quantity",
    ),
    Case(
        "a nested line's product overflows",
        MANUAL,
        manual({"description": "Printing", "unitPrice": "1000000000000", "quantity": 1000}),
        "quantity",
    ),
    Case(
        "a manual invoice of 1,001 lines",
        MANUAL,
        manual(*({"description": f"Line {n}", "unitPrice": "1"} for n in range(1001))),
        "input.lines",
    ),
    Case(
        "a nested line's description with a NUL",
        MANUAL,
        manual({"description": "Print\x00ing", "unitPrice": "2"}),
        "$input.lines[0].description",
    ),
    Case(
        "a manual invoice due in 2100",
        MANUAL,
        manual(dueDate="2100-01-01"),
        "input.dueDate",
    ),
    Case(
        "a plan template's name too long",
        TEMPLATE,
        {"input": {"name": "P" * 201, "price": "100", "interval": "MONTHLY"}},
        "input.name",
    ),
    # List filters: at most 1,000 items, far below the drivers' 32,767 parameters.
    Case(
        "list filter of 1,001 ids",
        INVOICES,
        {"f": {"accountId": [encode("Account", i) for i in range(1, 1002)]}},
        "filter.accountId",
    ),
    Case(
        "list filter of 40,000 ids",
        INVOICES,
        {"f": {"accountId": [encode("Account", i) for i in range(1, 40_001)]}},
        "filter.accountId",
    ),
]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return ids.get(value[1:-1], value)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


async def _row_counts(api: Api) -> dict[str, int]:
    async with api.state.sessionmaker() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in models.Base.metadata.sorted_tables
        }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input_is_refused_by_name_and_writes_nothing(
    api: Api, world: World, case: Case
) -> None:
    ids = {
        "due": encode("Invoice", world.ids["due"]),
        "alice": encode("Account", world.ids["alice_account"]),
    }
    before = await _row_counts(api)
    body = await api.gql(case.query, _fill(case.variables, ids), token=world.tokens["admin"])
    errors = body.get("errors") or []
    assert errors, body
    error = errors[0]
    assert error["extensions"]["code"] == "VALIDATION", error
    assert case.field in error["message"], error
    assert not body.get("data") or all(v is None for v in body["data"].values()), body
    assert await _row_counts(api) == before


async def test_good_input_still_passes(api: Api, world: World) -> None:
    """The strict rules refuse only what they should: plain decimals, the window's
    edges and texts at their caps are accepted."""
    ids = {
        "due": encode("Invoice", world.ids["due"]),
        "alice": encode("Account", world.ids["alice_account"]),
    }
    token = world.tokens["admin"]
    body = await api.gql(RECORD, _fill(record("0.50", note="n" * 2000), ids), token=token)
    assert body.get("errors") is None, body
    body = await api.gql(
        CHARGE,
        _fill(charge(description="d" * 500, quantity=1_000_000, unitPrice="0.01"), ids),
        token=token,
    )
    assert body.get("errors") is None, body
    body = await api.gql(
        INVOICES,
        {
            "f": {
                "dueDate": {"from": "2000-01-01", "to": "2099-12-31"},
                "accountId": [encode("Account", i) for i in range(1, 1001)],
            }
        },
        token=token,
    )
    assert body.get("errors") is None, body
    assert len(body["data"]["invoices"]["nodes"]) > 0


async def test_refusals_at_the_edge_carry_the_field_in_extensions(api: Api, world: World) -> None:
    ids = {
        "due": encode("Invoice", world.ids["due"]),
        "alice": encode("Account", world.ids["alice_account"]),
    }
    token = world.tokens["admin"]
    literal = (
        "mutation($id: ID!) { recordPayment(input: {invoiceId: $id, amount: 0.1, method: CASH})"
        " { id } }"
    )
    for query, variables, field in (
        (RECORD, record(" 5 "), "input.amount"),
        (literal, {"id": "{due}"}, "input.amount"),
        (CHARGE, charge(description="x" * 501), "input.description"),
        (
            INVOICES,
            {"f": {"dueDate": {"from": "2026-09-01", "to": "2026-08-01"}}},
            "filter.dueDate.to",
        ),
    ):
        body = await api.gql(query, _fill(variables, ids), token=token)
        extensions = body["errors"][0]["extensions"]
        assert extensions == {"code": "VALIDATION", "field": field}, body
