"""Outbound webhooks: the endpoints an organization registers, one delivery per
(endpoint, event) and every attempt at it.

The signing secret is kept as it is, not hashed: the delivery worker signs every
request with it, so it must be able to read it. Encrypting it with a key kept in the
same database would protect nothing from someone who reads the database; what keeps
it secret is that the API shows it only in the answer that creates or rotates it.
"""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, UtcDateTime, created_column, enum_check, id_column, org_column
from models.enums import WebhookDeliveryStatus, WebhookEndpointStatus
from models.event import Json


class WebhookEndpoint(Base):
    """A URL that receives the organization's events of the listed types."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (enum_check("status", WebhookEndpointStatus, name="webhook_status_valid"),)

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    # Event type names, or ["*"] for every type.
    event_types: Mapped[list[str]] = mapped_column(Json, nullable=False)
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    # After a rotation the old secret still signs (a second v1) until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(
        UtcDateTime(), nullable=True
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The newest event id already turned into deliveries (or skipped as not matching).
    event_cursor: Mapped[int] = mapped_column(BigId, nullable=False)
    # Start of the current run of failed attempts; None after a success.
    failing_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()


class WebhookDelivery(Base):
    """One event for one endpoint, tried until it succeeds or its retry window ends."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        enum_check("status", WebhookDeliveryStatus, name="webhook_delivery_status_valid"),
        # The worker's pick-up: pending deliveries whose next attempt is due.
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        # An endpoint's deliveries, newest first (the `webhookDeliveries` list).
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    endpoint_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    # A plain id like the log's own references: the event row is never deleted.
    event_id: Mapped[int] = mapped_column(BigId, nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # When the current retry window began: creation, or the last resend.
    retrying_since: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = created_column()


class WebhookAttempt(Base):
    """One POST of a delivery and what came of it."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    delivery_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True, nullable=False
    )
    attempted_at: Mapped[datetime] = created_column()
    succeeded: Mapped[bool] = mapped_column(nullable=False)
    # The receiver's HTTP status, when it answered at all.
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Why it failed, in words (refused address, timeout, connection refused, status).
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
