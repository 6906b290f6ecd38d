"""Invoices: placement of charges, totals and tax, finalization and numbering,
removing lines, void and un-void, manual invoices (rules §4)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from models import (
    Account,
    AdditionalChargesPolicy,
    CreditNoteStatus,
    DocumentType,
    Invoice,
    InvoiceStatus,
    LineItem,
    LineKind,
    Organization,
)
from services import invoices
from services.clock import FixedClock, start_of_day
from services.errors import InvalidStateError, ValidationError
from services.events import EventType
from services.invoices import LineSpec, ManualCharge, ManualCredit
from tests.services.factories import (
    Sessions,
    at,
    d,
    event_types,
    fresh_org,
    invoice,
    invoices_of,
    lines_of,
    make_account,
    make_org,
    record_payment,
    row_counts,
)

USD_10 = 1000


def _org(billing_day: int = 1) -> Organization:
    return Organization(billing_day=billing_day, timezone="UTC")


@pytest.mark.parametrize(
    ("billing_day", "today", "expected"),
    [
        (1, d(2026, 8, 15), d(2026, 9, 1)),
        (1, d(2026, 8, 1), d(2026, 9, 1)),
        (1, d(2026, 12, 31), d(2027, 1, 1)),
        (15, d(2026, 8, 14), d(2026, 8, 15)),
        (15, d(2026, 8, 15), d(2026, 9, 15)),
        (28, d(2026, 1, 31), d(2026, 2, 28)),
    ],
)
def test_next_billing_date_is_strictly_after_today(billing_day, today, expected) -> None:
    assert invoices.next_billing_date(_org(billing_day), today) == expected


def test_add_months_clamps_to_month_end() -> None:
    assert invoices.add_months(d(2026, 1, 31), 1) == d(2026, 2, 28)
    assert invoices.add_months(d(2026, 11, 1), 3) == d(2027, 2, 1)
    assert invoices.add_months(d(2026, 3, 1), -3) == d(2025, 12, 1)


async def _charge(
    db: Sessions,
    org: Organization,
    account_id: int,
    now: datetime,
    amount: int = USD_10,
    description: str = "Meeting room",
    **spec: object,
) -> LineItem:
    async with db.begin() as session:
        account = await session.get(Account, account_id)
        assert account is not None
        return await invoices.place_additional_charge(
            session,
            await fresh_org(session, org),
            account,
            LineSpec(description=description, unit_price=amount, **spec),  # type: ignore[arg-type]
            now,
        )


async def _finalize(
    db: Sessions, org: Organization, invoice_id: int, now: datetime, *, manual: bool = False
) -> Invoice:
    async with db.begin() as session:
        target = await session.get(Invoice, invoice_id)
        assert target is not None
        return await invoices.finalize(
            session, await fresh_org(session, org), target, now, manual=manual, apply_credit=True
        )


async def test_next_pending_invoice_puts_an_aug_15_charge_on_the_sep_1_invoice(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock, timezone="America/New_York")
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account.id, clock.now())
    second = await _charge(db, org, account.id, clock.now() + timedelta(hours=2), amount=500)

    (pending,) = await invoices_of(db, account.id)
    assert line.invoice_id == second.invoice_id == pending.id
    assert pending.status == InvoiceStatus.PENDING
    assert pending.document_type == DocumentType.DRAFT
    assert pending.number is None
    assert pending.due_date == d(2026, 9, 1)
    assert not pending.due_today
    assert pending.finalize_at == start_of_day(d(2026, 9, 1), "America/New_York")
    assert pending.finalize_at == at(2026, 9, 1, 4)
    assert (pending.subtotal, pending.tax, pending.total) == (1500, 0, 1500)
    assert line.kind == LineKind.CHARGE


async def test_credit_lines_land_where_charges_do_and_offset_them(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    await _charge(db, org, account.id, clock.now(), amount=3000)
    credit = await _charge(db, org, account.id, clock.now(), amount=-2000, description="Credit")
    (pending,) = await invoices_of(db, account.id)
    assert credit.kind == LineKind.CREDIT
    assert credit.invoice_id == pending.id
    assert pending.total == 1000


async def test_tax_is_rounded_half_up_per_line_and_totals_are_sums(
    db: Sessions, clock: FixedClock
) -> None:
    # 5 % of 10 cents is half a cent: each line rounds up to 1 cent, so the invoice
    # carries 2 cents of tax where taxing the 20-cent subtotal would give 1.
    org = await make_org(db, clock, default_tax_rate_ppm=50_000)
    account = await make_account(db, org, clock)
    first = await _charge(db, org, account.id, clock.now(), amount=10)
    await _charge(db, org, account.id, clock.now(), amount=10)
    # The line's own rate wins over the default: 8.25 % of $3.30 = 27.225 → 27 cents.
    own = await _charge(db, org, account.id, clock.now(), amount=330, tax_rate_ppm=82_500)
    # A credit line is taxed the same way, rounding away from zero.
    credit = await _charge(db, org, account.id, clock.now(), amount=-10, description="Credit")

    assert (first.amount, first.tax, first.total) == (10, 1, 11)
    assert (own.tax_rate_ppm, own.tax) == (82_500, 27)
    assert (credit.amount, credit.tax, credit.total) == (-10, -1, -11)
    (pending,) = await invoices_of(db, account.id)
    assert pending.subtotal == 10 + 10 + 330 - 10
    assert pending.tax == 1 + 1 + 27 - 1
    assert pending.total == pending.subtotal + pending.tax


async def test_zero_amount_lines_are_refused(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    with pytest.raises(ValidationError, match="zero amount"):
        await _charge(db, org, account.id, clock.now(), amount=0)
    assert await invoices_of(db, account.id) == []


async def test_new_invoice_due_today_never_touches_a_finalized_invoice(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(
        db, clock, additional_charges=AdditionalChargesPolicy.NEW_INVOICE_DUE_TODAY
    )
    account = await make_account(db, org, clock)
    # The March 1 invoice: built pending, finalized automatically at the start of March 1.
    async with db.begin() as session:
        march = await invoices.pending_invoice(
            session, org, account, d(2027, 3, 1), now=at(2027, 2, 20)
        )
        await invoices.add_line(
            session, org, march, LineSpec("Hot desk March", 31000), at(2027, 2, 20)
        )
    await _finalize(db, org, march.id, at(2027, 3, 1))
    before = await invoice(db, march.id)
    before_lines = [(x.id, x.total) for x in await lines_of(db, march.id)]

    line = await _charge(db, org, account.id, at(2027, 3, 10, 14), amount=2500)

    after = await invoice(db, march.id)
    assert [(x.id, x.total) for x in await lines_of(db, march.id)] == before_lines
    assert (after.total, after.status, after.number) == (before.total, before.status, "INV-000001")
    new = await invoice(db, line.invoice_id)
    assert new.id != march.id
    assert new.due_date == d(2027, 3, 10)
    assert new.due_today
    # Grace 0: finalized in the same transaction as the charge.
    assert new.number == "INV-000002"
    assert new.status == InvoiceStatus.DUE
    assert new.issue_date == d(2027, 3, 10)
    assert new.total == 2500


async def test_grace_minutes_keep_the_due_today_invoice_open_from_its_last_change(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(
        db,
        clock,
        additional_charges=AdditionalChargesPolicy.NEW_INVOICE_DUE_TODAY,
        due_today_grace_minutes=30,
    )
    account = await make_account(db, org, clock)
    first = await _charge(db, org, account.id, at(2026, 8, 15, 10))
    assert (await invoice(db, first.invoice_id)).finalize_at == at(2026, 8, 15, 10, 30)
    second = await _charge(db, org, account.id, at(2026, 8, 15, 10, 20), amount=700)

    assert second.invoice_id == first.invoice_id
    pending = await invoice(db, first.invoice_id)
    assert pending.status == InvoiceStatus.PENDING
    assert pending.due_today and pending.due_date == d(2026, 8, 15)
    assert pending.finalize_at == at(2026, 8, 15, 10, 50)
    assert pending.total == USD_10 + 700


async def test_finalize_numbers_gap_free_in_two_series(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    first = await make_account(db, org, clock, "Ada Lovelace")
    second = await make_account(db, org, clock, "Grace Hopper")
    third = await make_account(db, org, clock, "Alan Turing")
    a = await _charge(db, org, first.id, clock.now(), amount=5000)
    b = await _charge(db, org, second.id, clock.now(), amount=-1500, description="Goodwill")
    c = await _charge(db, org, third.id, clock.now(), amount=2000)

    finalized_at = at(2026, 9, 1)
    inv_a = await _finalize(db, org, a.invoice_id, finalized_at)
    note = await _finalize(db, org, b.invoice_id, finalized_at)
    inv_c = await _finalize(db, org, c.invoice_id, finalized_at)

    assert (inv_a.number, inv_c.number, note.number) == ("INV-000001", "INV-000002", "CN-000001")
    assert inv_a.document_type == DocumentType.INVOICE
    assert inv_a.status == InvoiceStatus.DUE
    assert inv_a.issue_date == d(2026, 9, 1)
    assert inv_a.finalized_at == finalized_at
    assert note.document_type == DocumentType.CREDIT_NOTE
    assert note.status == InvoiceStatus.PAID
    assert note.credit_note_status == CreditNoteStatus.AVAILABLE
    async with db() as session:
        stored = await session.get(Organization, org.id)
        assert stored is not None
        assert (stored.next_invoice_number, stored.next_credit_note_number) == (3, 2)
    note_events = await event_types(db, invoice_id=note.id)
    assert EventType.INVOICE_FINALIZED in note_events
    assert EventType.CREDIT_NOTE_CREATED in note_events


async def test_finalize_status_follows_total_and_dates(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock, overdue_after_days=0)
    account = await make_account(db, org, clock)
    async with db.begin() as session:
        zero = await invoices.pending_invoice(session, org, account, d(2026, 9, 1), now=clock.now())
        await invoices.add_line(session, org, zero, LineSpec("Desk", 1000), clock.now())
        await invoices.add_line(session, org, zero, LineSpec("Desk refund", -1000), clock.now())
    paid = await _finalize(db, org, zero.id, at(2026, 9, 1))
    assert (paid.total, paid.status, paid.document_type) == (0, InvoiceStatus.PAID, "INVOICE")
    assert paid.paid_at == at(2026, 9, 1)

    # With overdueAfterDays = 0 an unpaid invoice is OVERDUE on its due date.
    line = await _charge(db, org, account.id, at(2026, 9, 2))
    overdue = await _finalize(db, org, line.invoice_id, at(2026, 10, 1))
    assert overdue.status == InvoiceStatus.OVERDUE
    types = await event_types(db, invoice_id=overdue.id)
    assert types.count(EventType.INVOICE_BECAME_DUE) == 1
    assert types.count(EventType.INVOICE_BECAME_OVERDUE) == 1


async def test_manual_finalization_charges_early_and_moves_the_due_date(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account.id, clock.now())
    early = await _finalize(db, org, line.invoice_id, clock.now(), manual=True)
    assert early.due_date == d(2026, 8, 15)
    assert early.issue_date == d(2026, 8, 15)
    assert early.status == InvoiceStatus.DUE
    with pytest.raises(InvalidStateError, match="only a pending invoice"):
        await _finalize(db, org, line.invoice_id, clock.now(), manual=True)


async def test_finalize_calls_the_after_finalize_hooks(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account.id, clock.now())
    calls: list[tuple[int, str | None, str, bool, bool]] = []

    async def hook(session, hook_org, inv, now, apply_credit, automatic) -> None:  # type: ignore[no-untyped-def]
        calls.append((hook_org.id, inv.number, str(inv.status), apply_credit, automatic))

    invoices.AFTER_FINALIZE.append(hook)
    try:
        async with db.begin() as session:
            target = await session.get(Invoice, line.invoice_id)
            assert target is not None
            await invoices.finalize(
                session, org, target, at(2026, 9, 1), manual=False, apply_credit=False
            )
    finally:
        invoices.AFTER_FINALIZE.remove(hook)
    assert calls == [(org.id, "INV-000001", "DUE", False, True)]


async def test_an_empty_pending_invoice_is_not_finalized(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account.id, clock.now())
    async with db.begin() as session:
        await invoices.remove_line(session, org, line, clock.now())
    with pytest.raises(InvalidStateError, match="has no lines"):
        await _finalize(db, org, line.invoice_id, clock.now(), manual=True)


# --------------------------------------------------------------------------- removing lines


async def _due_invoice(db: Sessions, clock: FixedClock, *amounts: int) -> tuple[Organization, int]:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line_ids = [
        await _charge(db, org, account.id, clock.now(), amount=a, description=f"Item {i}")
        for i, a in enumerate(amounts)
    ]
    await _finalize(db, org, line_ids[0].invoice_id, at(2026, 9, 1))
    return org, line_ids[0].invoice_id


async def test_removing_a_line_from_a_due_invoice_moves_it_to_a_void_invoice(
    db: Sessions, clock: FixedClock
) -> None:
    org, invoice_id = await _due_invoice(db, clock, 3000, 1200)
    first, second = await lines_of(db, invoice_id)
    async with db.begin() as session:
        result = await invoices.remove_line(session, org, second, at(2026, 9, 2))

    original = await invoice(db, invoice_id)
    assert original.status == InvoiceStatus.DUE
    assert (original.total, original.balance_due) == (3000, 3000)
    assert [x.id for x in await lines_of(db, invoice_id)] == [first.id]
    assert result.trail_invoice is not None
    trail = await invoice(db, result.trail_invoice.id)
    assert trail.status == InvoiceStatus.VOID
    assert trail.document_type == DocumentType.INVOICE
    assert (trail.origin, trail.source_invoice_id, trail.number) == ("MOVED_LINE", invoice_id, None)
    assert trail.total == 1200
    (moved,) = await lines_of(db, trail.id)
    assert (moved.id, moved.moved_from_invoice_id) == (second.id, invoice_id)
    assert EventType.LINE_ITEM_MOVED in await event_types(db, invoice_id=invoice_id)

    # The last line: the invoice owes nothing and is PAID.
    async with db.begin() as session:
        await invoices.remove_line(session, org, first, at(2026, 9, 2))
    emptied = await invoice(db, invoice_id)
    assert (emptied.total, emptied.status) == (0, InvoiceStatus.PAID)


async def test_removing_a_line_from_a_paid_invoice_is_refused_and_changes_nothing(
    db: Sessions, clock: FixedClock
) -> None:
    org, invoice_id = await _due_invoice(db, clock, 3000, 1200)
    await record_payment(db, invoice_id, 4200, clock)
    assert (await invoice(db, invoice_id)).status == InvoiceStatus.PAID
    before = await row_counts(db)
    _, second = await lines_of(db, invoice_id)
    with pytest.raises(InvalidStateError, match=r"is PAID; .*[Rr]efund"):
        async with db.begin() as session:
            await invoices.remove_line(session, org, second, at(2026, 9, 2))
    assert await row_counts(db) == before
    assert (await invoice(db, invoice_id)).total == 4200


async def test_removing_a_line_from_a_part_paid_invoice_names_the_payment(
    db: Sessions, clock: FixedClock
) -> None:
    org, invoice_id = await _due_invoice(db, clock, 3000, 1200)
    payment = await record_payment(db, invoice_id, 1000, clock)
    _, second = await lines_of(db, invoice_id)
    with pytest.raises(InvalidStateError, match=f"payments \\(#{payment.id}\\)"):
        async with db.begin() as session:
            await invoices.remove_line(session, org, second, at(2026, 9, 2))


async def test_removing_a_line_from_a_pending_invoice_deletes_it(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    keep = await _charge(db, org, account.id, clock.now(), amount=800)
    drop = await _charge(db, org, account.id, clock.now(), amount=200)
    async with db.begin() as session:
        result = await invoices.remove_line(session, org, drop, clock.now())
    assert result.trail_invoice is None
    assert [x.id for x in await lines_of(db, keep.invoice_id)] == [keep.id]
    assert (await invoice(db, keep.invoice_id)).total == 800


# --------------------------------------------------------------------------- void / un-void


async def test_void_and_unvoid_a_due_invoice(db: Sessions, clock: FixedClock) -> None:
    org, invoice_id = await _due_invoice(db, clock, 3000)
    async with db.begin() as session:
        target = await session.get(Invoice, invoice_id)
        assert target is not None
        voided = await invoices.void(session, org, target, at(2026, 9, 3))
    assert (voided.status, voided.number, voided.balance_due) == ("VOID", "INV-000001", 0)
    assert voided.voided_at == at(2026, 9, 3)
    with pytest.raises(InvalidStateError, match="already void"):
        async with db.begin() as session:
            await invoices.void(session, org, voided, at(2026, 9, 3))

    # Un-voided after the overdue threshold: it returns OVERDUE, by its dates.
    async with db.begin() as session:
        back = await invoices.unvoid(session, org, voided, at(2026, 9, 10))
    assert back.status == InvoiceStatus.OVERDUE
    assert back.voided_at is None
    types = await event_types(db, invoice_id=invoice_id)
    assert types.count(EventType.INVOICE_VOIDED) == 1
    assert types.count(EventType.INVOICE_UNVOIDED) == 1


async def test_void_is_refused_while_a_payment_succeeded(db: Sessions, clock: FixedClock) -> None:
    org, invoice_id = await _due_invoice(db, clock, 3000)
    clock.set(at(2026, 9, 2))
    payment = await record_payment(db, invoice_id, 500, clock)
    target = await invoice(db, invoice_id)
    with pytest.raises(InvalidStateError, match=f"succeeded payments \\(#{payment.id}\\)"):
        async with db.begin() as session:
            await invoices.void(session, org, target, clock.now())
    assert (await invoice(db, invoice_id)).status == InvoiceStatus.DUE


async def test_void_and_unvoid_a_credit_note(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account.id, clock.now(), amount=-2500, description="Goodwill")
    note = await _finalize(db, org, line.invoice_id, clock.now(), manual=True)
    async with db.begin() as session:
        voided = await invoices.void(session, org, note, clock.now())
    assert (voided.status, voided.credit_note_status) == ("VOID", CreditNoteStatus.VOID)
    assert voided.credit_remaining == 0
    async with db.begin() as session:
        back = await invoices.unvoid(session, org, voided, clock.now())
    assert (back.status, back.credit_note_status) == ("PAID", CreditNoteStatus.AVAILABLE)
    assert back.credit_remaining == 2500


async def test_void_and_unvoid_a_pending_invoice(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account.id, clock.now())
    target = await invoice(db, line.invoice_id)
    async with db.begin() as session:
        voided = await invoices.void(session, org, target, clock.now())
    assert (voided.status, voided.document_type, voided.number) == ("VOID", "DRAFT", None)
    async with db.begin() as session:
        back = await invoices.unvoid(session, org, voided, clock.now())
    assert back.status == InvoiceStatus.PENDING

    # Once another pending invoice holds that due date, un-voiding is refused.
    async with db.begin() as session:
        await invoices.void(session, org, back, clock.now())
    replacement = await _charge(db, org, account.id, clock.now())
    assert replacement.invoice_id != line.invoice_id
    with pytest.raises(InvalidStateError, match="one pending invoice per due date"):
        async with db.begin() as session:
            await invoices.unvoid(session, org, back, clock.now())


async def test_the_trail_of_a_removed_line_stays_void(db: Sessions, clock: FixedClock) -> None:
    org, invoice_id = await _due_invoice(db, clock, 3000, 1200)
    _, second = await lines_of(db, invoice_id)
    async with db.begin() as session:
        result = await invoices.remove_line(session, org, second, at(2026, 9, 2))
    assert result.trail_invoice is not None
    with pytest.raises(InvalidStateError, match="stays void"):
        async with db.begin() as session:
            await invoices.unvoid(session, org, result.trail_invoice, at(2026, 9, 2))


# --------------------------------------------------------------------------- manual invoices


async def _manual(db: Sessions, org: Organization, account_id: int, now: datetime, lines, **kw):  # type: ignore[no-untyped-def]
    async with db.begin() as session:
        account = await session.get(Account, account_id)
        assert account is not None
        return await invoices.create_manual_invoice(
            session, await fresh_org(session, org), account, lines, now, **kw
        )


async def test_manual_invoice_due_today_is_finalized_at_once(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock, default_tax_rate_ppm=100_000)
    account = await make_account(db, org, clock)
    made = await _manual(
        db,
        org,
        account.id,
        clock.now(),
        [ManualCharge("Printing", 25, quantity=40), ManualCredit("Loyalty discount", 300)],
    )
    assert made.number == "INV-000001"
    assert made.status == InvoiceStatus.DUE
    assert made.due_date == d(2026, 8, 15)
    charge, credit = await lines_of(db, made.id)
    assert (charge.amount, charge.tax) == (1000, 100)
    # A manual credit is tax-free unless a rate is given: the account gets what was typed.
    assert (credit.kind, credit.amount, credit.tax) == (LineKind.CREDIT, -300, 0)
    assert made.total == 800


async def test_manual_invoice_of_credit_only_becomes_a_credit_note(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    made = await _manual(db, org, account.id, clock.now(), [ManualCredit("Apology", 2000)])
    assert (made.number, made.document_type, made.status) == ("CN-000001", "CREDIT_NOTE", "PAID")


async def test_manual_invoice_on_a_chosen_date(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    later = await _manual(
        db, org, account.id, clock.now(), [ManualCharge("Locker", 1500)], due_date=d(2026, 9, 20)
    )
    assert (later.status, later.due_date, later.number) == ("PENDING", d(2026, 9, 20), None)
    assert later.finalize_at == at(2026, 9, 20)

    issued = await _manual(
        db,
        org,
        account.id,
        clock.now(),
        [ManualCharge("Locker", 1500)],
        due_date=d(2026, 9, 20),
        finalize_now=True,
    )
    assert issued.id != later.id
    assert (issued.status, issued.due_date, issued.number) == (
        "UPCOMING",
        d(2026, 9, 20),
        "INV-000001",
    )


async def test_manual_invoice_refusals(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    with pytest.raises(ValidationError, match="zero"):
        await _manual(db, org, account.id, clock.now(), [ManualCharge("Nothing", 0)])
    with pytest.raises(ValidationError, match="above zero"):
        await _manual(db, org, account.id, clock.now(), [ManualCredit("Nothing", 0)])
    with pytest.raises(ValidationError, match="at least one"):
        await _manual(db, org, account.id, clock.now(), [])
    with pytest.raises(ValidationError, match="past"):
        await _manual(
            db, org, account.id, clock.now(), [ManualCharge("X", 100)], due_date=d(2026, 8, 1)
        )
    async with db.begin() as session:
        stored = await session.get(Account, account.id)
        assert stored is not None
        stored.active = False
    with pytest.raises(InvalidStateError, match="inactive"):
        await _manual(db, org, account.id, clock.now(), [ManualCharge("X", 100)])
    async with db() as session:
        assert list(await session.scalars(select(Invoice))) == []
