"""Outbound webhooks end to end (issue 14, part 2), on SQLite and PostgreSQL.

A real receiver — Starlette on uvicorn on a loopback port, started by the test — gets
the organization's events from the real sender (``app.webhook_sender``, the worker's
loop body) through real HTTP. The server, the sender and the test share one
``FixedClock``: retries come due by moving it, never by sleeping. Loopback is allowed
here explicitly (``DESKBILL_WEBHOOKS_ALLOW_PRIVATE=127.0.0.0/8,::1/128``); every other
private address stays refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.asgi import create_app
from app.webhook_sender import WebhookSender
from models import Event, Organization, Role
from services import accounts, policy
from services.clock import FixedClock
from services.outbound_webhooks import AddressPolicy
from tests.api.conftest import SETTINGS, Api, serve
from tests.api.test_billing_api import Space, at, pk

HOOK_SETTINGS = replace(SETTINGS, webhooks_allow_private="127.0.0.0/8,::1/128")
_slugs = itertools.count(1)

CREATE = """mutation ($url: String!, $types: [String!]!, $description: String) {
  createWebhookEndpoint(url: $url, eventTypes: $types, description: $description) {
    secret endpoint { id url eventTypes status description previousSecretValidUntil }
  }
}"""
ROTATE = """mutation ($id: ID!) { rotateWebhookSecret(id: $id) {
  secret endpoint { id previousSecretValidUntil } } }"""
DELIVERIES = """query ($id: ID!, $status: [WebhookDeliveryStatus!]) {
  webhookDeliveries(endpointId: $id, status: $status, first: 100) {
    totalCount
    nodes { id eventCursor eventType status attemptCount nextAttemptAt deliveredAt
            attempts { succeeded responseStatus error durationMs } }
  }
}"""
UPDATE = """mutation ($id: ID!, $changes: WebhookEndpointChanges!) {
  updateWebhookEndpoint(id: $id, changes: $changes) { id status disabledReason } }"""
RESEND = "mutation ($id: ID!) { resendWebhookDelivery(id: $id) { id status nextAttemptAt } }"


# ----------------------------------------------------------------------------- receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook receiver that records every request and answers ``status``."""

    status: int = 200
    seen: list[Received] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    async def _receive(self, request: Request) -> Response:
        self.seen.append(Received(request.url.path, dict(request.headers), await request.body()))
        return Response(status_code=self.status)

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening: the port refuses connections until ``start`` again."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    def sequences(self, path: str = "/hooks") -> list[int]:
        return [r.event["sequence"] for r in self.seen if r.path == path]


def verify(secret: str, header: str, body: bytes, now: datetime, tolerance: int = 300) -> bool:
    """The README's receiver check: some v1 is HMAC-SHA256("t.body") and t is fresh."""
    items = [part.split("=", 1) for part in header.split(",")]
    timestamp = next(value for key, value in items if key == "t")
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(now.timestamp() - int(timestamp)) <= tolerance
    return fresh and any(hmac.compare_digest(expected, v) for k, v in items if k == "v1")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
async def hooks_api(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Api]:
    app = create_app(HOOK_SETTINGS, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url=url, app=app, client=client)


async def _space(api: Api, clock: FixedClock, name: str) -> Space:
    async with api.state.sessionmaker.begin() as session:
        org = await policy.create_organization(
            session, name, f"{name.lower().replace(' ', '-')}-{next(_slugs)}", "USD", clock.now()
        )
        admin = await accounts.create_user(
            session, org, email=f"admin{next(_slugs)}@example.test", name="Ada Admin",
            role=Role.ADMIN, now=clock.now(),
        )  # fmt: skip
        return Space(api=api, clock=clock, org_id=org.id, admin_id=admin.id)


@pytest.fixture
async def space(hooks_api: Api, clock: FixedClock) -> Space:
    clock.set(at(2026, 8, 10, 9))
    return await _space(hooks_api, clock, "Harbour Works")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    yield found
    await found.stop()


def sender_of(space: Space) -> WebhookSender:
    sender = space.api.state.services["webhook_sender"]
    assert isinstance(sender, WebhookSender)
    return sender


async def endpoint(space: Space, url: str, types: list[str] | None = None) -> tuple[str, str]:
    data = await space.ok(CREATE, {"url": url, "types": types or ["*"], "description": "ERP"})
    created = data["createWebhookEndpoint"]
    assert created["endpoint"]["status"] == "ENABLED"
    return created["endpoint"]["id"], created["secret"]


async def org_events(space: Space, after: int) -> list[int]:
    async with space.api.state.sessionmaker() as session:
        return list(
            await session.scalars(
                select(Event.id)
                .where(Event.organization_id == space.org_id, Event.id > after)
                .order_by(Event.id)
            )
        )


async def deliver(space: Space, receiver: Receiver, want: set[int], path: str = "/hooks") -> None:
    """Run sender rounds until ``receiver`` holds every sequence in ``want``. The hub
    settles an id a rolled-back transaction left behind only after its grace period
    (wall time), so this waits for that, at most 30 s, rather than assuming."""
    sender = sender_of(space)
    for _ in range(600):
        await sender.run_once()
        if want <= set(receiver.sequences(path)):
            return
        await asyncio.sleep(0.05)
    missing = sorted(want - set(receiver.sequences(path)))
    raise AssertionError(f"never delivered: {missing}")


async def a_billing_month(space: Space) -> None:
    """A member with a plan and a booking, billed on Sep 1, paying part in cash."""
    _, account = await space.person("Cy Member")
    assert account is not None
    desk = await space.plan("Hot desk", "100.00")
    await space.subscribe(account, desk, date(2026, 9, 1))
    await space.book(account, at(2026, 8, 20, 10), at(2026, 8, 20, 12), "25.00")
    space.clock.set(at(2026, 9, 1))
    await space.run_billing(at(2026, 9, 1))
    invoices = [i for i in await space.invoices(account=account) if i["number"]]
    await space.ok(
        """mutation ($input: RecordPaymentInput!) { recordPayment(input: $input) { id } }""",
        {"input": {"invoiceId": invoices[0]["id"], "amount": "50.00", "method": "CASH"}},
    )


# ----------------------------------------------------------------------------- tests


async def test_a_receiver_gets_every_event_of_a_billing_month_signed_and_only_its_own(
    space: Space, receiver: Receiver
) -> None:
    rival = await _space(space.api, space.clock, "Rival Works")
    start = max(await org_events(space, 0), default=0)
    rival_start = max(await org_events(rival, 0), default=0)
    endpoint_id, secret = await endpoint(space, receiver.url("/hooks"))
    _, rival_secret = await endpoint(rival, receiver.url("/rival"))

    await a_billing_month(space)
    _, rival_account = await rival.person("Mallory Member")
    assert rival_account is not None
    await rival.book(rival_account, at(2026, 9, 2, 10), at(2026, 9, 2, 11), "10.00")

    ours = await org_events(space, start)
    theirs = await org_events(rival, rival_start)
    types, _ = await space.events_after(None)
    assert {"invoice.finalized", "payment.created", "booking.created"} <= set(types)
    await deliver(space, receiver, set(ours))
    await deliver(rival, receiver, set(theirs), path="/rival")

    got = [r for r in receiver.seen if r.path == "/hooks"]
    assert sorted(set(r.event["sequence"] for r in got)) == ours
    # Events of one organization never reach another's endpoint.
    assert not set(receiver.sequences("/rival")) & set(ours)
    assert not set(receiver.sequences("/hooks")) & set(theirs)
    now = space.clock.now()
    for request in got:
        header = request.headers["deskbill-signature"]
        assert verify(secret, header, request.body, now), header
        assert not verify(rival_secret, header, request.body, now)
        assert request.headers["content-type"] == "application/json"
        assert request.event["cursor"] == str(request.event["sequence"])
        assert request.headers["deskbill-event-type"] == request.event["type"]
    # The cursor is the log's: resuming `events` from it gives the next event. Deliveries
    # go out several at once, so the first to arrive need not be the first event.
    first = min(got, key=lambda r: int(r.event["sequence"])).event
    assert first["sequence"] == ours[0]
    after = await space.ok(
        "query ($after: String) { events(first: 1, after: $after) { nodes { sequence } } }",
        {"after": first["cursor"]},
    )
    assert after["events"]["nodes"][0]["sequence"] == ours[1]

    listed = (await space.ok(DELIVERIES, {"id": endpoint_id}))["webhookDeliveries"]
    assert listed["totalCount"] == len(ours)
    assert {n["status"] for n in listed["nodes"]} == {"SUCCEEDED"}
    assert all(n["attempts"][0]["responseStatus"] == 200 for n in listed["nodes"])
    # Newest first.
    cursors = [int(n["eventCursor"]) for n in listed["nodes"]]
    assert cursors == sorted(cursors, reverse=True)


async def test_a_receiver_that_is_down_for_a_while_then_sees_every_event(
    space: Space, receiver: Receiver
) -> None:
    start = max(await org_events(space, 0), default=0)
    endpoint_id, secret = await endpoint(space, receiver.url())
    receiver.status = 500
    await a_billing_month(space)
    ours = await org_events(space, start)
    sender = sender_of(space)

    # Answering 500: every delivery is tried once and scheduled for a retry.
    for _ in range(600):
        await sender.run_once()
        if set(ours) <= set(receiver.sequences()):
            break
        await asyncio.sleep(0.05)
    pending = (await space.ok(DELIVERIES, {"id": endpoint_id, "status": ["PENDING"]}))[
        "webhookDeliveries"
    ]
    assert pending["totalCount"] == len(ours)
    assert all(n["attempts"][-1]["responseStatus"] == 500 for n in pending["nodes"])
    # Nothing is due before its backoff has passed.
    assert (await sender.run_once()).attempted == 0

    # Not listening at all for a while: connection refused, tried again later.
    await receiver.stop()
    space.clock.advance(timedelta(minutes=2))
    tried = await sender.run_until_idle()
    assert tried.outcomes.get("retrying", 0) >= len(ours) - 8
    space.clock.advance(timedelta(minutes=5))
    await sender.run_until_idle()
    errors = (await space.ok(DELIVERIES, {"id": endpoint_id}))["webhookDeliveries"]["nodes"]
    assert all(n["attempts"][-1]["responseStatus"] is None for n in errors)
    assert all("Could not reach" in n["attempts"][-1]["error"] for n in errors)

    # Back up hours later: each event arrives at least once, correctly signed.
    receiver.status = 200
    receiver.seen.clear()
    await receiver.start()
    space.clock.advance(timedelta(hours=6))
    await deliver(space, receiver, set(ours))
    now = space.clock.now()
    assert all(verify(secret, r.headers["deskbill-signature"], r.body, now) for r in receiver.seen)
    done = (await space.ok(DELIVERIES, {"id": endpoint_id}))["webhookDeliveries"]["nodes"]
    assert {n["status"] for n in done} == {"SUCCEEDED"}
    assert all(n["attemptCount"] >= 3 and n["attempts"][-1]["succeeded"] for n in done)

    # A delivered event can be sent again on request.
    receiver.seen.clear()
    resent = (await space.ok(RESEND, {"id": done[0]["id"]}))["resendWebhookDelivery"]
    assert resent["status"] == "PENDING"
    await deliver(space, receiver, {int(done[0]["eventCursor"])})


async def test_a_rotated_secret_signs_beside_the_old_one_for_24_hours(
    space: Space, receiver: Receiver
) -> None:
    endpoint_id, old = await endpoint(space, receiver.url(), ["account.created"])
    rotated = (await space.ok(ROTATE, {"id": endpoint_id}))["rotateWebhookSecret"]
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_")
    valid_until = datetime.fromisoformat(rotated["endpoint"]["previousSecretValidUntil"])
    assert valid_until == space.clock.now() + timedelta(hours=24)

    await space.person("Dee Member")
    await deliver(space, receiver, set(await _of_type(space, "account.created")))
    (request,) = receiver.seen
    header = request.headers["deskbill-signature"]
    assert header.count("v1=") == 2
    now = space.clock.now()
    assert verify(new, header, request.body, now) and verify(old, header, request.body, now)

    space.clock.advance(timedelta(hours=24, seconds=1))
    receiver.seen.clear()
    await space.person("Eve Member")
    created = await _of_type(space, "account.created")
    await deliver(space, receiver, {max(created)})
    (later,) = receiver.seen
    header = later.headers["deskbill-signature"]
    now = space.clock.now()
    assert header.count("v1=") == 1
    assert verify(new, header, later.body, now) and not verify(old, header, later.body, now)


async def _of_type(space: Space, event_type: str) -> list[int]:
    async with space.api.state.sessionmaker() as session:
        return list(
            await session.scalars(
                select(Event.id).where(
                    Event.organization_id == space.org_id, Event.type == event_type
                )
            )
        )


async def test_private_and_loopback_addresses_are_refused_unless_allowed(
    space: Space, receiver: Receiver
) -> None:
    for url in (
        "http://10.1.2.3/hooks",
        "http://192.168.0.10/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00::1]/hooks",
        "http://[::ffff:10.0.0.1]/hooks",
        "http://0.0.0.0/hooks",
    ):
        error = await space.refused(CREATE, {"url": url, "types": ["*"]})
        assert error["extensions"]["code"] == "VALIDATION", (url, error)
        assert "not sent" in error["message"], error

    # Allowed here (loopback) when saved; refused when the operator allows nothing:
    # the address is checked again before every attempt, and nothing is sent.
    endpoint_id, _ = await endpoint(space, f"http://localhost:{receiver.port}/hooks")
    sender = sender_of(space)
    sender.policy = AddressPolicy()
    await space.person("Fay Member")
    for _ in range(100):
        await sender.run_once()
        nodes = (await space.ok(DELIVERIES, {"id": endpoint_id}))["webhookDeliveries"]["nodes"]
        if nodes and all(n["attempts"] for n in nodes):
            break
        await asyncio.sleep(0.05)
    assert nodes and receiver.seen == []
    assert all("loopback" in n["attempts"][0]["error"] for n in nodes), nodes
    body = (await space.api.client.get("/metrics")).text
    assert 'deskbill_webhook_deliveries_total{outcome="retrying"}' in body


async def test_bad_endpoints_are_refused_and_change_nothing(
    space: Space, receiver: Receiver
) -> None:
    cases = [
        ({"url": "ftp://example.com/x", "types": ["*"]}, "https://"),
        ({"url": "https://user:pw@example.com/x", "types": ["*"]}, "password"),
        ({"url": "https://example.com/" + "a" * 2100, "types": ["*"]}, "at most"),
        ({"url": receiver.url(), "types": ["invoice.exploded"]}, "not an event type"),
        ({"url": receiver.url(), "types": []}, "List the event types"),
    ]
    for variables, words in cases:
        error = await space.refused(CREATE, variables)
        assert error["extensions"]["code"] == "VALIDATION", error
        assert words in error["message"], error
    listed = await space.ok("{ webhookEndpoints { id } }")
    assert listed["webhookEndpoints"] == []

    for _ in range(20):
        await endpoint(space, receiver.url(), ["invoice.paid"])
    error = await space.refused(CREATE, {"url": receiver.url(), "types": ["*"]})
    assert error["extensions"]["code"] == "CONFLICT" and "at most 20" in error["message"]


async def test_only_admins_of_the_organization_manage_endpoints(
    space: Space, receiver: Receiver
) -> None:
    endpoint_id, secret = await endpoint(space, receiver.url())
    member, _ = await space.person("Gus Member")
    analyst, _ = await space.person("Ann Analyst", role="ANALYST")
    rival = await _space(space.api, space.clock, "Rival Works")
    for user in (member, analyst):
        variables = {"url": receiver.url(), "types": ["*"]}
        error = await space.refused(CREATE, variables, user_id=pk(user))
        assert error["extensions"]["code"] == "FORBIDDEN"
    for query in (ROTATE, "mutation ($id: ID!) { deleteWebhookEndpoint(id: $id) }"):
        error = await rival.refused(query, {"id": endpoint_id})
        assert error["extensions"]["code"] == "NOT_FOUND", error
    assert (await rival.ok("{ webhookEndpoints { id } }"))["webhookEndpoints"] == []
    listed = await space.ok("{ webhookEndpoints { id url eventTypes } }")
    assert listed["webhookEndpoints"] == [
        {"id": endpoint_id, "url": receiver.url(), "eventTypes": ["*"]}
    ]
    # The secret is in no event of the log.
    async with space.api.state.sessionmaker() as session:
        payloads = [str(p) for p in await session.scalars(select(Event.payload))]
        orgs = list(await session.scalars(select(Organization.id)))
    assert len(orgs) == 2
    assert not any(secret in p for p in payloads)


async def test_an_endpoint_failing_for_three_days_is_disabled_with_an_event(
    space: Space, receiver: Receiver
) -> None:
    endpoint_id, _ = await endpoint(space, receiver.url(), ["account.created"])
    receiver.status = 503
    await space.person("Hal Member")
    sender = sender_of(space)
    for _ in range(600):
        await sender.run_once()
        if receiver.seen:
            break
        await asyncio.sleep(0.05)
    for _ in range(3 * 4 + 2):  # every 6 hours for three days and a bit
        space.clock.advance(timedelta(hours=6))
        await sender.run_until_idle()
    listed = await space.ok("{ webhookEndpoints { id status disabledReason failingSince } }")
    (found,) = listed["webhookEndpoints"]
    assert found["status"] == "DISABLED" and "3 days" in found["disabledReason"], found
    disabled = await _of_type(space, "webhook_endpoint.disabled")
    assert len(disabled) == 1
    (delivery,) = (await space.ok(DELIVERIES, {"id": endpoint_id}))["webhookDeliveries"]["nodes"]
    assert delivery["status"] == "FAILED" and delivery["attemptCount"] >= 10

    # Disabled: nothing is sent and a resend is refused until it is enabled again.
    error = await space.refused(RESEND, {"id": delivery["id"]})
    assert error["extensions"]["code"] == "INVALID_STATE"
    receiver.status = 200
    enabled = await space.ok(UPDATE, {"id": endpoint_id, "changes": {"enabled": True}})
    assert enabled["updateWebhookEndpoint"]["status"] == "ENABLED"
    receiver.seen.clear()
    await space.ok(RESEND, {"id": delivery["id"]})
    await deliver(space, receiver, {int(delivery["eventCursor"])})


async def test_the_worker_loop_delivers_without_being_driven(
    engine: AsyncEngine, clock: FixedClock, receiver: Receiver
) -> None:
    settings = replace(HOOK_SETTINGS, webhook_interval_seconds=0.05, worker_interval_seconds=60)
    clock.set(at(2026, 8, 10, 9))
    app = create_app(settings, engine=engine, clock=clock, start_worker=True)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            space = await _space(Api(url=url, app=app, client=client), clock, "Loop Works")
            _, secret = await endpoint(space, receiver.url(), ["account.created"])
            await space.person("Ida Member")
            for _ in range(600):
                if receiver.seen:
                    break
                await asyncio.sleep(0.05)
            (request,) = receiver.seen
            assert request.event["type"] == "account.created"
            assert verify(secret, request.headers["deskbill-signature"], request.body, clock.now())
