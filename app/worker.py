"""The billing clock as a loop: every few seconds, one billing run for "now" and a
compaction of the analytics rollups; and beside it the notification loop, which turns
the event log into e-mails.

It runs inside the server (``DESKBILL_WORKER=true``) or alone (``deskbill worker``,
started by ``app.lifecycle``);
several may run at once, since the billing run locks each account with SKIP LOCKED.
Each run's events are announced so subscribers of every process hear them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services import analytics, batch_billing, billing
from services.clock import Clock
from services.events import log_head, newest_events
from services.mailer import Mailer
from services.notifications import NotificationConfig, notify_once
from services.paylinks import pay_link_secret

log = logging.getLogger("deskbill.worker")

Announce = Callable[[int, int], Awaitable[None]]
# Told of each run and its duration in seconds (``app.metrics``), or of a failed run (None).
RunObserver = Callable[[billing.BillingRunResult | None, float], None]
# How often the billing loop folds the analytics rollups (a busy clock runs every pass
# in milliseconds; the rollups need it far less often).
COMPACT_EVERY_SECONDS = 5.0


async def billing_loop(
    sessionmaker: async_sessionmaker[AsyncSession],
    clock: Clock,
    interval: float,
    announce: Announce,
    limits: billing.BillingLimits = billing.DEFAULT_LIMITS,
    observe: RunObserver | None = None,
) -> None:
    """Run the billing clock until cancelled; a failed run is logged, not fatal.
    Each run logs one line (``BillingRunResult.summary``)."""
    head: int | None = None
    compacted_at = -COMPACT_EVERY_SECONDS
    while True:
        started = time.perf_counter()
        try:
            if head is None:  # inside the try: a database gone at start is retried too
                head = await log_head(sessionmaker)
            result = await batch_billing.run_billing_batched(
                sessionmaker, None, clock.now(), limits
            )
            log.info("%s in %.2fs", result.summary(), time.perf_counter() - started)
            if observe is not None:
                observe(result, time.perf_counter() - started)
            for org, newest in (await newest_events(sessionmaker, head)).items():
                await announce(org, newest)
                head = max(head, newest)
            # The writes since the last compaction left fresh delta rows in the rollups;
            # fold them so figures keep reading about one row per day.
            if started - compacted_at >= COMPACT_EVERY_SECONDS:
                compacted_at = started
                async with sessionmaker.begin() as session:
                    await analytics.compact(session)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("billing run failed; retrying in %.1fs", interval)
            if observe is not None:
                observe(None, time.perf_counter() - started)
        await asyncio.sleep(interval)


async def notification_loop(
    sessionmaker: async_sessionmaker[AsyncSession],
    clock: Clock,
    interval: float,
    mailer: Mailer,
    config: NotificationConfig,
) -> None:
    """Derive and deliver e-mail notifications until cancelled (services.notifications).
    Every step is idempotent, so a cancelled or crashed round is simply done again."""
    secret: str | None = None
    while True:
        try:
            if secret is None:
                secret = await pay_link_secret(sessionmaker, clock.now())
            result = await notify_once(sessionmaker, mailer, config, secret, clock)
            if result.sent or result.failed or result.recorded:
                log.info(
                    "notifications: %d sent, %d failed (will retry), %d recorded (SMTP off)",
                    result.sent, result.failed, result.recorded,
                )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notification round failed; retrying in %.1fs", interval)
        await asyncio.sleep(interval)
