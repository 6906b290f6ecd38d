"""Stripe webhooks (rules §6.4): verify, de-duplicate, and move payments and refunds
to the state of the object the event carries.

* The signature is checked against the raw body, and its timestamp against the
  engine's clock with a 300 s tolerance; a bad or stale one raises
  ``InvalidWebhookError`` (the HTTP layer answers 400) and nothing changes.
* Each event id is processed once: its ``ProcessedWebhook`` row is inserted first in
  the same transaction as its effect, so a concurrent duplicate waits on the primary
  key and then finds it taken; a duplicate is acknowledged and ignored.
* A signed event is still checked for shape before anything is read from it: ids are
  Stripe-like tokens of bounded length, and every field the engine reads has the
  type it expects. A malformed event is ``InvalidWebhookError`` (400, nothing
  written) rather than an internal error that Stripe would retry for days.
* Events arrive out of order: the state comes from the event's object, applied by the
  forward-only ``apply_payment_intent_state`` / ``apply_refund_state``, so a late
  ``payment_failed`` can never undo a ``succeeded``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Account, Organization, Payment, ProcessedWebhook, Refund
from services import events
from services.clock import Clock, organization_now
from services.events import EventType
from services.gateway import IntentState, InvalidWebhookError, PaymentGateway, RefundState
from services.locks import lock_account
from services.payments import apply_payment_intent_state
from services.refunds import apply_refund_state

__all__ = ["InvalidWebhookError", "WebhookOutcome", "handle_stripe_webhook"]

PAYMENT_INTENT_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.processing",
        "payment_intent.requires_action",
    }
)
REFUND_EVENTS = frozenset(
    {"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)
SETUP_EVENTS = frozenset({"setup_intent.succeeded"})


# Stripe's ids are letters, digits and underscores (evt_…, pi_…, re_…, cus_…).
_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,255}")
_EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,120}")
# Stripe's own metadata limits: 50 keys of 40 characters, values of 500.
MAX_METADATA_KEYS = 50
MAX_TEXT = 5000
_INT64 = range(0, 2**63)


def _malformed(what: str) -> InvalidWebhookError:
    return InvalidWebhookError(f"The webhook event is malformed: {what}.")


def _stripe_id(value: object, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not _STRIPE_ID.fullmatch(value):
        raise _malformed(f"{what} is not a Stripe id")


def _text(value: object, what: str, *, optional: bool = True, limit: int = MAX_TEXT) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise _malformed(f"{what} is not a string of at most {limit} characters")


def _amount(value: object, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value not in _INT64:
        raise _malformed(f"{what} is not a whole number of minor units")


def _reference(value: object, what: str) -> None:
    """An expandable field: an id, an object with an id, or absent."""
    if isinstance(value, Mapping):
        value = value.get("id")
    _stripe_id(value, what, optional=True)


def _metadata(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or len(value) > MAX_METADATA_KEYS:
        raise _malformed("metadata is not an object of at most 50 entries")
    for key, item in value.items():
        _text(key, "a metadata key", optional=False, limit=40)
        _text(item, "a metadata value", optional=False, limit=500)


def check_event(event: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    """The event's id, type and object, once every field the engine reads has the
    type it should; ``InvalidWebhookError`` otherwise."""
    event_id, event_type = event.get("id"), event.get("type")
    _stripe_id(event_id, "its id")
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        raise _malformed("its type is not an event type")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise _malformed("it carries no object")
    _stripe_id(obj.get("id"), "the object's id")
    _metadata(obj.get("metadata"))
    assert isinstance(event_id, str)
    if event_type in PAYMENT_INTENT_EVENTS or event_type in REFUND_EVENTS:
        _text(obj.get("status"), "the object's status", optional=False, limit=64)
        _amount(obj.get("amount"), "the object's amount")
    if event_type in PAYMENT_INTENT_EVENTS:
        _amount(obj.get("amount_received"), "amount_received")
        _text(obj.get("currency"), "currency", limit=10)
        _text(obj.get("client_secret"), "client_secret", limit=500)
        _reference(obj.get("payment_method"), "payment_method")
        error = obj.get("last_payment_error")
        if error is not None:
            if not isinstance(error, Mapping):
                raise _malformed("last_payment_error is not an object")
            for name in ("code", "decline_code", "message"):
                _text(error.get(name), f"last_payment_error.{name}")
    if event_type in REFUND_EVENTS:
        _reference(obj.get("payment_intent"), "payment_intent")
        _text(obj.get("failure_reason"), "failure_reason", limit=200)
    if event_type in SETUP_EVENTS:
        _reference(obj.get("customer"), "customer")
        _reference(obj.get("payment_method"), "payment_method")
    return event_id, event_type, obj


@dataclass(frozen=True)
class WebhookOutcome:
    """What happened to one delivery: ``duplicate`` when the event id was seen
    before; ``applied`` when it concerned one of our payments or refunds."""

    event_id: str
    type: str
    duplicate: bool = False
    applied: bool = False


class _Duplicate(Exception):
    pass


async def handle_stripe_webhook(
    sessionmaker: async_sessionmaker[AsyncSession],
    gateway: PaymentGateway,
    raw_body: bytes,
    signature_header: str | None,
    clock: Clock,
) -> WebhookOutcome:
    """Process one webhook delivery; answer 2xx for any outcome it returns.

    Raises ``InvalidWebhookError`` (→ HTTP 400) for a bad signature, stale timestamp
    or malformed body, before anything is written. Owns its transaction.
    """
    now = clock.now()
    event = gateway.verify_webhook(raw_body, signature_header, now=now)
    event_id, event_type, obj = check_event(event)
    try:
        async with sessionmaker() as session, session.begin():
            session.add(ProcessedWebhook(event_id=event_id, type=event_type, received_at=now))
            try:
                await session.flush()
            except IntegrityError:
                raise _Duplicate from None
            applied = await _apply(session, event_type, obj, clock)
    except _Duplicate:
        return WebhookOutcome(event_id, event_type, duplicate=True)
    except IntegrityError:
        # A concurrent delivery of the same event won the primary key at commit.
        if await _seen(sessionmaker, event_id):
            return WebhookOutcome(event_id, event_type, duplicate=True)
        raise
    return WebhookOutcome(event_id, event_type, applied=applied)


async def _seen(sessionmaker: async_sessionmaker[AsyncSession], event_id: str) -> bool:
    async with sessionmaker() as session:
        return await session.get(ProcessedWebhook, event_id) is not None


async def _apply(
    session: AsyncSession, event_type: str, obj: Mapping[str, Any], clock: Clock
) -> bool:
    # The signature's age goes by the wall clock; what the event changes is stamped
    # with its organization's now (a sandbox's test clock, rules §9.4).
    if event_type in PAYMENT_INTENT_EVENTS:
        return await _apply_intent(session, IntentState.from_object(obj), clock)
    if event_type in REFUND_EVENTS:
        return await _apply_refund(session, RefundState.from_object(obj), clock)
    if event_type in SETUP_EVENTS:
        return await _apply_setup(session, obj, clock)
    return False


_METADATA_PK = re.compile(r"[1-9][0-9]{0,17}")  # within int64, ASCII digits only


def _metadata_id(metadata: Mapping[str, str], name: str) -> int | None:
    value = metadata.get(name)
    return int(value) if isinstance(value, str) and _METADATA_PK.fullmatch(value) else None


async def _apply_intent(session: AsyncSession, intent: IntentState, clock: Clock) -> bool:
    payment = await session.scalar(
        select(Payment).where(Payment.gateway_payment_intent_id == intent.id)
    )
    if payment is None:
        # The webhook may beat our own record of the intent id: find it by metadata.
        payment_id = _metadata_id(intent.metadata, "deskbill_payment_id")
        payment = await session.get(Payment, payment_id) if payment_id else None
        if payment is None or payment.gateway_payment_intent_id not in (None, intent.id):
            return False
        if str(payment.organization_id) != intent.metadata.get("deskbill_organization_id"):
            return False
    org = await session.get(Organization, payment.organization_id)
    assert org is not None
    now = organization_now(clock, org)
    await apply_payment_intent_state(session, org, payment.id, intent, now)
    return True


async def _apply_refund(session: AsyncSession, state: RefundState, clock: Clock) -> bool:
    refund = await session.scalar(select(Refund).where(Refund.gateway_refund_id == state.id))
    if refund is None:
        refund_id = _metadata_id(state.metadata, "deskbill_refund_id")
        refund = await session.get(Refund, refund_id) if refund_id else None
        if refund is None or refund.gateway_refund_id not in (None, state.id):
            return False
        if str(refund.organization_id) != state.metadata.get("deskbill_organization_id"):
            return False
    org = await session.get(Organization, refund.organization_id)
    assert org is not None
    now = organization_now(clock, org)
    await apply_refund_state(session, org, refund.id, state, now)
    return True


async def _apply_setup(session: AsyncSession, obj: Mapping[str, Any], clock: Clock) -> bool:
    """A card saved through a SetupIntent becomes the account's default method when it
    has none (an admin's explicit choice is never overwritten)."""
    customer, method = obj.get("customer"), obj.get("payment_method")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    if isinstance(method, Mapping):
        method = method.get("id")
    if not customer or not method:
        return False
    found = await session.scalar(select(Account).where(Account.stripe_customer_id == customer))
    if found is None:
        return False
    account = await lock_account(session, found.organization_id, found.id)
    if account.default_payment_method_id:
        return False
    now = organization_now(clock, await session.get(Organization, account.organization_id))
    account.default_payment_method_id = str(method)
    events.record(
        session,
        organization_id=account.organization_id,
        type=EventType.ACCOUNT_UPDATED,
        at=now,
        account_id=account.id,
        default_payment_method_id=account.default_payment_method_id,
    )
    return True
