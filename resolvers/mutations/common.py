"""What every mutation does the same way: find the organization, turn decimal
strings into minor units, run one transaction, honour idempotency keys, announce
committed events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from models import Event, Organization
from resolvers.context import Viewer
from resolvers.permissions import context, ensure_account_visible, pk_of
from services import money
from services.idempotency import run_idempotent
from services.policy import get_organization


async def organization(session: AsyncSession, who: Viewer) -> Organization:
    return await get_organization(session, who.organization_id)


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
    info: Any,
    key: str | None,
    operation: str,
    request: dict[str, Any],
    work: Callable[[AsyncSession], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run ``work`` in one transaction; with a key, at most once per organization.

    Returns what ``work`` returned (or, on a retry, what the first call returned), a
    JSON dict of ids that the caller turns back into objects.
    """
    ctx = context(info)
    who = ctx.viewer
    assert who is not None
    if key is None:
        async with ctx.transaction() as session:
            return await work(session)

    written: list[Event] = []

    async def tracked(session: AsyncSession) -> dict[str, Any]:
        result = await work(session)
        await session.flush()
        written.extend(e for e in session.info.get("events", ()) if isinstance(e, Event))
        return result

    result = await run_idempotent(
        ctx.sessionmaker, who.organization_id, key, operation, request, tracked,
        now=ctx.clock.now(),
    )  # fmt: skip
    if written:
        await ctx.announce(who.organization_id, max(e.id for e in written))
    ctx.reset_loaders()
    return result
