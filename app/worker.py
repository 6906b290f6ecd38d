"""The billing clock as a loop: every few seconds, one billing run for "now".

It runs inside the server (``DESKBILL_WORKER=true``) or alone (``deskbill worker``);
several may run at once, since the billing run locks each account with SKIP LOCKED.
Each run's events are announced so subscribers of every process hear them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from models import Event
from services import billing
from services.clock import Clock

log = logging.getLogger("deskbill.worker")

Announce = Callable[[int, int], Awaitable[None]]


async def _newest_events(
    sessionmaker: async_sessionmaker[AsyncSession], after: int
) -> dict[int, int]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(Event.organization_id, func.max(Event.id))
            .where(Event.id > after)
            .group_by(Event.organization_id)
        )
        return {org: int(newest) for org, newest in rows}


async def _log_head(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)


async def billing_loop(
    sessionmaker: async_sessionmaker[AsyncSession],
    clock: Clock,
    interval: float,
    announce: Announce,
) -> None:
    """Run the billing clock until cancelled; a failed run is logged, not fatal."""
    head = await _log_head(sessionmaker)
    while True:
        try:
            result = await billing.run_billing(sessionmaker, None, clock.now())
            if result.invoices_finalized or result.status_changes or result.plan_periods_added:
                log.info("billing run: %s", result)
            for org, newest in (await _newest_events(sessionmaker, head)).items():
                await announce(org, newest)
                head = max(head, newest)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("billing run failed; retrying in %.1fs", interval)
        await asyncio.sleep(interval)


async def bill_once(settings: Settings, as_of: datetime) -> billing.BillingRunResult:
    """``deskbill bill --as-of``: one billing run, with the configured gateway."""
    from app.lifecycle import engine_services

    async with engine_services(settings) as (sessionmaker, _gateway, hub):
        head = await _log_head(sessionmaker)
        result = await billing.run_billing(sessionmaker, None, as_of)
        for org, newest in (await _newest_events(sessionmaker, head)).items():
            await hub.announce(org, newest)
        return result


async def run_worker(settings: Settings) -> None:
    """``deskbill worker``: the billing clock without HTTP, until interrupted."""
    from app.lifecycle import engine_services
    from services.clock import SystemClock

    async with engine_services(settings) as (sessionmaker, _gateway, hub):
        log.info("worker started: billing every %.1fs", settings.worker_interval_seconds)
        await billing_loop(
            sessionmaker, SystemClock(), settings.worker_interval_seconds, hub.announce
        )
