"""E-mail notifications: one row per (event, recipient, kind), and the cursor of the
event log up to which notifications have been derived.

The unique constraint is what makes deriving them idempotent: a worker that retries,
restarts or runs beside another inserts the same rows, and the database keeps one.
"""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, UtcDateTime, created_column, enum_check, id_column, org_column
from models.enums import NotificationKind, NotificationStatus


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("event_id", "recipient", "kind"),
        enum_check("kind", NotificationKind),
        enum_check("status", NotificationStatus),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        # The admins' list, newest first, as a keyset range scan.
        Index("ix_notifications_org_id", "organization_id", "id"),
        # What the worker delivers next.
        Index("ix_notifications_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    # The event it tells of (a plain id, like the log's own references).
    event_id: Mapped[int] = mapped_column(BigId, nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    recipient: Mapped[str] = mapped_column(String(254), nullable=False)
    recipient_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    account_id: Mapped[int | None] = mapped_column(BigId, nullable=True, index=True)
    invoice_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    payment_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # The message as rendered when the notification was made: a retry sends the same.
    subject: Mapped[str] = mapped_column(String(300), nullable=False)
    body_text: Mapped[str] = mapped_column(Text, nullable=False)
    body_html: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default=NotificationStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The pay link in this message (if any): expiry, and the payment it started.
    pay_link_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    pay_link_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    pay_link_payment_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = created_column()


class NotificationCursor(Base):
    """How far into the event log notifications have been derived (one row, by name)."""

    __tablename__ = "notification_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    updated_at: Mapped[datetime] = created_column()
