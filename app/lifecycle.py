"""What starts and stops with a process: the payment gateway and the engine hooks
that need it, the event hub (broadcast channel), the billing worker, and beside it
(tasks of their own, so a slow receiver never holds billing) the outbound webhook
sender and the e-mail notification loop with its mailer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import create_engine, create_sessionmaker
from app.metrics import MeteredGateway, Metrics, metered_gateway
from app.realtime import EventHub
from app.settings import Settings
from app.state import AppState
from app.webhook_sender import WebhookSender, sender_loop
from app.worker import billing_loop, notification_loop
from schema.ids import encode
from schema.types import document_path
from services import batch_billing, billing, credit, invoices
from services.clock import Clock, SystemClock
from services.events import log_head, newest_events
from services.gateway import PaymentGateway, gateway_from_settings
from services.mailer import Mailer, mailer_from_url
from services.notifications import NotificationConfig
from services.outbound_webhooks import AddressPolicy
from services.payments import register_payment_jobs

log = logging.getLogger("deskbill.worker")

# Stopping must finish within the 10 s an orchestrator gives after SIGTERM: a billing
# run is cancelled (its open account transaction rolls back, to be redone next run),
# and the hub gets a few seconds to close its broadcast connection.
HUB_STOP_SECONDS = 3.0


async def stop_hub(hub: EventHub) -> None:
    try:
        await asyncio.wait_for(hub.stop(), HUB_STOP_SECONDS)
    except TimeoutError:
        log.warning("event hub did not stop within %.0fs; leaving it", HUB_STOP_SECONDS)


def install_engine_hooks(gateway: PaymentGateway) -> None:
    """Connect the engine's pieces that must not import each other. Credit registers
    its finalization hook when ``services.credit`` is imported (above); the billing
    run's payment jobs need the gateway, which only exists once settings are read."""
    assert credit.after_finalize in invoices.AFTER_FINALIZE
    register_payment_jobs(gateway)


def billing_limits(settings: Settings) -> billing.BillingLimits:
    return billing.BillingLimits(
        max_periods_per_account=settings.billing_max_periods,
        concurrency=settings.billing_concurrency,
        account_seconds=settings.billing_account_seconds,
        batch_size=settings.billing_batch_size,
    )


def build_sender(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    hub: EventHub,
    clock: Clock,
    metrics: Metrics | None = None,
) -> WebhookSender:
    """The webhook sender, delivering what the hub has settled."""
    return WebhookSender(
        sessionmaker,
        clock,
        horizon=hub.poll,
        announce=hub.announce,
        policy=AddressPolicy.parse(settings.webhooks_allow_private),
        timeout=settings.webhook_timeout_seconds,
        concurrency=settings.webhook_concurrency,
        observe=None if metrics is None else metrics.record_webhook_attempt,
    )


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def build_mailer(settings: Settings) -> Mailer:
    return mailer_from_url(settings.smtp_url)


def invoice_document_path(invoice_id: int) -> str:
    """The PDF route of an invoice (app.documents), for the links in its e-mails."""
    return document_path(encode("Invoice", invoice_id), credit_note=False)


def notification_config(settings: Settings) -> NotificationConfig:
    return NotificationConfig(
        invoice_document_path=invoice_document_path,
        public_url=settings.public_url,
        default_sender=settings.smtp_from,
        pay_link_days=settings.pay_link_days,
        max_attempts=settings.notify_max_attempts,
        backoff_seconds=settings.notify_backoff_seconds,
    )


def build_gateway(settings: Settings) -> PaymentGateway:
    return gateway_from_settings(
        settings.stripe_api_key, settings.stripe_webhook_secret, settings.stripe_api_base
    )


@asynccontextmanager
async def running(state: AppState, *, start_worker: bool | None = None) -> AsyncIterator[None]:
    """The server's lifespan: gateway and hooks, hub, and (if enabled) the worker."""
    settings = state.settings
    gateway = state.services.get("gateway") or build_gateway(settings)
    metrics = state.services.get("metrics")
    if isinstance(metrics, Metrics) and not isinstance(gateway, MeteredGateway):
        gateway = metered_gateway(gateway, metrics)
    state.services["gateway"] = gateway
    install_engine_hooks(gateway)
    hub = EventHub(settings.broadcast_url, state.read_sessionmaker)
    if isinstance(metrics, Metrics):
        observe, clock = metrics.observe_delivery, state.clock
        hub.on_deliver = lambda event: observe(event, clock.now())
    await hub.start()
    state.services["hub"] = hub
    sender = build_sender(
        settings, state.sessionmaker, hub, state.clock,
        metrics if isinstance(metrics, Metrics) else None,
    )  # fmt: skip
    state.services["webhook_sender"] = sender
    state.services["webhook_policy"] = sender.policy
    mailer = state.services.get("mailer") or build_mailer(settings)
    state.services["mailer"] = mailer
    worker: asyncio.Task[None] | None = None
    webhooks: asyncio.Task[None] | None = None
    mail: asyncio.Task[None] | None = None
    if settings.worker_enabled if start_worker is None else start_worker:
        webhooks = asyncio.create_task(sender_loop(sender, settings.webhook_interval_seconds))
        mail = asyncio.create_task(
            notification_loop(
                state.sessionmaker,
                state.clock,
                settings.worker_interval_seconds,
                mailer,
                notification_config(settings),
            )
        )
        worker = asyncio.create_task(
            billing_loop(
                state.sessionmaker,
                state.clock,
                settings.worker_interval_seconds,
                hub.announce,
                billing_limits(settings),
                metrics.record_billing_run if isinstance(metrics, Metrics) else None,
            )
        )
    # Everything built so far (schema, statements, models, libraries) lives as long as
    # the process: out of the collector's sight, so its full collections stay short.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        await stop_task(worker)
        await stop_task(webhooks)
        await stop_task(mail)
        await sender.aclose()
        await stop_hub(hub)
        state.services.pop("hub", None)
        close = getattr(gateway, "aclose", None)
        if close is not None:
            await close()


@asynccontextmanager
async def engine_services(
    settings: Settings,
) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], PaymentGateway, Any]]:
    """Database, gateway and hub for a process without HTTP (CLI, worker)."""
    engine = create_engine(settings.database_url, limits=settings.database_limits)
    gateway = build_gateway(settings)
    install_engine_hooks(gateway)
    hub = EventHub(settings.broadcast_url, create_sessionmaker(engine))
    await hub.start()
    try:
        yield create_sessionmaker(engine), gateway, hub
    finally:
        await stop_hub(hub)
        close = getattr(gateway, "aclose", None)
        if close is not None:
            await close()
        await engine.dispose()


async def bill_once(
    settings: Settings, as_of: datetime, progress: billing.Progress | None = None
) -> billing.BillingRunResult:
    """``deskbill bill --as-of``: one billing run, with the configured gateway."""
    async with engine_services(settings) as (sessionmaker, _gateway, hub):
        head = await log_head(sessionmaker)
        result = await batch_billing.run_billing_batched(
            sessionmaker, None, as_of, billing_limits(settings), progress
        )
        for org, newest in (await newest_events(sessionmaker, head)).items():
            await hub.announce(org, newest)
        return result


async def run_worker(settings: Settings) -> None:
    """``deskbill worker``: the billing clock without HTTP, until SIGTERM or SIGINT,
    which stop it cleanly (exit status 0)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with engine_services(settings) as (sessionmaker, _gateway, hub):
        log.info("worker started: billing every %.1fs", settings.worker_interval_seconds)
        clock = asyncio.create_task(
            billing_loop(
                sessionmaker,
                SystemClock(),
                settings.worker_interval_seconds,
                hub.announce,
                billing_limits(settings),
            )
        )
        sender = build_sender(settings, sessionmaker, hub, SystemClock())
        webhooks = asyncio.create_task(sender_loop(sender, settings.webhook_interval_seconds))
        mail = asyncio.create_task(
            notification_loop(
                sessionmaker,
                SystemClock(),
                settings.worker_interval_seconds,
                build_mailer(settings),
                notification_config(settings),
            )
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({clock, stopped}, return_when=asyncio.FIRST_COMPLETED)
        log.info("worker stopping")
        for task in (clock, webhooks, mail, stopped):
            await stop_task(task)
        await sender.aclose()
