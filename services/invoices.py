"""Invoices: the account's pending drafts, their lines and totals, where additional
charges land, finalization with gap-free numbers, removing lines, void and un-void,
and manual invoices (rules §4).

Conventions every function here keeps:

- Nothing commits; the caller owns the transaction.
- Locks are taken in the house order: the account row, then invoices by id, then the
  organization row (only to take a number at finalization). Functions that change an
  invoice take the account and invoice locks themselves and re-read after locking, so
  a caller may hand in an object it loaded before.
- Totals are always the sums of the lines (``recompute_totals``); tax is computed per
  line and rounded half-up (``services.money.tax``).
- A finalized invoice's status comes from ``services.invoice_status``; nothing here
  decides UPCOMING/DUE/OVERDUE/PAID on its own.
- Every change appends an event row in the same session.

Credit application after finalization belongs to ``services.credit``; it plugs in
through ``AFTER_FINALIZE`` so this module does not import it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import (
    Account,
    AdditionalChargesPolicy,
    CreditAllocation,
    CreditNoteStatus,
    DocumentType,
    Invoice,
    InvoiceStatus,
    LineItem,
    LineKind,
    Organization,
    Payment,
    PaymentStatus,
)
from services import events, money
from services.clock import local_date, start_of_day
from services.errors import InvalidStateError, NotFoundError, ValidationError
from services.events import EventType
from services.invoice_status import mark_milestones, set_status, settle, unpaid_status_now
from services.locks import lock_account, lock_invoice, lock_organization

INVOICE_PREFIX = "INV-"
CREDIT_NOTE_PREFIX = "CN-"
# ``Invoice.origin`` of the VOID invoice that keeps a line removed from a finalized one.
MOVED_LINE_ORIGIN = "MOVED_LINE"
MAX_DESCRIPTION = 500

AfterFinalizeHook = Callable[
    [AsyncSession, Organization, Invoice, datetime, bool, bool], Awaitable[object]
]
# Called, in order, at the end of every ``finalize`` with
# (session, org, invoice, now, apply_credit, automatic). ``services.credit`` registers
# the credit application of rules §5.5 here; the list is empty by default.
AFTER_FINALIZE: list[AfterFinalizeHook] = []


# --------------------------------------------------------------------------- calendar


def local_today(org: Organization, now: datetime) -> date:
    return local_date(now, org.timezone)


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole months, the day clamped to the target month's length."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    next_month = date(year + (month == 12), month % 12 + 1, 1)
    last_day = (next_month - timedelta(days=1)).day
    return date(year, month, min(day.day, last_day))


def next_billing_date(org: Organization, today: date) -> date:
    """The first date strictly after ``today`` whose day is the billing day."""
    if today.day < org.billing_day:
        return today.replace(day=org.billing_day)
    return add_months(today.replace(day=org.billing_day), 1)


def billing_date_on_or_after(org: Organization, day: date) -> date:
    return day if day.day == org.billing_day else next_billing_date(org, day)


def resolve_tax_rate(
    org: Organization, line_rate_ppm: int | None, plan_rate_ppm: int | None = None
) -> int:
    """The line's own rate, else its plan template's, else the organization default."""
    if line_rate_ppm is not None:
        return line_rate_ppm
    if plan_rate_ppm is not None:
        return plan_rate_ppm
    return org.default_tax_rate_ppm


# --------------------------------------------------------------------------- reading


def label(invoice: Invoice) -> str:
    """How a sentence names an invoice: its number, or "pending invoice 12"."""
    if invoice.number:
        return invoice.number
    if invoice.status == InvoiceStatus.PENDING:
        return f"pending invoice {invoice.id}"
    return f"invoice {invoice.id}"


async def get_invoice(session: AsyncSession, org: Organization, invoice_id: int) -> Invoice:
    invoice = await session.scalar(
        select(Invoice).where(Invoice.id == invoice_id, Invoice.organization_id == org.id)
    )
    if invoice is None:
        raise NotFoundError(f"No invoice {invoice_id} in this organization.")
    return invoice


async def get_line(session: AsyncSession, org: Organization, line_id: int) -> LineItem:
    line = await session.scalar(
        select(LineItem).where(LineItem.id == line_id, LineItem.organization_id == org.id)
    )
    if line is None:
        raise NotFoundError(f"No line item {line_id} in this organization.")
    return line


async def lines_of(session: AsyncSession, invoice_id: int) -> list[LineItem]:
    rows = await session.scalars(
        select(LineItem).where(LineItem.invoice_id == invoice_id).order_by(LineItem.id)
    )
    return list(rows)


async def find_pending_invoice(
    session: AsyncSession, account_id: int, due_date: date, *, due_today: bool = False
) -> Invoice | None:
    return await session.scalar(
        select(Invoice).where(
            Invoice.account_id == account_id,
            Invoice.due_date == due_date,
            Invoice.due_today == due_today,
            Invoice.status == InvoiceStatus.PENDING,
        )
    )


# --------------------------------------------------------------------------- lines and totals


@dataclass(frozen=True)
class LineSpec:
    """One line to put on an invoice. A negative ``unit_price`` makes a credit line
    (kind CREDIT). ``plan_tax_rate_ppm`` is the plan template's rate, consulted when
    the line names none of its own, before the organization default."""

    description: str
    unit_price: int
    quantity: int = 1
    kind: LineKind = LineKind.CHARGE
    tax_rate_ppm: int | None = None
    plan_tax_rate_ppm: int | None = None
    period_start: date | None = None
    period_end: date | None = None
    booking_id: int | None = None
    plan_subscription_id: int | None = None


def validate_spec(spec: LineSpec) -> tuple[str, LineKind]:
    description = spec.description.strip()
    if not description:
        raise ValidationError("Every line needs a description.")
    if len(description) > MAX_DESCRIPTION:
        raise ValidationError(f"A line description is at most {MAX_DESCRIPTION} characters.")
    if not isinstance(spec.quantity, int) or not 1 <= spec.quantity <= money.MAX_QUANTITY:
        raise ValidationError(
            f"A line's quantity must be a whole number from 1 to {money.MAX_QUANTITY:,}."
        )
    if spec.unit_price == 0:
        raise ValidationError(
            f"The line “{description}” has a zero amount; lines of zero amount are refused."
        )
    for rate in (spec.tax_rate_ppm, spec.plan_tax_rate_ppm):
        if rate is not None and not 0 <= rate <= money.PPM:
            raise ValidationError("A tax rate must lie between 0 and 100 percent.")
    if spec.period_start and spec.period_end and spec.period_end < spec.period_start:
        raise ValidationError("A line's period cannot end before it starts.")
    if spec.unit_price < 0:
        return description, LineKind.CREDIT
    if spec.kind == LineKind.CREDIT:
        raise ValidationError("A credit line needs a negative amount.")
    return description, spec.kind


def _price_line(line: LineItem, unit_price: int) -> None:
    line.unit_price = unit_price
    line.amount = line.quantity * unit_price
    line.tax = money.tax(line.amount, line.tax_rate_ppm)
    line.total = line.amount + line.tax


async def recompute_totals(session: AsyncSession, invoice: Invoice) -> Invoice:
    """Set subtotal, tax and total to the sums of the invoice's lines, and stretch the
    invoice period over its lines' periods (a line-less invoice keeps its own)."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(LineItem.amount), 0),
                func.coalesce(func.sum(LineItem.tax), 0),
                func.min(LineItem.period_start),
                func.max(LineItem.period_end),
            ).where(LineItem.invoice_id == invoice.id)
        )
    ).one()
    subtotal, tax, first_day, last_day = row
    # PostgreSQL's SUM(bigint) is NUMERIC: back to int before it meets other ints.
    invoice.subtotal = int(subtotal)
    invoice.tax = int(tax)
    invoice.total = invoice.subtotal + invoice.tax
    if first_day is not None:
        invoice.period_start = first_day
    if last_day is not None:
        invoice.period_end = last_day
    return invoice


def _touch(org: Organization, invoice: Invoice, now: datetime) -> None:
    """Note a change; a pending due-today invoice waits the grace again from now."""
    invoice.updated_at = now
    if invoice.status == InvoiceStatus.PENDING and invoice.due_today:
        invoice.finalize_at = now + timedelta(minutes=org.due_today_grace_minutes)


async def add_line(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    spec: LineSpec,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> LineItem:
    """Add a line to a PENDING invoice and recompute its totals. The caller holds the
    account lock (``pending_invoice`` and ``place_additional_charge`` callers do)."""
    if invoice.status != InvoiceStatus.PENDING:
        raise InvalidStateError(
            f"{label(invoice)} is {invoice.status}; lines are only added to pending "
            "invoices (a finalized invoice never changes).",
            invoice_id=invoice.id,
        )
    description, kind = validate_spec(spec)
    line = LineItem(
        organization_id=invoice.organization_id,
        invoice_id=invoice.id,
        kind=kind,
        description=description,
        quantity=spec.quantity,
        tax_rate_ppm=resolve_tax_rate(org, spec.tax_rate_ppm, spec.plan_tax_rate_ppm),
        period_start=spec.period_start,
        period_end=spec.period_end,
        booking_id=spec.booking_id,
        plan_subscription_id=spec.plan_subscription_id,
        created_at=now,
    )
    _price_line(line, spec.unit_price)
    # quantity × unitPrice, and with tax, may not leave the accepted range.
    money.check_bound(line.amount, invoice.currency, "quantity × unitPrice")
    money.check_bound(line.total, invoice.currency, "The line with its tax")
    session.add(line)
    await session.flush()
    _touch(org, invoice, now)
    await recompute_totals(session, invoice)
    events.record(
        session,
        organization_id=invoice.organization_id,
        type=EventType.LINE_ITEM_ADDED,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        actor_user_id=actor_user_id,
        line_item_id=line.id,
        kind=str(kind),
        amount=line.amount,
        tax=line.tax,
        total=line.total,
        invoice_total=invoice.total,
    )
    return line


async def reprice_pending_line(
    session: AsyncSession,
    org: Organization,
    line: LineItem,
    unit_price: int,
    now: datetime,
    *,
    description: str | None = None,
    period_end: date | None = None,
    actor_user_id: int | None = None,
) -> LineItem:
    """Change the unit price of a line still on a PENDING invoice (a shortened booking);
    its tax is recomputed at the line's own rate. A zero price is refused: remove it."""
    invoice, line = await _lock_line_invoice(session, org, line)
    if invoice.status != InvoiceStatus.PENDING:
        raise InvalidStateError(
            f"{label(invoice)} is {invoice.status}; only lines of pending invoices change."
        )
    if unit_price == 0 or (unit_price < 0) != (line.unit_price < 0):
        raise ValidationError("A repriced line keeps its sign and a non-zero amount.")
    before = line.total
    _price_line(line, unit_price)
    if description is not None:
        line.description = description.strip()[:MAX_DESCRIPTION]
    if period_end is not None:
        line.period_end = period_end
    await session.flush()
    _touch(org, invoice, now)
    await recompute_totals(session, invoice)
    events.record(
        session,
        organization_id=invoice.organization_id,
        type=EventType.INVOICE_UPDATED,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        actor_user_id=actor_user_id,
        line_item_id=line.id,
        previous_line_total=before,
        line_total=line.total,
        invoice_total=invoice.total,
    )
    return line


# --------------------------------------------------------------------------- pending invoices


async def pending_invoice(
    session: AsyncSession,
    org: Organization,
    account: Account,
    due_date: date,
    *,
    due_today: bool = False,
    now: datetime,
    actor_user_id: int | None = None,
) -> Invoice:
    """The account's PENDING invoice for ``due_date``, created when there is none.

    A billing-date invoice (``due_today=False``) finalizes at the start of its due date
    in the organization's timezone and covers the billing period that starts on it. A
    due-today invoice keeps additional charges apart from the billing-date one and
    finalizes ``due_today_grace_minutes`` after its last change. The caller holds the
    account lock, which is what makes get-or-create safe (the partial unique index
    is the last line of defence).
    """
    existing = await find_pending_invoice(session, account.id, due_date, due_today=due_today)
    if existing is not None:
        return existing
    if due_today:
        finalize_at = now + timedelta(minutes=org.due_today_grace_minutes)
        period_end = due_date
    else:
        finalize_at = start_of_day(due_date, org.timezone)
        period_end = next_billing_date(org, due_date) - timedelta(days=1)
    invoice = Invoice(
        organization_id=org.id,
        account_id=account.id,
        status=InvoiceStatus.PENDING,
        document_type=DocumentType.DRAFT,
        currency=org.currency,
        due_date=due_date,
        due_today=due_today,
        period_start=due_date,
        period_end=period_end,
        finalize_at=finalize_at,
        created_at=now,
        updated_at=now,
    )
    session.add(invoice)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.INVOICE_CREATED,
        at=now,
        account_id=account.id,
        invoice_id=invoice.id,
        actor_user_id=actor_user_id,
        status=str(InvoiceStatus.PENDING),
        due_date=due_date.isoformat(),
        due_today=due_today,
    )
    return invoice


async def place_additional_charge(
    session: AsyncSession,
    org: Organization,
    account: Account,
    spec: LineSpec,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> LineItem:
    """Put an additional charge (or, with a negative price, a credit) where the
    policy says (rules §4.9, §5.4), never on a finalized invoice.

    NEXT_PENDING_INVOICE: the pending invoice of the next billing date. NEW_INVOICE_DUE_
    TODAY: the account's pending due-today invoice of today (reused while it waits out
    its grace), finalized here and now when the grace is zero minutes.
    """
    account = await lock_account(session, org.id, account.id)
    today = local_today(org, now)
    if org.additional_charges == AdditionalChargesPolicy.NEW_INVOICE_DUE_TODAY:
        invoice = await pending_invoice(
            session, org, account, today, due_today=True, now=now, actor_user_id=actor_user_id
        )
        line = await add_line(session, org, invoice, spec, now, actor_user_id=actor_user_id)
        if org.due_today_grace_minutes == 0:
            await finalize(
                session,
                org,
                invoice,
                now,
                manual=False,
                apply_credit=org.auto_apply_credit,
                actor_user_id=actor_user_id,
            )
        return line
    invoice = await pending_invoice(
        session, org, account, next_billing_date(org, today), now=now, actor_user_id=actor_user_id
    )
    return await add_line(session, org, invoice, spec, now, actor_user_id=actor_user_id)


# --------------------------------------------------------------------------- finalization


async def finalize(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    now: datetime,
    *,
    manual: bool,
    apply_credit: bool,
    actor_user_id: int | None = None,
    keep_due_date: bool = False,
) -> Invoice:
    """Freeze a PENDING invoice (rules §4.3, §4.4).

    It takes the next number of its series under the organization lock — ``INV-000001``
    for invoices, ``CN-000001`` when the total is negative (a credit note) — and its
    issue date is the local today. A manual finalization ("charge early") moves a later
    due date to today unless ``keep_due_date`` (a manual invoice finalized ahead of the
    date the admin chose). Then: a credit note is PAID (nothing is owed on it) and
    AVAILABLE; a zero total is PAID; a positive total is UPCOMING, DUE or OVERDUE by its
    dates. Finally each ``AFTER_FINALIZE`` hook runs (credit application), told whether
    to apply credit and whether this finalization was automatic.
    """
    await lock_account(session, org.id, invoice.account_id)
    invoice = await lock_invoice(session, org.id, invoice.id)
    if invoice.status != InvoiceStatus.PENDING:
        raise InvalidStateError(
            f"{label(invoice)} is {invoice.status}; only a pending invoice can be finalized.",
            invoice_id=invoice.id,
        )
    line_count = await session.scalar(
        select(func.count(LineItem.id)).where(LineItem.invoice_id == invoice.id)
    )
    if not line_count:
        raise InvalidStateError(
            f"{label(invoice)} has no lines; add a charge or credit before finalizing it.",
            invoice_id=invoice.id,
        )
    await recompute_totals(session, invoice)
    today = local_today(org, now)
    if manual and not keep_due_date and invoice.due_date > today:
        invoice.due_date = today

    locked_org = await lock_organization(session, org.id)
    if invoice.total < 0:
        invoice.document_type = DocumentType.CREDIT_NOTE
        invoice.number = f"{CREDIT_NOTE_PREFIX}{locked_org.next_credit_note_number:06d}"
        locked_org.next_credit_note_number += 1
    else:
        invoice.document_type = DocumentType.INVOICE
        invoice.number = f"{INVOICE_PREFIX}{locked_org.next_invoice_number:06d}"
        locked_org.next_invoice_number += 1
    invoice.issue_date = today
    invoice.finalized_at = now
    # Finalized rows leave the finalize_at index so the billing run's scan stays small.
    invoice.finalize_at = None
    invoice.updated_at = now
    events.record(
        session,
        organization_id=org.id,
        type=EventType.INVOICE_FINALIZED,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        credit_note_id=invoice.id if invoice.total < 0 else None,
        actor_user_id=actor_user_id,
        number=invoice.number,
        document_type=str(invoice.document_type),
        total=invoice.total,
        due_date=invoice.due_date.isoformat(),
        manual=manual,
    )

    if invoice.total < 0:
        events.record(
            session,
            organization_id=org.id,
            type=EventType.CREDIT_NOTE_CREATED,
            at=now,
            account_id=invoice.account_id,
            invoice_id=invoice.id,
            credit_note_id=invoice.id,
            actor_user_id=actor_user_id,
            number=invoice.number,
            credit=-invoice.total,
            origin=invoice.origin,
        )
        set_status(session, invoice, InvoiceStatus.PAID, now, actor_user_id=actor_user_id)
        settle(session, invoice, org, now, actor_user_id=actor_user_id)
    elif invoice.total == 0:
        set_status(session, invoice, InvoiceStatus.PAID, now, actor_user_id=actor_user_id)
    else:
        target = unpaid_status_now(invoice, today, org.overdue_after_days)
        mark_milestones(session, invoice, target, now)
        set_status(session, invoice, target, now, actor_user_id=actor_user_id)
    await session.flush()

    for hook in list(AFTER_FINALIZE):
        await hook(session, org, invoice, now, apply_credit, not manual)
    return invoice


# --------------------------------------------------------------------------- removing lines


@dataclass(frozen=True)
class RemovedLine:
    """What ``remove_line`` did: the invoice the line left, and the VOID invoice that
    now keeps it when it came off a finalized invoice (None for a pending one)."""

    invoice: Invoice
    trail_invoice: Invoice | None


async def _lock_line_invoice(
    session: AsyncSession, org: Organization, line: LineItem
) -> tuple[Invoice, LineItem]:
    """Lock the account and the invoice a line is on; return both re-read."""
    invoice = await get_invoice(session, org, line.invoice_id)
    await lock_account(session, org.id, invoice.account_id)
    invoice = await lock_invoice(session, org.id, invoice.id)
    # Re-read the line under the lock: it may have moved since the caller loaded it.
    fresh = await session.scalar(
        select(LineItem).where(LineItem.id == line.id).execution_options(populate_existing=True)
    )
    if fresh is None or fresh.invoice_id != invoice.id:
        raise InvalidStateError("The line changed while you were looking at it; reload it.")
    return invoice, fresh


async def _live_payment_ids(session: AsyncSession, invoice_id: int) -> list[int]:
    rows = await session.scalars(
        select(Payment.id)
        .where(
            Payment.invoice_id == invoice_id,
            Payment.status.in_((PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED)),
        )
        .order_by(Payment.id)
    )
    return list(rows)


async def _live_allocation_ids(session: AsyncSession, invoice_id: int) -> list[int]:
    """Live allocations touching the invoice in either direction."""
    rows = await session.scalars(
        select(CreditAllocation.id)
        .where(
            (CreditAllocation.invoice_id == invoice_id)
            | (CreditAllocation.credit_note_id == invoice_id),
            CreditAllocation.removed_at.is_(None),
        )
        .order_by(CreditAllocation.id)
    )
    return list(rows)


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in ids)


async def remove_line(
    session: AsyncSession,
    org: Organization,
    line: LineItem,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> RemovedLine:
    """Remove a line item (rules §4.7).

    From a PENDING invoice the line is deleted. From an UPCOMING/DUE/OVERDUE invoice
    with no payment and no credit allocated to it, the line moves onto a new VOID
    invoice (origin MOVED_LINE, pointing back at the original) so the document trail
    stays, both totals are recomputed, and the original is settled again: an invoice
    whose last charge was removed has a zero total and becomes PAID. A removal that
    would leave a finalized invoice with a negative total is refused (void it
    instead). PAID, PROCESSING and VOID invoices never lose lines.
    """
    invoice, line = await _lock_line_invoice(session, org, line)
    if invoice.status == InvoiceStatus.PENDING:
        await session.delete(line)
        await session.flush()
        _touch(org, invoice, now)
        await recompute_totals(session, invoice)
        events.record(
            session,
            organization_id=org.id,
            type=EventType.LINE_ITEM_REMOVED,
            at=now,
            account_id=invoice.account_id,
            invoice_id=invoice.id,
            actor_user_id=actor_user_id,
            line_item_id=line.id,
            total=line.total,
            invoice_total=invoice.total,
        )
        return RemovedLine(invoice=invoice, trail_invoice=None)

    if invoice.status == InvoiceStatus.PAID:
        raise InvalidStateError(
            f"{label(invoice)} is PAID; its lines cannot be removed. Refund the payment or "
            "create a credit instead.",
            invoice_id=invoice.id,
        )
    if invoice.status == InvoiceStatus.PROCESSING:
        raise InvalidStateError(
            f"{label(invoice)} is PROCESSING a payment; wait for the payment to finish, "
            "then refund or credit instead of removing a line.",
            invoice_id=invoice.id,
        )
    if invoice.status == InvoiceStatus.VOID:
        raise InvalidStateError(
            f"{label(invoice)} is VOID; its lines are kept as the record and cannot be removed.",
            invoice_id=invoice.id,
        )
    payments = await _live_payment_ids(session, invoice.id)
    if invoice.amount_paid > 0 or payments:
        raise InvalidStateError(
            f"{label(invoice)} has payments ({_ids(payments) or 'recorded'}); a line cannot "
            "be removed from a paid-into invoice. Refund the payment or create a credit "
            "instead.",
            invoice_id=invoice.id,
            payment_ids=payments,
        )
    allocations = await _live_allocation_ids(session, invoice.id)
    if invoice.credit_applied > 0 or allocations:
        raise InvalidStateError(
            f"{label(invoice)} has credit allocated to it ({_ids(allocations)}); remove "
            "the credit allocation first, then remove the line.",
            invoice_id=invoice.id,
            allocation_ids=allocations,
        )
    if invoice.total - line.total < 0:
        raise InvalidStateError(
            f"Removing this line would leave {label(invoice)} with a negative total; void "
            "the invoice instead.",
            invoice_id=invoice.id,
        )

    trail = Invoice(
        organization_id=org.id,
        account_id=invoice.account_id,
        status=InvoiceStatus.VOID,
        document_type=DocumentType.INVOICE,
        currency=invoice.currency,
        issue_date=invoice.issue_date,
        due_date=invoice.due_date,
        period_start=line.period_start or invoice.period_start,
        period_end=line.period_end or invoice.period_end,
        origin=MOVED_LINE_ORIGIN,
        source_invoice_id=invoice.id,
        voided_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(trail)
    await session.flush()
    line.invoice_id = trail.id
    line.moved_from_invoice_id = invoice.id
    await session.flush()
    await recompute_totals(session, trail)
    await recompute_totals(session, invoice)
    invoice.updated_at = now
    events.record(
        session,
        organization_id=org.id,
        type=EventType.INVOICE_CREATED,
        at=now,
        account_id=trail.account_id,
        invoice_id=trail.id,
        actor_user_id=actor_user_id,
        status=str(InvoiceStatus.VOID),
        origin=MOVED_LINE_ORIGIN,
        source_invoice_id=invoice.id,
    )
    events.record(
        session,
        organization_id=org.id,
        type=EventType.LINE_ITEM_MOVED,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        actor_user_id=actor_user_id,
        line_item_id=line.id,
        to_invoice_id=trail.id,
        total=line.total,
        invoice_total=invoice.total,
    )
    settle(session, invoice, org, now, actor_user_id=actor_user_id)
    await session.flush()
    return RemovedLine(invoice=invoice, trail_invoice=trail)


# --------------------------------------------------------------------------- void / un-void


async def void(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> Invoice:
    """Void an invoice (rules §4.6): a pending one, or a finalized one with no succeeded
    payment and no live credit allocation in either direction (nor refunds drawn on
    it). It keeps its number; a credit note's credit_note_status becomes VOID too."""
    await lock_account(session, org.id, invoice.account_id)
    invoice = await lock_invoice(session, org.id, invoice.id)
    if invoice.status == InvoiceStatus.VOID:
        raise InvalidStateError(f"{label(invoice)} is already void.", invoice_id=invoice.id)
    if invoice.status == InvoiceStatus.PROCESSING:
        raise InvalidStateError(
            f"{label(invoice)} has a payment in flight; wait until it succeeds or fails, "
            "then void it.",
            invoice_id=invoice.id,
        )
    succeeded = list(
        await session.scalars(
            select(Payment.id)
            .where(Payment.invoice_id == invoice.id, Payment.status == PaymentStatus.SUCCEEDED)
            .order_by(Payment.id)
        )
    )
    if succeeded or invoice.amount_paid > 0:
        raise InvalidStateError(
            f"{label(invoice)} has succeeded payments ({_ids(succeeded) or 'recorded'}); an "
            "invoice that took money cannot be voided. Refund the payments, or credit the "
            "account instead.",
            invoice_id=invoice.id,
            payment_ids=succeeded,
        )
    allocations = await _live_allocation_ids(session, invoice.id)
    if allocations or invoice.credit_applied > 0 or invoice.credit_allocated > 0:
        raise InvalidStateError(
            f"{label(invoice)} has live credit allocations ({_ids(allocations)}); remove "
            "those allocations first, then void it.",
            invoice_id=invoice.id,
            allocation_ids=allocations,
        )
    if invoice.credit_refunded > 0:
        raise InvalidStateError(
            f"Credit note {label(invoice)} paid out a refund; it stays on the books and "
            "cannot be voided.",
            invoice_id=invoice.id,
        )
    mark_voided(session, org, invoice, now, actor_user_id=actor_user_id)
    await session.flush()
    return invoice


def mark_voided(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> None:
    """Turn a checked invoice or credit note VOID and record it (shared by ``void``
    and ``credit.void_credit_note``, which check different things first)."""
    before = invoice.status
    set_status(session, invoice, InvoiceStatus.VOID, now, actor_user_id=actor_user_id)
    invoice.voided_at = now
    if invoice.document_type == DocumentType.CREDIT_NOTE:
        previous = invoice.credit_note_status
        invoice.credit_note_status = CreditNoteStatus.VOID
        events.record(
            session,
            organization_id=org.id,
            type=EventType.CREDIT_NOTE_STATUS_CHANGED,
            at=now,
            account_id=invoice.account_id,
            invoice_id=invoice.id,
            credit_note_id=invoice.id,
            actor_user_id=actor_user_id,
            status=str(CreditNoteStatus.VOID),
            previous_status=str(previous) if previous else None,
        )
    events.record(
        session,
        organization_id=org.id,
        type=EventType.INVOICE_VOIDED,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        credit_note_id=invoice.id if invoice.document_type == DocumentType.CREDIT_NOTE else None,
        actor_user_id=actor_user_id,
        number=invoice.number,
        previous_status=str(before),
    )


async def unvoid(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> Invoice:
    """Un-void (rules §4.6): back to the status its dates and balance give. A voided
    pending invoice becomes PENDING again unless the account has since got another
    pending invoice for that due date. The VOID trail of a removed line stays void."""
    await lock_account(session, org.id, invoice.account_id)
    invoice = await lock_invoice(session, org.id, invoice.id)
    if invoice.status != InvoiceStatus.VOID:
        raise InvalidStateError(
            f"{label(invoice)} is {invoice.status}, not void.", invoice_id=invoice.id
        )
    if invoice.origin == MOVED_LINE_ORIGIN:
        raise InvalidStateError(
            f"{label(invoice)} keeps a line removed from invoice {invoice.source_invoice_id}; "
            "it stays void. Add a new charge instead.",
            invoice_id=invoice.id,
        )
    today = local_today(org, now)
    if invoice.document_type == DocumentType.DRAFT:
        other = await find_pending_invoice(
            session, invoice.account_id, invoice.due_date, due_today=invoice.due_today
        )
        if other is not None:
            raise InvalidStateError(
                f"The account already has {label(other)} due {invoice.due_date.isoformat()}; "
                "an account has one pending invoice per due date. Void that one first or "
                "add the charges to it.",
                invoice_id=invoice.id,
                other_invoice_id=other.id,
            )
        set_status(session, invoice, InvoiceStatus.PENDING, now, actor_user_id=actor_user_id)
        _touch(org, invoice, now)
    elif invoice.document_type == DocumentType.CREDIT_NOTE:
        set_status(session, invoice, InvoiceStatus.PAID, now, actor_user_id=actor_user_id)
        settle(session, invoice, org, now, actor_user_id=actor_user_id)
    else:
        owed = invoice.total - invoice.amount_paid - invoice.credit_applied
        if owed <= 0:
            target = InvoiceStatus.PAID
        else:
            target = unpaid_status_now(invoice, today, org.overdue_after_days)
            mark_milestones(session, invoice, target, now)
        set_status(session, invoice, target, now, actor_user_id=actor_user_id)
    invoice.voided_at = None
    events.record(
        session,
        organization_id=org.id,
        type=EventType.INVOICE_UNVOIDED,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        actor_user_id=actor_user_id,
        number=invoice.number,
        status=str(invoice.status),
    )
    await session.flush()
    return invoice


# --------------------------------------------------------------------------- manual invoices


@dataclass(frozen=True)
class ManualCharge:
    """A charge line of a manual invoice; ``unit_price`` is positive, minor units."""

    description: str
    unit_price: int
    quantity: int = 1
    tax_rate_ppm: int | None = None


@dataclass(frozen=True)
class ManualCredit:
    """A credit line of a manual invoice: ``amount`` is positive and is what the
    account is credited; it is tax-free unless a rate is given."""

    description: str
    amount: int
    tax_rate_ppm: int | None = None


async def create_manual_invoice(
    session: AsyncSession,
    org: Organization,
    account: Account,
    lines: Sequence[ManualCharge | ManualCredit],
    now: datetime,
    *,
    due_date: date | None = None,
    finalize_now: bool = False,
    apply_credit: bool = True,
    actor_user_id: int | None = None,
) -> Invoice:
    """An admin's manual invoice for an active account (rules §4.8).

    The rule: with no due date (or today's) the lines go on the account's due-today
    invoice, which finalizes per the grace rule — at once when the grace is zero or
    ``finalize_now`` is set. With a later date and no ``finalize_now`` they go on the
    account's pending invoice due that date (one pending invoice per due date, rules
    §4.2), which finalizes at the start of that day. With a later date and
    ``finalize_now`` the invoice is kept apart from the billing-date one, finalized now
    and keeps the chosen due date (UPCOMING). A past due date is refused. A manual
    finalization applies available credit when ``apply_credit`` (rules §5.5).
    """
    if not lines:
        raise ValidationError("A manual invoice needs at least one charge or credit line.")
    specs: list[LineSpec] = []
    for item in lines:
        if isinstance(item, ManualCredit):
            if item.amount <= 0:
                raise ValidationError(
                    f"The credit “{item.description.strip()}” must have an amount above zero."
                )
            specs.append(
                LineSpec(
                    description=item.description,
                    unit_price=-item.amount,
                    kind=LineKind.CREDIT,
                    tax_rate_ppm=item.tax_rate_ppm if item.tax_rate_ppm is not None else 0,
                )
            )
        else:
            if item.unit_price <= 0:
                raise ValidationError(
                    f"The charge “{item.description.strip()}” must have a unit price above "
                    "zero; use a credit line to give credit."
                )
            specs.append(
                LineSpec(
                    description=item.description,
                    unit_price=item.unit_price,
                    quantity=item.quantity,
                    kind=LineKind.CHARGE,
                    tax_rate_ppm=item.tax_rate_ppm,
                )
            )
    for spec in specs:
        validate_spec(spec)

    account = await lock_account(session, org.id, account.id)
    if not account.active:
        raise InvalidStateError(
            f"Account “{account.name}” is inactive; reactivate it before invoicing it."
        )
    today = local_today(org, now)
    due = due_date or today
    if due < today:
        raise ValidationError("A manual invoice cannot be due in the past; pick today or later.")

    ad_hoc = due == today or finalize_now
    invoice = await pending_invoice(
        session, org, account, due, due_today=ad_hoc, now=now, actor_user_id=actor_user_id
    )
    for spec in specs:
        await add_line(session, org, invoice, spec, now, actor_user_id=actor_user_id)
    if finalize_now or (due == today and org.due_today_grace_minutes == 0):
        invoice = await finalize(
            session,
            org,
            invoice,
            now,
            manual=True,
            apply_credit=apply_credit,
            actor_user_id=actor_user_id,
            keep_due_date=True,
        )
    return invoice
