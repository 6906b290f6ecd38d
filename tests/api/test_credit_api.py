"""The credit mutations over real HTTP: each one's happy path, its refusals with their
codes (VALIDATION, INVALID_STATE, NOT_FOUND, FORBIDDEN for members and analysts,
CONFLICT for a reused idempotency key), and proof that a refused call changed
nothing — every invoice, credit note, allocation and the event log read the same
before and after. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from models import Account, AccountKind, LineKind, Organization
from schema.ids import encode
from services import accounts, invoices, policy
from services.clock import FixedClock
from tests.api.conftest import Api
from tests.api.test_credit_seed_examples import (
    CREDIT_NOTE,
    INVOICE,
    START,
    Desk,
    Member,
    amounts,
    at,
    open_desk,
    pk,
)

ALLOCATE = (
    "mutation($n: ID!, $i: ID!, $m: Decimal!, $k: String) { allocateCredit(creditNoteId: $n, "
    "invoiceId: $i, amount: $m, idempotencyKey: $k) { id kind amount { amount } active "
    "createdBy { email } creditNote { id status remainingCredit { amount } } "
    "invoice { id status balanceDue { amount } creditApplied { amount } } } }"
)
REMOVE = (
    "mutation($a: ID!, $k: String) { removeCreditAllocation(allocationId: $a, "
    "idempotencyKey: $k) { id active removedAt invoice { status balanceDue { amount } } "
    "creditNote { status remainingCredit { amount } } } }"
)
MOVE = (
    "mutation($l: ID!, $i: ID!, $k: String) { moveCreditLine(lineItemId: $l, invoiceId: $i, "
    f"idempotencyKey: $k) {{ creditNote {{ {CREDIT_NOTE} }} allocation {{ id kind amount "
    "{ amount } } invoice { status balanceDue { amount } } sourceInvoice { id status "
    "lines { id } total { amount } } } }"
)
VOID = (
    "mutation($n: ID!, $k: String) { voidCreditNote(creditNoteId: $n, idempotencyKey: $k) "
    "{ id status voidedAt remainingCredit { amount } } }"
)
ADD = (
    "mutation($a: ID!, $d: String!, $m: Decimal!, $k: String) { addCredit(accountId: $a, "
    "description: $d, amount: $m, idempotencyKey: $k) { line { id kind description "
    "total { amount } tax { amount } } invoice { id status dueDate total { amount } } "
    "creditNote { id } } }"
)
APPLY = (
    "mutation($i: ID!, $k: String) { applyAvailableCredit(invoiceId: $i, idempotencyKey: $k) "
    "{ invoice { status balanceDue { amount } } allocations { id kind amount { amount } "
    "creditNote { id } } } }"
)
STATE = (
    f"{{ invoices(first: 100) {{ nodes {{ {INVOICE} }} }} "
    f"creditNotes(first: 100) {{ nodes {{ {CREDIT_NOTE} }} }} "
    "events(first: 100) { totalCount } }"
)


@pytest.fixture
async def desk(api: Api, clock: FixedClock) -> Desk:
    clock.set(START)
    return await open_desk(api, clock)


@dataclass
class Ledger:
    """Ada owes a DUE $50 invoice and holds a $30 credit note (CN-000001); a $20 credit
    line waits on her pending February invoice; Bob owes a DUE $40 invoice."""

    ada: Member
    bob: Member
    note: str
    due: str
    pending: str
    pending_credit_line: str
    bobs_invoice: str


async def _member(session: Any, org: Organization, name: str, now: Any) -> tuple[Member, Account]:
    user = await accounts.create_user(
        session, org, email=f"{name.lower()}@hive.test", name=name, now=now
    )
    account = await accounts.create_account(session, org, kind=AccountKind.USER, user=user, now=now)
    return Member(account=encode("Account", account.id), user=user), account


@pytest.fixture
async def ledger(desk: Desk) -> Ledger:
    """Written through the services in one transaction: these tests are about the
    credit mutations, and the seed examples already drive the setup through the API."""
    now = desk.clock.now()
    async with desk.api.state.sessionmaker.begin() as session:
        org = await policy.get_organization(session, desk.org_id)
        ada, ada_account = await _member(session, org, "Ada", now)
        bob, bob_account = await _member(session, org, "Bob", now)

        async def manual(account: Account, line: Any) -> str:
            invoice = await invoices.create_manual_invoice(
                session, org, account, [line], now, finalize_now=True, apply_credit=False
            )
            return encode("Invoice", invoice.id)

        note = await manual(ada_account, invoices.ManualCredit(description="Credit", amount=3000))
        due = await manual(ada_account, invoices.ManualCharge(description="Desk", unit_price=5000))
        bobs = await manual(bob_account, invoices.ManualCharge(description="Desk", unit_price=4000))
        line = await invoices.place_additional_charge(
            session, org, ada_account,
            invoices.LineSpec(description="Goodwill", unit_price=-2000, kind=LineKind.CREDIT),
            now,
        )  # fmt: skip
    return Ledger(
        ada=ada, bob=bob, note=note, due=due, pending=encode("Invoice", line.invoice_id),
        pending_credit_line=encode("LineItem", line.id), bobs_invoice=bobs,
    )  # fmt: skip


async def state(desk: Desk) -> dict[str, Any]:
    return await desk.ok(STATE)


async def refusals(desk: Desk, calls: list[tuple[str, dict[str, Any], Any, str, str]]) -> None:
    """Each (query, variables, who, code, words) is refused with that code and a
    message containing those words, and the books read the same afterwards."""
    before = await state(desk)
    for query, variables, who, code, words in calls:
        error = await desk.refused(query, variables, who)
        assert error["extensions"]["code"] == code, (variables, error)
        assert words in error["message"], (words, error["message"])
    assert await state(desk) == before


def missing(type_name: str) -> str:
    return encode(type_name, 987_654)


# --------------------------------------------------------------------------- allocateCredit


async def test_allocate_credit_applies_part_of_a_credit_note_once_per_key(
    desk: Desk, ledger: Ledger
) -> None:
    variables = {"n": ledger.note, "i": ledger.due, "m": "20.00", "k": "alloc-1"}
    allocation = (await desk.ok(ALLOCATE, variables))["allocateCredit"]
    assert allocation["kind"] == "MANUAL" and allocation["active"] is True
    assert allocation["amount"]["amount"] == "20.00"
    assert allocation["createdBy"]["email"] == "admin@hive.test"
    assert allocation["creditNote"]["status"] == "AVAILABLE"
    assert allocation["creditNote"]["remainingCredit"]["amount"] == "10.00"
    assert allocation["invoice"]["status"] == "DUE"  # a partial payment is not a status
    assert allocation["invoice"]["balanceDue"]["amount"] == "30.00"

    # The same key again: the first answer, and the credit moved once.
    assert (await desk.ok(ALLOCATE, variables))["allocateCredit"] == allocation
    assert len((await desk.credit_note(ledger.note))["allocations"]) == 1
    error = await desk.refused(ALLOCATE, {**variables, "m": "5.00"})
    assert error["extensions"]["code"] == "CONFLICT"

    history = await desk.ok(
        "query($id: ID!) { invoice(id: $id) { balanceDue { amount } history { type payload } } }",
        {"id": ledger.due},
    )
    assert history["invoice"]["balanceDue"]["amount"] == "30.00"
    [event] = [e for e in history["invoice"]["history"] if e["type"] == "credit.allocated"]
    assert event["payload"]["amount"] == 2000 and event["payload"]["kind"] == "MANUAL"


async def test_allocate_credit_refusals_change_nothing(
    desk: Desk, ledger: Ledger, api: Api, clock: FixedClock
) -> None:
    paid = await desk.manual_invoice(ledger.ada.account, charge="10.00")
    await desk.pay(paid["id"], "10.00")
    small = await desk.manual_invoice(ledger.ada.account, charge="5.00")
    spent = await desk.manual_invoice(ledger.ada.account, credit="5.00")
    await desk.ok(ALLOCATE, {"n": spent["id"], "i": small["id"], "m": "5.00"})
    void = await desk.manual_invoice(ledger.ada.account, credit="8.00")
    await desk.ok(VOID, {"n": void["id"]})
    owed_five = await desk.manual_invoice(ledger.ada.account, charge="5.00")
    rival = await open_desk(api, clock)
    rival_note = await rival.manual_invoice((await rival.member("Mallory")).account, credit="9.00")

    def allocate(note: str, invoice: str, amount: str = "5.00") -> dict[str, Any]:
        return {"n": note, "i": invoice, "m": amount}

    n, due = ledger.note, ledger.due
    await refusals(desk, [
        (ALLOCATE, allocate(n, due), ledger.ada.user, "FORBIDDEN", "Only ADMIN"),
        (ALLOCATE, allocate(n, due), "analyst", "FORBIDDEN", "Only ADMIN"),
        (ALLOCATE, allocate(n, due, "0"), "admin", "VALIDATION", "greater than zero"),
        (ALLOCATE, allocate(n, due, "-5.00"), "admin", "VALIDATION", "greater than zero"),
        (ALLOCATE, allocate(n, due, "1.234"), "admin", "VALIDATION", "decimal places"),
        (ALLOCATE, allocate(n, due, "30.01"), "admin", "VALIDATION", "has only $30.00"),
        (ALLOCATE, allocate(n, paid["id"]), "admin", "INVALID_STATE", "is paid"),
        (ALLOCATE, allocate(n, small["id"], "6.00"), "admin", "INVALID_STATE", "is paid"),
        (ALLOCATE, allocate(n, owed_five["id"], "6.00"), "admin", "VALIDATION",
         "would pay more than is owed"),
        (ALLOCATE, allocate(n, ledger.pending), "admin", "INVALID_STATE", "still pending"),
        (ALLOCATE, allocate(due, due), "admin", "VALIDATION", "cannot be applied to itself"),
        (ALLOCATE, allocate(paid["id"], due), "admin", "VALIDATION", "is not a credit note"),
        (ALLOCATE, allocate(n, spent["id"]), "admin", "VALIDATION", "is a credit note"),
        (ALLOCATE, allocate(spent["id"], due), "admin", "INVALID_STATE", "fully used"),
        (ALLOCATE, allocate(void["id"], due), "admin", "INVALID_STATE", "is void"),
        (ALLOCATE, allocate(n, ledger.bobs_invoice), "admin", "VALIDATION",
         "credit only pays invoices of its own account"),
        (ALLOCATE, allocate("nope", due), "admin", "VALIDATION", "`creditNoteId` must be"),
        (ALLOCATE, allocate(n, ledger.ada.account), "admin", "VALIDATION", "`invoiceId` must be"),
        (ALLOCATE, allocate(missing("CreditNote"), due), "admin", "NOT_FOUND", "No credit note"),
        (ALLOCATE, allocate(n, missing("Invoice")), "admin", "NOT_FOUND", "No invoice"),
        (ALLOCATE, allocate(rival_note["id"], due), "admin", "NOT_FOUND", "No credit note"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- removeCreditAllocation


async def test_remove_allocation_and_its_refusals(desk: Desk, ledger: Ledger) -> None:
    made = await desk.ok(ALLOCATE, {"n": ledger.note, "i": ledger.due, "m": "30.00"})
    allocation = made["allocateCredit"]["id"]
    await refusals(desk, [
        (REMOVE, {"a": allocation}, ledger.ada.user, "FORBIDDEN", "Only ADMIN"),
        (REMOVE, {"a": allocation}, "analyst", "FORBIDDEN", "Only ADMIN"),
        (REMOVE, {"a": ledger.due}, "admin", "VALIDATION", "`allocationId` must be"),
        (REMOVE, {"a": missing("CreditAllocation")}, "admin", "NOT_FOUND", "No credit allocation"),
    ])  # fmt: skip

    desk.at(2024, 1, 6)
    removed = (await desk.ok(REMOVE, {"a": allocation, "k": "rm-1"}))["removeCreditAllocation"]
    assert removed == {
        "id": allocation, "active": False, "removedAt": "2024-01-06T09:00:00+00:00",
        "invoice": {"status": "DUE", "balanceDue": {"amount": "50.00"}},
        "creditNote": {"status": "AVAILABLE", "remainingCredit": {"amount": "30.00"}},
    }  # fmt: skip
    replay = (await desk.ok(REMOVE, {"a": allocation, "k": "rm-1"}))["removeCreditAllocation"]
    assert replay == removed
    await refusals(desk, [
        (REMOVE, {"a": allocation}, "admin", "INVALID_STATE", "was already removed"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- moveCreditLine


async def test_move_credit_line_onto_a_due_invoice(desk: Desk, ledger: Ledger) -> None:
    data = await desk.ok(MOVE, {"l": ledger.pending_credit_line, "i": ledger.due})
    moved = data["moveCreditLine"]
    assert moved["sourceInvoice"]["id"] == ledger.pending
    assert moved["sourceInvoice"]["lines"] == [] and moved["sourceInvoice"]["status"] == "PENDING"
    note = moved["creditNote"]
    assert (note["number"], note["status"], note["origin"]) == ("CN-000002", "CONSUMED",
                                                                 "MOVED_LINE")  # fmt: skip
    assert [line["id"] for line in note["lines"]] == [ledger.pending_credit_line]
    assert moved["allocation"]["kind"] == "MANUAL"
    assert moved["allocation"]["amount"]["amount"] == "20.00"
    assert moved["invoice"] == {"status": "DUE", "balanceDue": {"amount": "30.00"}}
    # The older credit note was not touched: moving a line spends only that line.
    assert (await desk.credit_note(ledger.note))["remainingCredit"]["amount"] == "30.00"


async def test_moved_credit_beyond_the_balance_stays_available(desk: Desk, ledger: Ledger) -> None:
    small = await desk.manual_invoice(ledger.ada.account, charge="15.00")
    moved = await desk.ok(MOVE, {"l": ledger.pending_credit_line, "i": small["id"]})
    note = moved["moveCreditLine"]["creditNote"]
    assert (note["status"], note["remainingCredit"]["amount"]) == ("AVAILABLE", "5.00")
    assert moved["moveCreditLine"]["invoice"] == {"status": "PAID",
                                                  "balanceDue": {"amount": "0.00"}}  # fmt: skip


async def test_move_credit_line_refusals_change_nothing(desk: Desk, ledger: Ledger) -> None:
    desk.at(2024, 1, 5)
    booking = await desk.book(ledger.ada.account, at(2024, 1, 20, 10), "25.00")
    assert booking
    pending = await desk.invoice(ledger.pending)
    charge_line = next(line["id"] for line in pending["lines"] if line["kind"] == "BOOKING")
    note_line = (await desk.credit_note(ledger.note))["lines"][0]["id"]
    line = ledger.pending_credit_line
    paid = await desk.manual_invoice(ledger.ada.account, charge="10.00")
    await desk.pay(paid["id"], "10.00")
    await refusals(desk, [
        (MOVE, {"l": line, "i": ledger.due}, ledger.ada.user, "FORBIDDEN", "Only ADMIN"),
        (MOVE, {"l": line, "i": ledger.due}, "analyst", "FORBIDDEN", "Only ADMIN"),
        (MOVE, {"l": charge_line, "i": ledger.due}, "admin", "VALIDATION", "is a charge"),
        (MOVE, {"l": note_line, "i": ledger.due}, "admin", "INVALID_STATE",
         "Only credit lines on a pending invoice"),
        (MOVE, {"l": line, "i": ledger.pending}, "admin", "INVALID_STATE", "is pending"),
        (MOVE, {"l": line, "i": paid["id"]}, "admin", "INVALID_STATE", "is paid"),
        (MOVE, {"l": line, "i": ledger.bobs_invoice}, "admin", "VALIDATION",
         "credit only pays invoices of its own account"),
        (MOVE, {"l": ledger.due, "i": ledger.due}, "admin", "VALIDATION", "`lineItemId` must be"),
        (MOVE, {"l": missing("LineItem"), "i": ledger.due}, "admin", "NOT_FOUND", "No line item"),
        (MOVE, {"l": line, "i": missing("Invoice")}, "admin", "NOT_FOUND", "No invoice"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- voidCreditNote


async def test_void_credit_note_and_its_refusals(desk: Desk, ledger: Ledger) -> None:
    made = await desk.ok(ALLOCATE, {"n": ledger.note, "i": ledger.due, "m": "10.00"})
    await refusals(desk, [
        (VOID, {"n": ledger.note}, ledger.ada.user, "FORBIDDEN", "Only ADMIN"),
        (VOID, {"n": ledger.note}, "analyst", "FORBIDDEN", "Only ADMIN"),
        (VOID, {"n": ledger.note}, "admin", "INVALID_STATE",
         "remove those allocations first"),
        (VOID, {"n": ledger.due}, "admin", "VALIDATION", "is not a credit note"),
        (VOID, {"n": ledger.ada.account}, "admin", "VALIDATION", "`creditNoteId` must be"),
        (VOID, {"n": missing("CreditNote")}, "admin", "NOT_FOUND", "No credit note"),
    ])  # fmt: skip

    await desk.ok(REMOVE, {"a": made["allocateCredit"]["id"]})
    desk.at(2024, 1, 8)
    voided = (await desk.ok(VOID, {"n": ledger.note}))["voidCreditNote"]
    assert pk(voided.pop("id")) == pk(ledger.note)
    assert voided == {
        "status": "VOID", "voidedAt": "2024-01-08T09:00:00+00:00",
        "remainingCredit": {"amount": "0.00"},
    }  # fmt: skip
    assert await desk.available_credit(ledger.ada.account) == "0.00"
    await refusals(desk, [
        (VOID, {"n": ledger.note}, "admin", "INVALID_STATE", "already void"),
        (ALLOCATE, {"n": ledger.note, "i": ledger.due, "m": "1.00"}, "admin", "INVALID_STATE",
         "is void"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- addCredit


async def test_add_credit_lands_on_the_next_pending_invoice(desk: Desk, ledger: Ledger) -> None:
    data = await desk.ok(
        ADD, {"a": ledger.bob.account, "d": "Broken heater", "m": "12.50", "k": "add-1"}
    )
    added = data["addCredit"]
    assert added["line"]["kind"] == "CREDIT"
    assert added["line"]["description"] == "Broken heater"
    assert (added["line"]["total"]["amount"], added["line"]["tax"]["amount"]) == ("-12.50", "0.00")
    assert added["invoice"] == {
        "id": added["invoice"]["id"], "status": "PENDING", "dueDate": "2024-02-01",
        "total": {"amount": "-12.50"},
    }  # fmt: skip
    assert added["creditNote"] is None

    replay = await desk.ok(
        ADD, {"a": ledger.bob.account, "d": "Broken heater", "m": "12.50", "k": "add-1"}
    )
    assert replay == data
    _, pending = await desk.invoices(ledger.bob.account)
    assert amounts(pending["lines"]) == ["-12.50"]


async def test_add_credit_refusals_change_nothing(desk: Desk, ledger: Ledger) -> None:
    def add(amount: str, description: str = "Goodwill", account: str = "") -> dict[str, Any]:
        return {"a": account or ledger.ada.account, "d": description, "m": amount}

    await refusals(desk, [
        (ADD, add("5.00"), ledger.ada.user, "FORBIDDEN", "Only ADMIN"),
        (ADD, add("5.00"), "analyst", "FORBIDDEN", "Only ADMIN"),
        (ADD, add("0"), "admin", "VALIDATION", "greater than zero"),
        (ADD, add("-5.00"), "admin", "VALIDATION", "greater than zero"),
        (ADD, add("5.001"), "admin", "VALIDATION", "decimal places"),
        (ADD, add("5.00", "   "), "admin", "VALIDATION", "needs a description"),
        (ADD, add("5.00", account=ledger.due), "admin", "VALIDATION", "`accountId` must be"),
        (ADD, add("5.00", account=missing("Account")), "admin", "NOT_FOUND", "No account"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- applyAvailableCredit


async def test_apply_available_credit_pays_what_the_credit_covers(
    desk: Desk, ledger: Ledger
) -> None:
    data = await desk.ok(APPLY, {"i": ledger.due, "k": "apply-1"})
    applied = data["applyAvailableCredit"]
    assert applied["invoice"] == {"status": "DUE", "balanceDue": {"amount": "20.00"}}
    [allocation] = applied["allocations"]
    assert (allocation["kind"], allocation["amount"]["amount"]) == ("MANUAL", "30.00")
    assert pk(allocation["creditNote"]["id"]) == pk(ledger.note)

    assert await desk.ok(APPLY, {"i": ledger.due, "k": "apply-1"}) == data  # a replay
    assert await desk.available_credit(ledger.ada.account) == "0.00"
    # Without credit left, applying again is not an error: nothing more is applied.
    again = (await desk.ok(APPLY, {"i": ledger.due}))["applyAvailableCredit"]
    assert again["allocations"] == [] and again["invoice"]["balanceDue"]["amount"] == "20.00"


async def test_apply_available_credit_refusals_change_nothing(desk: Desk, ledger: Ledger) -> None:
    await refusals(desk, [
        (APPLY, {"i": ledger.due}, ledger.ada.user, "FORBIDDEN", "Only ADMIN"),
        (APPLY, {"i": ledger.due}, "analyst", "FORBIDDEN", "Only ADMIN"),
        (APPLY, {"i": ledger.pending}, "admin", "INVALID_STATE", "is pending"),
        (APPLY, {"i": ledger.note}, "admin", "VALIDATION", "is a credit note"),
        (APPLY, {"i": ledger.ada.account}, "admin", "VALIDATION", "`invoiceId` must be"),
        (APPLY, {"i": missing("Invoice")}, "admin", "NOT_FOUND", "No invoice"),
    ])  # fmt: skip
