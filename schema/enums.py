"""The GraphQL faces of the domain vocabularies in ``models.enums``."""

from enum import Enum

import strawberry

from models.enums import (
    AccountKind,
    AdditionalChargesPolicy,
    AllocationKind,
    BookingStatus,
    CreditNoteStatus,
    DocumentType,
    InvoiceStatus,
    LineKind,
    NotificationKind,
    NotificationStatus,
    PaymentMethod,
    PaymentStatus,
    PaymentType,
    PlanInterval,
    PlanStatus,
    RefundMethod,
    RefundStatus,
    Role,
)

# The domain enums themselves become GraphQL enums (strawberry.enum registers the
# class in place), so one vocabulary serves the engine, the schema and the database.
for _domain_enum in (
    Role,
    AccountKind,
    AdditionalChargesPolicy,
    InvoiceStatus,
    DocumentType,
    CreditNoteStatus,
    LineKind,
    AllocationKind,
    PlanInterval,
    PlanStatus,
    BookingStatus,
    PaymentStatus,
    PaymentType,
    PaymentMethod,
    RefundStatus,
    RefundMethod,
    NotificationKind,
    NotificationStatus,
):
    strawberry.enum(_domain_enum)


@strawberry.enum
class SortDirection(Enum):
    ASC = "ASC"
    DESC = "DESC"


@strawberry.enum
class InvoiceSortField(Enum):
    DUE_DATE = "due_date"
    ISSUE_DATE = "issue_date"
    NUMBER = "number"
    TOTAL = "total"
    BALANCE_DUE = "balance_due"
    CREATED_AT = "created_at"


@strawberry.enum
class CreditNoteSortField(Enum):
    ISSUE_DATE = "issue_date"
    NUMBER = "number"
    CREDIT = "credit"
    REMAINING_CREDIT = "remaining_credit"
    CREATED_AT = "created_at"


@strawberry.enum
class InvoiceItemSortField(Enum):
    CREATED_AT = "created_at"
    AMOUNT = "amount"
    TOTAL = "total"


@strawberry.enum
class PaymentSortField(Enum):
    CREATED_AT = "created_at"
    AMOUNT = "amount"


@strawberry.enum
class RefundSortField(Enum):
    CREATED_AT = "created_at"
    AMOUNT = "amount"


@strawberry.enum
class AccountSortField(Enum):
    NAME = "name"
    CREATED_AT = "created_at"


@strawberry.enum
class BookingSortField(Enum):
    STARTS_AT = "starts_at"
    CREATED_AT = "created_at"
