"""Where a finalized invoice stands, derived from its dates and balance.

Every piece of the engine that changes what an invoice owes (finalization, credit
allocations, payments, void/un-void) calls ``settle`` afterwards, so the status, the
paid date, the credit-note status and their events are decided in one place.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from models import CreditNoteStatus, DocumentType, Invoice, InvoiceStatus, Organization
from services import events
from services.clock import local_date
from services.events import EventType


def unpaid_status(due_date: date, today: date, overdue_after_days: int) -> InvoiceStatus:
    """UPCOMING before the due date, DUE from it, OVERDUE ``overdue_after_days`` later
    (with 0 days an unpaid invoice is OVERDUE on its due date)."""
    if today >= due_date + timedelta(days=overdue_after_days):
        return InvoiceStatus.OVERDUE
    if today >= due_date:
        return InvoiceStatus.DUE
    return InvoiceStatus.UPCOMING


def unpaid_status_now(invoice: Invoice, today: date, overdue_after_days: int) -> InvoiceStatus:
    """``unpaid_status`` that never goes back: once an invoice has become due (or
    overdue) it stays at least DUE (or OVERDUE). A catch-up billing run, a run a few
    minutes ahead within the allowed skew, or a mutation stamped a moment earlier
    would otherwise derive an earlier status and move it backwards."""
    target = unpaid_status(invoice.due_date, today, overdue_after_days)
    if invoice.became_overdue_at is not None:
        return InvoiceStatus.OVERDUE
    if invoice.became_due_at is not None and target == InvoiceStatus.UPCOMING:
        return InvoiceStatus.DUE
    return target


def settle(
    session: AsyncSession | events.Recorder,
    invoice: Invoice,
    org: Organization,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> InvoiceStatus:
    """Bring a finalized invoice's status in line with its balance and dates.

    PENDING, VOID and PROCESSING invoices are left alone (a gateway payment in flight
    decides PROCESSING's way out). Events for each transition are recorded here,
    including "became due" / "became overdue", once each.
    """
    if invoice.status in (InvoiceStatus.PENDING, InvoiceStatus.VOID, InvoiceStatus.PROCESSING):
        return InvoiceStatus(invoice.status)

    if invoice.document_type == DocumentType.CREDIT_NOTE:
        _settle_credit_note(session, invoice, now, actor_user_id)
        return InvoiceStatus(invoice.status)

    before = invoice.status
    if invoice.balance_due <= 0:
        target = InvoiceStatus.PAID
    else:
        target = unpaid_status_now(invoice, local_date(now, org.timezone), org.overdue_after_days)
    mark_milestones(session, invoice, target, now)
    if target != before:
        set_status(session, invoice, target, now, actor_user_id=actor_user_id)
    return target


def set_status(
    session: AsyncSession | events.Recorder,
    invoice: Invoice,
    target: InvoiceStatus,
    now: datetime,
    *,
    actor_user_id: int | None = None,
    **payload: Any,
) -> None:
    """Move an invoice to ``target`` and record the status change."""
    before = invoice.status
    invoice.status = target
    invoice.updated_at = now
    if target == InvoiceStatus.PAID:
        invoice.paid_at = now
    elif before == InvoiceStatus.PAID:
        invoice.paid_at = None
    events.record(
        session,
        organization_id=invoice.organization_id,
        type=EventType.INVOICE_STATUS_CHANGED,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        actor_user_id=actor_user_id,
        status=str(target),
        previous_status=str(before),
        **payload,
    )
    if target == InvoiceStatus.PAID:
        events.record(
            session,
            organization_id=invoice.organization_id,
            type=EventType.INVOICE_PAID,
            at=now,
            account_id=invoice.account_id,
            invoice_id=invoice.id,
            actor_user_id=actor_user_id,
        )


def mark_milestones(
    session: AsyncSession | events.Recorder, invoice: Invoice, target: InvoiceStatus, now: datetime
) -> None:
    """Fire "became due" and "became overdue" once each, on first entry."""
    if target in (InvoiceStatus.DUE, InvoiceStatus.OVERDUE) and invoice.became_due_at is None:
        invoice.became_due_at = now
        events.record(
            session,
            organization_id=invoice.organization_id,
            type=EventType.INVOICE_BECAME_DUE,
            at=now,
            account_id=invoice.account_id,
            invoice_id=invoice.id,
        )
    if target == InvoiceStatus.OVERDUE and invoice.became_overdue_at is None:
        invoice.became_overdue_at = now
        events.record(
            session,
            organization_id=invoice.organization_id,
            type=EventType.INVOICE_BECAME_OVERDUE,
            at=now,
            account_id=invoice.account_id,
            invoice_id=invoice.id,
        )


def _settle_credit_note(
    session: AsyncSession | events.Recorder, note: Invoice, now: datetime, actor_user_id: int | None
) -> None:
    target = CreditNoteStatus.AVAILABLE if note.credit_remaining > 0 else CreditNoteStatus.CONSUMED
    if note.credit_note_status == target:
        return
    before = note.credit_note_status
    note.credit_note_status = target
    note.updated_at = now
    events.record(
        session,
        organization_id=note.organization_id,
        type=EventType.CREDIT_NOTE_STATUS_CHANGED,
        at=now,
        account_id=note.account_id,
        invoice_id=note.id,
        credit_note_id=note.id,
        actor_user_id=actor_user_id,
        status=str(target),
        previous_status=str(before) if before else None,
    )
