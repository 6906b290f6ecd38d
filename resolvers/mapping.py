"""Rows to Strawberry types. Money becomes ``Money`` here, in the viewer's currency."""

from __future__ import annotations

import strawberry

from models import Account as AccountRow
from models import Booking as BookingRow
from models import CreditAllocation as AllocationRow
from models import DocumentIssuer as IssuerRow
from models import Event as EventRow
from models import Invoice as InvoiceRow
from models import LineItem as LineRow
from models import Organization as OrganizationRow
from models import Payment as PaymentRow
from models import PlanSubscription as SubscriptionRow
from models import PlanTemplate as TemplateRow
from models import Refund as RefundRow
from models import User as UserRow
from models.enums import CreditNoteStatus as DomainCreditNoteStatus
from models.enums import PaymentStatus as DomainPaymentStatus
from schema import types as t
from schema.enums import (
    AccountKind,
    AdditionalChargesPolicy,
    AllocationKind,
    BookingStatus,
    CreditNoteStatus,
    DocumentType,
    InvoiceStatus,
    LineKind,
    PaymentMethod,
    PaymentStatus,
    PaymentType,
    PlanInterval,
    PlanStatus,
    RefundMethod,
    RefundStatus,
    Role,
)
from schema.ids import encode
from services import money as m


def money(minor: int, currency: str) -> t.Money:
    return t.Money(
        amount=m.to_decimal(minor, currency),
        currency=currency,
        formatted=m.format_amount(minor, currency),
        minor_units=minor,
    )


def gid(type_name: str, pk: int | None) -> strawberry.ID | None:
    return None if pk is None else strawberry.ID(encode(type_name, pk))


def _id(type_name: str, pk: int) -> strawberry.ID:
    return strawberry.ID(encode(type_name, pk))


def organization(row: OrganizationRow) -> t.Organization:
    return t.Organization(
        id=_id("Organization", row.id), name=row.name, slug=row.slug, currency=row.currency,
        sandbox=row.sandbox, pk=row.id,
    )  # fmt: skip


def invoice_policy(row: OrganizationRow, billing_day_locked: bool) -> t.InvoicePolicy:
    return t.InvoicePolicy(
        billing_day=row.billing_day,
        billing_day_locked=billing_day_locked,
        timezone=row.timezone,
        additional_charges=AdditionalChargesPolicy(row.additional_charges),
        due_today_grace_minutes=row.due_today_grace_minutes,
        overdue_after_days=row.overdue_after_days,
        auto_apply_credit=row.auto_apply_credit,
        credit_unused_plan_periods=row.credit_unused_plan_periods,
        block_bookings_when_overdue=row.block_bookings_when_overdue,
        autopay_default=row.autopay_default,
        autopay_retry_hours=row.autopay_retry_hours,
        default_tax_rate=m.tax_rate_percent(row.default_tax_rate_ppm),
    )


def document_issuer(row: IssuerRow) -> t.DocumentIssuer:
    return t.DocumentIssuer(
        legal_name=row.legal_name, address=row.address, tax_id=row.tax_id,
        has_logo=row.logo_media_type is not None, logo_media_type=row.logo_media_type,
        valid_from=row.valid_from,
    )  # fmt: skip


def user(row: UserRow) -> t.User:
    return t.User(
        id=_id("User", row.id), email=row.email, name=row.name, role=Role(row.role),
        active=row.active, created_at=row.created_at, pk=row.id,
    )  # fmt: skip


def account(row: AccountRow) -> t.Account:
    return t.Account(
        id=_id("Account", row.id),
        kind=AccountKind(row.kind),
        name=row.name,
        email=row.email,
        active=row.active,
        autopay=row.autopay,
        has_payment_method=row.default_payment_method_id is not None,
        created_at=row.created_at,
        pk=row.id,
    )


def line(row: LineRow, currency: str) -> t.LineItem:
    return t.LineItem(
        id=_id("LineItem", row.id),
        kind=LineKind(row.kind),
        description=row.description,
        quantity=row.quantity,
        unit_price=money(row.unit_price, currency),
        amount=money(row.amount, currency),
        tax_rate=m.tax_rate_percent(row.tax_rate_ppm),
        tax=money(row.tax, currency),
        total=money(row.total, currency),
        period_start=row.period_start,
        period_end=row.period_end,
        created_at=row.created_at,
        pk=row.id,
        invoice_pk=row.invoice_id,
        booking_pk=row.booking_id,
    )


def _document_fields(row: InvoiceRow) -> dict[str, object]:
    c = row.currency
    return {
        # One id for the document's whole life: a draft that finalizes as a credit note
        # keeps it, and ``node`` answers whichever type the row is now.
        "id": _id("Invoice", row.id),
        "number": row.number,
        "document_type": DocumentType(row.document_type),
        "currency": c,
        "issue_date": row.issue_date,
        "due_date": row.due_date,
        "period_start": row.period_start,
        "period_end": row.period_end,
        "subtotal": money(row.subtotal, c),
        "tax": money(row.tax, c),
        "total": money(row.total, c),
        "origin": row.origin,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "finalized_at": row.finalized_at,
        "voided_at": row.voided_at,
        "pk": row.id,
        "account_pk": row.account_id,
        "source_invoice_pk": row.source_invoice_id,
    }


def invoice(row: InvoiceRow) -> t.Invoice:
    c = row.currency
    return t.Invoice(
        **_document_fields(row),  # type: ignore[arg-type]
        status=InvoiceStatus(row.status),
        paid_at=row.paid_at,
        amount_paid=money(row.amount_paid, c),
        credit_applied=money(row.credit_applied, c),
        balance_due=money(row.balance_due, c),
    )


def credit_note(row: InvoiceRow) -> t.CreditNote:
    c = row.currency
    status = row.credit_note_status or DomainCreditNoteStatus.AVAILABLE
    return t.CreditNote(
        **_document_fields(row),  # type: ignore[arg-type]
        status=CreditNoteStatus(status),
        original_credit=money(-row.total, c),
        allocated_credit=money(row.credit_allocated, c),
        refunded_credit=money(row.credit_refunded, c),
        remaining_credit=money(row.credit_remaining, c),
        source_payment_pk=row.source_payment_id,
    )


def allocation(row: AllocationRow, currency: str) -> t.CreditAllocation:
    return t.CreditAllocation(
        id=_id("CreditAllocation", row.id),
        amount=money(row.amount, currency),
        kind=AllocationKind(row.kind),
        created_at=row.created_at,
        removed_at=row.removed_at,
        active=row.removed_at is None,
        pk=row.id,
        credit_note_pk=row.credit_note_id,
        invoice_pk=row.invoice_id,
        created_by_pk=row.created_by_user_id,
    )


def payment(row: PaymentRow) -> t.Payment:
    c = row.currency
    refundable = row.amount - row.refunded_amount
    if row.status != DomainPaymentStatus.SUCCEEDED:
        refundable = 0
    return t.Payment(
        id=_id("Payment", row.id),
        amount=money(row.amount, c),
        applied_amount=money(row.applied_amount, c),
        refunded_amount=money(row.refunded_amount, c),
        refundable_amount=money(refundable, c),
        status=PaymentStatus(row.status),
        type=PaymentType(row.type),
        method=PaymentMethod(row.method),
        attempt=row.attempt,
        error_code=row.error_code,
        error_message=row.error_message,
        note=row.note,
        received_on=row.received_on,
        gateway_payment_intent_id=row.gateway_payment_intent_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        succeeded_at=row.succeeded_at,
        pk=row.id,
        invoice_pk=row.invoice_id,
        account_pk=row.account_id,
    )


def refund(row: RefundRow) -> t.Refund:
    return t.Refund(
        id=_id("Refund", row.id),
        amount=money(row.amount, row.currency),
        status=RefundStatus(row.status),
        method=RefundMethod(row.method),
        reason=row.reason,
        error_code=row.error_code,
        error_message=row.error_message,
        gateway_refund_id=row.gateway_refund_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        pk=row.id,
        payment_pk=row.payment_id,
        credit_note_pk=row.credit_note_id,
        account_pk=row.account_id,
    )


def event(row: EventRow) -> t.Event:
    return t.Event(
        id=_id("Event", row.id),
        cursor=event_cursor(row.id),
        sequence=row.id,
        type=row.type,
        payload=row.payload,  # type: ignore[arg-type]  # JSON is a dict at runtime
        created_at=row.created_at,
        account_id=gid("Account", row.account_id),
        invoice_id=gid("Invoice", row.invoice_id),
        payment_id=gid("Payment", row.payment_id),
        credit_note_id=gid("Invoice", row.credit_note_id),
        refund_id=gid("Refund", row.refund_id),
        actor_id=gid("User", row.actor_user_id),
    )


def event_cursor(sequence: int) -> str:
    return str(sequence)


def booking(row: BookingRow, currency: str) -> t.Booking:
    return t.Booking(
        id=_id("Booking", row.id),
        resource_name=row.resource_name,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        price=money(row.price, currency),
        status=BookingStatus(row.status),
        created_at=row.created_at,
        cancelled_at=row.cancelled_at,
        pk=row.id,
        account_pk=row.account_id,
    )


def plan_template(row: TemplateRow, currency: str) -> t.PlanTemplate:
    return t.PlanTemplate(
        id=_id("PlanTemplate", row.id),
        name=row.name,
        price=money(row.price, currency),
        interval=PlanInterval(row.interval),
        setup_fee=money(row.setup_fee, currency),
        deposit=money(row.deposit, currency),
        tax_rate=None if row.tax_rate_ppm is None else m.tax_rate_percent(row.tax_rate_ppm),
        active=row.active,
    )


def plan_subscription(row: SubscriptionRow, currency: str) -> t.PlanSubscription:
    return t.PlanSubscription(
        id=_id("PlanSubscription", row.id),
        name=row.name,
        price=money(row.price, currency),
        interval=PlanInterval(row.interval),
        start_date=row.start_date,
        end_date=row.end_date,
        billed_through=row.billed_through,
        status=PlanStatus(row.status),
        pk=row.id,
        account_pk=row.account_id,
    )
