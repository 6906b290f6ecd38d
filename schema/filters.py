"""Filter and sort inputs of the list fields (rules §11.1).

Amounts are decimal strings in the organization's currency, as everywhere else;
ids are global ids.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import strawberry

from schema.enums import (
    AccountKind,
    AccountSortField,
    BookingSortField,
    BookingStatus,
    CreditNoteSortField,
    CreditNoteStatus,
    DocumentType,
    InvoiceItemSortField,
    InvoiceSortField,
    InvoiceStatus,
    LineKind,
    PaymentMethod,
    PaymentSortField,
    PaymentStatus,
    PaymentType,
    RefundSortField,
    RefundStatus,
    SortDirection,
)


@strawberry.input(description="Inclusive date range; either end may be left open.")
class DateRange:
    from_: date | None = strawberry.field(default=None, name="from")
    to: date | None = None


@strawberry.input(description="Inclusive instant range; either end may be left open.")
class DateTimeRange:
    from_: datetime | None = strawberry.field(default=None, name="from")
    to: datetime | None = None


@strawberry.input(description="Inclusive amount range, as decimal strings.")
class AmountRange:
    min: Decimal | None = None
    max: Decimal | None = None


@strawberry.input
class InvoiceFilter:
    status: list[InvoiceStatus] | None = None
    document_type: list[DocumentType] | None = strawberry.field(
        default=None,
        description="Defaults to DRAFT and INVOICE; credit notes have their own list.",
    )
    account_id: list[strawberry.ID] | None = None
    account_kind: AccountKind | None = None
    issue_date: DateRange | None = None
    due_date: DateRange | None = None
    paid_at: DateTimeRange | None = None
    total: AmountRange | None = None
    number: str | None = strawberry.field(default=None, description="Exact number or prefix.")
    has_balance: bool | None = None


@strawberry.input
class InvoiceSort:
    field: InvoiceSortField = InvoiceSortField.DUE_DATE
    direction: SortDirection = SortDirection.DESC


@strawberry.input
class CreditNoteFilter:
    status: list[CreditNoteStatus] | None = None
    account_id: list[strawberry.ID] | None = None
    account_kind: AccountKind | None = None
    issue_date: DateRange | None = None
    credit: AmountRange | None = None
    number: str | None = None
    has_available_credit: bool | None = None


@strawberry.input
class CreditNoteSort:
    field: CreditNoteSortField = CreditNoteSortField.ISSUE_DATE
    direction: SortDirection = SortDirection.DESC


@strawberry.input
class InvoiceItemFilter:
    kind: list[LineKind] | None = None
    account_id: list[strawberry.ID] | None = None
    account_kind: AccountKind | None = None
    invoice_id: strawberry.ID | None = None
    invoice_status: list[InvoiceStatus] | None = None
    created_at: DateTimeRange | None = None
    period_start: DateRange | None = None
    amount: AmountRange | None = None


@strawberry.input
class InvoiceItemSort:
    field: InvoiceItemSortField = InvoiceItemSortField.CREATED_AT
    direction: SortDirection = SortDirection.DESC


@strawberry.input
class PaymentFilter:
    status: list[PaymentStatus] | None = None
    method: list[PaymentMethod] | None = None
    type: PaymentType | None = None
    account_id: list[strawberry.ID] | None = None
    account_kind: AccountKind | None = None
    invoice_id: strawberry.ID | None = None
    created_at: DateTimeRange | None = None
    amount: AmountRange | None = None


@strawberry.input
class PaymentSort:
    field: PaymentSortField = PaymentSortField.CREATED_AT
    direction: SortDirection = SortDirection.DESC


@strawberry.input
class RefundFilter:
    status: list[RefundStatus] | None = None
    account_id: list[strawberry.ID] | None = None
    payment_id: strawberry.ID | None = None
    created_at: DateTimeRange | None = None


@strawberry.input
class CreditAllocationFilter:
    """Credit allocations (the credit-allocations export): by account, credit note,
    invoice, whether still live, and when made."""

    account_id: list[strawberry.ID] | None = None
    credit_note_id: strawberry.ID | None = None
    invoice_id: strawberry.ID | None = None
    active: bool | None = None
    created_at: DateTimeRange | None = None


@strawberry.input
class RefundSort:
    field: RefundSortField = RefundSortField.CREATED_AT
    direction: SortDirection = SortDirection.DESC


@strawberry.input
class AccountFilter:
    kind: AccountKind | None = None
    active: bool | None = None
    search: str | None = strawberry.field(default=None, description="Part of the name.")
    has_available_credit: bool | None = None


@strawberry.input
class AccountSort:
    field: AccountSortField = AccountSortField.NAME
    direction: SortDirection = SortDirection.ASC


@strawberry.input
class BookingFilter:
    status: list[BookingStatus] | None = None
    account_id: list[strawberry.ID] | None = None
    starts_at: DateTimeRange | None = None


@strawberry.input
class BookingSort:
    field: BookingSortField = BookingSortField.STARTS_AT
    direction: SortDirection = SortDirection.DESC


@strawberry.input
class EventFilter:
    types: list[str] | None = None
    account_id: strawberry.ID | None = None
    invoice_id: strawberry.ID | None = None
    payment_id: strawberry.ID | None = None
