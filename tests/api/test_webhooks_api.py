"""``POST /webhooks/stripe`` on a running server (rules §6.4): the fake Stripe signs
its events and POSTs them; the member's payment goes PROCESSING → PAID; duplicates
and reordering leave one success; bad or stale signatures get 400 and change
nothing; committed events are announced to subscribers."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from models import Event, Payment, ProcessedWebhook
from tests.api.test_payments_api import PAY, Desk, offline_api, stripe_api

__all__ = ["offline_api", "stripe_api"]

# The stripe library's httpx client sends form bodies as raw ``data=``; httpx warns.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


async def _pay_now(desk: Desk, amount: str = "90.00") -> tuple[str, str, dict[str, Any]]:
    """A member starts paying a fresh invoice: (member, invoice id, payInvoice payload)."""
    member, account = await desk.member("Maya")
    invoice_id = await desk.invoice(account, amount)
    started = (await desk.ok(PAY, {"id": invoice_id}, who=member))["payInvoice"]
    return member, invoice_id, started


def _intent_of(started: dict[str, Any]) -> str:
    intent: str = started["payment"]["gatewayPaymentIntentId"]
    assert started["clientSecret"].startswith(f"{intent}_secret_")
    return intent


def _signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """A ``Stripe-Signature`` made the way Stripe makes it, with any secret."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


async def _post(desk: Desk, body: bytes, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return await desk.api.client.post("/webhooks/stripe", content=body, headers=headers)


async def test_member_pays_and_the_signed_succeeded_webhook_makes_the_invoice_paid(
    stripe_api: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = stripe_api
    member, invoice_id, started = await _pay_now(desk)
    assert (started["invoice"]["status"], started["payment"]["status"]) == (
        "PROCESSING",
        "PROCESSING",
    )
    intent = _intent_of(started)
    # What subscribers are told: the route announces the newest event it committed.
    heard: list[tuple[int, int]] = []
    announce = desk.api.state.announce

    async def recording(org: int, event_id: int) -> None:
        heard.append((org, event_id))
        await announce(org, event_id)

    monkeypatch.setattr(desk.api.state, "announce", recording)

    # The member's card sheet confirms with the client secret; the bank says yes.
    desk.stripe.confirm_with_card(intent, "pm_card_visa")
    desk.stripe.process()
    succeeded = [e for e in desk.stripe.events_for(intent) if e["type"].endswith(".succeeded")]
    assert await desk.deliver(succeeded) == [200]

    invoice = await desk.read_invoice(invoice_id, who=member)
    assert (
        invoice["status"],
        invoice["amountPaid"]["amount"],
        invoice["balanceDue"]["amount"],
    ) == (
        "PAID",
        "90.00",
        "0.00",
    )
    assert [(p["status"], p["amount"]["amount"]) for p in invoice["payments"]] == [
        ("SUCCEEDED", "90.00")
    ]
    async with desk.api.state.sessionmaker() as session:
        newest = await session.scalar(select(func.max(Event.id)))
    assert heard and heard[-1][1] == newest
    history = await desk.ok(
        "query($id: ID!) { invoice(id: $id) { history { type payload } } }", {"id": invoice_id}
    )
    moves = [
        (e["payload"].get("previous_status"), e["payload"].get("status"))
        for e in history["invoice"]["history"]
        if e["type"] == "payment.status_changed"
    ]
    assert moves[-1] == ("PROCESSING", "SUCCEEDED"), moves


async def test_five_copies_shuffled_with_payment_failed_leave_one_success(
    stripe_api: Desk,
) -> None:
    desk = stripe_api
    member, invoice_id, started = await _pay_now(desk, "64.50")
    intent = _intent_of(started)
    # The first card is declined in the sheet, the second one goes through.
    desk.stripe.confirm_with_card(intent, "pm_card_chargeDeclined")
    desk.stripe.process()
    desk.stripe.confirm_with_card(intent, "pm_card_visa")
    desk.stripe.process()
    events = desk.stripe.events_for(intent)
    kinds = {e["type"] for e in events}
    assert {"payment_intent.payment_failed", "payment_intent.succeeded"} <= kinds

    statuses = await desk.deliver(events, duplicates=5, shuffle=True, seed=7)
    assert statuses == [200] * (5 * len(events))

    invoice = await desk.read_invoice(invoice_id, who=member)
    assert (invoice["status"], invoice["amountPaid"]["amount"]) == ("PAID", "64.50")
    assert [p["status"] for p in invoice["payments"]] == ["SUCCEEDED"]
    assert await desk.count(Payment) == 1
    assert await desk.count(ProcessedWebhook) == len(events)

    # A late failure delivered again (a new event id, the same old object) is ignored.
    (failed,) = [e for e in events if e["type"] == "payment_intent.payment_failed"]
    assert await desk.deliver([{**failed, "id": "evt_late_failure"}]) == [200]
    assert (await desk.read_invoice(invoice_id))["payments"][0]["status"] == "SUCCEEDED"


async def test_bad_signature_and_stale_timestamp_get_400_and_change_nothing(
    stripe_api: Desk,
) -> None:
    desk = stripe_api
    _, invoice_id, started = await _pay_now(desk)
    intent = _intent_of(started)
    desk.stripe.confirm_with_card(intent, "pm_card_visa")
    desk.stripe.process()
    (succeeded,) = [e for e in desk.stripe.events_for(intent) if e["type"].endswith(".succeeded")]
    body, header = desk.stripe.signed(succeeded)
    now = int(desk.clock.now().timestamp())
    tampered = body.replace(b'"amount_received": 9000', b'"amount_received": 9001')
    assert tampered != body
    stale_body, stale_header = desk.stripe.signed(succeeded, timestamp=now - 301)
    foreign = _signature(b"whsec_someone_else", body, now)

    for attempt_body, attempt_header in (
        (tampered, header),  # the body changed after signing
        (body, foreign),  # signed with another endpoint's secret
        (stale_body, stale_header),  # a replay from more than 300 s ago
        (body, None),  # no signature at all
        (b"not json", desk.stripe.sign("not json")),  # signed, but not an event
    ):
        response = await _post(desk, attempt_body, attempt_header)
        assert response.status_code == 400, response.text
        assert response.json()["error"]

    assert await desk.count(ProcessedWebhook) == 0
    invoice = await desk.read_invoice(invoice_id)
    assert (invoice["status"], invoice["payments"][0]["status"]) == ("PROCESSING", "PROCESSING")

    # The genuine delivery, inside the tolerance, still works afterwards.
    fresh_body, fresh_header = desk.stripe.signed(succeeded, timestamp=now - 299)
    response = await _post(desk, fresh_body, fresh_header)
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False, "applied": True}
    assert (await desk.read_invoice(invoice_id))["status"] == "PAID"
    again = await _post(desk, fresh_body, fresh_header)
    assert again.json() == {"received": True, "duplicate": True, "applied": False}


async def test_webhooks_are_refused_when_the_gateway_is_off(offline_api: Desk) -> None:
    response = await offline_api.api.client.post(
        "/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
    )
    assert response.status_code == 400
    assert "off" in response.json()["error"]
    assert await offline_api.count(ProcessedWebhook) == 0


def _malformed(event: dict[str, Any], change: str) -> dict[str, Any]:
    """``event`` with one field broken the way ``change`` names."""
    obj = dict(event["data"]["object"])
    broken = {**event}
    if change == "object as event id":
        broken["id"] = {"$gt": ""}
    elif change == "10 KB event id":
        broken["id"] = "evt_" + "x" * 10_000
    elif change == "event id with a NUL":
        broken["id"] = "evt_\u0000"
    elif change == "number as event type":
        broken["type"] = 7
    elif change == "missing status":
        obj.pop("status")
    elif change == "status as a list":
        obj["status"] = ["succeeded"]
    elif change == "object id as a number":
        obj["id"] = 12
    elif change == "amount as a string":
        obj["amount_received"] = "9000"
    elif change == "metadata as a list":
        obj["metadata"] = ["deskbill_payment_id"]
    elif change == "payment id beyond int64":
        obj["metadata"] = {**obj.get("metadata", {}), "deskbill_payment_id": "9" * 30}
        obj["id"] = "pi_unknown"
    elif change == "error as a string":
        obj["last_payment_error"] = "declined"
    elif change == "no object":
        broken["data"] = {"object": "pi_1"}
    if change not in ("no object",):
        broken["data"] = {**event["data"], "object": obj}
    return broken


MALFORMED = [
    "object as event id", "10 KB event id", "event id with a NUL", "number as event type",
    "missing status", "status as a list", "object id as a number", "amount as a string",
    "metadata as a list", "error as a string", "no object",
]  # fmt: skip


async def test_signed_but_malformed_events_get_400_and_write_nothing(stripe_api: Desk) -> None:
    desk = stripe_api
    _, invoice_id, started = await _pay_now(desk)
    intent = _intent_of(started)
    desk.stripe.confirm_with_card(intent, "pm_card_visa")
    desk.stripe.process()
    (succeeded,) = [e for e in desk.stripe.events_for(intent) if e["type"].endswith(".succeeded")]
    events_before = await desk.count(Event)

    for change in MALFORMED:
        body, header = desk.stripe.signed(_malformed(succeeded, change))
        response = await _post(desk, body, header)
        assert response.status_code == 400, (change, response.text)
        assert response.json()["code"] == "INVALID_WEBHOOK", change
        assert "malformed" in response.json()["error"], change

    assert await desk.count(ProcessedWebhook) == 0
    assert await desk.count(Event) == events_before
    assert (await desk.read_invoice(invoice_id))["status"] == "PROCESSING"

    # An unknown payment named beyond int64 is well-formed but not ours: 200, not applied.
    body, header = desk.stripe.signed(
        {**_malformed(succeeded, "payment id beyond int64"), "id": "evt_not_ours"}
    )
    response = await _post(desk, body, header)
    assert response.json() == {"received": True, "duplicate": False, "applied": False}

    body, header = desk.stripe.signed(succeeded)
    assert (await _post(desk, body, header)).status_code == 200
    assert (await desk.read_invoice(invoice_id))["status"] == "PAID"
