"""SQLAlchemy 2.0 tables of Deskbill, one module per aggregate.

Importing this package registers every table on ``Base.metadata`` (Alembic and the
test fixtures rely on that). Nothing here imports the rest of Deskbill.
"""

from models.account import Account, TeamMembership, User
from models.base import Base
from models.booking import Booking
from models.document import DocumentIssuer
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
    WebhookDeliveryStatus,
    WebhookEndpointStatus,
)
from models.event import Event
from models.figures import ROLLUPS
from models.idempotency import IdempotencyRecord, ProcessedWebhook
from models.identity import ApiKey, InstanceSecret
from models.invoice import CreditAllocation, Invoice, LineItem
from models.notification import Notification, NotificationCursor
from models.organization import Organization
from models.payment import Payment, Refund
from models.plan import PlanSubscription, PlanTemplate
from models.webhook import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "ROLLUPS",
    "Account",
    "AccountKind",
    "AdditionalChargesPolicy",
    "AllocationKind",
    "ApiKey",
    "Base",
    "Booking",
    "BookingStatus",
    "CreditAllocation",
    "CreditNoteStatus",
    "DocumentIssuer",
    "DocumentType",
    "Event",
    "IdempotencyRecord",
    "InstanceSecret",
    "Invoice",
    "InvoiceStatus",
    "LineItem",
    "LineKind",
    "Notification",
    "NotificationCursor",
    "NotificationKind",
    "NotificationStatus",
    "Organization",
    "Payment",
    "PaymentMethod",
    "PaymentStatus",
    "PaymentType",
    "PlanInterval",
    "PlanStatus",
    "PlanSubscription",
    "PlanTemplate",
    "ProcessedWebhook",
    "Refund",
    "RefundMethod",
    "RefundStatus",
    "Role",
    "TeamMembership",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryStatus",
    "WebhookEndpoint",
    "WebhookEndpointStatus",
]
