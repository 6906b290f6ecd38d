"""Outbound webhooks (rules §16): endpoints an admin registers, the deliveries the event
log turns into, and what each attempt at one did.

How an event reaches a receiver, at least once:

* **Fan-out.** Each endpoint keeps a cursor into the log. ``fan_out`` turns the
  organization's events after it (and at most up to the *settled* horizon the caller
  passes: ids below it have committed or never will, so a late commit is not jumped
  over) into one delivery row per matching event, and moves the cursor, in one
  transaction per endpoint with the endpoint row locked. ``UNIQUE(endpoint, event)``
  is the last line against a double delivery row.
* **Claim.** ``claim_due`` picks pending deliveries whose next attempt is due (SKIP
  LOCKED, so several workers share the work) and pushes their next attempt a lease
  ahead, so a worker that dies mid-request leaves them to be retried, not lost.
* **Attempt.** The caller POSTs outside any transaction and ``record_attempt`` writes
  the attempt row and the delivery's next state: delivered, or retried after an
  exponential backoff (``retry_delay``) until ``RETRY_WINDOW`` has passed since the
  delivery was made (or resent). An endpoint whose attempts have failed without a
  success for ``DISABLE_AFTER`` is disabled, with an event.

Attempts are not events: an event per attempt would itself be delivered, and a
failing endpoint would feed the log with its own failures. The attempt rows are
their record, listed with each delivery.

Requests go only to public addresses: every address a host resolves to is checked
(``refused_address``) when the endpoint is saved and before every attempt, unless
the operator allows some private networks (``DESKBILL_WEBHOOKS_ALLOW_PRIVATE``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import (
    Event,
    Organization,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEndpointStatus,
)
from services import events
from services.errors import ConflictError, InvalidStateError, NotFoundError, ValidationError
from services.events import EventType, known_event_types

MAX_ENDPOINTS_PER_ORGANIZATION = 20
MAX_URL_CHARS = 2048
MAX_DESCRIPTION_CHARS = 500
MAX_EVENT_TYPES = 100
EVERY_TYPE = "*"
SECRET_PREFIX = "whsec_"
# After a rotation the old secret signs too for this long, so receivers can switch.
PREVIOUS_SECRET_VALID = timedelta(hours=24)
# A delivery is retried for three days (Stripe's window), longer than the day promised.
RETRY_WINDOW = timedelta(days=3)
# An endpoint whose attempts all failed for this long is disabled.
DISABLE_AFTER = timedelta(days=3)
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=6)
# Events one endpoint's fan-out reads per pass; the rest waits for the next pass.
FAN_OUT_BATCH = 500
# Deliveries of one endpoint taken in one claim, so one busy endpoint cannot fill
# every slot of a round while the others wait.
CLAIM_PER_ENDPOINT = 10
MAX_ERROR_CHARS = 500
# A resolver that does not answer within this long refuses the host for now.
RESOLVE_SECONDS = 5.0


# -- addresses ----------------------------------------------------------------------


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public networks deliveries may still reach (none by default)."""

    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_every_private: bool = False

    @classmethod
    def parse(cls, value: str) -> AddressPolicy:
        """``""`` (none), ``true`` (every private address) or a comma list of networks
        (``127.0.0.0/8,::1/128``)."""
        text = value.strip().lower()
        if text in ("", "false", "no", "off", "0"):
            return cls()
        if text in ("true", "yes", "on", "1", "all"):
            return cls(allow_every_private=True)
        networks = []
        for part in text.split(","):
            if part.strip():
                try:
                    networks.append(ipaddress.ip_network(part.strip(), strict=False))
                except ValueError as exc:
                    raise ValueError(
                        f"DESKBILL_WEBHOOKS_ALLOW_PRIVATE: “{part.strip()}” is not a network "
                        "such as 127.0.0.0/8; use true, false or a comma list of networks."
                    ) from exc
        return cls(allowed=tuple(networks))


def refused_address(address: str, policy: AddressPolicy) -> str | None:
    """Why a request may not go to ``address`` (an IP), or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return None
    if policy.allow_every_private and not (ip.is_multicast or ip.is_unspecified):
        return None
    if any(ip in network for network in policy.allowed):
        return None
    kind = (
        "loopback"
        if ip.is_loopback
        else "link-local"
        if ip.is_link_local
        else "multicast"
        if ip.is_multicast
        else "private or reserved"
    )
    return f"{address} is a {kind} address, to which webhooks are not sent"


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    lookup = asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.wait_for(lookup, RESOLVE_SECONDS)
    except TimeoutError as exc:
        raise OSError(f"no answer from the resolver within {RESOLVE_SECONDS:g} s") from exc
    return sorted({str(info[4][0]) for info in infos})


async def public_addresses(host: str, port: int, policy: AddressPolicy) -> list[str]:
    """The addresses of ``host`` when every one of them may be reached; otherwise
    ``ValidationError`` saying which may not (one bad address refuses the host, since
    a client may connect to any of them)."""
    try:
        addresses = await resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise ValidationError(f"The host {host} could not be resolved ({exc}).") from exc
    for address in addresses:
        reason = refused_address(address, policy)
        if reason is not None:
            raise ValidationError(f"The webhook URL's host {host} resolves to {reason}.")
    return addresses


# -- what an endpoint may be --------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked URL: scheme, host and port to connect to."""

    url: str
    scheme: str
    host: str
    port: int


def parse_url(value: str) -> Target:
    """``value`` as a webhook URL, or VALIDATION saying what is wrong with it."""
    url = value.strip()
    if not url:
        raise ValidationError("A webhook endpoint needs a URL, e.g. https://example.com/hooks.")
    if len(url) > MAX_URL_CHARS:
        raise ValidationError(f"A webhook URL is at most {MAX_URL_CHARS} characters.", field="url")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValidationError("A webhook URL contains no spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"“{url[:80]}” is not a URL ({exc}).", field="url") from exc
    if parts.scheme not in ("https", "http"):
        raise ValidationError("A webhook URL starts with https:// (or http://).", field="url")
    if not parts.hostname:
        raise ValidationError("A webhook URL names a host.", field="url")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(
            "A webhook URL carries no user name or password: receivers check the "
            "Deskbill-Signature header instead.",
            field="url",
        )
    if parts.fragment:
        raise ValidationError("A webhook URL has no #fragment.", field="url")
    default = 443 if parts.scheme == "https" else 80
    return Target(url=url, scheme=parts.scheme, host=parts.hostname, port=port or default)


def parse_event_types(values: Sequence[str]) -> list[str]:
    """The distinct event types asked for, in order; ``*`` means every type."""
    if not values:
        raise ValidationError(
            "List the event types to send (e.g. invoice.finalized), or “*” for every type.",
            field="eventTypes",
        )
    if len(values) > MAX_EVENT_TYPES:
        raise ValidationError(f"List at most {MAX_EVENT_TYPES} event types.", field="eventTypes")
    known = known_event_types()
    chosen: list[str] = []
    for value in values:
        name = value.strip()
        if name != EVERY_TYPE and name not in known:
            raise ValidationError(
                f"“{name[:64]}” is not an event type; known types are "
                f"{', '.join(sorted(known))}, or “*” for every type.",
                field="eventTypes",
            )
        if name not in chosen:
            chosen.append(name)
    return [EVERY_TYPE] if EVERY_TYPE in chosen else chosen


def _description(value: str | None) -> str:
    text = (value or "").strip()
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise ValidationError(
            f"A description is at most {MAX_DESCRIPTION_CHARS} characters.", field="description"
        )
    return text


def wants(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return EVERY_TYPE in endpoint.event_types or event_type in endpoint.event_types


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# -- signing ------------------------------------------------------------------------


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The current secret, then the previous one while it is still valid."""
    found = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and now < expires:
        found.append(endpoint.previous_secret)
    return found


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``, in hex."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(signing: Iterable[str], timestamp: int, body: bytes) -> str:
    """``t=<unix>,v1=<hex>[,v1=<hex>]``: one v1 per valid secret, newest first."""
    return ",".join([f"t={timestamp}", *(f"v1={sign(s, timestamp, body)}" for s in signing)])


def retry_delay(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed attempt a delivery is tried again:
    1 minute, doubling, at most 6 hours (1m, 2m, 4m … 4h16m, then every 6h)."""
    seconds = FIRST_RETRY.total_seconds() * 2 ** min(max(attempts, 1) - 1, 30)
    return min(timedelta(seconds=seconds), LONGEST_RETRY)


# -- endpoints ----------------------------------------------------------------------


def _snapshot(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What an event says of an endpoint: never its secret."""
    return {
        "webhook_endpoint_id": endpoint.id,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "status": endpoint.status,
    }


async def create_endpoint(
    session: AsyncSession,
    org: Organization,
    *,
    url: str,
    event_types: Sequence[str],
    description: str | None,
    policy: AddressPolicy,
    now: datetime,
    actor_user_id: int | None = None,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (shown to the admin once). It receives
    the events logged after it was made."""
    target = parse_url(url)
    types = parse_event_types(event_types)
    text = _description(description)
    await public_addresses(target.host, target.port, policy)
    # The organization row is the lock that makes count-then-insert safe.
    await session.execute(
        select(Organization.id).where(Organization.id == org.id).with_for_update()
    )
    count = await session.scalar(
        select(func.count()).where(WebhookEndpoint.organization_id == org.id)
    )
    if int(count or 0) >= MAX_ENDPOINTS_PER_ORGANIZATION:
        raise ConflictError(
            f"An organization has at most {MAX_ENDPOINTS_PER_ORGANIZATION} webhook endpoints; "
            "delete one it no longer needs."
        )
    head = await session.scalar(select(func.coalesce(func.max(Event.id), 0)))
    secret = new_secret()
    endpoint = WebhookEndpoint(
        organization_id=org.id,
        url=target.url,
        description=text,
        event_types=types,
        secret=secret,
        status=WebhookEndpointStatus.ENABLED,
        event_cursor=int(head or 0),
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.WEBHOOK_ENDPOINT_CREATED,
        at=now,
        actor_user_id=actor_user_id,
        **_snapshot(endpoint),
    )
    return endpoint, secret


async def find_endpoint(
    session: AsyncSession, organization_id: int, endpoint_id: int, *, lock: bool = True
) -> WebhookEndpoint:
    stmt = select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id, WebhookEndpoint.organization_id == organization_id
    )
    endpoint = await session.scalar(stmt.with_for_update() if lock else stmt)
    if endpoint is None:
        raise NotFoundError("This organization has no webhook endpoint with that id.")
    return endpoint


async def list_endpoints(session: AsyncSession, organization_id: int) -> list[WebhookEndpoint]:
    return list(
        await session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.organization_id == organization_id)
            .order_by(WebhookEndpoint.id)
        )
    )


async def update_endpoint(
    session: AsyncSession,
    org: Organization,
    endpoint_id: int,
    *,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    policy: AddressPolicy,
    now: datetime,
    actor_user_id: int | None = None,
) -> WebhookEndpoint:
    """Change what was given; enabling a disabled endpoint resumes its deliveries from
    where they stopped (nothing logged meanwhile is skipped)."""
    endpoint = await find_endpoint(session, org.id, endpoint_id)
    changed: list[str] = []
    if url is not None:
        target = parse_url(url)
        await public_addresses(target.host, target.port, policy)
        if target.url != endpoint.url:
            endpoint.url, changed = target.url, [*changed, "url"]
    if event_types is not None:
        types = parse_event_types(event_types)
        if types != list(endpoint.event_types):
            endpoint.event_types, changed = types, [*changed, "event_types"]
    if description is not None:
        text = _description(description)
        if text != endpoint.description:
            endpoint.description, changed = text, [*changed, "description"]
    if enabled is not None:
        status = WebhookEndpointStatus.ENABLED if enabled else WebhookEndpointStatus.DISABLED
        if status != endpoint.status:
            endpoint.status, changed = status, [*changed, "status"]
            endpoint.disabled_reason = None if enabled else "Disabled by an admin."
            endpoint.failing_since = None
    if changed:
        endpoint.updated_at = now
        events.record(
            session,
            organization_id=org.id,
            type=EventType.WEBHOOK_ENDPOINT_UPDATED,
            at=now,
            actor_user_id=actor_user_id,
            changed=changed,
            **_snapshot(endpoint),
        )
        await session.flush()
    return endpoint


async def delete_endpoint(
    session: AsyncSession,
    org: Organization,
    endpoint_id: int,
    *,
    now: datetime,
    actor_user_id: int | None = None,
) -> None:
    """Remove the endpoint with its deliveries and attempts; nothing more is sent."""
    endpoint = await find_endpoint(session, org.id, endpoint_id)
    events.record(
        session,
        organization_id=org.id,
        type=EventType.WEBHOOK_ENDPOINT_DELETED,
        at=now,
        actor_user_id=actor_user_id,
        **_snapshot(endpoint),
    )
    # Explicit rather than trusting ON DELETE CASCADE, which SQLite honours only
    # on connections that turned foreign keys on.
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
    for stmt in (
        delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)),
        delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id),
    ):
        await session.execute(stmt.execution_options(synchronize_session=False))
    await session.delete(endpoint)
    await session.flush()


async def rotate_secret(
    session: AsyncSession,
    org: Organization,
    endpoint_id: int,
    *,
    now: datetime,
    expire_previous_now: bool = False,
    actor_user_id: int | None = None,
) -> tuple[WebhookEndpoint, str]:
    """A new signing secret (shown once). The one it replaces keeps signing for 24
    hours — each request then carries two v1 signatures — unless the admin says it
    leaked (``expire_previous_now``)."""
    endpoint = await find_endpoint(session, org.id, endpoint_id)
    secret = new_secret()
    endpoint.previous_secret = None if expire_previous_now else endpoint.secret
    endpoint.previous_secret_expires_at = (
        None if expire_previous_now else now + PREVIOUS_SECRET_VALID
    )
    endpoint.secret = secret
    endpoint.updated_at = now
    events.record(
        session,
        organization_id=org.id,
        type=EventType.WEBHOOK_ENDPOINT_SECRET_ROTATED,
        at=now,
        actor_user_id=actor_user_id,
        previous_valid_until=(
            None
            if endpoint.previous_secret_expires_at is None
            else endpoint.previous_secret_expires_at.isoformat()
        ),
        **_snapshot(endpoint),
    )
    await session.flush()
    return endpoint, secret


async def resend_delivery(
    session: AsyncSession,
    org: Organization,
    delivery_id: int,
    *,
    now: datetime,
    actor_user_id: int | None = None,
) -> WebhookDelivery:
    """Try a delivery again now, with a fresh retry window, whatever its status."""
    delivery = await session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.organization_id == org.id)
        .with_for_update()
    )
    if delivery is None:
        raise NotFoundError("This organization has no webhook delivery with that id.")
    endpoint = await find_endpoint(session, org.id, delivery.endpoint_id, lock=False)
    if endpoint.status != WebhookEndpointStatus.ENABLED:
        raise InvalidStateError(
            "This delivery's endpoint is disabled; enable it (updateWebhookEndpoint with "
            "enabled: true) and then resend."
        )
    delivery.status = WebhookDeliveryStatus.PENDING
    delivery.next_attempt_at = now
    delivery.retrying_since = now
    events.record(
        session,
        organization_id=org.id,
        type=EventType.WEBHOOK_DELIVERY_RESENT,
        at=now,
        actor_user_id=actor_user_id,
        webhook_endpoint_id=endpoint.id,
        webhook_delivery_id=delivery.id,
        event_id=delivery.event_id,
    )
    await session.flush()
    return delivery


async def attempts_of(
    session: AsyncSession, organization_id: int, delivery_ids: Sequence[int]
) -> dict[int, list[WebhookAttempt]]:
    """The attempts of each delivery, oldest first, in one statement."""
    found: dict[int, list[WebhookAttempt]] = {pk: [] for pk in delivery_ids}
    if not delivery_ids:
        return found
    rows = await session.scalars(
        select(WebhookAttempt)
        .where(
            WebhookAttempt.organization_id == organization_id,
            WebhookAttempt.delivery_id.in_(list(delivery_ids)),
        )
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.id)
    )
    for row in rows:
        found[row.delivery_id].append(row)
    return found


# -- the worker's side --------------------------------------------------------------


async def fan_out(
    sessionmaker: async_sessionmaker[AsyncSession], horizon: int, now: datetime
) -> int:
    """Turn settled events (ids up to ``horizon``) into deliveries for every enabled
    endpoint; returns how many deliveries were made."""
    async with sessionmaker() as session:
        behind = list(
            await session.scalars(
                select(WebhookEndpoint.id)
                .where(
                    WebhookEndpoint.status == WebhookEndpointStatus.ENABLED,
                    WebhookEndpoint.event_cursor < horizon,
                )
                .order_by(WebhookEndpoint.id)
            )
        )
    made = 0
    for endpoint_id in behind:
        async with sessionmaker.begin() as session:
            endpoint = await session.scalar(
                select(WebhookEndpoint)
                .where(
                    WebhookEndpoint.id == endpoint_id,
                    WebhookEndpoint.status == WebhookEndpointStatus.ENABLED,
                )
                .with_for_update(skip_locked=True)
            )
            if endpoint is None or endpoint.event_cursor >= horizon:
                continue  # another worker has it, or it changed meanwhile
            stmt = (
                select(Event.id, Event.type)
                .where(
                    Event.organization_id == endpoint.organization_id,
                    Event.id > endpoint.event_cursor,
                    Event.id <= horizon,
                )
                .order_by(Event.id)
                .limit(FAN_OUT_BATCH)
            )
            if EVERY_TYPE not in endpoint.event_types:
                stmt = stmt.where(Event.type.in_(list(endpoint.event_types)))
            rows = (await session.execute(stmt)).all()
            if rows:
                # One executemany for the batch, whatever its size.
                await session.execute(
                    insert(WebhookDelivery),
                    [
                        {
                            "organization_id": endpoint.organization_id,
                            "endpoint_id": endpoint.id,
                            "event_id": event_id,
                            "event_type": event_type,
                            "status": WebhookDeliveryStatus.PENDING,
                            "attempt_count": 0,
                            "next_attempt_at": now,
                            "retrying_since": now,
                            "created_at": now,
                        }
                        for event_id, event_type in rows
                    ],
                )
            # A full batch stops at its last row; a short one has read all there is.
            endpoint.event_cursor = rows[-1][0] if len(rows) == FAN_OUT_BATCH else horizon
            made += len(rows)
    return made


@dataclass(frozen=True)
class DeliveryJob:
    """Everything one attempt needs, read in the claim so the POST holds no connection."""

    delivery_id: int
    organization_id: int
    endpoint_id: int
    url: str
    signing_secrets: list[str]
    attempt: int
    event: Event = field(repr=False)


async def claim_due(
    sessionmaker: async_sessionmaker[AsyncSession],
    now: datetime,
    *,
    limit: int,
    lease: timedelta,
) -> list[DeliveryJob]:
    """Up to ``limit`` due deliveries of enabled endpoints, oldest due first, each held
    for ``lease`` (its next attempt moves that far ahead until the attempt is recorded)."""
    due = (
        WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
        WebhookDelivery.next_attempt_at <= now,
    )
    async with sessionmaker.begin() as session:
        # Candidates first, unlocked: locking them all would hide from other workers
        # the ones this claim leaves for lack of room.
        candidates = (
            await session.execute(
                select(WebhookDelivery.id, WebhookDelivery.endpoint_id)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(*due, WebhookEndpoint.status == WebhookEndpointStatus.ENABLED)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(limit * 4)
            )
        ).all()
        per_endpoint: dict[int, int] = {}
        picked: list[int] = []
        for delivery_id, endpoint_id in candidates:
            taken = per_endpoint.get(endpoint_id, 0)
            if taken < CLAIM_PER_ENDPOINT and len(picked) < limit:
                per_endpoint[endpoint_id] = taken + 1
                picked.append(delivery_id)
        if not picked:
            return []
        # Then lock the picked ones still due; another worker's are skipped.
        chosen = list(
            await session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.id.in_(picked), *due)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .with_for_update(skip_locked=True)
            )
        )
        if not chosen:
            return []
        endpoints = {
            e.id: e
            for e in await session.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.id.in_(set(per_endpoint)))
            )
        }
        logged = {
            e.id: e
            for e in await session.scalars(
                select(Event).where(Event.id.in_([d.event_id for d in chosen]))
            )
        }
        jobs = []
        for delivery in chosen:
            delivery.next_attempt_at = now + lease
            endpoint = endpoints[delivery.endpoint_id]
            jobs.append(
                DeliveryJob(
                    delivery_id=delivery.id,
                    organization_id=delivery.organization_id,
                    endpoint_id=endpoint.id,
                    url=endpoint.url,
                    signing_secrets=signing_secrets(endpoint, now),
                    attempt=delivery.attempt_count + 1,
                    event=logged[delivery.event_id],
                )
            )
        return jobs


@dataclass(frozen=True)
class AttemptResult:
    succeeded: bool
    response_status: int | None
    error: str | None
    duration_ms: int


async def record_attempt(
    sessionmaker: async_sessionmaker[AsyncSession],
    job: DeliveryJob,
    result: AttemptResult,
    now: datetime,
) -> tuple[str, Event | None]:
    """Write the attempt and the delivery's next state. Returns the outcome
    (``succeeded``, ``retrying``, ``gave_up``, or ``gone`` when the endpoint was
    deleted meanwhile) and the event of the endpoint's disabling, when this attempt
    was the one after ``DISABLE_AFTER`` of failures (the caller announces it)."""
    async with sessionmaker.begin() as session:
        delivery = await session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.id == job.delivery_id).with_for_update()
        )
        if delivery is None:
            return "gone", None
        session.add(
            WebhookAttempt(
                organization_id=delivery.organization_id,
                delivery_id=delivery.id,
                attempted_at=now,
                succeeded=result.succeeded,
                response_status=result.response_status,
                error=None if result.error is None else result.error[:MAX_ERROR_CHARS],
                duration_ms=result.duration_ms,
            )
        )
        delivery.attempt_count += 1
        delivery.last_attempt_at = now
        if result.succeeded:
            delivery.status = WebhookDeliveryStatus.SUCCEEDED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            await session.execute(
                update(WebhookEndpoint)
                .where(
                    WebhookEndpoint.id == delivery.endpoint_id,
                    WebhookEndpoint.failing_since.is_not(None),
                )
                .values(failing_since=None)
            )
            return "succeeded", None
        outcome = "retrying"
        if now - delivery.retrying_since >= RETRY_WINDOW:
            delivery.status = WebhookDeliveryStatus.FAILED
            delivery.next_attempt_at = None
            outcome = "gave_up"
        elif delivery.status == WebhookDeliveryStatus.PENDING:
            delivery.next_attempt_at = now + retry_delay(delivery.attempt_count)
        disabled: Event | None = None
        endpoint = await session.scalar(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.id == delivery.endpoint_id)
            .with_for_update()
        )
        if endpoint is not None:
            endpoint.failing_since = endpoint.failing_since or now
            failing_for = now - endpoint.failing_since
            if failing_for >= DISABLE_AFTER and endpoint.status == WebhookEndpointStatus.ENABLED:
                endpoint.status = WebhookEndpointStatus.DISABLED
                days = failing_for.days
                endpoint.disabled_reason = (
                    f"Every attempt failed for {days} days (the last: "
                    f"{(result.error or 'no answer')[:200]}); fix the receiver, then enable "
                    "the endpoint again."
                )
                endpoint.updated_at = now
                disabled = events.record(
                    session,
                    organization_id=endpoint.organization_id,
                    type=EventType.WEBHOOK_ENDPOINT_DISABLED,
                    at=now,
                    reason=endpoint.disabled_reason,
                    **_snapshot(endpoint),
                )
                await session.flush()
        return outcome, disabled
