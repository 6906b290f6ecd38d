"""What an operator watches: Prometheus metrics of the API, the pool, the billing clock,
the subscriptions, Stripe and its webhooks, served at ``GET /metrics``.

Built on ``prometheus-client`` (the reference Python client: text exposition, histograms,
collectors read at scrape time). Each app has a registry of its own, so the many apps a
test run builds never share counters; a process that serves several workers reports per
worker, as Prometheus expects.

Label values are bounded: an operation name is kept only if it looks like one
(``[A-Za-z_][A-Za-z0-9_]{0,63}``) and while fewer than ``MAX_OPERATION_NAMES`` distinct
names have been seen; anything else is counted as ``other``. So a client cannot grow the
registry without bound by inventing names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from models import Event
from services.billing import BillingRunResult
from services.gateway import PaymentGateway

if TYPE_CHECKING:
    from app.state import AppState

MAX_OPERATION_NAMES = 200
_OPERATION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Paths are reported by route, never by their raw text (ids would explode cardinality).
_ROUTES = ("/graphql", "/webhooks/stripe", "/exports", "/metrics", "/healthz", "/readyz")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The gateway calls worth timing: every one of them is a request to Stripe.
GATEWAY_CALLS = frozenset(
    {
        "create_customer",
        "create_setup_intent",
        "list_cards",
        "retrieve_card",
        "detach_card",
        "create_payment_intent",
        "retrieve_payment_intent",
        "cancel_payment_intent",
        "create_refund",
        "retrieve_refund",
    }
)


def route_of(path: str) -> str:
    for route in _ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The process's instruments, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Each (route, method, status)'s two series, looked up once rather than per request.
        self._http_series: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}
        self.http_requests = Counter(
            "deskbill_http_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "deskbill_http_request_seconds", "Time to answer an HTTP request, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.operations = Counter(
            "deskbill_graphql_operations",
            "GraphQL operations by name, type and outcome (OK or the first error's code).",
            ["operation", "type", "code"], registry=r,
        )  # fmt: skip
        self.operation_latency = Histogram(
            "deskbill_graphql_operation_seconds", "Time to execute a GraphQL operation.",
            ["type"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.billing_runs = Counter(
            "deskbill_billing_runs", "Billing runs by outcome (ok, failed).", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.billing_accounts = Counter(
            "deskbill_billing_accounts", "Accounts a billing run went through, by outcome.",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.billing_invoices_finalized = Counter(
            "deskbill_billing_invoices_finalized", "Invoices finalized by billing runs.",
            registry=r,
        )  # fmt: skip
        self.billing_run_seconds = Histogram(
            "deskbill_billing_run_seconds", "Duration of one billing run.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.event_delivery_lag = Histogram(
            "deskbill_event_delivery_lag_seconds",
            "From an event's commit time to its delivery to a live subscriber.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.webhooks = Counter(
            "deskbill_stripe_webhooks", "Stripe webhook deliveries by outcome "
            "(applied, duplicate, ignored, refused).", ["outcome"], registry=r,
        )  # fmt: skip
        self.outbound_webhooks = Counter(
            "deskbill_webhook_deliveries", "Outbound webhook attempts by outcome (succeeded, "
            "retrying, gave_up, gone).", ["outcome"], registry=r,
        )  # fmt: skip
        self.gateway_calls = Counter(
            "deskbill_stripe_calls", "Requests to Stripe by call and outcome (ok or the "
            "error's class).", ["call", "outcome"], registry=r,
        )  # fmt: skip
        self.gateway_latency = Histogram(
            "deskbill_stripe_call_seconds", "Time a request to Stripe took, by call.",
            ["call"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.open_subscriptions = Gauge(
            "deskbill_open_subscriptions", "Live GraphQL subscriptions in this process.",
            registry=r,
        )  # fmt: skip
        self._operation_names: set[str] = set()

    def count_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered: counted by route, method and status, and timed."""
        if method not in _METHODS:
            method = "OTHER"  # a client's made-up method cannot grow the registry
        key = (route, method, status)
        series = self._http_series.get(key)
        if series is None:
            series = self._http_series[key] = (
                self.http_latency.labels(route),
                self.http_requests.labels(route, method, str(status)),
            )
        series[0].observe(seconds)
        series[1].inc()

    def operation_label(self, name: str | None) -> str:
        if not name:
            return "anonymous"
        if not _OPERATION_NAME.fullmatch(name):
            return "other"
        if name not in self._operation_names:
            if len(self._operation_names) >= MAX_OPERATION_NAMES:
                return "other"
            self._operation_names.add(name)
        return name

    def watch_pool(self, engine: AsyncEngine) -> None:
        self.registry.register(_PoolCollector(engine))

    def record_billing_run(self, result: BillingRunResult | None, seconds: float) -> None:
        """One billing run's outcome; ``None`` when the run itself failed."""
        self.billing_run_seconds.observe(seconds)
        if result is None:
            self.billing_runs.labels("failed").inc()
            return
        self.billing_runs.labels("ok").inc()
        failed = len(result.failures)
        self.billing_accounts.labels("billed").inc(max(result.accounts_processed - failed, 0))
        self.billing_accounts.labels("failed").inc(failed)
        self.billing_accounts.labels("skipped").inc(result.accounts_skipped)
        self.billing_invoices_finalized.inc(result.invoices_finalized)

    def record_webhook_attempt(self, outcome: str) -> None:
        self.outbound_webhooks.labels(outcome).inc()

    def observe_delivery(self, event: Event, now: datetime) -> None:
        """``now`` is the app's clock, the one that stamped the event."""
        committed = event.created_at
        if committed.tzinfo is None:  # SQLite hands back naive UTC
            committed = committed.replace(tzinfo=UTC)
        self.event_delivery_lag.observe(max((now - committed).total_seconds(), 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    """The database pool as it is at scrape time: connections in use, idle, overflow."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        pool = self._engine.sync_engine.pool
        in_use = GaugeMetricFamily("deskbill_db_pool_in_use", "Connections checked out.")
        idle = GaugeMetricFamily("deskbill_db_pool_idle", "Connections idle in the pool.")
        size = GaugeMetricFamily("deskbill_db_pool_size", "Connections the pool keeps open.")
        overflow = GaugeMetricFamily(
            "deskbill_db_pool_overflow", "Connections open beyond the pool size (negative: "
            "room left before the pool size is reached)."
        )  # fmt: skip
        for family, reading in (
            (in_use, "checkedout"), (idle, "checkedin"), (size, "size"), (overflow, "overflow"),
        ):  # fmt: skip
            value = getattr(pool, reading, None)
            if callable(value):
                family.add_metric([], float(value()))
                yield family


class HttpMetrics:
    """ASGI middleware: every HTTP request counted and timed by route and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await metered(self.metrics, scope, receive, send, self.app)


async def metered(
    metrics: Metrics, scope: Scope, receive: Receive, send: Send, app: ASGIApp
) -> None:
    """Run ``app`` on an HTTP request, counting and timing it by route and status (the
    known-read lane in front of the application meters its requests with this too)."""
    route = route_of(scope.get("path", ""))
    status = 500  # what the client sees if the app raises before answering
    started = time.perf_counter()

    async def send_and_note(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await app(scope, receive, send_and_note)
    finally:
        metrics.count_http(route, scope.get("method", ""), status, time.perf_counter() - started)


class OperationMetrics(SchemaExtension):
    """Each GraphQL operation counted by name, type and outcome code, and timed."""

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        ctx = self.execution_context
        metrics = metrics_of(ctx.context)
        if metrics is None:
            return
        kind = "unknown"
        try:
            kind = ctx.operation_type.value
        except Exception:  # no operation could be read from the document
            kind = "unknown"
        errors = list(getattr(ctx.result, "errors", None) or ()) or list(
            ctx.pre_execution_errors or ()
        )
        code = "OK"
        if errors:
            code = str((errors[0].extensions or {}).get("code") or "INTERNAL_ERROR")
        count_operation(metrics, ctx.operation_name, kind, code, started)


def count_operation(
    metrics: Metrics, operation_name: str | None, kind: str, code: str, started: float
) -> None:
    """One operation answered: by name, type and outcome, and its time since ``started``
    (a ``time.perf_counter()``)."""
    metrics.operations.labels(metrics.operation_label(operation_name), kind, code).inc()
    metrics.operation_latency.labels(kind).observe(time.perf_counter() - started)


def metrics_of(context: Any) -> Metrics | None:
    services = getattr(context, "services", None) or {}
    found = services.get("metrics")
    return found if isinstance(found, Metrics) else None


class MeteredGateway:
    """The payment gateway with every Stripe request counted and timed; everything
    else passes through untouched."""

    def __init__(self, inner: PaymentGateway, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in GATEWAY_CALLS:
            return attribute
        call = cast(Callable[..., Awaitable[Any]], attribute)
        metrics = self._metrics

        async def metered(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcome = "ok"
            try:
                return await call(*args, **kwargs)
            except BaseException as failure:
                outcome = type(failure).__name__
                raise
            finally:
                metrics.gateway_latency.labels(name).observe(time.perf_counter() - started)
                metrics.gateway_calls.labels(name, outcome).inc()

        return metered


def metered_gateway(inner: PaymentGateway, metrics: Metrics) -> PaymentGateway:
    # Structurally a PaymentGateway: every attribute is the inner gateway's.
    return cast(PaymentGateway, MeteredGateway(inner, metrics))


def metrics_endpoint(state: AppState) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        found = metrics_of(state)
        hub = state.services.get("hub")
        if found is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        if hub is not None:
            found.open_subscriptions.set(hub.open_subscriptions())
        return Response(found.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics
