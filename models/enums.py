"""The closed vocabularies of the billing domain, stored as strings.

They are plain ``StrEnum``s so the engine, the GraphQL schema and the database all
speak the same words; every column that holds one has a CHECK constraint.
"""

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "ADMIN"
    MEMBER = "MEMBER"
    ANALYST = "ANALYST"


class AccountKind(StrEnum):
    USER = "USER"
    TEAM = "TEAM"


class AdditionalChargesPolicy(StrEnum):
    NEXT_PENDING_INVOICE = "NEXT_PENDING_INVOICE"
    NEW_INVOICE_DUE_TODAY = "NEW_INVOICE_DUE_TODAY"


class InvoiceStatus(StrEnum):
    PENDING = "PENDING"
    UPCOMING = "UPCOMING"
    DUE = "DUE"
    OVERDUE = "OVERDUE"
    PROCESSING = "PROCESSING"
    PAID = "PAID"
    VOID = "VOID"


OUTSTANDING_STATUSES = (InvoiceStatus.UPCOMING, InvoiceStatus.DUE, InvoiceStatus.OVERDUE)


class DocumentType(StrEnum):
    """What a finalized invoice turned out to be; a pending one is still a DRAFT."""

    DRAFT = "DRAFT"
    INVOICE = "INVOICE"
    CREDIT_NOTE = "CREDIT_NOTE"


class CreditNoteStatus(StrEnum):
    AVAILABLE = "AVAILABLE"
    CONSUMED = "CONSUMED"
    VOID = "VOID"


class LineKind(StrEnum):
    PLAN = "PLAN"
    SETUP_FEE = "SETUP_FEE"
    DEPOSIT = "DEPOSIT"
    BOOKING = "BOOKING"
    DAY_PASS = "DAY_PASS"
    CHARGE = "CHARGE"
    CREDIT = "CREDIT"


class AllocationKind(StrEnum):
    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


class PlanInterval(StrEnum):
    MONTHLY = "MONTHLY"
    QUARTERLY = "QUARTERLY"
    YEARLY = "YEARLY"
    ONE_TIME = "ONE_TIME"


class PlanStatus(StrEnum):
    ACTIVE = "ACTIVE"
    ENDED = "ENDED"
    CANCELLED = "CANCELLED"


class BookingStatus(StrEnum):
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class PaymentStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class PaymentType(StrEnum):
    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


class PaymentMethod(StrEnum):
    CARD = "CARD"
    BANK_DEBIT = "BANK_DEBIT"
    CASH = "CASH"
    CHEQUE = "CHEQUE"
    BANK_TRANSFER = "BANK_TRANSFER"
    OTHER = "OTHER"


GATEWAY_METHODS = (PaymentMethod.CARD, PaymentMethod.BANK_DEBIT)


class RefundStatus(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class RefundMethod(StrEnum):
    CARD = "CARD"
    CASH = "CASH"
    BANK_TRANSFER = "BANK_TRANSFER"
    OTHER = "OTHER"


class WebhookEndpointStatus(StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class WebhookDeliveryStatus(StrEnum):
    PENDING = "PENDING"  # waiting for its first attempt or its next retry
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # retried for the whole retry window; only a resend tries again


class NotificationKind(StrEnum):
    """What a notification tells; admins' kinds start with ``ADMIN_``."""

    INVOICE_UPCOMING = "INVOICE_UPCOMING"
    INVOICE_FINALIZED = "INVOICE_FINALIZED"
    INVOICE_SENT = "INVOICE_SENT"
    PAYMENT_SUCCEEDED = "PAYMENT_SUCCEEDED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    AUTOPAY_RETRY_SCHEDULED = "AUTOPAY_RETRY_SCHEDULED"
    CREDIT_NOTE_ISSUED = "CREDIT_NOTE_ISSUED"
    REFUND_ISSUED = "REFUND_ISSUED"
    ADMIN_AUTOPAY_FAILED = "ADMIN_AUTOPAY_FAILED"
    ADMIN_OVERDUE_DIGEST = "ADMIN_OVERDUE_DIGEST"


class NotificationStatus(StrEnum):
    """PENDING waits for a send; SENDING is claimed by a worker (its lease runs until
    ``next_attempt_at``); NOT_SENT is recorded while no SMTP server is configured."""

    PENDING = "PENDING"
    SENDING = "SENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    NOT_SENT = "NOT_SENT"
