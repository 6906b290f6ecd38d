"""Appending to the event log (the outbox) inside the changing transaction.

Nothing is published from here: after commit, ``app``'s publisher announces the new
sequence numbers, and subscribers read the rows back from the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Event


class EventType:
    INVOICE_CREATED = "invoice.created"
    INVOICE_UPDATED = "invoice.updated"
    INVOICE_FINALIZED = "invoice.finalized"
    INVOICE_BECAME_DUE = "invoice.became_due"
    INVOICE_BECAME_OVERDUE = "invoice.became_overdue"
    INVOICE_STATUS_CHANGED = "invoice.status_changed"
    INVOICE_PAID = "invoice.paid"
    INVOICE_VOIDED = "invoice.voided"
    INVOICE_UNVOIDED = "invoice.unvoided"
    # An admin sent the invoice by e-mail (sendInvoice); the notification worker does.
    INVOICE_SENT = "invoice.sent"
    LINE_ITEM_ADDED = "line_item.added"
    LINE_ITEM_REMOVED = "line_item.removed"
    LINE_ITEM_MOVED = "line_item.moved"
    CREDIT_NOTE_CREATED = "credit_note.created"
    CREDIT_NOTE_STATUS_CHANGED = "credit_note.status_changed"
    CREDIT_ALLOCATED = "credit.allocated"
    CREDIT_ALLOCATION_REMOVED = "credit.allocation_removed"
    PAYMENT_CREATED = "payment.created"
    PAYMENT_STATUS_CHANGED = "payment.status_changed"
    REFUND_CREATED = "refund.created"
    REFUND_STATUS_CHANGED = "refund.status_changed"
    ACCOUNT_CREATED = "account.created"
    ACCOUNT_UPDATED = "account.updated"
    POLICY_UPDATED = "organization.policy_updated"
    TEST_CLOCK_ADVANCED = "organization.test_clock_advanced"
    PLAN_TEMPLATE_CREATED = "plan_template.created"
    PLAN_SUBSCRIBED = "plan.subscribed"
    PLAN_UPDATED = "plan.updated"
    BOOKING_CREATED = "booking.created"
    BOOKING_UPDATED = "booking.updated"
    BOOKING_CANCELLED = "booking.cancelled"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    WEBHOOK_ENDPOINT_CREATED = "webhook_endpoint.created"
    WEBHOOK_ENDPOINT_UPDATED = "webhook_endpoint.updated"
    WEBHOOK_ENDPOINT_DELETED = "webhook_endpoint.deleted"
    WEBHOOK_ENDPOINT_SECRET_ROTATED = "webhook_endpoint.secret_rotated"
    WEBHOOK_ENDPOINT_DISABLED = "webhook_endpoint.disabled"
    WEBHOOK_DELIVERY_RESENT = "webhook_delivery.resent"


def known_event_types() -> frozenset[str]:
    """Every type name the log can hold (what a webhook endpoint may ask for)."""
    return frozenset(
        value
        for name, value in vars(EventType).items()
        if name.isupper() and isinstance(value, str)
    )


@dataclass(slots=True, kw_only=True)
class RecordedEvent:
    """An event row not yet written: what ``Recorder`` collects (``Event``'s columns)."""

    organization_id: int
    type: str
    account_id: int | None
    invoice_id: int | None
    payment_id: int | None
    credit_note_id: int | None
    refund_id: int | None
    actor_user_id: int | None
    payload: dict[str, Any]
    created_at: datetime


class Recorder:
    """Stands for a session where the caller only wants the events recorded in order
    (``info["events"]``): no unit of work, no ORM state per event."""

    def __init__(self) -> None:
        self.info: dict[str, list[Any]] = {}

    def add(self, row: object) -> None:
        pass  # the caller writes what it collected


@overload
def record(
    session: Recorder, *, organization_id: int, type: str, at: datetime, **fields: Any
) -> RecordedEvent: ...
@overload
def record(
    session: AsyncSession, *, organization_id: int, type: str, at: datetime, **fields: Any
) -> Event: ...
def record(
    session: AsyncSession | Recorder,
    *,
    organization_id: int,
    type: str,
    at: datetime,
    account_id: int | None = None,
    invoice_id: int | None = None,
    payment_id: int | None = None,
    credit_note_id: int | None = None,
    refund_id: int | None = None,
    actor_user_id: int | None = None,
    **payload: Any,
) -> Event | RecordedEvent:
    """Add one event row to the session; it commits (or not) with the change.

    A ``Recorder`` in place of the session only collects the events (the batched
    billing run writes them itself, in bulk) as plain ``RecordedEvent`` values."""
    make = RecordedEvent if isinstance(session, Recorder) else Event
    event = make(
        organization_id=organization_id,
        type=type,
        account_id=account_id,
        invoice_id=invoice_id,
        payment_id=payment_id,
        credit_note_id=credit_note_id,
        refund_id=refund_id,
        actor_user_id=actor_user_id,
        payload=payload,
        created_at=at,
    )
    session.add(event)
    # The caller's transaction announces these after commit (see resolvers.context).
    session.info.setdefault("events", []).append(event)
    return event


async def log_head(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """The newest event id of the whole log (0 when empty): where "new" starts."""
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)


async def newest_events(
    sessionmaker: async_sessionmaker[AsyncSession], after: int
) -> dict[int, int]:
    """The newest event id per organization among events after ``after``: what work
    that committed in transactions of its own must announce."""
    async with sessionmaker() as session:
        rows = await session.execute(
            select(Event.organization_id, func.max(Event.id))
            .where(Event.id > after)
            .group_by(Event.organization_id)
        )
        return {org: int(newest) for org, newest in rows}
