"""What every mutation does the same way.

The pattern, in three steps, for every mutation module:

1. **Check who asks and read the arguments** before any SQL: ``require_admin`` or
   ``require_writer``, global ids through ``pk_of``, amounts through ``amount``.
2. **Load, check, call** inside one transaction of the caller's organization::

       async with transaction(info) as w:
           account = await w.account(input.account_id)
           line = await bookings.add_one_time_charge(w.session, w.org, account, ...,
                                                     now=w.now, actor_user_id=w.actor)

   ``Work`` loads rows of that organization only (a row of another tenant is
   NOT_FOUND, an account a member may not act on is FORBIDDEN); the service checks the
   row's state and changes it, writing its event rows in the same transaction, which
   commits when the block ends and then wakes subscribers. With an idempotency key,
   ``idempotent(info, key, operation, request, work)`` runs the same ``work(w)`` at
   most once per key. Services that call the payment gateway open their own
   transactions (never one across a network call), take what ``reading(info)`` loads.
3. **Answer** from the rows written, or read back after commit.

``Work.now`` is the organization's now (``services.clock.organization_now``): the one
place that says what time it is for an organization, so every mutation of one
organization runs on one clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from models import (
    Account,
    Booking,
    Event,
    Invoice,
    LineItem,
    Organization,
    PlanSubscription,
    PlanTemplate,
    User,
)
from resolvers.context import Viewer
from resolvers.permissions import context, ensure_account_visible, pk_of, viewer
from services import accounts, bookings, invoices, money, plans
from services.clock import organization_now
from services.idempotency import run_idempotent
from services.policy import get_organization

JSON = dict[str, Any]


@dataclass(frozen=True)
class Work:
    """One mutation's transaction: its session, the caller's organization, that
    organization's now, and who acts. Its loaders take global ids as the client sent
    them and answer rows of this organization that this caller may act on."""

    session: AsyncSession
    org: Organization
    now: datetime
    who: Viewer

    @property
    def actor(self) -> int | None:
        """The user the event rows name as the actor (None for an API key)."""
        return self.who.user_id

    async def account(self, global_id: str, field: str = "accountId") -> Account:
        return await accounts.get_account(
            self.session, self.org, account_pk(self.who, global_id, field)
        )

    async def user(self, global_id: str, field: str = "userId") -> User:
        return await accounts.get_user(
            self.session, self.org, pk_of(global_id, "User", field=field)
        )

    async def invoice(self, pk: int) -> Invoice:
        """An invoice or credit note by primary key (the caller decoded its id)."""
        return await invoices.get_invoice(self.session, self.org, pk)

    async def line(self, global_id: str, field: str = "lineItemId") -> LineItem:
        return await invoices.get_line(
            self.session, self.org, pk_of(global_id, "LineItem", field=field)
        )

    async def booking(self, global_id: str, field: str = "bookingId") -> Booking:
        booking = await bookings.get_booking(
            self.session, self.org, pk_of(global_id, "Booking", field=field)
        )
        ensure_account_visible(self.who, booking.account_id)
        return booking

    async def plan_template(self, global_id: str, field: str = "planTemplateId") -> PlanTemplate:
        pk = pk_of(global_id, "PlanTemplate", field=field)
        return await plans.get_template(self.session, self.org, pk)

    async def plan_subscription(
        self, global_id: str, field: str = "planSubscriptionId"
    ) -> PlanSubscription:
        pk = pk_of(global_id, "PlanSubscription", field=field)
        return await plans.get_subscription(self.session, self.org, pk)


async def _work(info: Info, session: AsyncSession) -> Work:
    who = viewer(info)
    org = await get_organization(session, who.organization_id)
    return Work(session, org, organization_now(context(info).clock, org), who)


@asynccontextmanager
async def transaction(info: Info) -> AsyncIterator[Work]:
    """One transaction of the caller's organization; committed events are announced
    when the block ends."""
    async with context(info).transaction() as session:
        yield await _work(info, session)


@asynccontextmanager
async def reading(info: Info) -> AsyncIterator[Work]:
    """The same loaders on a read session, outside any write transaction: for the
    gateway services, which open their own transactions (``w.org`` and ``w.now`` stay
    valid after the block)."""
    async with context(info).read_sessionmaker() as session:
        yield await _work(info, session)


def amount(value: Decimal | str, who: Viewer, field: str) -> int:
    return money.parse(value, who.currency, field=field)


def optional_amount(value: Decimal | None, who: Viewer, field: str) -> int | None:
    return None if value is None else amount(value, who, field)


def tax_rate(value: Decimal | None) -> int | None:
    return None if value is None else money.parse_tax_rate(value)


def account_pk(who: Viewer, global_id: str, field: str = "accountId") -> int:
    """An account id the caller may act on (members: their own and their teams')."""
    pk = pk_of(global_id, "Account", field=field)
    ensure_account_visible(who, pk)
    return pk


async def idempotent(
    info: Info,
    key: str | None,
    operation: str,
    request: JSON,
    work: Callable[[Work], Awaitable[JSON]],
) -> JSON:
    """Run ``work`` in one transaction; with a key, at most once per organization.

    Returns what ``work`` returned (or, on a retry, what the first call returned), a
    JSON dict of ids that the caller turns back into objects.
    """
    ctx = context(info)
    who = viewer(info)
    if key is None:
        async with transaction(info) as w:
            return await work(w)

    written: list[Event] = []

    async def tracked(session: AsyncSession) -> JSON:
        w = await _work(info, session)
        result = await work(w)
        await session.flush()
        written.extend(e for e in session.info.get("events", ()) if isinstance(e, Event))
        return result

    # The key's record is stamped with the wall clock: keys expire in real time,
    # whatever clock the organization's billing runs on.
    result = await run_idempotent(
        ctx.sessionmaker, who.organization_id, key, operation, request, tracked,
        now=ctx.clock.now(),
    )  # fmt: skip
    if written:
        await ctx.announce(who.organization_id, max(e.id for e in written))
    ctx.reset_loaders()
    return result
