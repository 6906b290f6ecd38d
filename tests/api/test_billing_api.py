"""The billing engine through its GraphQL mutations, over real HTTP (issue 3, "done when").

Each test starts from an empty organization with one admin (the only rows written
directly) and does everything else the way an operator's app would: mutations to set
the policy, open accounts, sell plans, book rooms, invoice and run the billing clock,
then queries to read the result. The server and the test share one ``FixedClock``, so
moving it is how time passes. Every test runs on SQLite and PostgreSQL, except the
concurrent billing runs: SQLite serializes writers, so only PostgreSQL can race them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import issue_token
from models import Role, User
from schema.ids import decode
from services import accounts, policy
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api

_slugs = itertools.count(1)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def pk(global_id: str) -> int:
    decoded = decode(global_id)
    assert decoded is not None, global_id
    return decoded[1]


class GraphQLFailure(AssertionError):
    """A mutation or query the test expected to succeed returned errors."""


@dataclass
class Space:
    """An organization under test: its admin, the shared clock, and GraphQL calls that
    carry a token issued at the clock's current instant (tokens expire by that clock,
    so a test that moves a year ahead still signs in). The tests' dates lie in the
    past, so no token is issued in the wall clock's future (JWT "iat")."""

    api: Api
    clock: FixedClock
    org_id: int
    admin_id: int

    def token(self, user_id: int | None = None) -> str:
        user = User(id=user_id or self.admin_id, organization_id=self.org_id)
        return issue_token(SETTINGS, user, self.clock.now())

    async def call(
        self, query: str, variables: dict[str, Any] | None = None, *, user_id: int | None = None
    ) -> dict[str, Any]:
        return await self.api.gql(query, variables, token=self.token(user_id))

    async def ok(
        self, query: str, variables: dict[str, Any] | None = None, *, user_id: int | None = None
    ) -> dict[str, Any]:
        body = await self.call(query, variables, user_id=user_id)
        if body.get("errors"):
            raise GraphQLFailure(body["errors"])
        data: dict[str, Any] = body["data"]
        return data

    async def refused(
        self, query: str, variables: dict[str, Any] | None = None, *, user_id: int | None = None
    ) -> dict[str, Any]:
        """The single error of a call expected to fail (its message and extensions)."""
        body = await self.call(query, variables, user_id=user_id)
        assert body.get("errors"), body
        (error,) = body["errors"]
        assert not body.get("data"), body
        return dict(error)

    # ---------------------------------------------------------------- building blocks

    async def policy(self, **changes: Any) -> dict[str, Any]:
        data = await self.ok(
            """mutation($input: InvoicePolicyInput!) {
                 updateInvoicePolicy(input: $input) {
                   billingDay billingDayLocked additionalCharges overdueAfterDays
                   blockBookingsWhenOverdue defaultTaxRate
                 } }""",
            {"input": changes},
        )
        result: dict[str, Any] = data["updateInvoicePolicy"]
        return result

    async def person(self, name: str, role: str = "MEMBER") -> tuple[str, str | None]:
        """A user (and, for members, their USER account): (user id, account id)."""
        data = await self.ok(
            """mutation($input: CreateUserInput!) {
                 createUser(input: $input) { user { id } account { id kind } } }""",
            {
                "input": {
                    "name": name,
                    "email": f"{name.split()[0].lower()}.{next(_slugs)}@example.com",
                    "role": role,
                    "withAccount": role == "MEMBER",
                }
            },
        )
        payload = data["createUser"]
        account = payload["account"]["id"] if payload["account"] else None
        return payload["user"]["id"], account

    async def plan(
        self, name: str, price: str, *, interval: str = "MONTHLY", setup_fee: str = "0",
        deposit: str = "0",
    ) -> str:  # fmt: skip
        data = await self.ok(
            """mutation($input: PlanTemplateInput!) {
                 createPlanTemplate(input: $input) { id price { amount } interval } }""",
            {"input": {"name": name, "price": price, "interval": interval,
                       "setupFee": setup_fee, "deposit": deposit}},
        )  # fmt: skip
        template_id: str = data["createPlanTemplate"]["id"]
        return template_id

    async def subscribe(self, account: str, template: str, start: date) -> str:
        data = await self.ok(
            """mutation($input: SubscribeInput!) {
                 subscribeToPlan(input: $input) { id status startDate } }""",
            {"input": {"accountId": account, "planTemplateId": template,
                       "startDate": start.isoformat()}},
        )  # fmt: skip
        subscription_id: str = data["subscribeToPlan"]["id"]
        return subscription_id

    async def book(
        self, account: str, starts: datetime, ends: datetime, price: str = "25.00", *,
        user_id: int | None = None,
    ) -> str:  # fmt: skip
        data = await self.ok(
            BOOK, {"input": booking_input(account, starts, ends, price)}, user_id=user_id
        )
        booking_id: str = data["createBooking"]["id"]
        return booking_id

    async def manual_invoice(self, account: str, lines: list[dict[str, Any]],
                             **options: Any) -> dict[str, Any]:  # fmt: skip
        data = await self.ok(
            f"""mutation($input: ManualInvoiceInput!) {{
                 createManualInvoice(input: $input) {{ {INVOICE_FIELDS} }} }}""",
            {"input": {"accountId": account, "lines": lines, **options}},
        )
        invoice: dict[str, Any] = data["createManualInvoice"]
        return invoice

    async def run_billing(self, as_of: datetime) -> dict[str, Any]:
        data = await self.ok(
            """mutation($asOf: DateTime!) { runBilling(asOf: $asOf) {
                 accountsProcessed invoicesFinalized statusChanges planPeriodsAdded } }""",
            {"asOf": iso(as_of)},
        )
        result: dict[str, Any] = data["runBilling"]
        return result

    async def invoices(self, *, account: str | None = None) -> list[dict[str, Any]]:
        """Every invoice (and draft), oldest due date first, with lines."""
        filter_: dict[str, Any] = {"documentType": ["DRAFT", "INVOICE"]}
        if account is not None:
            filter_["accountId"] = [account]
        data = await self.ok(
            f"""query($filter: InvoiceFilter) {{
                 invoices(first: 100, filter: $filter,
                          sort: {{field: CREATED_AT, direction: ASC}}) {{
                   totalCount nodes {{ {INVOICE_FIELDS} }} }} }}""",
            {"filter": filter_},
        )
        nodes: list[dict[str, Any]] = data["invoices"]["nodes"]
        assert data["invoices"]["totalCount"] == len(nodes)
        return nodes

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        data = await self.ok(
            f"query($id: ID!) {{ invoice(id: $id) {{ {INVOICE_FIELDS} }} }}", {"id": invoice_id}
        )
        invoice: dict[str, Any] = data["invoice"]
        return invoice

    async def events_after(self, cursor: str | None) -> tuple[list[str], str | None]:
        """The types of the events after ``cursor`` (oldest first) and the new cursor."""
        types: list[str] = []
        while True:
            data = await self.ok(
                """query($after: String) { events(first: 100, after: $after) {
                     nodes { type cursor } pageInfo { hasNextPage } } }""",
                {"after": cursor},
            )
            nodes = data["events"]["nodes"]
            types += [n["type"] for n in nodes]
            cursor = nodes[-1]["cursor"] if nodes else cursor
            if not data["events"]["pageInfo"]["hasNextPage"]:
                return types, cursor

    async def snapshot(self) -> dict[str, Any]:
        """What an auditor would compare: every invoice with its lines and totals, the
        number of invoice items and of events."""
        data = await self.ok(
            """{ items: invoiceItems(first: 1) { totalCount }
                 events(first: 1) { totalCount }
                 notes: creditNotes(first: 100) {
                   totalCount nodes { number total { amount } } } }"""
        )
        return {
            "invoices": await self.invoices(),
            "items": data["items"]["totalCount"],
            "events": data["events"]["totalCount"],
            "credit_notes": data["notes"],
        }


INVOICE_FIELDS = """
  id number status dueDate issueDate periodStart periodEnd
  subtotal { amount } tax { amount } total { amount } balanceDue { amount }
  account { id }
  lines { id kind description quantity unitPrice { amount } amount { amount }
          taxRate tax { amount } total { amount } periodStart periodEnd booking { id } }
"""

BOOK = """mutation($input: CreateBookingInput!) {
  createBooking(input: $input) { id status price { amount } account { id } } }"""


def booking_input(account: str, starts: datetime, ends: datetime, price: str) -> dict[str, Any]:
    return {"accountId": account, "resourceName": "Meeting room Kelp", "startsAt": iso(starts),
            "endsAt": iso(ends), "price": price}  # fmt: skip


def amounts(invoice: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        invoice["subtotal"]["amount"],
        invoice["tax"]["amount"],
        invoice["total"]["amount"],
        invoice["balanceDue"]["amount"],
    )


@pytest.fixture
async def space(api: Api, clock: FixedClock) -> Space:
    """An empty organization (USD, billing day 1, UTC) with one admin and its token."""
    clock.set(at(2026, 8, 10, 9))
    async with api.state.sessionmaker.begin() as session:
        org = await policy.create_organization(
            session, "Harbour Works", f"harbour-{next(_slugs)}", "USD", clock.now()
        )
        admin = await accounts.create_user(
            session, org, email="admin@harbour.test", name="Ada Admin", role=Role.ADMIN,
            now=clock.now(),
        )  # fmt: skip
        return Space(api=api, clock=clock, org_id=org.id, admin_id=admin.id)


# --------------------------------------------------------------------------- plans


async def test_the_proration_example_puts_exactly_those_lines_on_the_first_invoice(
    space: Space,
) -> None:
    _, account = await space.person("Bea Member")
    assert account is not None
    desk = await space.plan("Dedicated desk", "310.00", setup_fee="50.00", deposit="200.00")
    await space.subscribe(account, desk, date(2026, 8, 15))

    (draft,) = await space.invoices()
    assert (draft["status"], draft["number"], draft["dueDate"]) == ("PENDING", None, "2026-08-15")

    space.clock.set(at(2026, 8, 15))
    assert (await space.run_billing(at(2026, 8, 15)))["invoicesFinalized"] == 1
    (first,) = await space.invoices()
    assert (first["number"], first["status"], first["dueDate"]) == ("INV-000001", "DUE",
                                                                     "2026-08-15")  # fmt: skip
    lines = [
        (x["kind"], x["amount"]["amount"], x["periodStart"], x["periodEnd"]) for x in first["lines"]
    ]
    assert lines == [
        # 310 / 31 × 17 days (Aug 15 to 31, the start day included) = 170.00
        ("PLAN", "170.00", "2026-08-15", "2026-08-31"),
        ("PLAN", "310.00", "2026-09-01", "2026-09-30"),
        ("SETUP_FEE", "50.00", None, None),
        ("DEPOSIT", "200.00", None, None),
    ]
    assert amounts(first) == ("730.00", "0.00", "730.00", "730.00")


async def test_a_year_of_monthly_billing_gives_twelve_consecutively_numbered_invoices(
    space: Space,
) -> None:
    space.clock.set(at(2024, 12, 20, 9))
    _, account = await space.person("Cy Member")
    assert account is not None
    desk = await space.plan("Hot desk", "100.00")
    await space.subscribe(account, desk, date(2025, 1, 1))

    for month in range(1, 13):
        space.clock.set(at(2025, month, 1))
        result = await space.run_billing(at(2025, month, 1))
        assert result["invoicesFinalized"] == 1, (month, result)

    everything = await space.invoices(account=account)
    finalized = sorted((x for x in everything if x["number"]), key=lambda x: x["number"])
    assert [x["number"] for x in finalized] == [f"INV-{n:06d}" for n in range(1, 13)]
    for month, invoice in enumerate(finalized, start=1):
        first_day = date(2025, month, 1)
        last_day = (date(2025 + month // 12, month % 12 + 1, 1)).toordinal() - 1
        assert invoice["dueDate"] == invoice["issueDate"] == first_day.isoformat()
        (line,) = invoice["lines"]
        assert (line["periodStart"], line["periodEnd"], line["amount"]["amount"]) == (
            first_day.isoformat(),
            date.fromordinal(last_day).isoformat(),
            "100.00",
        )
        # Nobody paid: all but the newest are past their 7 days' grace.
        assert invoice["status"] == ("DUE" if month == 12 else "OVERDUE")
    (pending,) = [x for x in everything if x["number"] is None]
    assert (pending["status"], pending["dueDate"]) == ("PENDING", "2026-01-01")


# --------------------------------------------------------------------------- additional charges


async def test_next_pending_invoice_an_aug_15_booking_lands_on_the_sep_1_invoice(
    space: Space,
) -> None:
    _, account = await space.person("Dee Member")
    assert account is not None
    space.clock.set(at(2026, 8, 15, 9))
    booking = await space.book(account, at(2026, 8, 15, 10), at(2026, 8, 15, 12), "40.00")

    (draft,) = await space.invoices()
    assert (draft["status"], draft["dueDate"]) == ("PENDING", "2026-09-01")
    assert [x["booking"]["id"] for x in draft["lines"]] == [booking]

    space.clock.set(at(2026, 9, 1))
    await space.run_billing(at(2026, 9, 1))
    (september,) = await space.invoices()
    assert (september["id"], september["number"], september["status"]) == (
        draft["id"], "INV-000001", "DUE",
    )  # fmt: skip
    assert september["total"]["amount"] == "40.00"


async def test_new_invoice_due_today_a_booking_after_march_1_gets_its_own_invoice(
    space: Space,
) -> None:
    space.clock.set(at(2026, 2, 20, 9))
    await space.policy(additionalCharges="NEW_INVOICE_DUE_TODAY")
    _, account = await space.person("Eve Member")
    assert account is not None
    desk = await space.plan("Hot desk", "200.00")
    await space.subscribe(account, desk, date(2026, 3, 1))
    space.clock.set(at(2026, 3, 1))
    await space.run_billing(at(2026, 3, 1))
    (march,) = [x for x in await space.invoices() if x["number"]]
    assert (march["number"], march["status"], march["dueDate"]) == ("INV-000001", "DUE",
                                                                     "2026-03-01")  # fmt: skip

    space.clock.set(at(2026, 3, 10, 14))
    booking = await space.book(account, at(2026, 3, 10, 15), at(2026, 3, 10, 17), "60.00")

    finalized = [x for x in await space.invoices() if x["number"]]
    assert [x["number"] for x in finalized] == ["INV-000001", "INV-000002"]
    unchanged, today = finalized
    assert unchanged == march
    assert (today["status"], today["dueDate"], today["issueDate"]) == ("DUE", "2026-03-10",
                                                                      "2026-03-10")  # fmt: skip
    assert [(x["booking"]["id"], x["amount"]["amount"]) for x in today["lines"]] == [
        (booking, "60.00")
    ]


# --------------------------------------------------------------------------- the billing clock


async def test_running_billing_twice_for_the_same_instant_changes_nothing(space: Space) -> None:
    for name in ("Fay Member", "Gus Member"):
        _, account = await space.person(name)
        assert account is not None
        await space.subscribe(account, await space.plan(f"{name} desk", "150.00"),
                              date(2026, 9, 1))  # fmt: skip
        await space.book(account, at(2026, 8, 12, 10), at(2026, 8, 12, 11))
    space.clock.set(at(2026, 9, 1, 6))

    first = await space.run_billing(at(2026, 9, 1, 6))
    assert first["invoicesFinalized"] == 2
    before = await space.snapshot()
    again = await space.run_billing(at(2026, 9, 1, 6))
    assert (again["invoicesFinalized"], again["statusChanges"], again["planPeriodsAdded"]) == (
        0, 0, 0,
    )  # fmt: skip
    assert await space.snapshot() == before


async def test_concurrent_billing_runs_create_no_duplicates(
    space: Space, engine: AsyncEngine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers; concurrency is a PostgreSQL question")
    members = []
    desk = await space.plan("Hot desk", "120.00")
    for n in range(8):
        _, account = await space.person(f"Member{n} Racer")
        assert account is not None
        members.append(account)
        await space.subscribe(account, desk, date(2026, 9, 1))
        await space.book(account, at(2026, 8, 20, 10), at(2026, 8, 20, 11), "10.00")
    space.clock.set(at(2026, 9, 1, 0, 5))

    results = await asyncio.gather(*(space.run_billing(at(2026, 9, 1, 0, 5)) for _ in range(6)))
    assert sum(r["invoicesFinalized"] for r in results) == len(members)

    invoices = await space.invoices()
    finalized = [x for x in invoices if x["number"]]
    assert sorted(x["number"] for x in finalized) == [f"INV-{n:06d}" for n in range(1, 9)]
    assert sorted(x["account"]["id"] for x in finalized) == sorted(members)
    for invoice in finalized:
        kinds = Counter(x["kind"] for x in invoice["lines"])
        assert kinds == {"PLAN": 1, "BOOKING": 1}, invoice
        assert invoice["total"]["amount"] == "130.00"
    # Each account's October period went on exactly one pending invoice, once.
    pending = [x for x in invoices if not x["number"]]
    assert sorted(x["account"]["id"] for x in pending) == sorted(members)
    assert all(len(x["lines"]) == 1 for x in pending)


# --------------------------------------------------------------------------- overdue and bookings


async def test_overdue_on_the_due_date_blocks_new_bookings_with_a_reason(space: Space) -> None:
    policy_now = await space.policy(overdueAfterDays=0, blockBookingsWhenOverdue=True)
    assert (policy_now["overdueAfterDays"], policy_now["blockBookingsWhenOverdue"]) == (0, True)
    _, account = await space.person("Hal Member")
    assert account is not None
    await space.book(account, at(2026, 8, 20, 10), at(2026, 8, 20, 12), "30.00")

    space.clock.set(at(2026, 9, 1, 0, 1))
    result = await space.run_billing(at(2026, 9, 1, 0, 1))
    assert result["invoicesFinalized"] == 1
    (invoice,) = await space.invoices()
    assert (invoice["number"], invoice["status"], invoice["dueDate"]) == (
        "INV-000001", "OVERDUE", "2026-09-01",
    )  # fmt: skip

    error = await space.refused(BOOK, {"input": booking_input(
        account, at(2026, 9, 2, 10), at(2026, 9, 2, 11), "20.00")})  # fmt: skip
    assert error["extensions"]["code"] == "ACCOUNT_HAS_OVERDUE_INVOICES"
    assert "INV-000001" in error["message"] and "overdue" in error["message"]
    assert error["message"].endswith(".")

    data = await space.ok(
        """query($id: ID!) { bookingEligibility(accountId: $id) {
             eligible reason overdueInvoices { number } } }""",
        {"id": account},
    )
    verdict = data["bookingEligibility"]
    assert verdict["eligible"] is False
    assert verdict["reason"] == error["message"]
    assert verdict["overdueInvoices"] == [{"number": "INV-000001"}]
    bookings = await space.ok("{ bookings { totalCount } }")
    assert bookings["bookings"]["totalCount"] == 1


# --------------------------------------------------------------------------- lines


REMOVE = """mutation($id: ID!) { removeLineItem(lineItemId: $id) {
  invoice { id status total { amount } balanceDue { amount } lines { id } }
  trailInvoice { id number status sourceInvoice { id } total { amount } lines { id description } }
} }"""


async def test_removing_a_line_from_a_due_invoice_moves_it_onto_a_void_invoice(
    space: Space,
) -> None:
    _, account = await space.person("Ida Member")
    assert account is not None
    invoice = await space.manual_invoice(account, [
        {"description": "Printing", "unitPrice": "12.00"},
        {"description": "Locker", "unitPrice": "30.00"},
    ], finalizeNow=True)  # fmt: skip
    assert (invoice["status"], invoice["balanceDue"]["amount"]) == ("DUE", "42.00")
    locker = invoice["lines"][1]

    data = await space.ok(REMOVE, {"id": locker["id"]})
    moved = data["removeLineItem"]
    assert moved["invoice"]["id"] == invoice["id"]
    assert moved["invoice"]["status"] == "DUE"
    assert (moved["invoice"]["total"]["amount"], moved["invoice"]["balanceDue"]["amount"]) == (
        "12.00", "12.00",
    )  # fmt: skip
    assert [x["id"] for x in moved["invoice"]["lines"]] == [invoice["lines"][0]["id"]]
    trail = moved["trailInvoice"]
    assert trail["status"] == "VOID"
    assert trail["sourceInvoice"] == {"id": invoice["id"]}
    assert [x["description"] for x in trail["lines"]] == ["Locker"]

    accounts_now = await space.ok("{ accounts { nodes { id balanceDue { amount } } } }")
    assert {"id": account, "balanceDue": {"amount": "12.00"}} in accounts_now["accounts"]["nodes"]


async def test_removing_a_line_from_a_paid_invoice_is_refused_and_changes_nothing(
    space: Space,
) -> None:
    _, account = await space.person("Jo Member")
    assert account is not None
    # Credit first, then an invoice that the credit pays in full: PAID without a gateway.
    note = await space.manual_invoice(account, [
        {"description": "Goodwill credit", "creditAmount": "100.00"},
    ], finalizeNow=True)  # fmt: skip
    assert note["number"] == "CN-000001"
    paid = await space.manual_invoice(account, [
        {"description": "Printing", "unitPrice": "12.00"},
        {"description": "Locker", "unitPrice": "30.00"},
    ], finalizeNow=True, applyCredit=True)  # fmt: skip
    assert (paid["number"], paid["status"], paid["balanceDue"]["amount"]) == (
        "INV-000001", "PAID", "0.00",
    )  # fmt: skip
    before = await space.snapshot()

    error = await space.refused(REMOVE, {"id": paid["lines"][0]["id"]})
    assert error["extensions"]["code"] == "INVALID_STATE"
    assert "paid" in error["message"].lower()
    assert await space.snapshot() == before


# --------------------------------------------------------------------------- policy and tax


async def test_the_billing_day_locks_once_an_invoice_exists(space: Space) -> None:
    changed = await space.policy(billingDay=15)
    assert (changed["billingDay"], changed["billingDayLocked"]) == (15, False)
    _, account = await space.person("Kit Member")
    assert account is not None
    await space.book(account, at(2026, 8, 11, 10), at(2026, 8, 11, 11))
    (draft,) = await space.invoices()
    assert draft["dueDate"] == "2026-08-15"  # the next billing date under day 15

    error = await space.refused(
        "mutation { updateInvoicePolicy(input: {billingDay: 1}) { billingDay } }"
    )
    assert error["extensions"]["code"] == "INVALID_STATE"
    assert "billing day" in error["message"]
    data = await space.ok("{ organization { invoicePolicy { billingDay billingDayLocked } } }")
    assert data["organization"]["invoicePolicy"] == {"billingDay": 15, "billingDayLocked": True}


async def test_tax_is_rounded_half_up_on_each_line(space: Space) -> None:
    await space.policy(defaultTaxRate="5")
    _, account = await space.person("Lou Member")
    assert account is not None
    invoice = await space.manual_invoice(account, [
        {"description": "Printing", "unitPrice": "10.10"},  # 0.505 → 0.51
        {"description": "Scanning", "unitPrice": "10.10"},  # 0.505 → 0.51
        {"description": "Coffee", "unitPrice": "12.34", "taxRate": "8.25"},  # 1.01805 → 1.02
        {"description": "Stamps", "unitPrice": "0.10", "quantity": 3},  # 0.015 → 0.02
    ], finalizeNow=True)  # fmt: skip
    taxes = [(x["taxRate"], x["tax"]["amount"], x["total"]["amount"]) for x in invoice["lines"]]
    assert taxes == [
        ("5", "0.51", "10.61"),
        ("5", "0.51", "10.61"),
        ("8.25", "1.02", "13.36"),
        ("5", "0.02", "0.32"),
    ]
    # Per line, then summed: 2.06, not the 2.05 that rounding the 32.84 subtotal's tax
    # of 2.0525… would give.
    assert amounts(invoice) == ("32.84", "2.06", "34.90", "34.90")


# --------------------------------------------------------------------------- void


VOID = "mutation($id: ID!) { voidInvoice(invoiceId: $id) { id number status voidedAt } }"
UNVOID = "mutation($id: ID!) { unvoidInvoice(invoiceId: $id) { id number status voidedAt } }"


async def test_void_and_unvoid_through_the_api(space: Space) -> None:
    _, account = await space.person("Max Member")
    assert account is not None
    invoice = await space.manual_invoice(account, [{"description": "Desk", "unitPrice": "80.00"}],
                                         dueDate="2026-08-20", finalizeNow=True)  # fmt: skip
    assert (invoice["number"], invoice["status"]) == ("INV-000001", "UPCOMING")

    voided = (await space.ok(VOID, {"id": invoice["id"]}))["voidInvoice"]
    assert (voided["number"], voided["status"]) == ("INV-000001", "VOID")
    assert voided["voidedAt"] is not None
    balance = await space.ok("{ accounts { nodes { id balanceDue { amount } } } }")
    assert {"id": account, "balanceDue": {"amount": "0.00"}} in balance["accounts"]["nodes"]

    # Un-void after its due date has passed: the dates, not the old status, decide.
    space.clock.set(at(2026, 8, 21, 9))
    restored = (await space.ok(UNVOID, {"id": invoice["id"]}))["unvoidInvoice"]
    assert (restored["number"], restored["status"], restored["voidedAt"]) == (
        "INV-000001", "DUE", None,
    )  # fmt: skip
    history = await space.ok(
        "query($id: ID!) { events(filter: {invoiceId: $id}) { nodes { type } } }",
        {"id": invoice["id"]},
    )
    types = [x["type"] for x in history["events"]["nodes"]]
    assert types.index("invoice.voided") < types.index("invoice.unvoided")

    error = await space.refused(UNVOID, {"id": invoice["id"]})
    assert error["extensions"]["code"] == "INVALID_STATE"


# --------------------------------------------------------------------------- roles


async def test_members_book_only_for_their_own_accounts_and_analysts_never_mutate(
    space: Space,
) -> None:
    alice, alice_account = await space.person("Alice Member")
    _, bob_account = await space.person("Bob Member")
    analyst, _ = await space.person("Ana Lyst", role="ANALYST")
    assert alice_account is not None and bob_account is not None
    alice_id, analyst_id = pk(alice), pk(analyst)

    own = await space.book(alice_account, at(2026, 8, 11, 10), at(2026, 8, 11, 11),
                           user_id=alice_id)  # fmt: skip
    assert own

    for who, account in ((alice_id, bob_account), (analyst_id, alice_account)):
        error = await space.refused(BOOK, {"input": booking_input(
            account, at(2026, 8, 12, 10), at(2026, 8, 12, 11), "25.00")}, user_id=who)  # fmt: skip
        assert error["extensions"]["code"] == "FORBIDDEN"
    for mutation in (
        "mutation { runBilling { invoicesFinalized } }",
        "mutation { updateInvoicePolicy(input: {overdueAfterDays: 3}) { overdueAfterDays } }",
    ):
        for who in (alice_id, analyst_id):
            error = await space.refused(mutation, user_id=who)
            assert error["extensions"]["code"] == "FORBIDDEN", (who, mutation)
    error = await space.refused(
        "mutation($id: ID!) { setAutopay(accountId: $id, enabled: false) { autopay } }",
        {"id": alice_account}, user_id=analyst_id,
    )  # fmt: skip
    assert error["extensions"]["code"] == "FORBIDDEN"

    bookings = await space.ok("{ bookings { nodes { id account { id } } } }")
    assert bookings["bookings"]["nodes"] == [{"id": own, "account": {"id": alice_account}}]


# --------------------------------------------------------------------------- events


async def test_every_mutation_writes_events(space: Space) -> None:
    """Each billing mutation, in an order that makes each one meaningful, adds to the
    event log (rules §10.1: every state change is an event in the same transaction)."""
    seen: dict[str, list[str]] = {}
    _, cursor = await space.events_after(None)

    async def step(name: str, query: str, variables: dict[str, Any] | None = None) -> Any:
        nonlocal cursor
        data = await space.ok(query, variables)
        seen[name], cursor = await space.events_after(cursor)
        assert seen[name], f"{name} wrote no event"
        return data[name]

    await step("updateInvoicePolicy", "mutation { updateInvoicePolicy(input: "
               "{overdueAfterDays: 3}) { overdueAfterDays } }")  # fmt: skip
    user = await step(
        "createUser",
        """mutation { createUser(input: {name: "Nia Member",
        email: "nia@example.com"}) { user { id } account { id } } }""",
    )
    account = user["account"]["id"]
    team = await step(
        "createAccount",
        """mutation { createAccount(input:
        {kind: TEAM, name: "Nia's Studio"}) { id } }""",
    )
    await step("addTeamMember", "mutation($t: ID!, $u: ID!) { addTeamMember(teamId: $t, "
               "userId: $u) { id } }", {"t": team["id"], "u": user["user"]["id"]})  # fmt: skip
    await step("setAutopay", "mutation($a: ID!) { setAutopay(accountId: $a, enabled: false) "
               "{ autopay } }", {"a": account})  # fmt: skip
    template = await step(
        "createPlanTemplate",
        """mutation { createPlanTemplate(input:
        {name: "Hot desk", price: "90.00", interval: MONTHLY}) { id } }""",
    )
    subscribe = """mutation($a: ID!, $p: ID!, $s: Date!) { subscribeToPlan(input:
        {accountId: $a, planTemplateId: $p, startDate: $s}) { id } }"""
    plan = await step("subscribeToPlan", subscribe,
                      {"a": account, "p": template["id"], "s": "2026-09-01"})  # fmt: skip
    await step(
        "changePlanEndDate",
        """mutation($p: ID!) { changePlanEndDate(input:
        {planSubscriptionId: $p, endDate: "2026-12-31"}) { endDate } }""",
        {"p": plan["id"]},
    )
    other = await step("subscribeToPlan", subscribe,
                       {"a": team["id"], "p": template["id"], "s": "2026-09-01"})  # fmt: skip
    await step(
        "cancelPlan",
        """mutation($p: ID!) { cancelPlan(input:
        {planSubscriptionId: $p}) { status } }""",
        {"p": other["id"]},
    )
    book = await step("createBooking", BOOK, {"input": booking_input(
        account, at(2026, 8, 20, 10), at(2026, 8, 20, 14), "40.00")})  # fmt: skip
    await step("shortenBooking", """mutation($b: ID!, $e: DateTime!) { shortenBooking(
        bookingId: $b, endsAt: $e) { adjustment } }""",
               {"b": book["id"], "e": iso(at(2026, 8, 20, 12))})  # fmt: skip
    await step("cancelBooking", "mutation($b: ID!) { cancelBooking(bookingId: $b) "
               "{ adjustment } }", {"b": book["id"]})  # fmt: skip
    await step(
        "checkInDayPass",
        """mutation($a: ID!) { checkInDayPass(input:
        {accountId: $a, price: "15.00"}) { id } }""",
        {"a": account},
    )
    await step("addOneTimeCharge", """mutation($a: ID!) { addOneTimeCharge(input:
        {accountId: $a, description: "Locker key", unitPrice: "5.00"}) { id } }""",
               {"a": account})  # fmt: skip
    manual = await step(
        "createManualInvoice",
        """mutation($a: ID!) { createManualInvoice(
        input: {accountId: $a, dueDate: "2026-08-25", lines: [{description: "Mail handling",
        unitPrice: "8.00"}]}) { id status } }""",
        {"a": account},
    )
    assert manual["status"] == "PENDING"
    await step(
        "addInvoiceLine",
        """mutation($i: ID!) { addInvoiceLine(input: {invoiceId: $i,
        description: "Parcel", unitPrice: "3.00"}) { id } }""",
        {"i": manual["id"]},
    )
    lines = (await space.invoice(manual["id"]))["lines"]
    await step("removeLineItem", "mutation($l: ID!) { removeLineItem(lineItemId: $l) "
               "{ invoice { id } } }", {"l": lines[-1]["id"]})  # fmt: skip
    await step("finalizeInvoice", "mutation($i: ID!) { finalizeInvoice(invoiceId: $i) "
               "{ status } }", {"i": manual["id"]})  # fmt: skip
    await step("voidInvoice", VOID, {"id": manual["id"]})
    await step("unvoidInvoice", UNVOID, {"id": manual["id"]})
    space.clock.set(at(2026, 9, 1, 0, 1))
    await step("runBilling", "mutation { runBilling { invoicesFinalized } }")

    assert set(seen) == {
        "updateInvoicePolicy", "createUser", "createAccount", "addTeamMember", "setAutopay",
        "createPlanTemplate", "subscribeToPlan", "changePlanEndDate", "cancelPlan",
        "createBooking", "shortenBooking", "cancelBooking", "checkInDayPass",
        "addOneTimeCharge", "createManualInvoice", "addInvoiceLine", "removeLineItem",
        "finalizeInvoice", "voidInvoice", "unvoidInvoice", "runBilling",
    }  # fmt: skip
    assert "organization.policy_updated" in seen["updateInvoicePolicy"]
    assert "invoice.voided" in seen["voidInvoice"]
    assert "invoice.finalized" in seen["runBilling"]
