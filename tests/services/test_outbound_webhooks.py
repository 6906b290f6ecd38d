"""The rules of outbound webhooks that need no receiver: which addresses are refused,
what a URL and a list of event types may be, the signature, the backoff schedule —
and, against both databases, that fan-out keeps organizations apart, that two
workers never attempt one delivery at once, and how many SQL statements a delivered
event costs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from models import Organization, WebhookAttempt, WebhookDelivery
from services import events, policy
from services import outbound_webhooks as hooks
from services.errors import ConflictError, ValidationError
from services.events import EventType

NOW = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)
LOOPBACK = hooks.AddressPolicy.parse("127.0.0.0/8,::1/128")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "::1",
        "fe80::1%eth0",
        "fd12:3456::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    reason = hooks.refused_address(address, hooks.AddressPolicy())
    assert reason is not None and address in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "1.1.1.1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert hooks.refused_address(address, hooks.AddressPolicy()) is None


def test_allowing_loopback_allows_only_loopback() -> None:
    assert hooks.refused_address("127.0.0.1", LOOPBACK) is None
    assert hooks.refused_address("::1", LOOPBACK) is None
    assert hooks.refused_address("::ffff:127.0.0.1", LOOPBACK) is None
    assert hooks.refused_address("10.0.0.1", LOOPBACK) is not None
    assert hooks.refused_address("169.254.169.254", LOOPBACK) is not None
    every = hooks.AddressPolicy.parse("true")
    assert hooks.refused_address("10.0.0.1", every) is None
    assert hooks.refused_address("224.0.0.1", every) is not None  # never multicast
    assert hooks.AddressPolicy.parse("") == hooks.AddressPolicy()
    with pytest.raises(ValueError, match="not a network"):
        hooks.AddressPolicy.parse("localhost")


async def test_a_host_is_refused_if_any_of_its_addresses_is() -> None:
    assert await hooks.public_addresses("127.0.0.1", 80, LOOPBACK) == ["127.0.0.1"]
    with pytest.raises(ValidationError, match="loopback"):
        await hooks.public_addresses("localhost", 80, hooks.AddressPolicy())
    with pytest.raises(ValidationError, match="could not be resolved"):
        await hooks.public_addresses("no-such-host.invalid", 80, hooks.AddressPolicy())


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "needs a URL"),
        ("example.com/hooks", "https://"),
        ("ftp://example.com/", "https://"),
        ("javascript:alert(1)", "https://"),
        ("https://", "names a host"),
        ("https://a:b@example.com/", "password"),
        ("https://example.com/#x", "fragment"),
        ("https://example.com:99999/", "not a URL"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com/" + "a" * 2048, "at most 2048"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        hooks.parse_url(url)


def test_a_good_url_names_its_host_and_port() -> None:
    assert hooks.parse_url(" https://hooks.example.com/in ").port == 443
    target = hooks.parse_url("http://[::1]:8080/x")
    assert (target.scheme, target.host, target.port) == ("http", "::1", 8080)


def test_event_types_are_known_ones_or_every_type() -> None:
    assert hooks.parse_event_types(["invoice.paid", "invoice.paid", "payment.created"]) == [
        "invoice.paid",
        "payment.created",
    ]
    assert hooks.parse_event_types(["invoice.paid", "*"]) == ["*"]
    with pytest.raises(ValidationError, match="not an event type"):
        hooks.parse_event_types(["invoice.paid", "invoice.exploded"])
    with pytest.raises(ValidationError, match="List the event types"):
        hooks.parse_event_types([])
    assert EventType.WEBHOOK_ENDPOINT_DISABLED in events.known_event_types()


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_once_per_secret() -> None:
    body = b'{"type":"invoice.paid"}'
    header = hooks.signature_header(["whsec_new", "whsec_old"], 1_786_000_000, body)
    parts = header.split(",")
    assert parts[0] == "t=1786000000"
    for part, secret in zip(parts[1:], ("whsec_new", "whsec_old"), strict=True):
        expected = hmac.new(secret.encode(), b"1786000000." + body, hashlib.sha256).hexdigest()
        assert part == f"v1={expected}"


def test_retries_back_off_from_a_minute_doubling_to_six_hours_and_cover_a_day() -> None:
    delays = [hooks.retry_delay(n) for n in range(1, 16)]
    assert delays[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert delays[9:] == [timedelta(hours=6)] * 6
    assert delays == sorted(delays)
    # Attempts until the window closes: the deliveries are retried for days, not minutes.
    elapsed, attempts = timedelta(0), 0
    while elapsed < hooks.RETRY_WINDOW:
        attempts += 1
        elapsed += hooks.retry_delay(attempts)
    assert hooks.RETRY_WINDOW >= timedelta(hours=24) and 15 <= attempts <= 25


# ----------------------------------------------------------------------------- with a database


async def _org(db: async_sessionmaker[AsyncSession], slug: str) -> Organization:
    async with db.begin() as session:
        return await policy.create_organization(session, slug.title(), slug, "USD", NOW)


async def _endpoint(
    db: async_sessionmaker[AsyncSession], org: Organization, types: list[str]
) -> int:
    async with db.begin() as session:
        endpoint, _ = await hooks.create_endpoint(
            session, org, url="http://127.0.0.1:9/hooks", event_types=types, description="",
            policy=LOOPBACK, now=NOW,
        )  # fmt: skip
        return endpoint.id


async def _log(db: async_sessionmaker[AsyncSession], org: Organization, n: int, type: str) -> None:
    async with db.begin() as session:
        for i in range(n):
            events.record(session, organization_id=org.id, type=type, at=NOW, n=i)


async def _head(db: async_sessionmaker[AsyncSession]) -> int:
    return await events.log_head(db)


async def test_fan_out_gives_each_endpoint_its_own_organizations_matching_events(
    db: async_sessionmaker[AsyncSession],
) -> None:
    ours, theirs = await _org(db, "harbour"), await _org(db, "rival")
    every = await _endpoint(db, ours, ["*"])
    paid_only = await _endpoint(db, ours, ["invoice.paid"])
    rival = await _endpoint(db, theirs, ["*"])
    await _log(db, ours, 3, EventType.INVOICE_PAID)
    await _log(db, ours, 2, EventType.BOOKING_CREATED)
    await _log(db, theirs, 4, EventType.INVOICE_PAID)

    made = await hooks.fan_out(db, await _head(db), NOW)
    again = await hooks.fan_out(db, await _head(db), NOW)
    async with db() as session:
        rows = (
            await session.execute(
                select(
                    WebhookDelivery.endpoint_id, WebhookDelivery.organization_id, func.count()
                ).group_by(WebhookDelivery.endpoint_id, WebhookDelivery.organization_id)
            )
        ).all()
    counts = {endpoint: (org, n) for endpoint, org, n in rows}
    # Each sees what its own organization logged after it was made (its own creation
    # event first): never the other organization's.
    assert counts == {
        every: (ours.id, 1 + 1 + 3 + 2),  # both creations, the payments, the bookings
        paid_only: (ours.id, 3),
        rival: (theirs.id, 1 + 4),
    }
    assert made == 7 + 3 + 5 and again == 0


async def test_fan_out_stops_at_the_settled_horizon(db: async_sessionmaker[AsyncSession]) -> None:
    org = await _org(db, "harbour")
    endpoint = await _endpoint(db, org, ["invoice.paid"])
    await _log(db, org, 3, EventType.INVOICE_PAID)
    head = await _head(db)
    assert await hooks.fan_out(db, head - 1, NOW) == 2  # the newest is not settled yet
    assert await hooks.fan_out(db, head, NOW) == 1
    async with db() as session:
        count = await session.scalar(
            select(func.count()).where(WebhookDelivery.endpoint_id == endpoint)
        )
    assert count == 3


async def test_two_workers_never_claim_one_delivery(db: async_sessionmaker[AsyncSession]) -> None:
    org = await _org(db, "harbour")
    await _endpoint(db, org, ["invoice.paid"])
    await _log(db, org, 8, EventType.INVOICE_PAID)
    await hooks.fan_out(db, await _head(db), NOW)
    lease = timedelta(seconds=40)
    first, second = await asyncio.gather(
        hooks.claim_due(db, NOW, limit=5, lease=lease),
        hooks.claim_due(db, NOW, limit=5, lease=lease),
    )
    # A claim skips what another holds (it may get less this round, never the same).
    claimed = [job.delivery_id for job in first + second]
    assert len(claimed) == len(set(claimed)) and 5 <= len(claimed) <= 8
    rest = await hooks.claim_due(db, NOW, limit=10, lease=lease)
    assert sorted(claimed + [job.delivery_id for job in rest]) == sorted(
        set(claimed) | {job.delivery_id for job in rest}
    )
    assert len(claimed) + len(rest) == 8
    # Claimed ones are held for the lease, then come due again if never recorded.
    assert await hooks.claim_due(db, NOW, limit=10, lease=lease) == []
    later = await hooks.claim_due(db, NOW + lease, limit=10, lease=lease)
    assert len(later) == 8


async def test_statements_per_delivered_event_stay_fixed(
    db: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """A round's SQL: fan-out and claim cost a fixed number of statements whatever
    the batch; recording costs the same few per delivery. Counted, not timed."""
    org = await _org(db, "harbour")
    await _endpoint(db, org, ["invoice.paid"])
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    async def round_of(n: int) -> tuple[int, int, int]:
        await _log(db, org, n, EventType.INVOICE_PAID)
        head = await _head(db)
        seen.clear()
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            await hooks.fan_out(db, head, NOW)
            fanned = len(seen)
            jobs = await hooks.claim_due(db, NOW, limit=n, lease=timedelta(seconds=40))
            claimed = len(seen) - fanned
            result = hooks.AttemptResult(True, 200, None, 3)
            for job in jobs:
                await hooks.record_attempt(db, job, result, NOW)
            recorded = len(seen) - fanned - claimed
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", count)
        assert len(jobs) == n
        return fanned, claimed, recorded

    small = await round_of(3)
    large = await round_of(9)
    sqlite = engine.dialect.name == "sqlite"
    # Fan-out of one endpoint: which are behind, lock it, its events, one insert of
    # the batch, its cursor (SQLite counts each BEGIN IMMEDIATE too).
    assert small[0] == large[0] == (7 if sqlite else 5)
    # Claim: candidates, lock the picked, their endpoints, their events, the leases.
    assert small[1] == large[1] == (6 if sqlite else 5)
    # Recording one attempt: lock the delivery, insert the attempt, update the
    # delivery, clear the endpoint's failing streak (conditional update).
    per_delivery = 5 if sqlite else 4
    assert (small[2], large[2]) == (3 * per_delivery, 9 * per_delivery)
    async with db() as session:
        attempts = await session.scalar(select(func.count()).select_from(WebhookAttempt))
    assert attempts == 12


async def test_an_organization_has_at_most_twenty_endpoints(
    db: async_sessionmaker[AsyncSession],
) -> None:
    org = await _org(db, "harbour")
    for _ in range(hooks.MAX_ENDPOINTS_PER_ORGANIZATION):
        await _endpoint(db, org, ["*"])
    with pytest.raises(ConflictError, match="at most 20"):
        await _endpoint(db, org, ["*"])
