"""Credit notes and the credit that moves from them onto invoices (rules §5).

A credit note is a finalized invoice with a negative total (status ``PAID``: nothing
is owed on it; ``credit_note_status`` AVAILABLE / CONSUMED / VOID). Its credit reaches
an invoice of the same account only through a ``CreditAllocation`` row, and the two
running sums that the CHECK constraints guard — ``credit_allocated`` on the credit note
and ``credit_applied`` on the invoice — change in the same statement batch as the row.

Every writer here takes the account row lock first and the invoice locks second (id
order), then re-reads and re-checks what it is about to change: the account lock is
the mutex that makes "check remaining credit, then allocate" safe under concurrent
requests; the organization row is locked last and only to take a credit-note number.
Nothing here commits; the caller owns the transaction. Credit never expires, so
there is deliberately no time-based rule anywhere in this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import (
    Account,
    AllocationKind,
    CreditAllocation,
    CreditNoteStatus,
    DocumentType,
    Invoice,
    InvoiceStatus,
    LineItem,
    LineKind,
    Organization,
    PlanSubscription,
)
from models.enums import OUTSTANDING_STATUSES
from services import events, invoices, money
from services.clock import local_date
from services.errors import InvalidStateError, NotFoundError, ValidationError
from services.events import EventType
from services.invoice_status import settle
from services.locks import lock_account, lock_invoices, lock_organization

CREDIT_NOTE_PREFIX = "CN-"


# --------------------------------------------------------------------------- reading


async def available_credit(session: AsyncSession, account_id: int) -> int:
    """Credit the account can still spend: Σ remaining over its AVAILABLE credit notes."""
    remaining = -Invoice.total - Invoice.credit_allocated - Invoice.credit_refunded
    value = await session.scalar(
        select(func.coalesce(func.sum(remaining), 0)).where(
            Invoice.account_id == account_id,
            Invoice.document_type == DocumentType.CREDIT_NOTE,
            Invoice.credit_note_status == CreditNoteStatus.AVAILABLE,
            Invoice.status != InvoiceStatus.VOID,
        )
    )
    return int(value or 0)


async def credit_notes_of_account(
    session: AsyncSession,
    org: Organization,
    account_id: int,
    *,
    status: CreditNoteStatus | None = None,
) -> list[Invoice]:
    """The account's credit notes, oldest first (the order credit is spent in)."""
    query = select(Invoice).where(
        Invoice.organization_id == org.id,
        Invoice.account_id == account_id,
        Invoice.document_type == DocumentType.CREDIT_NOTE,
    )
    if status is not None:
        query = query.where(Invoice.credit_note_status == status)
    rows = await session.scalars(query.order_by(Invoice.finalized_at, Invoice.id))
    return list(rows)


async def allocations_of(
    session: AsyncSession,
    org: Organization,
    *,
    invoice_id: int | None = None,
    credit_note_id: int | None = None,
    include_removed: bool = True,
) -> list[CreditAllocation]:
    """Allocations into an invoice and/or out of a credit note, in creation order."""
    query = select(CreditAllocation).where(CreditAllocation.organization_id == org.id)
    if invoice_id is not None:
        query = query.where(CreditAllocation.invoice_id == invoice_id)
    if credit_note_id is not None:
        query = query.where(CreditAllocation.credit_note_id == credit_note_id)
    if not include_removed:
        query = query.where(CreditAllocation.removed_at.is_(None))
    rows = await session.scalars(query.order_by(CreditAllocation.id))
    return list(rows)


# --------------------------------------------------------------------------- helpers


def _label(invoice: Invoice) -> str:
    if invoice.number:
        return invoice.number
    if invoice.status == InvoiceStatus.PENDING:
        return f"pending invoice {invoice.id}"
    return f"invoice {invoice.id}"


def _fmt(amount: int, org: Organization) -> str:
    return money.format_amount(amount, org.currency)


async def _find_invoice(
    session: AsyncSession, org: Organization, invoice_id: int, what: str = "invoice"
) -> Invoice:
    invoice = await session.scalar(
        select(Invoice).where(Invoice.id == invoice_id, Invoice.organization_id == org.id)
    )
    if invoice is None:
        raise NotFoundError(f"No {what} {invoice_id} in this organization.")
    return invoice


async def _account_name(session: AsyncSession, account_id: int) -> str:
    account = await session.get(Account, account_id)
    if account is None:
        return f"account {account_id}"
    return f"{account.kind.lower()} account {account.name!r}"


async def _refuse_cross_account(session: AsyncSession, note: Invoice, target: Invoice) -> None:
    if note.account_id == target.account_id:
        return
    note_owner = await _account_name(session, note.account_id)
    target_owner = await _account_name(session, target.account_id)
    raise ValidationError(
        f"Credit note {_label(note)} belongs to the {note_owner} but {_label(target)} "
        f"belongs to the {target_owner}: credit only pays invoices of its own account "
        "(a team's credit never pays a personal invoice, nor the other way round).",
        credit_note_id=note.id,
        invoice_id=target.id,
    )


async def _lock_by_id(session: AsyncSession, ids: Sequence[int]) -> dict[int, Invoice]:
    return {invoice.id: invoice for invoice in await lock_invoices(session, ids)}


def _credit_note_number(org: Organization) -> str:
    """Take the next number of the gap-free credit-note series (org row is locked)."""
    number = f"{CREDIT_NOTE_PREFIX}{org.next_credit_note_number:06d}"
    org.next_credit_note_number += 1
    return number


async def _finalize_new_credit_note(
    session: AsyncSession,
    org: Organization,
    note: Invoice,
    now: datetime,
    actor_user_id: int | None,
) -> None:
    """Number a new credit note (taking the organization lock last), record its birth
    and let ``settle`` give it its AVAILABLE status."""
    locked_org = await lock_organization(session, org.id)
    note.number = _credit_note_number(locked_org)
    if locked_org is not org:
        # Keep the caller's object in step with the row it may read later.
        org.next_credit_note_number = locked_org.next_credit_note_number
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.CREDIT_NOTE_CREATED,
        at=now,
        account_id=note.account_id,
        invoice_id=note.id,
        credit_note_id=note.id,
        actor_user_id=actor_user_id,
        number=note.number,
        credit=-note.total,
        origin=note.origin,
    )
    events.record(
        session,
        organization_id=org.id,
        type=EventType.INVOICE_FINALIZED,
        at=now,
        account_id=note.account_id,
        invoice_id=note.id,
        credit_note_id=note.id,
        actor_user_id=actor_user_id,
        number=note.number,
        document_type=str(DocumentType.CREDIT_NOTE),
        total=note.total,
    )
    settle(session, note, org, now, actor_user_id=actor_user_id)


def _new_credit_note(
    org: Organization,
    account_id: int,
    now: datetime,
    *,
    origin: str,
    source_invoice_id: int | None = None,
    source_payment_id: int | None = None,
) -> Invoice:
    today = local_date(now, org.timezone)
    # Finalized on creation: PAID because nothing is owed on a credit note; its
    # credit_note_status is left to settle() so the status event is recorded once.
    return Invoice(
        organization_id=org.id,
        account_id=account_id,
        status=InvoiceStatus.PAID,
        document_type=DocumentType.CREDIT_NOTE,
        credit_note_status=None,
        currency=org.currency,
        issue_date=today,
        due_date=today,
        subtotal=0,
        tax=0,
        total=0,
        origin=origin,
        source_invoice_id=source_invoice_id,
        source_payment_id=source_payment_id,
        created_at=now,
        updated_at=now,
        finalized_at=now,
    )


# --------------------------------------------------------------------------- allocating


async def _allocate_locked(
    session: AsyncSession,
    org: Organization,
    note: Invoice,
    target: Invoice,
    amount: int,
    now: datetime,
    *,
    kind: AllocationKind,
    actor_user_id: int | None,
) -> CreditAllocation:
    """Allocate with the account and both invoices already locked and freshly read."""
    if amount <= 0:
        raise ValidationError("The amount of credit to apply must be greater than zero.")
    if note.document_type != DocumentType.CREDIT_NOTE:
        raise ValidationError(
            f"{_label(note)} is not a credit note; only a credit note's credit can be applied.",
            credit_note_id=note.id,
        )
    if note.status == InvoiceStatus.VOID or note.credit_note_status == CreditNoteStatus.VOID:
        raise InvalidStateError(
            f"Credit note {_label(note)} is void; its credit can no longer be applied.",
            credit_note_id=note.id,
        )
    if note.credit_note_status != CreditNoteStatus.AVAILABLE or note.credit_remaining <= 0:
        raise InvalidStateError(
            f"Credit note {_label(note)} is fully used; it has no credit left to apply.",
            credit_note_id=note.id,
        )
    if target.document_type == DocumentType.CREDIT_NOTE:
        raise ValidationError(
            f"{_label(target)} is a credit note; credit is applied to invoices that are owed.",
            invoice_id=target.id,
        )
    if target.status == InvoiceStatus.PENDING:
        raise InvalidStateError(
            f"{_label(target)} is still pending (not finalized); credit is only applied to "
            "upcoming, due or overdue invoices. Finalize it first, or let the credit land "
            "on it as a credit line.",
            invoice_id=target.id,
        )
    if target.status not in OUTSTANDING_STATUSES:
        raise InvalidStateError(
            f"{_label(target)} is {target.status.lower()}; credit is only applied to "
            "upcoming, due or overdue invoices.",
            invoice_id=target.id,
        )
    await _refuse_cross_account(session, note, target)
    if note.currency != target.currency:
        raise ValidationError(
            f"Credit note {_label(note)} is in {note.currency} but {_label(target)} is in "
            f"{target.currency}; credit never crosses currencies.",
        )
    if amount > note.credit_remaining:
        raise ValidationError(
            f"Credit note {_label(note)} has only {_fmt(note.credit_remaining, org)} of "
            f"credit left; {_fmt(amount, org)} cannot be applied.",
            credit_remaining=note.credit_remaining,
        )
    if amount > target.balance_due:
        raise ValidationError(
            f"{_label(target)} has a balance of {_fmt(target.balance_due, org)}; "
            f"{_fmt(amount, org)} of credit would pay more than is owed.",
            balance_due=target.balance_due,
        )

    allocation = CreditAllocation(
        organization_id=org.id,
        account_id=note.account_id,
        credit_note_id=note.id,
        invoice_id=target.id,
        amount=amount,
        kind=kind,
        created_by_user_id=actor_user_id,
        created_at=now,
    )
    session.add(allocation)
    note.credit_allocated += amount
    note.updated_at = now
    target.credit_applied += amount
    target.updated_at = now
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.CREDIT_ALLOCATED,
        at=now,
        account_id=note.account_id,
        invoice_id=target.id,
        credit_note_id=note.id,
        actor_user_id=actor_user_id,
        allocation_id=allocation.id,
        amount=amount,
        kind=str(kind),
        balance_due=target.balance_due,
        credit_remaining=note.credit_remaining,
    )
    settle(session, target, org, now, actor_user_id=actor_user_id)
    settle(session, note, org, now, actor_user_id=actor_user_id)
    return allocation


async def allocate(
    session: AsyncSession,
    org: Organization,
    credit_note_id: int,
    invoice_id: int,
    amount: int,
    now: datetime,
    *,
    automatic: bool = False,
    actor_user_id: int | None = None,
) -> CreditAllocation:
    """Apply ``amount`` of a credit note to an UPCOMING/DUE/OVERDUE invoice of the same
    account (rules §5.6). The invoice becomes PAID when credit pays it in full, the
    credit note CONSUMED when it is used up."""
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValidationError("The amount of credit to apply must be greater than zero.")
    if credit_note_id == invoice_id:
        raise ValidationError("A credit note cannot be applied to itself.")
    note = await _find_invoice(session, org, credit_note_id, "credit note")
    target = await _find_invoice(session, org, invoice_id)
    # Account ids never change, so refusing a cross-account pair before locking is safe
    # (and there would be no single account to lock).
    await _refuse_cross_account(session, note, target)
    await lock_account(session, org.id, note.account_id)
    locked = await _lock_by_id(session, [note.id, target.id])
    return await _allocate_locked(
        session,
        org,
        locked[note.id],
        locked[target.id],
        amount,
        now,
        kind=AllocationKind.AUTOMATIC if automatic else AllocationKind.MANUAL,
        actor_user_id=actor_user_id,
    )


async def remove_allocation(
    session: AsyncSession,
    org: Organization,
    allocation_id: int,
    now: datetime,
    actor_user_id: int | None = None,
) -> CreditAllocation:
    """Undo an allocation: the amount goes back to the credit note as unassigned credit
    and the invoice returns to the unpaid status its dates give (rules §5.6)."""
    found = await session.scalar(
        select(CreditAllocation).where(
            CreditAllocation.id == allocation_id, CreditAllocation.organization_id == org.id
        )
    )
    if found is None:
        raise NotFoundError(f"No credit allocation {allocation_id} in this organization.")
    await lock_account(session, org.id, found.account_id)
    locked = await _lock_by_id(session, [found.credit_note_id, found.invoice_id])
    # Re-read under the account lock: a concurrent removal may have won the race.
    allocation = await session.scalar(
        select(CreditAllocation)
        .where(CreditAllocation.id == allocation_id)
        .execution_options(populate_existing=True)
    )
    assert allocation is not None  # allocations are never deleted
    note, target = locked[allocation.credit_note_id], locked[allocation.invoice_id]
    if allocation.removed_at is not None:
        raise InvalidStateError(
            f"This allocation of {_fmt(allocation.amount, org)} from {_label(note)} to "
            f"{_label(target)} was already removed.",
            allocation_id=allocation.id,
        )
    if target.status == InvoiceStatus.PROCESSING:
        raise InvalidStateError(
            f"A card payment for {_label(target)} is in progress; remove the credit once it "
            "has succeeded or failed.",
            invoice_id=target.id,
        )
    allocation.removed_at = now
    allocation.removed_by_user_id = actor_user_id
    note.credit_allocated -= allocation.amount
    note.updated_at = now
    target.credit_applied -= allocation.amount
    target.updated_at = now
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.CREDIT_ALLOCATION_REMOVED,
        at=now,
        account_id=allocation.account_id,
        invoice_id=target.id,
        credit_note_id=note.id,
        actor_user_id=actor_user_id,
        allocation_id=allocation.id,
        amount=allocation.amount,
        balance_due=target.balance_due,
        credit_remaining=note.credit_remaining,
    )
    settle(session, target, org, now, actor_user_id=actor_user_id)
    settle(session, note, org, now, actor_user_id=actor_user_id)
    return allocation


async def apply_available_credit(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    now: datetime,
    *,
    automatic: bool,
    actor_user_id: int | None = None,
) -> list[CreditAllocation]:
    """Pay an invoice with the account's available credit, oldest credit note first
    (by finalization time, then id), until it is paid or the credit runs out."""
    await lock_account(session, org.id, invoice.account_id)
    note_ids = list(
        await session.scalars(
            select(Invoice.id).where(
                Invoice.organization_id == org.id,
                Invoice.account_id == invoice.account_id,
                Invoice.document_type == DocumentType.CREDIT_NOTE,
                Invoice.credit_note_status == CreditNoteStatus.AVAILABLE,
            )
        )
    )
    locked = await _lock_by_id(session, [invoice.id, *note_ids])
    target = locked[invoice.id]
    if target.document_type == DocumentType.CREDIT_NOTE:
        raise ValidationError(f"{_label(target)} is a credit note; it owes nothing.")
    if target.status == InvoiceStatus.PAID:
        return []
    if target.status not in OUTSTANDING_STATUSES:
        raise InvalidStateError(
            f"{_label(target)} is {target.status.lower()}; credit is only applied to "
            "upcoming, due or overdue invoices.",
            invoice_id=target.id,
        )
    notes = sorted(
        (locked[i] for i in note_ids if locked[i].credit_note_status == CreditNoteStatus.AVAILABLE),
        key=lambda n: (n.finalized_at or n.created_at, n.id),
    )
    kind = AllocationKind.AUTOMATIC if automatic else AllocationKind.MANUAL
    made: list[CreditAllocation] = []
    for note in notes:
        amount = min(note.credit_remaining, target.balance_due)
        if amount <= 0:
            continue
        made.append(
            await _allocate_locked(
                session, org, note, target, amount, now, kind=kind, actor_user_id=actor_user_id
            )
        )
        if target.balance_due == 0:
            break
    return made


async def pay_outstanding_with_credit_note(
    session: AsyncSession,
    org: Organization,
    credit_note: Invoice,
    now: datetime,
    *,
    automatic: bool,
    actor_user_id: int | None = None,
) -> list[CreditAllocation]:
    """Spend a credit note on the account's outstanding invoices (UPCOMING, DUE,
    OVERDUE — not PROCESSING), the oldest due date first, then id."""
    await lock_account(session, org.id, credit_note.account_id)
    target_ids = list(
        await session.scalars(
            select(Invoice.id).where(
                Invoice.organization_id == org.id,
                Invoice.account_id == credit_note.account_id,
                Invoice.document_type == DocumentType.INVOICE,
                Invoice.status.in_(OUTSTANDING_STATUSES),
            )
        )
    )
    locked = await _lock_by_id(session, [credit_note.id, *target_ids])
    note = locked[credit_note.id]
    if note.document_type != DocumentType.CREDIT_NOTE:
        raise ValidationError(f"{_label(note)} is not a credit note.")
    if note.credit_note_status != CreditNoteStatus.AVAILABLE:
        return []
    targets = sorted(
        (locked[i] for i in target_ids if locked[i].status in OUTSTANDING_STATUSES),
        key=lambda inv: (inv.due_date, inv.id),
    )
    kind = AllocationKind.AUTOMATIC if automatic else AllocationKind.MANUAL
    made: list[CreditAllocation] = []
    for target in targets:
        amount = min(note.credit_remaining, target.balance_due)
        if amount <= 0:
            continue
        made.append(
            await _allocate_locked(
                session, org, note, target, amount, now, kind=kind, actor_user_id=actor_user_id
            )
        )
        if note.credit_remaining == 0:
            break
    return made


async def after_finalize(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    now: datetime,
    apply_credit: bool,
    automatic: bool,
    actor_user_id: int | None = None,
) -> list[CreditAllocation]:
    """What finalization does with credit (rules §5.5). The caller decides
    ``apply_credit``: ``org.auto_apply_credit`` for automatic finalization, the admin's
    ``applyCredit`` argument for a manual one."""
    if not apply_credit:
        return []
    if invoice.document_type == DocumentType.CREDIT_NOTE:
        return await pay_outstanding_with_credit_note(
            session, org, invoice, now, automatic=automatic, actor_user_id=actor_user_id
        )
    if invoice.status in OUTSTANDING_STATUSES and invoice.balance_due > 0:
        return await apply_available_credit(
            session, org, invoice, now, automatic=automatic, actor_user_id=actor_user_id
        )
    return []


# --------------------------------------------------------------------------- creating credit


async def issue_credit_note(
    session: AsyncSession,
    org: Organization,
    account: Account,
    amount: int,
    description: str,
    now: datetime,
    *,
    origin: str,
    source_invoice_id: int | None = None,
    source_payment_id: int | None = None,
    actor_user_id: int | None = None,
) -> Invoice:
    """Create a finalized one-line credit note of ``amount`` (positive, tax-free) for
    ``account``: overpayment credit, the credit a refund draws on, or custom credit.
    It is not applied to anything here; the caller decides (``after_finalize``)."""
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValidationError("The credit amount must be greater than zero.")
    description = description.strip()
    if not description:
        raise ValidationError("A credit note needs a description.")
    if account.organization_id != org.id:
        raise NotFoundError(f"No account {account.id} in this organization.")
    await lock_account(session, org.id, account.id)
    note = _new_credit_note(
        org,
        account.id,
        now,
        origin=origin,
        source_invoice_id=source_invoice_id,
        source_payment_id=source_payment_id,
    )
    note.subtotal = note.total = -amount
    session.add(note)
    await session.flush()
    session.add(
        LineItem(
            organization_id=org.id,
            invoice_id=note.id,
            kind=LineKind.CREDIT,
            description=description,
            quantity=1,
            unit_price=-amount,
            amount=-amount,
            tax_rate_ppm=0,
            tax=0,
            total=-amount,
            created_at=now,
        )
    )
    await _finalize_new_credit_note(session, org, note, now, actor_user_id)
    return note


async def move_credit_line(
    session: AsyncSession,
    org: Organization,
    line_item_id: int,
    target_invoice_id: int,
    now: datetime,
    actor_user_id: int | None = None,
) -> tuple[Invoice, CreditAllocation]:
    """Move a credit line off the account's pending invoice onto an UPCOMING/DUE/OVERDUE
    invoice (rules §5.6): the line becomes a new one-line credit note (CN- number), and
    that credit note is allocated (MANUAL) to the target — up to its balance; credit
    beyond the balance stays AVAILABLE on the new credit note."""
    line = await session.scalar(
        select(LineItem).where(LineItem.id == line_item_id, LineItem.organization_id == org.id)
    )
    if line is None:
        raise NotFoundError(f"No line item {line_item_id} in this organization.")
    source = await _find_invoice(session, org, line.invoice_id)
    target = await _find_invoice(session, org, target_invoice_id)
    await _refuse_cross_account(session, source, target)
    await lock_account(session, org.id, source.account_id)
    locked = await _lock_by_id(session, [source.id, target.id])
    source, target = locked[source.id], locked[target.id]
    line = await session.scalar(
        select(LineItem)
        .where(LineItem.id == line_item_id)
        .execution_options(populate_existing=True)
    )
    if line is None or line.invoice_id != source.id:
        raise InvalidStateError("This line item was moved or removed meanwhile; reload.")
    if source.status != InvoiceStatus.PENDING:
        raise InvalidStateError(
            f"Only credit lines on a pending invoice can be moved; {_label(source)} is "
            f"{source.status.lower()}. Allocate its credit note instead.",
            invoice_id=source.id,
        )
    if line.total >= 0:
        raise ValidationError(
            f"Line {line.description!r} is a charge, not credit; only credit lines "
            "(negative amounts) can be moved onto another invoice.",
            line_item_id=line.id,
        )
    if target.document_type != DocumentType.INVOICE or target.status not in OUTSTANDING_STATUSES:
        raise InvalidStateError(
            f"{_label(target)} is {target.status.lower()}; a credit line can only be moved "
            "onto an upcoming, due or overdue invoice.",
            invoice_id=target.id,
        )

    note = _new_credit_note(
        org, source.account_id, now, origin="MOVED_LINE", source_invoice_id=source.id
    )
    note.subtotal, note.tax, note.total = line.amount, line.tax, line.total
    session.add(note)
    await session.flush()
    line.invoice_id = note.id
    line.moved_from_invoice_id = source.id
    await session.flush()

    await invoices.recompute_totals(session, source)
    source.updated_at = now
    if source.due_today:
        # A due-today invoice waits its grace period after its last change (rules §3).
        source.finalize_at = now + timedelta(minutes=org.due_today_grace_minutes)
    events.record(
        session,
        organization_id=org.id,
        type=EventType.LINE_ITEM_MOVED,
        at=now,
        account_id=source.account_id,
        invoice_id=source.id,
        credit_note_id=note.id,
        actor_user_id=actor_user_id,
        line_item_id=line.id,
        to_invoice_id=note.id,
        target_invoice_id=target.id,
        amount=line.total,
        total=source.total,
    )
    await _finalize_new_credit_note(session, org, note, now, actor_user_id)
    amount = min(note.credit_remaining, target.balance_due)
    allocation = await _allocate_locked(
        session,
        org,
        note,
        target,
        amount,
        now,
        kind=AllocationKind.MANUAL,
        actor_user_id=actor_user_id,
    )
    return note, allocation


# --------------------------------------------------------------------------- removing credit


async def void_credit_note(
    session: AsyncSession,
    org: Organization,
    credit_note_id: int,
    now: datetime,
    actor_user_id: int | None = None,
) -> Invoice:
    """Void a credit note (admin only — the caller checks the role): its remaining
    credit is gone. Refused while any of its credit is allocated or refunded."""
    found = await _find_invoice(session, org, credit_note_id, "credit note")
    await lock_account(session, org.id, found.account_id)
    note = (await _lock_by_id(session, [found.id]))[found.id]
    if note.document_type != DocumentType.CREDIT_NOTE:
        raise ValidationError(f"{_label(note)} is not a credit note.")
    if note.status == InvoiceStatus.VOID:
        raise InvalidStateError(f"Credit note {_label(note)} is already void.")
    live = list(
        await session.execute(
            select(CreditAllocation.amount, Invoice.id, Invoice.number)
            .join(Invoice, Invoice.id == CreditAllocation.invoice_id)
            .where(
                CreditAllocation.credit_note_id == note.id,
                CreditAllocation.removed_at.is_(None),
            )
            .order_by(CreditAllocation.id)
        )
    )
    if live:
        where = ", ".join(
            f"{_fmt(amount, org)} on {number or f'invoice {inv_id}'}"
            for amount, inv_id, number in live
        )
        raise InvalidStateError(
            f"Credit note {_label(note)} is applied to invoices ({where}); remove those "
            "allocations first, then void it.",
            credit_note_id=note.id,
            invoice_ids=[inv_id for _, inv_id, _ in live],
        )
    if note.credit_refunded > 0:
        raise InvalidStateError(
            f"{_fmt(note.credit_refunded, org)} of credit note {_label(note)} was refunded; "
            "a credit note that paid out a refund stays on the books and cannot be voided.",
            credit_note_id=note.id,
        )
    invoices.mark_voided(session, org, note, now, actor_user_id=actor_user_id)
    return note


# --------------------------------------------------------------------------- plan changes


@dataclass(frozen=True)
class CreditLineSpec:
    """A credit line to place on an invoice: ``amount`` is negative, before tax."""

    description: str
    amount: int
    tax_rate_ppm: int
    kind: LineKind = LineKind.CREDIT
    plan_subscription_id: int | None = None
    period_start: date | None = None
    period_end: date | None = None


@dataclass(frozen=True)
class PlanChangeCredit:
    """The credit a shortened or cancelled plan gives back: ``amount`` is positive and
    before tax (Σ of the lines' amounts, negated)."""

    amount: int
    lines: list[CreditLineSpec] = field(default_factory=list)


def _period_text(start: date, end: date) -> str:
    if start == end:
        return start.isoformat()
    return f"{start.isoformat()} – {end.isoformat()}"


async def credit_for_plan_change(
    session: AsyncSession,
    org: Organization,
    subscription: PlanSubscription,
    new_end: date,
    *,
    credit_unused_periods: bool | None = None,
    deposit_return: int = 0,
) -> PlanChangeCredit:
    """The credit owed when ``subscription`` now ends on ``new_end`` (inclusive last day
    of service) — rules §5.2. Only plan periods already invoiced *and paid* after the new
    end are credited: a whole period at its full line amount, the part-period prorated
    by days (the end day counts as used). Periods credited by an earlier shortening are
    not credited twice. Nothing is written; the caller places the lines."""
    if deposit_return < 0:
        raise ValidationError("The deposit return cannot be negative.")
    if credit_unused_periods is None:
        credit_unused_periods = org.credit_unused_plan_periods
    lines: list[CreditLineSpec] = []
    if credit_unused_periods:
        paid_periods = list(
            await session.scalars(
                select(LineItem)
                .join(Invoice, Invoice.id == LineItem.invoice_id)
                .where(
                    LineItem.organization_id == org.id,
                    LineItem.plan_subscription_id == subscription.id,
                    LineItem.kind == LineKind.PLAN,
                    LineItem.amount > 0,
                    LineItem.period_start.is_not(None),
                    LineItem.period_end.is_not(None),
                    Invoice.status == InvoiceStatus.PAID,
                    LineItem.period_end > new_end,
                )
                .order_by(LineItem.period_start, LineItem.id)
            )
        )
        earlier_credits = list(
            await session.scalars(
                select(LineItem)
                .join(Invoice, Invoice.id == LineItem.invoice_id)
                .where(
                    LineItem.organization_id == org.id,
                    LineItem.plan_subscription_id == subscription.id,
                    LineItem.kind == LineKind.CREDIT,
                    Invoice.status != InvoiceStatus.VOID,
                )
            )
        )
        for period in paid_periods:
            spec = _unused_period_credit(subscription, period, new_end, earlier_credits)
            if spec is not None:
                lines.append(spec)
    if deposit_return > 0:
        lines.append(
            CreditLineSpec(
                description=f"Deposit return: {subscription.name}",
                amount=-deposit_return,
                tax_rate_ppm=0,
                kind=LineKind.CREDIT,
                plan_subscription_id=subscription.id,
            )
        )
    return PlanChangeCredit(amount=-sum(spec.amount for spec in lines), lines=lines)


async def apply_plan_change_credit(
    session: AsyncSession,
    org: Organization,
    subscription: PlanSubscription,
    new_end: date,
    now: datetime,
    *,
    credit_unused_periods: bool | None = None,
    deposit_return: int = 0,
    actor_user_id: int | None = None,
) -> list[LineItem]:
    """Compute the credit of ``credit_for_plan_change`` and place each line where the
    policy puts additional charges and credit (rules §5.4) — the pending invoice, or a
    new due-today invoice that becomes a credit note when it finalizes."""
    owed = await credit_for_plan_change(
        session,
        org,
        subscription,
        new_end,
        credit_unused_periods=credit_unused_periods,
        deposit_return=deposit_return,
    )
    account = await lock_account(session, org.id, subscription.account_id)
    placed: list[LineItem] = []
    for spec in owed.lines:
        placed.append(
            await invoices.place_additional_charge(
                session,
                org,
                account,
                invoices.LineSpec(
                    description=spec.description,
                    unit_price=spec.amount,
                    kind=LineKind.CREDIT,
                    tax_rate_ppm=spec.tax_rate_ppm,
                    period_start=spec.period_start,
                    period_end=spec.period_end,
                    plan_subscription_id=spec.plan_subscription_id,
                ),
                now,
                actor_user_id=actor_user_id,
            )
        )
    return placed


def _unused_period_credit(
    subscription: PlanSubscription,
    period: LineItem,
    new_end: date,
    earlier_credits: Sequence[LineItem],
) -> CreditLineSpec | None:
    start, end = period.period_start, period.period_end
    assert start is not None and end is not None
    # Plan lines carry inclusive period ends (Aug 15 – Aug 31 is 17 days, rules §8.2).
    if new_end >= end:
        return None
    days_in_period = (end - start).days + 1
    unused_from = max(start, new_end + timedelta(days=1))
    unused_days = (end - unused_from).days + 1
    owed = (
        period.amount
        if unused_days == days_in_period
        else money.prorate(period.amount, unused_days, days_in_period)
    )
    # A plan shortened twice: what an earlier shortening already credited for this
    # period (credit lines inside it) is subtracted, so no day is credited twice.
    already = -sum(
        c.amount
        for c in earlier_credits
        if c.period_start is not None
        and c.period_end is not None
        and start <= c.period_start
        and c.period_end <= end
    )
    amount = owed - already
    if amount <= 0:
        return None
    return CreditLineSpec(
        description=f"Credit for unused plan period {_period_text(unused_from, end)}: "
        f"{subscription.name}",
        amount=-amount,
        tax_rate_ppm=period.tax_rate_ppm,
        kind=LineKind.CREDIT,
        plan_subscription_id=subscription.id,
        period_start=unused_from,
        period_end=end,
    )


# Finalization applies credit through this hook (rules §5.5); services.invoices keeps a
# list instead of importing this module. The guard keeps a second registration (the
# app's lifecycle does one too) from applying credit twice.
if after_finalize not in invoices.AFTER_FINALIZE:
    invoices.AFTER_FINALIZE.append(after_finalize)
