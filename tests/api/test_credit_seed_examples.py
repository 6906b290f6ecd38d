"""The worked examples and troubleshooting answers of how-credit-works.txt, through
the GraphQL API over real HTTP (issue 4, "done when").

Each test starts from an empty organization whose staff (an admin and an analyst)
are the only rows written directly; everything else is what an operator's app would
do: mutations to set the policy, open accounts, book, cancel and apply credit, and
``runBilling(asOf)`` while the shared ``FixedClock`` moves, then queries to read the
result. Every test runs on SQLite and PostgreSQL.

``Desk`` is also what tests/api/test_credit_api.py drives.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.auth import issue_token
from models import Role, User
from schema.ids import decode, encode
from services import accounts, policy
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api

_slugs = itertools.count(1)

INVOICE = """
  id number status documentType dueDate issueDate
  total { amount } balanceDue { amount } creditApplied { amount } amountPaid { amount }
  lines { id kind description total { amount } }
  allocations { id amount { amount } removedAt active creditNote { id number } }
"""
CREDIT_NOTE = """
  id number status dueDate issueDate origin
  originalCredit { amount } allocatedCredit { amount } remainingCredit { amount }
  lines { id kind description total { amount } }
  allocations { id amount { amount } kind active removedAt invoice { id number } }
"""


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def pk(global_id: str) -> int:
    decoded = decode(global_id)
    assert decoded is not None, global_id
    return decoded[1]


def amounts(lines: list[dict[str, Any]]) -> list[str]:
    return [line["total"]["amount"] for line in lines]


@dataclass
class Member:
    account: str
    user: User


@dataclass
class Desk:
    """One organization under test. Every call carries a token issued at the clock's
    current instant: tokens expire by that clock, and these tests move it years."""

    api: Api
    clock: FixedClock
    org_id: int
    staff: dict[str, User] = field(default_factory=dict)

    def token(self, who: str | User = "admin") -> str:
        user = self.staff[who] if isinstance(who, str) else who
        return issue_token(SETTINGS, user, self.clock.now())

    async def call(
        self, query: str, variables: dict[str, Any] | None = None, who: str | User = "admin"
    ) -> dict[str, Any]:
        return await self.api.gql(query, variables, token=self.token(who))

    async def ok(
        self, query: str, variables: dict[str, Any] | None = None, who: str | User = "admin"
    ) -> dict[str, Any]:
        body = await self.call(query, variables, who)
        assert not body.get("errors"), body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def refused(
        self, query: str, variables: dict[str, Any] | None = None, who: str | User = "admin"
    ) -> dict[str, Any]:
        """The one error of a refused call; nothing of the mutation came back."""
        body = await self.call(query, variables, who)
        assert body.get("errors"), body
        assert not body.get("data"), body["data"]
        error: dict[str, Any] = body["errors"][0]
        return error

    # -- time ---------------------------------------------------------------

    def at(self, year: int, month: int, day: int, hour: int = 9, minute: int = 0) -> None:
        self.clock.set(at(year, month, day, hour, minute))

    async def bill(self, year: int, month: int, day: int, hour: int = 0) -> dict[str, Any]:
        """Move the clock to that instant and run the billing clock for it."""
        self.clock.set(at(year, month, day, hour))
        data = await self.ok(
            "mutation($asOf: DateTime!) { runBilling(asOf: $asOf) { invoicesFinalized "
            "accountsSkipped } }",
            {"asOf": iso(self.clock.now())},
        )
        run: dict[str, Any] = data["runBilling"]
        assert run["accountsSkipped"] == 0, run
        return run

    # -- people and policy --------------------------------------------------

    async def member(self, name: str) -> Member:
        data = await self.ok(
            "mutation($input: CreateUserInput!) { createUser(input: $input) "
            "{ user { id } account { id } } }",
            {"input": {"email": f"{name.lower()}{next(_slugs)}@hive.test", "name": name}},
        )
        async with self.api.state.sessionmaker() as session:
            user = await session.get(User, pk(data["createUser"]["user"]["id"]))
        assert user is not None
        return Member(account=data["createUser"]["account"]["id"], user=user)

    async def team(self, name: str, *members: Member) -> str:
        data = await self.ok(
            "mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }",
            {"input": {"kind": "TEAM", "name": name}},
        )
        team_id: str = data["createAccount"]["id"]
        for member in members:
            await self.ok(
                "mutation($t: ID!, $u: ID!) { addTeamMember(teamId: $t, userId: $u) { id } }",
                {"t": team_id, "u": encode("User", member.user.id)},
            )
        return team_id

    async def policy(self, **changes: Any) -> None:
        await self.ok(
            "mutation($input: InvoicePolicyInput!) { updateInvoicePolicy(input: $input) "
            "{ additionalCharges } }",
            {"input": changes},
        )

    # -- bookings -------------------------------------------------------------

    async def book(
        self, account: str, start: datetime, price: str, who: str | User = "admin"
    ) -> str:
        data = await self.ok(
            "mutation($input: CreateBookingInput!) { createBooking(input: $input) { id } }",
            {
                "input": {
                    "accountId": account,
                    "resourceName": "Meeting room",
                    "startsAt": iso(start),
                    "endsAt": iso(start + timedelta(hours=1)),
                    "price": price,
                }
            },
            who,
        )
        booking_id: str = data["createBooking"]["id"]
        return booking_id

    async def cancel(
        self, booking: str, *, create_credit: bool | None = None, who: str | User = "admin"
    ) -> dict[str, Any]:
        args = "bookingId: $b" + ("" if create_credit is None else f", createCredit: "
                                  f"{str(create_credit).lower()}")  # fmt: skip
        data = await self.ok(
            f"mutation($b: ID!) {{ cancelBooking({args}) {{ adjustment "
            "creditLine { id total { amount } invoice { id status dueDate } } } }",
            {"b": booking},
            who,
        )
        result: dict[str, Any] = data["cancelBooking"]
        return result

    # -- invoices and credit --------------------------------------------------

    async def invoices(self, account: str) -> list[dict[str, Any]]:
        """The account's invoices (pending and finalized, not credit notes), oldest first."""
        data = await self.ok(
            f"query($a: [ID!]) {{ invoices(first: 100, filter: {{accountId: $a}}) "
            f"{{ nodes {{ {INVOICE} }} }} }}",
            {"a": [account]},
        )
        nodes: list[dict[str, Any]] = data["invoices"]["nodes"]
        return sorted(nodes, key=lambda n: pk(n["id"]))

    async def credit_notes(self, account: str) -> list[dict[str, Any]]:
        data = await self.ok(
            f"query($a: [ID!]) {{ creditNotes(first: 100, filter: {{accountId: $a}}) "
            f"{{ nodes {{ {CREDIT_NOTE} }} }} }}",
            {"a": [account]},
        )
        nodes: list[dict[str, Any]] = data["creditNotes"]["nodes"]
        return sorted(nodes, key=lambda n: pk(n["id"]))

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        data = await self.ok(f"query($id: ID!) {{ invoice(id: $id) {{ {INVOICE} }} }}",
                             {"id": invoice_id})  # fmt: skip
        found: dict[str, Any] = data["invoice"]
        return found

    async def credit_note(self, note_id: str) -> dict[str, Any]:
        data = await self.ok(
            f"query($id: ID!) {{ creditNote(id: $id) {{ {CREDIT_NOTE} }} }}", {"id": note_id}
        )
        found: dict[str, Any] = data["creditNote"]
        return found

    async def available_credit(self, account: str) -> str:
        data = await self.ok(
            "query($id: ID!) { node(id: $id) { ... on Account { availableCredit { amount } } } }",
            {"id": account},
        )
        value: str = data["node"]["availableCredit"]["amount"]
        return value

    async def pay(self, invoice_id: str, amount: str) -> None:
        """Record a cash payment, as the front desk would."""
        data = await self.ok(
            "mutation($input: RecordPaymentInput!) { recordPayment(input: $input) { status } }",
            {"input": {"invoiceId": invoice_id, "amount": amount, "method": "CASH"}},
        )
        assert data["recordPayment"]["status"] == "SUCCEEDED"

    async def manual_invoice(
        self,
        account: str,
        *,
        charge: str | None = None,
        credit: str | None = None,
        due: str | None = None,
        apply_credit: bool = False,
    ) -> dict[str, Any]:
        """A one-line invoice finalized now: a charge is owed (DUE today, UPCOMING for a
        later ``due``), a credit becomes a credit note. ``apply_credit`` is off by
        default so a test decides when credit moves."""
        line: dict[str, Any] = {"description": "Charge" if charge else "Credit"}
        line.update({"unitPrice": charge} if charge else {"creditAmount": credit})
        data = await self.ok(
            f"mutation($input: ManualInvoiceInput!) {{ createManualInvoice(input: $input) "
            f"{{ {INVOICE} }} }}",
            {
                "input": {
                    "accountId": account,
                    "lines": [line],
                    "dueDate": due,
                    "finalizeNow": True,
                    "applyCredit": apply_credit,
                }
            },
        )
        created: dict[str, Any] = data["createManualInvoice"]
        return created

    async def add_credit(self, account: str, amount: str, description: str = "Goodwill") -> Any:
        data = await self.ok(
            f"mutation($a: ID!, $d: String!, $m: Decimal!) {{ addCredit(accountId: $a, "
            f"description: $d, amount: $m) {{ line {{ id total {{ amount }} }} "
            f"invoice {{ {INVOICE} }} creditNote {{ {CREDIT_NOTE} }} }} }}",
            {"a": account, "d": description, "m": amount},
        )
        return data["addCredit"]


async def open_desk(api: Api, clock: FixedClock) -> Desk:
    """An empty organization (billing day 1, UTC, USD, no tax, auto-pay off so nothing
    reaches a gateway) with an admin and an analyst."""
    async with api.state.sessionmaker.begin() as session:
        org = await policy.create_organization(
            session, "Hive Coworking", f"hive-credit-{next(_slugs)}", "USD", clock.now(),
            autopay_default=False,
        )  # fmt: skip
        staff = {}
        for role in (Role.ADMIN, Role.ANALYST):
            name = role.value.lower()
            staff[name] = await accounts.create_user(
                session, org, email=f"{name}@hive.test", name=role.value.title(), role=role,
                now=clock.now(),
            )  # fmt: skip
    return Desk(api=api, clock=clock, org_id=org.id, staff=staff)


# Dates stay in the past of the real calendar: PyJWT refuses a token whose "iat" lies
# ahead of the real time, and tokens are issued at the test clock's instant.
START = at(2024, 1, 4, 9)


@pytest.fixture
async def desk(api: Api, clock: FixedClock) -> Desk:
    clock.set(START)
    return await open_desk(api, clock)


# --------------------------------------------------------------------------- worked examples


async def test_booked_may_1_cancelled_may_15_creates_no_credit(desk: Desk) -> None:
    """Booked May 1 (invoiced June 1), cancelled May 15 → no credit: not yet billed."""
    ada = await desk.member("Ada")
    desk.at(2024, 5, 1)
    booking = await desk.book(ada.account, at(2024, 5, 20, 10), "40.00")
    [pending] = await desk.invoices(ada.account)
    assert (pending["status"], pending["dueDate"]) == ("PENDING", "2024-06-01")
    assert amounts(pending["lines"]) == ["40.00"]

    desk.at(2024, 5, 15)
    result = await desk.cancel(booking)
    assert result == {"adjustment": "REMOVED_FROM_PENDING", "creditLine": None}
    [pending] = await desk.invoices(ada.account)
    assert pending["lines"] == [] and pending["total"]["amount"] == "0.00"

    await desk.bill(2024, 6, 1)
    # The emptied June 1 invoice is discarded: nothing was billed, nothing credited.
    assert await desk.invoices(ada.account) == []
    assert await desk.credit_notes(ada.account) == []
    assert await desk.available_credit(ada.account) == "0.00"


async def test_booked_may_30_paid_june_1_cancelled_june_2_creates_credit(desk: Desk) -> None:
    """Booked May 30, paid June 1, cancelled June 2 → credit (the booking was finalized)."""
    ada = await desk.member("Ada")
    desk.at(2024, 5, 30)
    booking = await desk.book(ada.account, at(2024, 6, 10, 10), "40.00")

    await desk.bill(2024, 6, 1)
    [june] = await desk.invoices(ada.account)
    assert (june["number"], june["status"], june["dueDate"]) == ("INV-000001", "DUE", "2024-06-01")
    desk.at(2024, 6, 1, 12)
    await desk.pay(june["id"], "40.00")
    assert (await desk.invoice(june["id"]))["status"] == "PAID"

    desk.at(2024, 6, 2)
    result = await desk.cancel(booking)
    assert result["adjustment"] == "CREDITED"
    assert result["creditLine"]["total"]["amount"] == "-40.00"
    # NEXT_PENDING_INVOICE: the credit line lands on the July 1 pending invoice…
    landing = result["creditLine"]["invoice"]
    assert (landing["status"], landing["dueDate"]) == ("PENDING", "2024-07-01")
    june_after = await desk.invoice(june["id"])
    assert (june_after["status"], amounts(june_after["lines"])) == ("PAID", ["40.00"])

    # …which, holding nothing else, finalizes into a credit note on July 1.
    await desk.bill(2024, 7, 1)
    [note] = await desk.credit_notes(ada.account)
    assert (note["number"], note["status"]) == ("CN-000001", "AVAILABLE")
    assert note["originalCredit"]["amount"] == note["remainingCredit"]["amount"] == "40.00"
    assert await desk.available_credit(ada.account) == "40.00"


async def test_a_march_10_credit_offsets_the_april_1_pending_invoice(desk: Desk) -> None:
    """The April 1 pending invoice already holds room bookings; a $20 credit from a
    March 10 cancellation is added to it to offset them."""
    ada = await desk.member("Ada")
    desk.at(2024, 2, 20)
    paid_booking = await desk.book(ada.account, at(2024, 3, 15, 10), "20.00")
    await desk.bill(2024, 3, 1)
    [march] = await desk.invoices(ada.account)
    await desk.pay(march["id"], "20.00")

    desk.at(2024, 3, 5)
    await desk.book(ada.account, at(2024, 4, 6, 10), "50.00")
    await desk.book(ada.account, at(2024, 4, 7, 10), "30.00")
    desk.at(2024, 3, 10)
    result = await desk.cancel(paid_booking)
    assert (result["adjustment"], result["creditLine"]["total"]["amount"]) == ("CREDITED", "-20.00")

    _, april = await desk.invoices(ada.account)
    assert (april["status"], april["dueDate"]) == ("PENDING", "2024-04-01")
    assert amounts(april["lines"]) == ["50.00", "30.00", "-20.00"]
    assert april["total"]["amount"] == "60.00"
    assert await desk.credit_notes(ada.account) == []  # pending credit is not a credit note

    await desk.bill(2024, 4, 1)
    april = await desk.invoice(april["id"])
    assert (april["number"], april["status"], april["total"]["amount"]) == (
        "INV-000002", "DUE", "60.00",
    )  # fmt: skip
    march = await desk.invoice(march["id"])
    assert (march["status"], amounts(march["lines"])) == ("PAID", ["20.00"])


async def test_with_march_1_finalized_a_15_dollar_credit_is_a_new_credit_note(desk: Desk) -> None:
    """The March 1 invoice is finalized; on March 10 the admin adds a $15 credit: a new
    finalized document (a credit note) holds it, the March 1 invoice is untouched."""
    ada = await desk.member("Ada")
    desk.at(2024, 2, 20)
    await desk.book(ada.account, at(2024, 3, 3, 10), "25.00")
    await desk.bill(2024, 3, 1)
    [march] = await desk.invoices(ada.account)
    await desk.pay(march["id"], "25.00")
    march = await desk.invoice(march["id"])
    await desk.policy(additionalCharges="NEW_INVOICE_DUE_TODAY", dueTodayGraceMinutes=0)

    desk.at(2024, 3, 10)
    added = await desk.add_credit(ada.account, "15.00", "Sorry about the noisy room")
    note = added["creditNote"]
    assert note is not None
    assert (note["number"], note["status"], note["issueDate"]) == (
        "CN-000001", "AVAILABLE", "2024-03-10",
    )  # fmt: skip
    assert note["remainingCredit"]["amount"] == "15.00"
    assert amounts(note["lines"]) == ["-15.00"]
    assert added["line"]["id"] == note["lines"][0]["id"]
    assert await desk.invoice(march["id"]) == march


async def test_a_march_20_day_pass_goes_on_a_new_invoice(desk: Desk) -> None:
    """A finalized March 10 invoice holds earlier bookings; a March 20 day pass is put
    on a new invoice, and the March 10 one does not change."""
    ada = await desk.member("Ada")
    await desk.policy(additionalCharges="NEW_INVOICE_DUE_TODAY", dueTodayGraceMinutes=60)
    desk.at(2024, 3, 10, 9)
    await desk.book(ada.account, at(2024, 3, 12, 10), "30.00")
    desk.at(2024, 3, 10, 9, 30)
    await desk.book(ada.account, at(2024, 3, 13, 10), "45.00")
    await desk.bill(2024, 3, 10, 11)  # past the grace: the due-today invoice finalizes
    [march_10] = await desk.invoices(ada.account)
    assert (march_10["number"], march_10["status"], march_10["dueDate"]) == (
        "INV-000001", "DUE", "2024-03-10",
    )  # fmt: skip
    assert amounts(march_10["lines"]) == ["30.00", "45.00"]

    desk.at(2024, 3, 20, 9)
    await desk.ok(
        "mutation($input: DayPassInput!) { checkInDayPass(input: $input) { id } }",
        {"input": {"accountId": ada.account, "price": "18.00"}},
    )
    await desk.bill(2024, 3, 20, 11)
    first, day_pass = await desk.invoices(ada.account)
    # Only time moved it on (DUE → OVERDUE after 7 days); its lines and total did not.
    assert first["id"] == march_10["id"] and first["number"] == "INV-000001"
    assert (first["lines"], first["total"]) == (march_10["lines"], march_10["total"])
    assert (day_pass["number"], day_pass["status"], day_pass["dueDate"]) == (
        "INV-000002", "DUE", "2024-03-20",
    )  # fmt: skip
    assert amounts(day_pass["lines"]) == ["18.00"]


# --------------------------------------------------------------------------- troubleshooting


async def test_credit_stuck_on_a_pending_invoice_is_not_applied(desk: Desk) -> None:
    """ "Credit is attached to a pending invoice and is not free to apply" — until an
    admin moves the line onto the due invoice."""
    ada = await desk.member("Ada")
    due = await desk.manual_invoice(ada.account, charge="50.00")
    added = await desk.add_credit(ada.account, "20.00")
    assert added["creditNote"] is None and added["invoice"]["status"] == "PENDING"

    assert await desk.available_credit(ada.account) == "0.00"
    data = await desk.ok(
        "mutation($i: ID!) { applyAvailableCredit(invoiceId: $i) { allocations { id } "
        "invoice { status balanceDue { amount } } } }",
        {"i": due["id"]},
    )
    assert data["applyAvailableCredit"] == {
        "allocations": [], "invoice": {"status": "DUE", "balanceDue": {"amount": "50.00"}},
    }  # fmt: skip
    assert (await desk.invoice(due["id"]))["allocations"] == []

    # "The invoice eligible for credit is finalized": once the pending invoice holding
    # the credit finalizes (Feb 1) it is a credit note, and that pays the due invoice.
    await desk.bill(2024, 2, 1)
    [note] = await desk.credit_notes(ada.account)
    assert (note["status"], note["allocations"][0]["kind"]) == ("CONSUMED", "AUTOMATIC")
    assert (await desk.invoice(due["id"]))["balanceDue"]["amount"] == "30.00"


async def test_credit_on_a_pending_invoice_moved_onto_the_due_invoice_pays_it(desk: Desk) -> None:
    ada = await desk.member("Ada")
    due = await desk.manual_invoice(ada.account, charge="50.00")
    added = await desk.add_credit(ada.account, "20.00")
    data = await desk.ok(
        f"mutation($l: ID!, $i: ID!) {{ moveCreditLine(lineItemId: $l, invoiceId: $i) {{ "
        f"creditNote {{ {CREDIT_NOTE} }} invoice {{ {INVOICE} }} "
        f"sourceInvoice {{ status lines {{ id }} total {{ amount }} }} }} }}",
        {"l": added["line"]["id"], "i": due["id"]},
    )
    moved = data["moveCreditLine"]
    assert moved["sourceInvoice"] == {"status": "PENDING", "lines": [], "total": {"amount": "0.00"}}
    assert moved["creditNote"]["number"] == "CN-000001"
    assert moved["creditNote"]["status"] == "CONSUMED"
    assert moved["invoice"]["balanceDue"]["amount"] == "30.00"
    assert moved["invoice"]["status"] == "DUE"


async def test_with_auto_apply_off_only_a_manual_finalize_applies_credit(desk: Desk) -> None:
    """ "Automatically use available credit…" OFF: automatic finalization leaves the
    invoice owed; the setting does not govern manual finalization (applyCredit)."""
    ada = await desk.member("Ada")
    await desk.policy(autoApplyCredit=False)
    note = await desk.manual_invoice(ada.account, credit="30.00")
    assert note["documentType"] == "CREDIT_NOTE"

    desk.at(2024, 1, 10)
    await desk.book(ada.account, at(2024, 2, 3, 10), "25.00")
    await desk.bill(2024, 2, 1)
    [february] = await desk.invoices(ada.account)
    assert (february["status"], february["balanceDue"]["amount"]) == ("DUE", "25.00")
    assert february["allocations"] == []
    assert await desk.available_credit(ada.account) == "30.00"

    desk.at(2024, 2, 2)
    await desk.book(ada.account, at(2024, 2, 20, 10), "10.00")  # onto the March 1 invoice
    _, march = await desk.invoices(ada.account)

    # A credit note that finalizes automatically does not pay the owed invoice either.
    await desk.policy(additionalCharges="NEW_INVOICE_DUE_TODAY", dueTodayGraceMinutes=0)
    added = await desk.add_credit(ada.account, "5.00")
    assert (added["creditNote"]["status"], added["creditNote"]["allocations"]) == ("AVAILABLE", [])
    assert (await desk.invoice(february["id"]))["balanceDue"]["amount"] == "25.00"

    data = await desk.ok(
        "mutation($i: ID!) { finalizeInvoice(invoiceId: $i) { status creditApplied { amount } "
        "allocations { kind amount { amount } creditNote { id } } } }",
        {"i": march["id"]},
    )
    finalized = data["finalizeInvoice"]
    assert (finalized["status"], finalized["creditApplied"]) == ("PAID", {"amount": "10.00"})
    [allocation] = finalized["allocations"]
    assert (allocation["kind"], allocation["amount"]) == ("MANUAL", {"amount": "10.00"})
    assert pk(allocation["creditNote"]["id"]) == pk(note["id"])  # the older credit note
    assert await desk.available_credit(ada.account) == "25.00"
    assert (await desk.invoice(february["id"]))["balanceDue"]["amount"] == "25.00"


async def test_with_auto_apply_on_automatic_finalization_uses_credit(desk: Desk) -> None:
    ada = await desk.member("Ada")
    await desk.manual_invoice(ada.account, credit="30.00")
    desk.at(2024, 1, 10)
    await desk.book(ada.account, at(2024, 2, 3, 10), "25.00")
    await desk.bill(2024, 2, 1)
    [february] = await desk.invoices(ada.account)
    assert (february["status"], february["creditApplied"]["amount"]) == ("PAID", "25.00")
    assert await desk.available_credit(ada.account) == "5.00"


async def test_team_credit_does_not_pay_a_personal_invoice(desk: Desk) -> None:
    """ "Credit is assigned to the team invoice, not the personal invoice."""
    ada = await desk.member("Ada")
    team = await desk.team("Acme Studio", ada)
    team_note = await desk.manual_invoice(team, credit="40.00")
    personal = await desk.manual_invoice(ada.account, charge="25.00")

    error = await desk.refused(
        "mutation($n: ID!, $i: ID!) { allocateCredit(creditNoteId: $n, invoiceId: $i, "
        'amount: "25.00") { id } }',
        {"n": team_note["id"], "i": personal["id"]},
    )
    assert error["extensions"]["code"] == "VALIDATION"
    assert "a team's credit never pays a personal invoice" in error["message"]
    assert "credit only pays invoices of its own account" in error["message"]

    applied = await desk.ok(
        "mutation($i: ID!) { applyAvailableCredit(invoiceId: $i) { allocations { id } } }",
        {"i": personal["id"]},
    )
    assert applied["applyAvailableCredit"]["allocations"] == []
    assert (await desk.invoice(personal["id"]))["balanceDue"]["amount"] == "25.00"
    assert await desk.available_credit(team) == "40.00"


async def test_removing_an_allocation_makes_the_credit_unassigned_again(desk: Desk) -> None:
    """ "Does removing credit from an applied invoice delete it? No — it becomes
    unassigned credit that you can reapply to another invoice."""
    ada = await desk.member("Ada")
    note = await desk.manual_invoice(ada.account, credit="30.00")
    first = await desk.manual_invoice(ada.account, charge="30.00")
    allocated = await desk.ok(
        "mutation($n: ID!, $i: ID!) { allocateCredit(creditNoteId: $n, invoiceId: $i, "
        'amount: "30.00") { id invoice { status } creditNote { status remainingCredit '
        "{ amount } } } }",
        {"n": note["id"], "i": first["id"]},
    )
    allocation = allocated["allocateCredit"]
    assert allocation["invoice"]["status"] == "PAID"
    assert allocation["creditNote"] == {"status": "CONSUMED", "remainingCredit": {"amount": "0.00"}}

    desk.at(2024, 1, 5)
    removed = await desk.ok(
        "mutation($a: ID!) { removeCreditAllocation(allocationId: $a) { active removedAt "
        "invoice { status balanceDue { amount } } creditNote { status remainingCredit "
        "{ amount } } } }",
        {"a": allocation["id"]},
    )
    assert removed["removeCreditAllocation"] == {
        "active": False,
        "removedAt": "2024-01-05T09:00:00+00:00",
        "invoice": {"status": "DUE", "balanceDue": {"amount": "30.00"}},
        "creditNote": {"status": "AVAILABLE", "remainingCredit": {"amount": "30.00"}},
    }
    # The allocation row stays, marked removed: the trail is kept.
    [row] = (await desk.credit_note(note["id"]))["allocations"]
    assert (row["id"], row["active"]) == (allocation["id"], False)

    second = await desk.manual_invoice(ada.account, charge="12.00")
    reapplied = await desk.ok(
        "mutation($n: ID!, $i: ID!) { allocateCredit(creditNoteId: $n, invoiceId: $i, "
        'amount: "12.00") { creditNote { remainingCredit { amount } } } }',
        {"n": note["id"], "i": second["id"]},
    )
    assert reapplied["allocateCredit"]["creditNote"]["remainingCredit"]["amount"] == "18.00"


async def test_credit_never_expires(desk: Desk) -> None:
    """ "Does credit expire? Credit does not expire, unless manually removed."""
    ada = await desk.member("Ada")
    note = await desk.manual_invoice(ada.account, credit="35.00")

    desk.at(2026, 1, 10)  # two years on
    await desk.book(ada.account, at(2026, 1, 20, 10), "35.00")
    await desk.bill(2026, 2, 1)
    [february] = await desk.invoices(ada.account)
    assert (february["status"], february["creditApplied"]["amount"]) == ("PAID", "35.00")
    [allocation] = february["allocations"]
    assert pk(allocation["creditNote"]["id"]) == pk(note["id"])
    assert (await desk.credit_note(note["id"]))["status"] == "CONSUMED"


async def test_credit_is_spent_oldest_credit_note_first(desk: Desk) -> None:
    ada = await desk.member("Ada")
    older = await desk.manual_invoice(ada.account, credit="10.00")
    desk.at(2024, 1, 6)
    newer = await desk.manual_invoice(ada.account, credit="30.00")
    owed = await desk.manual_invoice(ada.account, charge="25.00")
    data = await desk.ok(
        "mutation($i: ID!) { applyAvailableCredit(invoiceId: $i) { allocations { kind "
        "amount { amount } creditNote { id } } invoice { status } } }",
        {"i": owed["id"]},
    )
    applied = data["applyAvailableCredit"]
    assert applied["invoice"]["status"] == "PAID"
    assert [(pk(a["creditNote"]["id"]), a["amount"]["amount"], a["kind"])
            for a in applied["allocations"]] == [
        (pk(older["id"]), "10.00", "MANUAL"), (pk(newer["id"]), "15.00", "MANUAL"),
    ]  # fmt: skip


async def test_a_new_credit_note_pays_the_oldest_outstanding_invoice_first(desk: Desk) -> None:
    ada = await desk.member("Ada")
    later = await desk.manual_invoice(ada.account, charge="20.00", due="2024-01-20")
    earlier = await desk.manual_invoice(ada.account, charge="20.00")
    assert (later["status"], earlier["status"]) == ("UPCOMING", "DUE")
    await desk.policy(additionalCharges="NEW_INVOICE_DUE_TODAY", dueTodayGraceMinutes=0)

    added = await desk.add_credit(ada.account, "25.00")
    note = added["creditNote"]
    assert note["status"] == "CONSUMED"
    assert [(pk(a["invoice"]["id"]), a["amount"]["amount"], a["kind"])
            for a in note["allocations"]] == [
        (pk(earlier["id"]), "20.00", "AUTOMATIC"), (pk(later["id"]), "5.00", "AUTOMATIC"),
    ]  # fmt: skip
    assert (await desk.invoice(earlier["id"]))["status"] == "PAID"
    assert (await desk.invoice(later["id"]))["balanceDue"]["amount"] == "15.00"


async def test_do_not_create_invoice_credit_creates_none(desk: Desk) -> None:
    """An admin's "Do not create invoice credit" on a paid booking."""
    ada = await desk.member("Ada")
    desk.at(2024, 1, 10)
    booking = await desk.book(ada.account, at(2024, 2, 10, 10), "40.00")
    await desk.bill(2024, 2, 1)
    [february] = await desk.invoices(ada.account)
    await desk.pay(february["id"], "40.00")

    desk.at(2024, 2, 3)
    result = await desk.cancel(booking, create_credit=False)
    assert result == {"adjustment": "CREDIT_DECLINED", "creditLine": None}
    assert len(await desk.invoices(ada.account)) == 1  # no pending invoice was opened
    assert await desk.available_credit(ada.account) == "0.00"


async def test_an_invoiced_but_unpaid_booking_creates_no_credit(desk: Desk) -> None:
    ada = await desk.member("Ada")
    desk.at(2024, 1, 10)
    booking = await desk.book(ada.account, at(2024, 2, 10, 10), "40.00")
    await desk.bill(2024, 2, 1)
    desk.at(2024, 2, 3)
    result = await desk.cancel(booking)
    assert result == {"adjustment": "UNPAID_NO_CREDIT", "creditLine": None}
    [february] = await desk.invoices(ada.account)
    assert (february["status"], amounts(february["lines"])) == ("DUE", ["40.00"])


async def test_a_free_booking_creates_no_credit(desk: Desk) -> None:
    ada = await desk.member("Ada")
    booking = await desk.book(ada.account, at(2024, 1, 20, 10), "0")
    assert await desk.invoices(ada.account) == []
    result = await desk.cancel(booking)
    assert result == {"adjustment": "NOTHING_CHARGED", "creditLine": None}
    assert await desk.invoices(ada.account) == []
    assert await desk.available_credit(ada.account) == "0.00"


async def test_a_members_own_cancellation_of_a_paid_booking_always_credits(desk: Desk) -> None:
    """Credit is generated automatically when a user cancels via the app."""
    ada = await desk.member("Ada")
    desk.at(2024, 1, 10)
    booking = await desk.book(ada.account, at(2024, 2, 10, 10), "40.00", who=ada.user)
    await desk.bill(2024, 2, 1)
    [february] = await desk.invoices(ada.account)
    await desk.pay(february["id"], "40.00")
    desk.at(2024, 2, 3)
    # A member cannot decline: their own cancellation of a paid booking credits it.
    result = await desk.cancel(booking, create_credit=False, who=ada.user)
    assert result["adjustment"] == "CREDITED"
    assert result["creditLine"]["total"]["amount"] == "-40.00"
