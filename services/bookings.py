"""Bookings, day passes and one-off sales: the additional charges of rules §4.9 and §8.

A booking's charge (kind BOOKING, carrying ``booking_id``) is placed like every
additional charge (``invoices.place_additional_charge``). Cancelling or shortening
follows rules §5.2/§5.3: while the charge is still on a pending invoice it is simply
reduced or removed; once it sits on a PAID invoice the price difference comes back as
a credit line (unless the admin says not to); on a finalized invoice not yet paid the
charge stays and no credit is made; a free booking has nothing to undo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import (
    Account,
    Booking,
    BookingStatus,
    Invoice,
    InvoiceStatus,
    LineItem,
    LineKind,
    Organization,
)
from services import events, invoices, money
from services.clock import local_date
from services.errors import (
    AccountHasOverdueInvoicesError,
    InvalidStateError,
    NotFoundError,
    ValidationError,
)
from services.events import EventType
from services.invoices import LineSpec
from services.locks import lock_account

MICROSECONDS_PER_HOUR = 3_600_000_000


class ChargeAdjustment(StrEnum):
    """What a cancellation or shortening did to the booking's charge."""

    REMOVED_FROM_PENDING = "REMOVED_FROM_PENDING"
    REDUCED_ON_PENDING = "REDUCED_ON_PENDING"
    CREDITED = "CREDITED"
    CREDIT_DECLINED = "CREDIT_DECLINED"
    UNPAID_NO_CREDIT = "UNPAID_NO_CREDIT"
    NOTHING_CHARGED = "NOTHING_CHARGED"


@dataclass(frozen=True)
class BookingEligibility:
    eligible: bool
    reason: str | None = None
    overdue_invoice_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class BookingChange:
    booking: Booking
    adjustment: ChargeAdjustment
    credit_line: LineItem | None = None


def price_for_duration(hourly_rate: int, starts_at: datetime, ends_at: datetime) -> int:
    """Hourly rate × duration, rounded half-up to the minor unit (exact integers)."""
    micros = (ends_at - starts_at) // timedelta(microseconds=1)
    return money.round_half_up(hourly_rate * micros, MICROSECONDS_PER_HOUR)


async def get_booking(session: AsyncSession, org: Organization, booking_id: int) -> Booking:
    booking = await session.scalar(
        select(Booking).where(Booking.id == booking_id, Booking.organization_id == org.id)
    )
    if booking is None:
        raise NotFoundError(f"No booking {booking_id} in this organization.")
    return booking


async def booking_eligibility(
    session: AsyncSession, org: Organization, account: Account
) -> BookingEligibility:
    """Whether the account may book now and, if not, why (rules §8.1)."""
    if not account.active:
        return BookingEligibility(False, f"Account “{account.name}” is inactive.")
    if not org.block_bookings_when_overdue:
        return BookingEligibility(True)
    overdue = list(
        await session.execute(
            select(Invoice.id, Invoice.number)
            .where(Invoice.account_id == account.id, Invoice.status == InvoiceStatus.OVERDUE)
            .order_by(Invoice.due_date, Invoice.id)
        )
    )
    if not overdue:
        return BookingEligibility(True)
    numbers = ", ".join(number or f"invoice {invoice_id}" for invoice_id, number in overdue)
    plural = "s" if len(overdue) > 1 else ""
    return BookingEligibility(
        False,
        f"Account “{account.name}” has overdue invoice{plural} {numbers}; pay "
        f"{'them' if plural else 'it'} before booking.",
        [invoice_id for invoice_id, _ in overdue],
    )


async def _require_eligible(session: AsyncSession, org: Organization, account: Account) -> None:
    verdict = await booking_eligibility(session, org, account)
    if verdict.eligible:
        return
    if verdict.overdue_invoice_ids:
        raise AccountHasOverdueInvoicesError(
            verdict.reason or "The account has overdue invoices.",
            overdue_invoice_ids=verdict.overdue_invoice_ids,
        )
    raise InvalidStateError(verdict.reason or "The account cannot book.", account_id=account.id)


def _when(org: Organization, starts_at: datetime, ends_at: datetime) -> str:
    start = starts_at.astimezone(ZoneInfo(org.timezone))
    end = ends_at.astimezone(ZoneInfo(org.timezone))
    day = f"{start:%b} {start.day}, {start.year}"
    if start.date() == end.date():
        return f"{day} {start:%H:%M}–{end:%H:%M}"
    return f"{day} {start:%H:%M} – {end:%b} {end.day} {end:%H:%M}"


def _local_days(org: Organization, starts_at: datetime, ends_at: datetime) -> tuple[date, date]:
    # The last moment booked, not the end instant: a booking ending at midnight ends
    # the day before.
    return (
        local_date(starts_at, org.timezone),
        local_date(ends_at - timedelta(microseconds=1), org.timezone),
    )


async def create_booking(
    session: AsyncSession,
    org: Organization,
    account: Account,
    *,
    resource_name: str,
    starts_at: datetime,
    ends_at: datetime,
    now: datetime,
    price: int | None = None,
    hourly_rate: int | None = None,
    tax_rate_ppm: int | None = None,
    booked_by_user_id: int | None = None,
    actor_user_id: int | None = None,
) -> Booking:
    """Book a resource for ``account`` and place its charge (rules §8.1, §4.9). The
    price is given, or ``hourly_rate`` × duration; a free booking adds no line. With
    ``blockBookingsWhenOverdue`` an account with an overdue invoice is refused."""
    resource_name = resource_name.strip()
    if not resource_name or len(resource_name) > 200:
        raise ValidationError("A booking needs a resource name of at most 200 characters.")
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise ValidationError("Booking times must carry a timezone.")
    if ends_at <= starts_at:
        raise ValidationError("A booking must end after it starts.")
    if (price is None) == (hourly_rate is None):
        raise ValidationError("Give a booking either a price or an hourly rate, not both.")
    if hourly_rate is not None:
        if hourly_rate < 0:
            raise ValidationError("An hourly rate cannot be negative.")
        price = price_for_duration(hourly_rate, starts_at, ends_at)
    assert price is not None
    money.check_bound(price, org.currency, "hourlyRate × duration")
    if price < 0:
        raise ValidationError("A booking's price cannot be negative.")

    account = await lock_account(session, org.id, account.id)
    await _require_eligible(session, org, account)
    booking = Booking(
        organization_id=org.id,
        account_id=account.id,
        booked_by_user_id=booked_by_user_id,
        resource_name=resource_name,
        starts_at=starts_at,
        ends_at=ends_at,
        price=price,
        status=BookingStatus.CONFIRMED,
        created_at=now,
    )
    session.add(booking)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.BOOKING_CREATED,
        at=now,
        account_id=account.id,
        actor_user_id=actor_user_id,
        booking_id=booking.id,
        price=price,
    )
    if price > 0:
        first_day, last_day = _local_days(org, starts_at, ends_at)
        await invoices.place_additional_charge(
            session,
            org,
            account,
            LineSpec(
                description=f"{resource_name}: {_when(org, starts_at, ends_at)}",
                unit_price=price,
                kind=LineKind.BOOKING,
                tax_rate_ppm=tax_rate_ppm,
                period_start=first_day,
                period_end=last_day,
                booking_id=booking.id,
            ),
            now,
            actor_user_id=actor_user_id,
        )
    return booking


async def _charge_line(session: AsyncSession, booking: Booking) -> tuple[LineItem, Invoice] | None:
    """The booking's live charge line and its invoice (not a VOID one)."""
    row = (
        await session.execute(
            select(LineItem, Invoice)
            .join(Invoice, Invoice.id == LineItem.invoice_id)
            .where(
                LineItem.booking_id == booking.id,
                LineItem.kind == LineKind.BOOKING,
                Invoice.status != InvoiceStatus.VOID,
            )
            .order_by(LineItem.id)
            .limit(1)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def _adjust_charge(
    session: AsyncSession,
    org: Organization,
    account: Account,
    booking: Booking,
    new_price: int,
    now: datetime,
    *,
    create_credit: bool,
    what: str,
    actor_user_id: int | None,
) -> tuple[ChargeAdjustment, LineItem | None]:
    difference = booking.price - new_price
    found = await _charge_line(session, booking)
    if found is None or difference <= 0:
        return ChargeAdjustment.NOTHING_CHARGED, None
    line, invoice = found
    if invoice.status == InvoiceStatus.PENDING:
        if new_price == 0:
            await invoices.remove_line(session, org, line, now, actor_user_id=actor_user_id)
            return ChargeAdjustment.REMOVED_FROM_PENDING, None
        _, last_day = _local_days(org, booking.starts_at, booking.ends_at)
        await invoices.reprice_pending_line(
            session,
            org,
            line,
            new_price,
            now,
            description=f"{booking.resource_name}: "
            f"{_when(org, booking.starts_at, booking.ends_at)}",
            period_end=last_day,
            actor_user_id=actor_user_id,
        )
        return ChargeAdjustment.REDUCED_ON_PENDING, None
    if invoice.status != InvoiceStatus.PAID:
        return ChargeAdjustment.UNPAID_NO_CREDIT, None
    if not create_credit:
        return ChargeAdjustment.CREDIT_DECLINED, None
    credit_line = await invoices.place_additional_charge(
        session,
        org,
        account,
        LineSpec(
            description=f"Credit: {what} booking {booking.resource_name} "
            f"{_when(org, booking.starts_at, booking.ends_at)}",
            unit_price=-difference,
            kind=LineKind.CREDIT,
            tax_rate_ppm=line.tax_rate_ppm,
            period_start=line.period_start,
            period_end=line.period_end,
            booking_id=booking.id,
        ),
        now,
        actor_user_id=actor_user_id,
    )
    return ChargeAdjustment.CREDITED, credit_line


async def _lock_booking(
    session: AsyncSession, org: Organization, booking: Booking
) -> tuple[Account, Booking]:
    account = await lock_account(session, org.id, booking.account_id)
    fresh = await get_booking(session, org, booking.id)
    await session.refresh(fresh)
    if fresh.status == BookingStatus.CANCELLED:
        raise InvalidStateError(f"Booking {fresh.id} of {fresh.resource_name} is cancelled.")
    return account, fresh


async def shorten_booking(
    session: AsyncSession,
    org: Organization,
    booking: Booking,
    new_ends_at: datetime,
    now: datetime,
    *,
    new_price: int | None = None,
    create_credit: bool = True,
    actor_user_id: int | None = None,
) -> BookingChange:
    """End a booking earlier. Its new price is ``new_price`` or the old price in
    proportion to the new duration (half-up); the difference is handled per rules
    §5.2/§5.3 (see the module docstring)."""
    account, booking = await _lock_booking(session, org, booking)
    if new_ends_at.tzinfo is None:
        raise ValidationError("Booking times must carry a timezone.")
    if not booking.starts_at < new_ends_at < booking.ends_at:
        raise ValidationError(
            "A shortened booking must end after it starts and before its current end."
        )
    if new_price is None:
        old = (booking.ends_at - booking.starts_at) // timedelta(microseconds=1)
        kept = (new_ends_at - booking.starts_at) // timedelta(microseconds=1)
        new_price = money.round_half_up(booking.price * kept, old)
    if not 0 <= new_price <= booking.price:
        raise ValidationError("A shortened booking's price lies between zero and its price.")
    previous_end, previous_price = booking.ends_at, booking.price
    booking.ends_at = new_ends_at
    adjustment, credit_line = await _adjust_charge(
        session,
        org,
        account,
        booking,
        new_price,
        now,
        create_credit=create_credit,
        what="shortened",
        actor_user_id=actor_user_id,
    )
    booking.price = new_price
    events.record(
        session,
        organization_id=org.id,
        type=EventType.BOOKING_UPDATED,
        at=now,
        account_id=account.id,
        actor_user_id=actor_user_id,
        booking_id=booking.id,
        previous_ends_at=previous_end.isoformat(),
        ends_at=new_ends_at.isoformat(),
        previous_price=previous_price,
        price=new_price,
        adjustment=str(adjustment),
    )
    await session.flush()
    return BookingChange(booking, adjustment, credit_line)


async def cancel_booking(
    session: AsyncSession,
    org: Organization,
    booking: Booking,
    now: datetime,
    *,
    create_credit: bool = True,
    actor_user_id: int | None = None,
) -> BookingChange:
    """Cancel a booking; its charge is removed, kept or credited per rules §5.2/§5.3.
    ``create_credit=False`` is the admin's "do not create invoice credit"."""
    account, booking = await _lock_booking(session, org, booking)
    adjustment, credit_line = await _adjust_charge(
        session,
        org,
        account,
        booking,
        0,
        now,
        create_credit=create_credit,
        what="cancelled",
        actor_user_id=actor_user_id,
    )
    booking.status = BookingStatus.CANCELLED
    booking.cancelled_at = now
    events.record(
        session,
        organization_id=org.id,
        type=EventType.BOOKING_CANCELLED,
        at=now,
        account_id=account.id,
        actor_user_id=actor_user_id,
        booking_id=booking.id,
        adjustment=str(adjustment),
        credit=-credit_line.amount if credit_line else 0,
    )
    await session.flush()
    return BookingChange(booking, adjustment, credit_line)


async def check_in_day_pass(
    session: AsyncSession,
    org: Organization,
    account: Account,
    *,
    price: int,
    now: datetime,
    description: str = "Day pass",
    day: date | None = None,
    tax_rate_ppm: int | None = None,
    actor_user_id: int | None = None,
) -> LineItem | None:
    """A day pass or check-in at the location's day rate (rules §8.4): an additional
    charge of kind DAY_PASS. Refused like a booking when the account has overdue
    invoices under ``blockBookingsWhenOverdue``; a free pass adds no line."""
    if price < 0:
        raise ValidationError("A day pass price cannot be negative.")
    account = await lock_account(session, org.id, account.id)
    await _require_eligible(session, org, account)
    if price == 0:
        return None
    on = day or local_date(now, org.timezone)
    return await invoices.place_additional_charge(
        session,
        org,
        account,
        LineSpec(
            description=f"{description.strip() or 'Day pass'}: {on:%b} {on.day}, {on.year}",
            unit_price=price,
            kind=LineKind.DAY_PASS,
            tax_rate_ppm=tax_rate_ppm,
            period_start=on,
            period_end=on,
        ),
        now,
        actor_user_id=actor_user_id,
    )


async def add_one_time_charge(
    session: AsyncSession,
    org: Organization,
    account: Account,
    *,
    description: str,
    unit_price: int,
    now: datetime,
    quantity: int = 1,
    tax_rate_ppm: int | None = None,
    actor_user_id: int | None = None,
) -> LineItem:
    """A one-off sale (kind CHARGE), placed like every additional charge."""
    if unit_price <= 0:
        raise ValidationError("A one-time charge needs a unit price above zero.")
    return await invoices.place_additional_charge(
        session,
        org,
        account,
        LineSpec(
            description=description,
            unit_price=unit_price,
            quantity=quantity,
            kind=LineKind.CHARGE,
            tax_rate_ppm=tax_rate_ppm,
        ),
        now,
        actor_user_id=actor_user_id,
    )
