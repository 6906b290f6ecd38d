"""The outbound webhook sender: the worker's second loop, beside the billing clock.

Each round it turns newly settled events into deliveries, claims the due ones and
POSTs them, at most ``concurrency`` at a time, each within ``timeout`` seconds, on
a task of its own — so a slow or dead receiver delays nothing but its own deliveries,
and never a billing run. The database logic (fan-out, claims, backoff, disabling)
is ``services.outbound_webhooks``; this module owns the network.

A request goes to an address checked just before it is sent: the host is resolved,
every address must be public (or allowed by ``DESKBILL_WEBHOOKS_ALLOW_PRIVATE``), and
the connection is made to the checked address itself — the URL's host still names
the server (``Host`` header, TLS server name and certificate check) — so a DNS answer
that changes between the check and the connection cannot point a request inwards.
Redirects are not followed: a 3xx is a failed attempt like any other non-2xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Event
from resolvers.mapping import event_cursor
from schema.ids import encode
from services import outbound_webhooks as hooks
from services.clock import Clock
from services.errors import ValidationError

log = logging.getLogger("deskbill.webhooks")

USER_AGENT = "Deskbill-Webhooks/1"
# Past the request timeout, so a lease never ends while its attempt is still running.
LEASE_MARGIN = timedelta(seconds=30)
# Rounds in a row that take a full batch before the loop yields to its interval.
MAX_BUSY_ROUNDS = 20

Horizon = Callable[[], Awaitable[int]]
Announce = Callable[[int, int], Awaitable[None]]


def _gid(type_name: str, pk: int | None) -> str | None:
    return None if pk is None else encode(type_name, pk)


def event_body(event: Event) -> bytes:
    """The JSON a receiver gets: the event as the graph's ``events`` query shows it,
    with the cursor to resume that query from."""
    return json.dumps(
        {
            "id": encode("Event", event.id),
            "cursor": event_cursor(event.id),
            "sequence": event.id,
            "type": event.type,
            "createdAt": event.created_at.isoformat(),
            "accountId": _gid("Account", event.account_id),
            "invoiceId": _gid("Invoice", event.invoice_id),
            "paymentId": _gid("Payment", event.payment_id),
            "creditNoteId": _gid("Invoice", event.credit_note_id),
            "refundId": _gid("Refund", event.refund_id),
            "actorId": _gid("User", event.actor_user_id),
            "payload": event.payload,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def _netloc(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass
class RoundResult:
    fanned_out: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def attempted(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class WebhookSender:
    sessionmaker: async_sessionmaker[AsyncSession]
    clock: Clock
    horizon: Horizon
    announce: Announce
    policy: hooks.AddressPolicy = field(default_factory=hooks.AddressPolicy)
    timeout: float = 10.0
    concurrency: int = 8
    # Told of each attempt's outcome (``app.metrics``).
    observe: Callable[[str], None] | None = None
    _client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                limits=httpx.Limits(max_connections=self.concurrency),
                trust_env=False,  # a proxy from the environment would bypass the address check
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run_once(self) -> RoundResult:
        """One round: fan out what settled, then attempt what is due."""
        now = self.clock.now()
        result = RoundResult(
            fanned_out=await hooks.fan_out(self.sessionmaker, await self.horizon(), now)
        )
        jobs = await hooks.claim_due(
            self.sessionmaker,
            now,
            limit=self.concurrency,
            lease=timedelta(seconds=self.timeout) + LEASE_MARGIN,
        )
        for outcome in await asyncio.gather(*(self._deliver(job) for job in jobs)):
            result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
        return result

    async def run_until_idle(self, max_rounds: int = 100) -> RoundResult:
        """Rounds until one attempts nothing (tests, and the loop after a backlog)."""
        total = RoundResult()
        for _ in range(max_rounds):
            one = await self.run_once()
            total.fanned_out += one.fanned_out
            for outcome, count in one.outcomes.items():
                total.outcomes[outcome] = total.outcomes.get(outcome, 0) + count
            if one.attempted == 0 and one.fanned_out == 0:
                break
        return total

    async def _deliver(self, job: hooks.DeliveryJob) -> str:
        attempt = await self._attempt(job)
        outcome, disabled = await hooks.record_attempt(
            self.sessionmaker, job, attempt, self.clock.now()
        )
        if disabled is not None:
            log.warning("webhook endpoint %s disabled: %s", job.endpoint_id, attempt.error)
            await self.announce(disabled.organization_id, disabled.id)
        if self.observe is not None:
            self.observe(outcome)
        return outcome

    async def _attempt(self, job: hooks.DeliveryJob) -> hooks.AttemptResult:
        started = time.perf_counter()

        def failed(error: str, status: int | None = None) -> hooks.AttemptResult:
            elapsed = int((time.perf_counter() - started) * 1000)
            return hooks.AttemptResult(False, status, error, elapsed)

        try:
            target = hooks.parse_url(job.url)
            addresses = await hooks.public_addresses(target.host, target.port, self.policy)
        except ValidationError as refused:
            return failed(refused.message)
        body = event_body(job.event)
        timestamp = int(self.clock.now().timestamp())
        default_port = 443 if target.scheme == "https" else 80
        named = f"[{target.host}]" if ":" in target.host else target.host
        host_header = named if target.port == default_port else f"{named}:{target.port}"
        connect_to = httpx.URL(job.url).copy_with(
            netloc=_netloc(addresses[0], target.port).encode()
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Host": host_header,
            "Deskbill-Signature": hooks.signature_header(job.signing_secrets, timestamp, body),
            "Deskbill-Event-Type": job.event.type,
            "Deskbill-Delivery": encode("WebhookDelivery", job.delivery_id),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with self.client.stream(
                "POST", connect_to, content=body, headers=headers, extensions=extensions
            ) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return failed(f"No answer within {self.timeout:g} s.")
        except httpx.HTTPError as exc:
            return failed(f"Could not reach {target.host}: {exc.__class__.__name__} {exc}".strip())
        elapsed = int((time.perf_counter() - started) * 1000)
        if 200 <= status < 300:
            return hooks.AttemptResult(True, status, None, elapsed)
        return hooks.AttemptResult(False, status, f"The receiver answered HTTP {status}.", elapsed)


async def sender_loop(sender: WebhookSender, interval: float) -> None:
    """Deliver webhooks until cancelled; a failed round is logged, not fatal. A round
    that took a full batch is followed at once by another, a few times at most."""
    busy = 0
    while True:
        try:
            result = await sender.run_once()
            if result.attempted or result.fanned_out:
                log.info(
                    "webhooks: %d deliveries made, %s",
                    result.fanned_out,
                    result.outcomes or "none tried",
                )
            full = result.attempted >= sender.concurrency
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook round failed; retrying in %.1fs", interval)
            full = False
        busy = busy + 1 if full else 0
        if not full or busy >= MAX_BUSY_ROUNDS:
            busy = 0
            await asyncio.sleep(interval)
