"""Outbound webhooks in the graph: endpoints (whose secret shows only when made or
rotated), their deliveries and every attempt at one."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry


@strawberry.enum(description="Whether an endpoint is sent events.")
class WebhookEndpointStatus(Enum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


@strawberry.enum(description="Where a delivery stands.")
class WebhookDeliveryStatus(Enum):
    PENDING = strawberry.enum_value("PENDING", description="Waiting for its first try or a retry.")
    SUCCEEDED = strawberry.enum_value("SUCCEEDED", description="The receiver answered 2xx.")
    FAILED = strawberry.enum_value(
        "FAILED", description="Retried for three days without success; resend to try again."
    )


@strawberry.type(description="A URL that receives this organization's events, signed.")
class WebhookEndpoint:
    id: strawberry.ID
    url: str
    description: str
    event_types: list[str] = strawberry.field(
        description="The event types sent here; `*` means every type."
    )
    status: WebhookEndpointStatus
    disabled_reason: str | None
    previous_secret_valid_until: datetime | None = strawberry.field(
        description="After a rotation: until when the previous secret also signs."
    )
    failing_since: datetime | None = strawberry.field(
        description="When the current run of failed attempts began (null after a success)."
    )
    created_at: datetime
    updated_at: datetime


@strawberry.type(description="An endpoint with its signing secret, shown only in this answer.")
class WebhookEndpointWithSecret:
    endpoint: WebhookEndpoint
    secret: str = strawberry.field(
        description="Verify `Deskbill-Signature` with this (HMAC-SHA256). Keep it now."
    )


@strawberry.type(description="One POST of a delivery.")
class WebhookAttempt:
    attempted_at: datetime
    succeeded: bool
    response_status: int | None = strawberry.field(description="The receiver's HTTP status.")
    error: str | None = strawberry.field(description="Why the attempt failed, in words.")
    duration_ms: int


@strawberry.type(description="One event for one endpoint, tried until it is received.")
class WebhookDelivery:
    id: strawberry.ID
    endpoint_id: strawberry.ID
    event_id: strawberry.ID
    event_cursor: str = strawberry.field(description="The event's cursor in the log.")
    event_type: str
    status: WebhookDeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    attempts: list[WebhookAttempt] = strawberry.field(description="Oldest first.")


@strawberry.input(description="What to change on a webhook endpoint; omitted fields stay.")
class WebhookEndpointChanges:
    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool | None = strawberry.field(
        default=None,
        description="true resumes a disabled endpoint from where its deliveries stopped.",
    )
