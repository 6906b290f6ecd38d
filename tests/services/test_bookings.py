"""Bookings and day passes: pricing, placement, blocking overdue accounts, and what
cancelling or shortening does to the charge (rules §8.1, §5.2–5.3)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from models import Account, Booking, InvoiceStatus, LineKind, Organization
from services import bookings, policy
from services.billing import run_billing
from services.bookings import ChargeAdjustment
from services.clock import FixedClock
from services.errors import AccountHasOverdueInvoicesError, InvalidStateError, ValidationError
from tests.services.factories import (
    Sessions,
    at,
    d,
    fresh_org,
    invoice,
    invoices_of,
    lines_of,
    make_account,
    make_org,
    record_payment,
)


async def _book(
    db: Sessions,
    org: Organization,
    account: Account,
    starts_at: datetime,
    hours: float = 2,
    now: datetime | None = None,
    **pricing: int,
) -> Booking:
    if not pricing:
        pricing = {"price": 4000}
    async with db.begin() as session:
        return await bookings.create_booking(
            session,
            await fresh_org(session, org),
            account,
            resource_name="Board room",
            starts_at=starts_at,
            ends_at=starts_at + timedelta(hours=hours),
            now=now or starts_at,
            **pricing,
        )


async def _cancel(
    db: Sessions, org: Organization, booking: Booking, now: datetime, **kw: bool
) -> bookings.BookingChange:
    async with db.begin() as session:
        return await bookings.cancel_booking(
            session, await fresh_org(session, org), booking, now, **kw
        )


def test_hourly_price_is_rate_times_duration_half_up() -> None:
    start = at(2026, 8, 15, 9)
    assert bookings.price_for_duration(1000, start, start + timedelta(minutes=50)) == 833
    assert bookings.price_for_duration(1001, start, start + timedelta(minutes=45)) == 751
    assert bookings.price_for_duration(1000, start, start + timedelta(hours=3)) == 3000


async def test_a_booking_charge_lands_on_the_next_pending_invoice(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    booking = await _book(db, org, account, at(2026, 8, 15, 14), hours=1.5, hourly_rate=2000)
    assert booking.price == 3000
    (pending,) = await invoices_of(db, account.id)
    assert (pending.status, pending.due_date) == ("PENDING", d(2026, 9, 1))
    (line,) = await lines_of(db, pending.id)
    assert (line.kind, line.amount, line.booking_id) == (LineKind.BOOKING, 3000, booking.id)
    assert line.description == "Board room: Aug 15, 2026 14:00–15:30"


async def test_a_free_booking_adds_no_line(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    booking = await _book(db, org, account, at(2026, 8, 15, 14), price=0)
    assert await invoices_of(db, account.id) == []
    change = await _cancel(db, org, booking, clock.now())
    assert (change.adjustment, change.credit_line) == (ChargeAdjustment.NOTHING_CHARGED, None)


async def test_booking_input_is_validated(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    with pytest.raises(ValidationError, match="either a price or an hourly rate"):
        await _book(db, org, account, at(2026, 8, 15, 14), price=100, hourly_rate=100)
    with pytest.raises(ValidationError, match="end after it starts"):
        await _book(db, org, account, at(2026, 8, 15, 14), hours=0)


async def test_overdue_accounts_are_refused_new_bookings(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock, overdue_after_days=0, block_bookings_when_overdue=True)
    account = await make_account(db, org, clock)
    await _book(db, org, account, at(2026, 8, 15, 14))
    await run_billing(db, org.id, at(2026, 9, 1))
    (overdue,) = await invoices_of(db, account.id)
    assert (overdue.number, overdue.status) == ("INV-000001", InvoiceStatus.OVERDUE)

    with pytest.raises(AccountHasOverdueInvoicesError, match="INV-000001") as refused:
        await _book(db, org, account, at(2026, 9, 2, 10), now=at(2026, 9, 1, 8))
    assert refused.value.code == "ACCOUNT_HAS_OVERDUE_INVOICES"
    assert refused.value.extensions["overdue_invoice_ids"] == [overdue.id]
    async with db() as session:
        verdict = await bookings.booking_eligibility(
            session, await fresh_org(session, org), account
        )
    assert (verdict.eligible, verdict.overdue_invoice_ids) == (False, [overdue.id])
    assert verdict.reason is not None and "INV-000001" in verdict.reason
    with pytest.raises(AccountHasOverdueInvoicesError):
        async with db.begin() as session:
            await bookings.check_in_day_pass(
                session, await fresh_org(session, org), account, price=2500, now=at(2026, 9, 1)
            )

    # Paid up, the account books again.
    await record_payment(db, overdue.id, overdue.total, clock)
    await _book(db, org, account, at(2026, 9, 2, 10), now=at(2026, 9, 1, 8))


async def test_overdue_accounts_may_book_when_the_policy_is_off(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock, overdue_after_days=0)
    account = await make_account(db, org, clock)
    await _book(db, org, account, at(2026, 8, 15, 14))
    await run_billing(db, org.id, at(2026, 9, 1))
    await _book(db, org, account, at(2026, 9, 2, 10), now=at(2026, 9, 1, 8))
    async with db() as session:
        verdict = await bookings.booking_eligibility(session, org, account)
    assert verdict == bookings.BookingEligibility(True)


async def test_cancelling_a_booking_not_yet_invoiced_removes_its_charge(
    db: Sessions, clock: FixedClock
) -> None:
    # Seed: booked May 1 (invoiced June 1), cancelled May 15 → no credit.
    clock.set(at(2026, 5, 1, 9))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    booking = await _book(db, org, account, at(2026, 5, 20, 10), now=clock.now())
    change = await _cancel(db, org, booking, at(2026, 5, 15))
    assert change.adjustment == ChargeAdjustment.REMOVED_FROM_PENDING
    assert change.credit_line is None
    assert change.booking.status == "CANCELLED"
    (pending,) = await invoices_of(db, account.id)
    assert (await lines_of(db, pending.id), pending.total) == ([], 0)
    with pytest.raises(InvalidStateError, match="is cancelled"):
        await _cancel(db, org, booking, at(2026, 5, 16))


async def test_cancelling_a_paid_booking_creates_a_credit(db: Sessions, clock: FixedClock) -> None:
    # Seed: booked May 30, paid June 1, cancelled June 2 → credit.
    clock.set(at(2026, 5, 30, 9))
    org = await make_org(db, clock, default_tax_rate_ppm=100_000)
    account = await make_account(db, org, clock)
    booking = await _book(db, org, account, at(2026, 6, 10, 10), now=clock.now())
    await run_billing(db, org.id, at(2026, 6, 1))
    (june,) = await invoices_of(db, account.id)
    clock.set(at(2026, 6, 1, 12))
    await record_payment(db, june.id, june.total, clock)

    change = await _cancel(db, org, booking, at(2026, 6, 2, 9))
    assert change.adjustment == ChargeAdjustment.CREDITED
    credit = change.credit_line
    assert credit is not None
    assert (credit.kind, credit.amount, credit.tax) == (LineKind.CREDIT, -4000, -400)
    assert credit.booking_id == booking.id
    assert credit.description.startswith("Credit: cancelled booking Board room")
    # Under NEXT_PENDING_INVOICE it offsets the July 1 pending invoice.
    july = await invoice(db, credit.invoice_id)
    assert (july.status, july.due_date) == ("PENDING", d(2026, 7, 1))
    # The paid June invoice did not change.
    assert (await invoice(db, june.id)).total == june.total


async def test_cancelling_with_credit_declined_credits_nothing(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 5, 30, 9))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    booking = await _book(db, org, account, at(2026, 6, 10, 10), now=clock.now())
    await run_billing(db, org.id, at(2026, 6, 1))
    (june,) = await invoices_of(db, account.id)
    await record_payment(db, june.id, june.total, clock)
    change = await _cancel(db, org, booking, at(2026, 6, 2), create_credit=False)
    assert (change.adjustment, change.credit_line) == (ChargeAdjustment.CREDIT_DECLINED, None)
    assert len(await invoices_of(db, account.id)) == 1


async def test_cancelling_an_invoiced_unpaid_booking_keeps_the_charge(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 5, 30, 9))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    booking = await _book(db, org, account, at(2026, 6, 10, 10), now=clock.now())
    await run_billing(db, org.id, at(2026, 6, 1))
    (june,) = await invoices_of(db, account.id)
    change = await _cancel(db, org, booking, at(2026, 6, 2))
    assert (change.adjustment, change.credit_line) == (ChargeAdjustment.UNPAID_NO_CREDIT, None)
    after = await invoice(db, june.id)
    assert (after.status, after.total) == ("DUE", 4000)
    assert len(await invoices_of(db, account.id)) == 1


async def test_shortening_reduces_a_pending_charge_or_credits_a_paid_one(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    start = at(2026, 8, 20, 10)
    booking = await _book(db, org, account, start, hours=4, price=8000, now=clock.now())
    async with db.begin() as session:
        change = await bookings.shorten_booking(
            session, await fresh_org(session, org), booking, start + timedelta(hours=3), clock.now()
        )
    assert change.adjustment == ChargeAdjustment.REDUCED_ON_PENDING
    assert change.booking.price == 6000
    (pending,) = await invoices_of(db, account.id)
    (line,) = await lines_of(db, pending.id)
    assert (line.amount, pending.total) == (6000, 6000)
    assert line.description == "Board room: Aug 20, 2026 10:00–13:00"

    await run_billing(db, org.id, at(2026, 9, 1))
    await record_payment(db, pending.id, 6000, clock)
    async with db.begin() as session:
        change = await bookings.shorten_booking(
            session,
            await fresh_org(session, org),
            change.booking,
            start + timedelta(hours=1),
            at(2026, 9, 2),
        )
    assert change.adjustment == ChargeAdjustment.CREDITED
    assert change.credit_line is not None and change.credit_line.amount == -4000
    assert change.credit_line.description.startswith("Credit: shortened booking")


async def test_day_passes_and_one_time_charges_are_additional_charges(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    async with db.begin() as session:
        fresh = await fresh_org(session, org)
        day_pass = await bookings.check_in_day_pass(
            session, fresh, account, price=2500, now=clock.now()
        )
        sale = await bookings.add_one_time_charge(
            session, fresh, account, description="Coffee beans", unit_price=1200, quantity=2,
            now=clock.now(),
        )  # fmt: skip
    assert day_pass is not None
    assert (day_pass.kind, day_pass.description) == (LineKind.DAY_PASS, "Day pass: Aug 15, 2026")
    assert (sale.kind, sale.amount) == (LineKind.CHARGE, 2400)
    assert day_pass.invoice_id == sale.invoice_id
    assert (await invoice(db, sale.invoice_id)).due_date == d(2026, 9, 1)


async def test_under_new_invoice_due_today_a_booking_never_touches_the_march_1_invoice(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2027, 2, 10, 9))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    await _book(db, org, account, at(2027, 2, 12, 10), now=clock.now())
    await run_billing(db, org.id, at(2027, 3, 1))
    (march,) = await invoices_of(db, account.id)
    march_lines = [(x.id, x.total) for x in await lines_of(db, march.id)]
    async with db.begin() as session:
        await policy.update_policy(
            session, org, at(2027, 3, 2), additional_charges="NEW_INVOICE_DUE_TODAY"
        )

    booking = await _book(
        db, org, account, at(2027, 3, 12, 10), price=2500, now=at(2027, 3, 10, 14)
    )

    _, new = await invoices_of(db, account.id)
    assert (new.due_date, new.number, new.status) == (d(2027, 3, 10), "INV-000002", "DUE")
    (line,) = await lines_of(db, new.id)
    assert line.booking_id == booking.id
    after = await invoice(db, march.id)
    assert [(x.id, x.total) for x in await lines_of(db, march.id)] == march_lines
    assert (after.total, after.number) == (march.total, "INV-000001")
