"""The graph's face of e-mail notifications: each notification with its delivery
state (admins), the organization's notification settings, and their inputs."""

from __future__ import annotations

from datetime import datetime

import strawberry

from models.enums import NotificationKind, NotificationStatus
from schema.types import Node


@strawberry.type(description="One e-mail notification and its delivery state.")
class Notification(Node):
    kind: NotificationKind
    status: NotificationStatus
    recipient: str
    subject: str
    body_text: str = strawberry.field(description="The message as sent (plain text).")
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None
    created_at: datetime
    event_cursor: str = strawberry.field(description="The event it tells of (`events`).")
    account_id: strawberry.ID | None
    invoice_id: strawberry.ID | None
    payment_id: strawberry.ID | None
    pay_link_expires_at: datetime | None
    pay_link_used_at: datetime | None


@strawberry.type(description="What the organization e-mails, and from which address.")
class NotificationSettings:
    reminder_days: int = strawberry.field(
        description="Days before the due date that the upcoming-invoice reminder goes out "
        "(the organization's local day); 0 = no reminders."
    )
    enabled_kinds: list[NotificationKind]
    email_from: str | None
    email_reply_to: str | None


@strawberry.input
class NotificationSettingsInput:
    reminder_days: int | None = None
    enabled_kinds: list[NotificationKind] | None = strawberry.field(
        default=None, description="Every kind not listed is turned off."
    )
    email_from: str | None = strawberry.field(
        default=None, description='The sender address; "" clears it (the server default).'
    )
    email_reply_to: str | None = strawberry.field(default=None, description='"" clears it.')


@strawberry.input
class NotificationFilter:
    kinds: list[NotificationKind] | None = None
    statuses: list[NotificationStatus] | None = None
    account_id: strawberry.ID | None = None
    invoice_id: strawberry.ID | None = None
    recipient: str | None = None
