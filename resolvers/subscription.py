"""The Subscription root (rules §10.2): invoice status, payment confirmation and the
whole event log, over graphql-transport-ws.

Each subscription checks who may see what *before* it streams (a refusal is the
operation's ``error`` message, with ``extensions.code``), then follows
``EventHub.subscribe``: replay from the table after the client's cursor, then live, in
id order, each event once. The stream is the event log filtered by a predicate that
mirrors ``Query.events``, so polling and subscribing can never disagree. Before each
message it also asks whether the connection's viewer *as it is now* may see the
event's account: access lost while subscribed (a team removal, a demotion) stops the
delivery without ending the subscription.

Without ``after`` a subscription starts at the hub's horizon (everything settled so
far counts as seen); with it, nothing after that cursor is lost across a reconnect.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Container
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.types import Info

from models import Event as EventRow
from models import Invoice as InvoiceRow
from models import Payment as PaymentRow
from resolvers import mapping
from resolvers.context import RequestContext, Viewer
from resolvers.permissions import context, ensure_account_visible, pk_of, viewer
from resolvers.query import parse_event_cursor
from schema import filters as f
from schema import types as t
from schema.enums import InvoiceStatus, PaymentStatus, RefundStatus
from schema.subscription_types import InvoiceStatusEvent, PaymentStatusEvent
from services.errors import DomainError, NotFoundError
from services.events import EventType

INVOICE_STATUS_EVENTS = frozenset(
    {
        EventType.INVOICE_FINALIZED,
        EventType.INVOICE_STATUS_CHANGED,
        EventType.INVOICE_BECAME_DUE,
        EventType.INVOICE_BECAME_OVERDUE,
        EventType.INVOICE_PAID,
        EventType.INVOICE_VOIDED,
        EventType.INVOICE_UNVOIDED,
    }
)
PAYMENT_STATUS_EVENTS = frozenset(
    {
        EventType.PAYMENT_CREATED,
        EventType.PAYMENT_STATUS_CHANGED,
        EventType.REFUND_CREATED,
        EventType.REFUND_STATUS_CHANGED,
    }
)
# Events whose type says the status outright; the others carry it in their payload.
_IMPLIED_INVOICE_STATUS = {
    EventType.INVOICE_PAID: InvoiceStatus.PAID,
    EventType.INVOICE_VOIDED: InvoiceStatus.VOID,
}

E = TypeVar("E", bound=Enum)


@dataclass(frozen=True)
class _Scope:
    """Which events of the organization one subscription receives."""

    types: Container[str] | None = None
    account_id: int | None = None
    invoice_id: int | None = None
    payment_id: int | None = None

    def __call__(self, event: EventRow) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        if self.account_id is not None and event.account_id != self.account_id:
            return False
        if self.invoice_id is not None and self.invoice_id not in (
            event.invoice_id,
            event.credit_note_id,
        ):
            return False
        return self.payment_id is None or event.payment_id == self.payment_id


def _refused(error: DomainError) -> GraphQLError:
    # A refusal happens before the stream exists, where the schema's error-coding
    # extension never sees it: code it here, like every other error of the API.
    return GraphQLError(error.message, extensions={"code": error.code, **error.extensions})


async def _scope(
    info: Info,
    *,
    types: Container[str] | None,
    account_id: strawberry.ID | None,
    invoice_id: strawberry.ID | None,
    payment_id: strawberry.ID | None,
) -> tuple[Viewer, _Scope]:
    """The caller's scope, or a DomainError if a named object is not theirs to watch.

    An account the member does not belong to is FORBIDDEN (as in mutations); an
    invoice or payment outside the caller's reach is NOT_FOUND, so ids reveal nothing.
    """
    who = viewer(info)
    ctx = context(info)
    account_pk = invoice_pk = payment_pk = None
    if account_id is not None:
        account_pk = pk_of(account_id, "Account", field="accountId")
        ensure_account_visible(who, account_pk)
    if invoice_id is not None:
        invoice_pk = pk_of(invoice_id, "Invoice", "CreditNote", field="invoiceId")
        async with ctx.read_sessionmaker() as session:
            invoice = await session.get(InvoiceRow, invoice_pk)
        if not _reachable(who, invoice):
            raise NotFoundError(f"No invoice {invoice_id} that you may see.")
    if payment_id is not None:
        payment_pk = pk_of(payment_id, "Payment", field="paymentId")
        async with ctx.read_sessionmaker() as session:
            payment = await session.get(PaymentRow, payment_pk)
        if not _reachable(who, payment):
            raise NotFoundError(f"No payment {payment_id} that you may see.")
    return who, _Scope(
        types=types,
        account_id=account_pk,
        invoice_id=invoice_pk,
        payment_id=payment_pk,
    )


def _reachable(who: Viewer, row: InvoiceRow | PaymentRow | None) -> bool:
    return (
        row is not None
        and row.organization_id == who.organization_id
        and who.can_see_account(row.account_id)
    )


class Hub(Protocol):
    """What a subscription needs of ``app.realtime.EventHub`` (resolvers import no ``app``)."""

    @property
    def horizon(self) -> int: ...

    def subscribe(
        self, organization_id: int, after: int, predicate: Callable[[EventRow], bool] | None
    ) -> AsyncIterator[EventRow]: ...


def _hub(ctx: RequestContext) -> Hub:
    hub: Hub | None = ctx.services.get("hub")
    if hub is None:
        raise RuntimeError("the event hub is not running in this process")
    return hub


T = TypeVar("T")


async def _stream(
    info: Info,
    after: str | None,
    scope: Callable[[], Awaitable[tuple[Viewer, _Scope]]],
    to_message: Callable[[EventRow], T],
) -> AsyncGenerator[T, None]:
    """Check the caller and the cursor now, then return the stream of messages.

    A plain coroutine returning the generator (rather than a generator itself), so a
    refusal is raised while the subscription is being set up and reaches the client
    as the operation's ``error`` message, before anything streams.
    """
    try:
        cursor = None if after is None else parse_event_cursor(after)
        who, predicate = await scope()
    except DomainError as error:
        raise _refused(error) from None
    ctx = context(info)
    hub = _hub(ctx)
    start = hub.horizon if cursor is None else cursor

    def deliverable(event: EventRow) -> bool:
        return _visible_now(ctx, event) and predicate(event)

    return _messages(ctx, hub.subscribe(who.organization_id, start, deliverable), to_message)


def _visible_now(ctx: RequestContext, event: EventRow) -> bool:
    """Whether the connection's viewer *as it is now* may see ``event``.

    The connection re-authenticates every few seconds and swaps its viewer (see
    ``app.connections``), so a member removed from a team, a demoted user or a closed
    connection stops hearing what is no longer theirs, though the subscription stays.
    Events of no account are for those who see the whole organization.
    """
    current = ctx.viewer
    if current is None:
        return False
    if event.account_id is None:
        return current.account_ids is None
    return current.can_see_account(event.account_id)


async def _messages(
    ctx: RequestContext,
    events: AsyncIterator[EventRow],
    to_message: Callable[[EventRow], T],
) -> AsyncGenerator[T, None]:
    async for row in events:
        # The connection's DataLoaders would otherwise cache the objects of an earlier
        # message; each message reads them as they are now.
        ctx.reset_loaders()
        yield to_message(row)


def _enum(kind: type[E], value: Any) -> E | None:
    try:
        return kind(value)
    except ValueError:
        return None


def invoice_status_message(row: EventRow) -> InvoiceStatusEvent:
    payload = row.payload or {}
    status = _IMPLIED_INVOICE_STATUS.get(row.type) or _enum(InvoiceStatus, payload.get("status"))
    return InvoiceStatusEvent(
        cursor=mapping.event_cursor(row.id),
        type=row.type,
        status=status,
        previous_status=_enum(InvoiceStatus, payload.get("previous_status")),
        event=mapping.event(row),
        invoice_pk=row.invoice_id,
    )


def payment_status_message(row: EventRow) -> PaymentStatusEvent:
    payload = row.payload or {}
    is_refund = row.type.startswith("refund.")
    return PaymentStatusEvent(
        cursor=mapping.event_cursor(row.id),
        type=row.type,
        status=None if is_refund else _enum(PaymentStatus, payload.get("status")),
        previous_status=None if is_refund else _enum(PaymentStatus, payload.get("previous_status")),
        refund_status=_enum(RefundStatus, payload.get("status")) if is_refund else None,
        event=mapping.event(row),
        payment_pk=row.payment_id,
        invoice_pk=row.invoice_id,
    )


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Status changes of invoices: finalized, due, overdue, paid, voided, "
        "un-voided. Members: their own and their teams' accounts only. Pass the last "
        "`cursor` you received as `after` to get everything since, in order."
    )
    async def invoice_status_changed(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        invoice_id: strawberry.ID | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[InvoiceStatusEvent, None]:
        return await _stream(
            info,
            after,
            lambda: _scope(
                info,
                types=INVOICE_STATUS_EVENTS,
                account_id=account_id,
                invoice_id=invoice_id,
                payment_id=None,
            ),
            invoice_status_message,
        )

    @strawberry.subscription(
        description="Payments created and confirmed (or failed), and refunds. Members: "
        "their own and their teams' accounts only. Resume with `after` like "
        "`invoiceStatusChanged`."
    )
    async def payment_status_changed(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        invoice_id: strawberry.ID | None = None,
        payment_id: strawberry.ID | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[PaymentStatusEvent, None]:
        return await _stream(
            info,
            after,
            lambda: _scope(
                info,
                types=PAYMENT_STATUS_EVENTS,
                account_id=account_id,
                invoice_id=invoice_id,
                payment_id=payment_id,
            ),
            payment_status_message,
        )

    @strawberry.subscription(
        description="The event log as it grows, filtered like `Query.events` (members: "
        "their accounts' events). Each event's `cursor` resumes after it."
    )
    async def events(
        self,
        info: Info,
        after: str | None = None,
        filter: f.EventFilter | None = None,
    ) -> AsyncGenerator[t.Event, None]:
        flt = filter or f.EventFilter()
        return await _stream(
            info,
            after,
            lambda: _scope(
                info,
                types=frozenset(flt.types) if flt.types else None,
                account_id=flt.account_id,
                invoice_id=flt.invoice_id,
                payment_id=flt.payment_id,
            ),
            mapping.event,
        )
