"""The object types of the graph.

Each type carries its plain columns as plain fields (filled in by the mappers in
``resolvers``) and reaches related rows through the request's DataLoaders, so a page
of 50 invoices with lines, payments and accounts costs a fixed number of queries.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

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


@strawberry.type(description="An exact amount: a decimal string in the currency's major unit.")
class Money:
    amount: Decimal
    currency: str
    formatted: str
    minor_units: strawberry.Private[int]


@strawberry.interface(description="An object with a global id (see `node(id:)`).")
class Node:
    id: strawberry.ID


def _loaders(info: Info) -> Any:
    return info.context.loaders


@strawberry.type
class InvoicePolicy:
    billing_day: int
    billing_day_locked: bool
    timezone: str
    additional_charges: AdditionalChargesPolicy
    due_today_grace_minutes: int
    overdue_after_days: int
    auto_apply_credit: bool
    credit_unused_plan_periods: bool
    block_bookings_when_overdue: bool
    autopay_default: bool
    autopay_retry_hours: int
    default_tax_rate: Decimal


@strawberry.type(
    description="The legal details invoice documents carry. Each change is a new version: "
    "a document finalized earlier keeps the version it was issued with."
)
class DocumentIssuer:
    legal_name: str
    address: str
    tax_id: str
    has_logo: bool
    logo_media_type: str | None
    valid_from: datetime = strawberry.field(description="When this version came into force.")


@strawberry.type
class Organization(Node):
    name: str
    slug: str
    currency: str
    sandbox: bool = strawberry.field(
        description="A space for trying things out on a test clock of its own (see `now`); "
        "it talks to Stripe only with test-mode keys."
    )
    pk: strawberry.Private[int]

    @strawberry.field(
        description="The organization's clock: the instant its billing, statuses and "
        "\"today\" go by. A live organization's clock is the wall clock; a sandbox's is "
        "its test clock, which only advanceTestClock moves."
    )
    def now(self, info: Info) -> datetime:
        now: datetime = info.context.now()
        return now

    @strawberry.field
    async def invoice_policy(self, info: Info) -> InvoicePolicy:
        policy: InvoicePolicy = await _loaders(info).invoice_policy.load(self.pk)
        return policy

    @strawberry.field(description="The legal details on its documents; null until first set.")
    async def document_issuer(self, info: Info) -> DocumentIssuer | None:
        issuer: DocumentIssuer | None = await _loaders(info).document_issuer.load(self.pk)
        return issuer


@strawberry.type
class User(Node):
    email: str
    name: str
    role: Role
    active: bool
    created_at: datetime
    pk: strawberry.Private[int]

    @strawberry.field(description="The user's own account and the teams it belongs to.")
    async def accounts(self, info: Info) -> list[Account]:
        accounts: list[Account] = await _loaders(info).accounts_by_user.load(self.pk)
        return accounts


@strawberry.type
class Account(Node):
    kind: AccountKind
    name: str
    email: str | None
    active: bool
    autopay: bool
    has_payment_method: bool
    created_at: datetime
    pk: strawberry.Private[int]

    @strawberry.field(description="Members of a team account (empty for a user account).")
    async def members(self, info: Info) -> list[User]:
        members: list[User] = await _loaders(info).members_by_team.load(self.pk)
        return members

    @strawberry.field(description="Credit this account can still use or refund.")
    async def available_credit(self, info: Info) -> Money:
        credit: Money = await _loaders(info).available_credit.load(self.pk)
        return credit

    @strawberry.field(description="What this account owes across its finalized invoices.")
    async def balance_due(self, info: Info) -> Money:
        owed: Money = await _loaders(info).balance_due_by_account.load(self.pk)
        return owed


@strawberry.type(description="One line of an invoice; negative amounts are credit.")
class LineItem(Node):
    kind: LineKind
    description: str
    quantity: int
    unit_price: Money
    amount: Money
    tax_rate: Decimal
    tax: Money
    total: Money
    period_start: date | None
    period_end: date | None
    created_at: datetime
    pk: strawberry.Private[int]
    invoice_pk: strawberry.Private[int]
    booking_pk: strawberry.Private[int | None]

    @strawberry.field
    async def invoice(self, info: Info) -> Invoice:
        invoice: Invoice = await _loaders(info).invoice.load(self.invoice_pk)
        return invoice

    @strawberry.field
    async def booking(self, info: Info) -> Booking | None:
        if self.booking_pk is None:
            return None
        booking: Booking | None = await _loaders(info).booking.load(self.booking_pk)
        return booking


@strawberry.type(description="Credit moved from a credit note onto an invoice.")
class CreditAllocation(Node):
    amount: Money
    kind: AllocationKind
    created_at: datetime
    removed_at: datetime | None
    active: bool
    pk: strawberry.Private[int]
    credit_note_pk: strawberry.Private[int]
    invoice_pk: strawberry.Private[int]
    created_by_pk: strawberry.Private[int | None]

    @strawberry.field
    async def credit_note(self, info: Info) -> CreditNote:
        note: CreditNote = await _loaders(info).credit_note.load(self.credit_note_pk)
        return note

    @strawberry.field
    async def invoice(self, info: Info) -> Invoice:
        invoice: Invoice = await _loaders(info).invoice.load(self.invoice_pk)
        return invoice

    @strawberry.field
    async def created_by(self, info: Info) -> User | None:
        if self.created_by_pk is None:
            return None
        user: User | None = await _loaders(info).user.load(self.created_by_pk)
        return user


@strawberry.type
class Payment(Node):
    amount: Money
    applied_amount: Money
    refunded_amount: Money
    refundable_amount: Money
    status: PaymentStatus
    type: PaymentType
    method: PaymentMethod
    attempt: int
    error_code: str | None
    error_message: str | None
    note: str | None
    received_on: date | None
    gateway_payment_intent_id: str | None
    created_at: datetime
    updated_at: datetime
    succeeded_at: datetime | None
    pk: strawberry.Private[int]
    invoice_pk: strawberry.Private[int]
    account_pk: strawberry.Private[int]

    @strawberry.field
    async def invoice(self, info: Info) -> Invoice:
        invoice: Invoice = await _loaders(info).invoice.load(self.invoice_pk)
        return invoice

    @strawberry.field
    async def account(self, info: Info) -> Account:
        account: Account = await _loaders(info).account.load(self.account_pk)
        return account

    @strawberry.field
    async def refunds(self, info: Info) -> list[Refund]:
        refunds: list[Refund] = await _loaders(info).refunds_by_payment.load(self.pk)
        return refunds


@strawberry.type
class Refund(Node):
    amount: Money
    status: RefundStatus
    method: RefundMethod
    reason: str | None
    error_code: str | None
    error_message: str | None
    gateway_refund_id: str | None
    created_at: datetime
    updated_at: datetime
    pk: strawberry.Private[int]
    payment_pk: strawberry.Private[int | None]
    credit_note_pk: strawberry.Private[int]
    account_pk: strawberry.Private[int]

    @strawberry.field
    async def payment(self, info: Info) -> Payment | None:
        if self.payment_pk is None:
            return None
        payment: Payment | None = await _loaders(info).payment.load(self.payment_pk)
        return payment

    @strawberry.field
    async def credit_note(self, info: Info) -> CreditNote:
        note: CreditNote = await _loaders(info).credit_note.load(self.credit_note_pk)
        return note

    @strawberry.field
    async def account(self, info: Info) -> Account:
        account: Account = await _loaders(info).account.load(self.account_pk)
        return account


@strawberry.type(description="One entry of the event log; `cursor` resumes after it.")
class Event(Node):
    cursor: str
    sequence: int
    type: str
    payload: JSON
    created_at: datetime
    account_id: strawberry.ID | None
    invoice_id: strawberry.ID | None
    payment_id: strawberry.ID | None
    credit_note_id: strawberry.ID | None
    refund_id: strawberry.ID | None
    actor_id: strawberry.ID | None


def document_path(global_id: str, *, credit_note: bool, extension: str = "pdf") -> str:
    """The route of a document (app/documents.py serves it)."""
    kind = "credit-notes" if credit_note else "invoices"
    return f"/documents/{kind}/{global_id}.{extension}"


@strawberry.interface(description="Fields shared by invoices and credit notes.")
class InvoiceDocument(Node):
    number: str | None
    document_type: DocumentType
    currency: str
    issue_date: date | None
    due_date: date
    period_start: date | None
    period_end: date | None
    subtotal: Money
    tax: Money
    total: Money
    origin: str | None
    created_at: datetime
    updated_at: datetime = strawberry.field(
        description="When anything about the document last changed: its lines, totals, "
        "status, payments or credit. A client compares it to know whether to refetch."
    )
    finalized_at: datetime | None
    voided_at: datetime | None
    pk: strawberry.Private[int]
    account_pk: strawberry.Private[int]
    source_invoice_pk: strawberry.Private[int | None]

    @strawberry.field
    async def account(self, info: Info) -> Account:
        account: Account = await _loaders(info).account.load(self.account_pk)
        return account

    @strawberry.field
    async def lines(self, info: Info) -> list[LineItem]:
        lines: list[LineItem] = await _loaders(info).lines_by_invoice.load(self.pk)
        return lines

    @strawberry.field(description="The event history of this document, oldest first.")
    async def history(self, info: Info) -> list[Event]:
        events: list[Event] = await _loaders(info).events_by_invoice.load(self.pk)
        return events

    @strawberry.field(
        description="Where this document's PDF is, relative to the API's address: GET it "
        "with the same bearer token (`.html` instead of `.pdf` for the same as a web page). "
        "A draft is drawn marked DRAFT, a void document marked VOID."
    )
    def document_url(self) -> str:
        return document_path(self.id, credit_note=isinstance(self, CreditNote))

    @strawberry.field(description="The invoice this document was split from, if any.")
    async def source_invoice(self, info: Info) -> Invoice | None:
        if self.source_invoice_pk is None:
            return None
        invoice: Invoice | None = await _loaders(info).invoice.load(self.source_invoice_pk)
        return invoice


@strawberry.type
class Invoice(InvoiceDocument):
    status: InvoiceStatus
    paid_at: datetime | None
    amount_paid: Money
    credit_applied: Money
    balance_due: Money

    @strawberry.field
    async def payments(self, info: Info) -> list[Payment]:
        payments: list[Payment] = await _loaders(info).payments_by_invoice.load(self.pk)
        return payments

    @strawberry.field(description="Credit allocated onto this invoice (removed ones too).")
    async def allocations(self, info: Info) -> list[CreditAllocation]:
        rows: list[CreditAllocation] = await _loaders(info).allocations_into.load(self.pk)
        return rows

    @strawberry.field(description="Refunds of this invoice's payments.")
    async def refunds(self, info: Info) -> list[Refund]:
        refunds: list[Refund] = await _loaders(info).refunds_by_invoice.load(self.pk)
        return refunds


@strawberry.type(description="A finalized invoice whose total is negative: credit to use.")
class CreditNote(InvoiceDocument):
    status: CreditNoteStatus
    original_credit: Money
    allocated_credit: Money
    refunded_credit: Money
    remaining_credit: Money
    source_payment_pk: strawberry.Private[int | None]

    @strawberry.field(description="Where this credit went (removed allocations too).")
    async def allocations(self, info: Info) -> list[CreditAllocation]:
        rows: list[CreditAllocation] = await _loaders(info).allocations_from.load(self.pk)
        return rows

    @strawberry.field
    async def refunds(self, info: Info) -> list[Refund]:
        refunds: list[Refund] = await _loaders(info).refunds_by_credit_note.load(self.pk)
        return refunds

    @strawberry.field(description="The payment this credit came from (refund, overpayment).")
    async def source_payment(self, info: Info) -> Payment | None:
        if self.source_payment_pk is None:
            return None
        payment: Payment | None = await _loaders(info).payment.load(self.source_payment_pk)
        return payment


@strawberry.type
class Booking(Node):
    resource_name: str
    starts_at: datetime
    ends_at: datetime
    price: Money
    status: BookingStatus
    created_at: datetime
    cancelled_at: datetime | None
    pk: strawberry.Private[int]
    account_pk: strawberry.Private[int]

    @strawberry.field
    async def account(self, info: Info) -> Account:
        account: Account = await _loaders(info).account.load(self.account_pk)
        return account


@strawberry.type
class PlanTemplate(Node):
    name: str
    price: Money
    interval: PlanInterval
    setup_fee: Money
    deposit: Money
    tax_rate: Decimal | None
    active: bool


@strawberry.type
class PlanSubscription(Node):
    name: str
    price: Money
    interval: PlanInterval
    start_date: date
    end_date: date | None
    billed_through: date | None
    status: PlanStatus
    pk: strawberry.Private[int]
    account_pk: strawberry.Private[int]

    @strawberry.field
    async def account(self, info: Info) -> Account:
        account: Account = await _loaders(info).account.load(self.account_pk)
        return account


@strawberry.type
class BookingEligibility:
    eligible: bool
    reason: str | None
    overdue_invoices: list[Invoice]


@strawberry.type(description="Who is asking, and what they may see.")
class Viewer:
    role: Role
    user: User | None = strawberry.field(description="The person; null for an API key.")
    organization: Organization
    accounts: list[Account]
