"""The Stripe adapter, driven through the real ``stripe`` library against the fake
Stripe server: objects, declines, idempotency keys, injected faults, webhook
signatures, and the "off" gateway."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import stripe

from services.errors import GatewayError, GatewayUnavailableError
from services.gateway import (
    CardDeclinedError,
    GatewayOutcomeUnknownError,
    InvalidWebhookError,
    OffGateway,
    StripeGateway,
    gateway_from_settings,
)
from tests.fakestripe import FakeStripe
from tests.fakestripe.fixtures import FAULT_DELAY, fake_stripe, stripe_gateway

__all__ = ["fake_stripe", "stripe_gateway"]


async def _charge(gateway: StripeGateway, key: str, *, card: str = "pm_card_visa", amount=1500):
    return await gateway.create_payment_intent(
        amount=amount,
        currency="USD",
        customer=None,
        payment_method=card,
        off_session=True,
        confirm=True,
        idempotency_key=key,
        metadata={"deskbill_payment_id": key},
    )


async def test_customer_setup_intent_and_off_session_charge(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    customer = await stripe_gateway.create_customer(
        email="ada@example.com", name="Ada", metadata={"account_id": "7"}, idempotency_key="c-7"
    )
    secret = await stripe_gateway.create_setup_intent(customer=customer, idempotency_key="s-7")
    intent = await stripe_gateway.create_payment_intent(
        amount=12_345,
        currency="USD",
        customer=customer,
        payment_method="pm_card_visa",
        off_session=True,
        confirm=True,
        idempotency_key="pay-1",
        metadata={"deskbill_payment_id": "1"},
    )

    assert fake_stripe.customers[customer]["metadata"] == {"account_id": "7"}
    assert secret.startswith(next(iter(fake_stripe.setup_intents)) + "_secret_")
    assert (intent.status, intent.amount, intent.amount_received) == ("succeeded", 12_345, 12_345)
    assert intent.currency == "USD"
    assert intent.metadata == {"deskbill_payment_id": "1"}
    again = await stripe_gateway.retrieve_payment_intent(intent.id)
    assert again.status == "succeeded"
    assert fake_stripe.payment_intents[intent.id]["customer"] == customer


async def test_on_session_intent_goes_through_processing(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    intent = await stripe_gateway.create_payment_intent(
        amount=900,
        currency="USD",
        customer=None,
        payment_method=None,
        off_session=False,
        confirm=False,
        idempotency_key="pay-now-1",
        metadata={},
    )
    assert intent.status == "requires_payment_method"
    assert intent.client_secret and intent.client_secret.startswith(intent.id)

    fake_stripe.confirm_with_card(intent.id, "pm_card_visa")
    assert (await stripe_gateway.retrieve_payment_intent(intent.id)).status == "processing"
    assert fake_stripe.process() == [intent.id]
    assert (await stripe_gateway.retrieve_payment_intent(intent.id)).status == "succeeded"
    types = [e["type"] for e in fake_stripe.events_for(intent.id)]
    assert types == [
        "payment_intent.created",
        "payment_intent.processing",
        "payment_intent.succeeded",
    ]


async def test_decline_carries_code_message_and_the_intent(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    with pytest.raises(CardDeclinedError) as caught:
        await _charge(stripe_gateway, "declined-1", card="pm_card_chargeDeclinedInsufficientFunds")

    error = caught.value
    assert error.code == "GATEWAY_ERROR"
    assert error.decline_code == "insufficient_funds"
    assert error.message == "Your card has insufficient funds."
    assert error.intent is not None
    stored = fake_stripe.payment_intents[error.intent.id]
    assert stored["status"] == error.intent.status == "requires_payment_method"
    assert error.intent.error_code == "insufficient_funds"
    assert [e["type"] for e in fake_stripe.events_for(error.intent.id)][-1] == (
        "payment_intent.payment_failed"
    )


async def test_same_key_same_params_replays_and_other_params_conflict(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    first = await _charge(stripe_gateway, "same-key")
    second = await _charge(stripe_gateway, "same-key")
    assert first.id == second.id
    assert len(fake_stripe.payment_intents) == 1
    assert [r.replayed for r in fake_stripe.requests] == [False, True]

    with pytest.raises(GatewayError) as caught:
        await _charge(stripe_gateway, "same-key", amount=1)
    assert caught.value.extensions["gateway_type"] == "idempotency_error"
    assert len(fake_stripe.payment_intents) == 1

    # A declined attempt is replayed as the same decline, not retried on the card.
    with pytest.raises(CardDeclinedError) as one:
        await _charge(stripe_gateway, "declined-key", card="pm_card_chargeDeclined")
    with pytest.raises(CardDeclinedError) as two:
        await _charge(stripe_gateway, "declined-key", card="pm_card_chargeDeclined")
    assert one.value.intent and two.value.intent
    assert one.value.intent.id == two.value.intent.id
    assert len(fake_stripe.payment_intents) == 2


@pytest.mark.parametrize("kind", ["rate_500", "rate_timeout"])
@pytest.mark.parametrize("phase", ["before", "after"])
async def test_a_lost_answer_is_retried_with_the_same_key(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway, kind: str, phase: str
) -> None:
    # Every request fails once: the first attempt is lost, the retry answers.
    fake_stripe.set_faults(**{kind: 1.0}, phase=phase, timeout_delay=FAULT_DELAY)
    attempts: list[int] = []

    original = fake_stripe.draw_fault

    def once(method: str, path: str, key: str | None):
        attempts.append(1)
        return original(method, path, key) if len(attempts) == 1 else None

    fake_stripe.draw_fault = once  # type: ignore[method-assign]
    intent = await _charge(stripe_gateway, f"lost-{kind}-{phase}")

    assert intent.status == "succeeded"
    assert len(fake_stripe.payment_intents) == 1
    assert len(attempts) == 2
    keys = {r.idempotency_key for r in fake_stripe.requests}
    assert keys == {f"lost-{kind}-{phase}"}


async def test_no_answer_at_all_is_unknown_and_a_later_ask_finds_the_object(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    fake_stripe.set_faults(rate_500=1.0, phase="after")
    with pytest.raises(GatewayOutcomeUnknownError):
        await _charge(stripe_gateway, "unknown-1")
    # The charge happened on the first attempt; every retry replayed it.
    assert len(fake_stripe.payment_intents) == 1
    assert len(fake_stripe.requests) == 4

    fake_stripe.set_faults()
    intent = await _charge(stripe_gateway, "unknown-1")
    assert intent.id == next(iter(fake_stripe.payment_intents))
    assert len(fake_stripe.payment_intents) == 1


async def test_twenty_percent_faults_never_duplicate_an_intent(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    fake_stripe.set_faults(
        rate_500=0.1, rate_timeout=0.1, phase="random", timeout_delay=FAULT_DELAY, seed=7
    )
    keys = [f"stress-{i}" for i in range(40)]
    found: dict[str, str] = {}
    pending = list(keys)
    while pending:
        retry = []
        for key in pending:
            try:
                found[key] = (await _charge(stripe_gateway, key)).id
            except GatewayOutcomeUnknownError:
                retry.append(key)
        pending = retry

    assert fake_stripe.faults_injected, "the plan injected faults"
    intents = fake_stripe.snapshot()["payment_intents"]
    assert len(intents) == len(keys)
    by_key = {i["metadata"]["deskbill_payment_id"]: i["id"] for i in intents.values()}
    assert by_key == found


async def test_cancel_and_refunds(fake_stripe: FakeStripe, stripe_gateway: StripeGateway) -> None:
    open_intent = await stripe_gateway.create_payment_intent(
        amount=500,
        currency="USD",
        customer=None,
        payment_method=None,
        off_session=False,
        confirm=False,
        idempotency_key="to-cancel",
        metadata={},
    )
    canceled = await stripe_gateway.cancel_payment_intent(open_intent.id)
    assert canceled.status == "canceled"

    paid = await _charge(stripe_gateway, "to-refund", amount=1000)
    with pytest.raises(GatewayError):
        await stripe_gateway.cancel_payment_intent(paid.id)

    kept = await stripe_gateway.create_refund(
        payment_intent=paid.id, amount=400, idempotency_key="r-1", metadata={"refund_id": "1"}
    )
    assert (kept.status, kept.amount, kept.payment_intent) == ("pending", 400, paid.id)
    with pytest.raises(GatewayError) as too_much:
        await stripe_gateway.create_refund(
            payment_intent=paid.id, amount=601, idempotency_key="r-2", metadata={}
        )
    assert too_much.value.extensions["gateway_code"] == "amount_too_large"

    fake_stripe.settle_refunds()
    assert (await stripe_gateway.retrieve_refund(kept.id)).status == "succeeded"

    fake_stripe.fail_refunds_for(paid.id)
    lost = await stripe_gateway.create_refund(
        payment_intent=paid.id, amount=600, idempotency_key="r-3", metadata={}
    )
    fake_stripe.settle_refunds()
    failed = await stripe_gateway.retrieve_refund(lost.id)
    assert (failed.status, failed.failure_reason) == ("failed", "expired_or_canceled_card")
    assert "refund.failed" in [e["type"] for e in fake_stripe.events_for(lost.id)]


async def test_webhook_signatures_are_stripes(
    fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    await _charge(stripe_gateway, "hook-1")
    event = fake_stripe.events[-1]
    body, header = fake_stripe.signed(event)

    # Stripe's own verifier accepts what the fake signs.
    verified = stripe.Webhook.construct_event(body, header, fake_stripe.webhook_secret)
    assert verified.id == event["id"]

    now = datetime.now(UTC)
    assert stripe_gateway.verify_webhook(body, header, now=now)["id"] == event["id"]

    tampered = body.replace(b"succeeded", b"canceled")
    with pytest.raises(InvalidWebhookError):
        stripe_gateway.verify_webhook(tampered, header, now=now)
    with pytest.raises(InvalidWebhookError):
        stripe_gateway.verify_webhook(body, None, now=now)
    other = FakeStripe(webhook_secret="whsec_someone_else")
    with pytest.raises(InvalidWebhookError):
        stripe_gateway.verify_webhook(body, other.sign(body.decode()), now=now)
    stale_body, stale_header = fake_stripe.signed(event, timestamp=int(time.time()) - 301)
    with pytest.raises(InvalidWebhookError):
        stripe_gateway.verify_webhook(stale_body, stale_header, now=now)
    # The tolerance is measured on the engine's clock, not the machine's.
    old = int(datetime(2026, 8, 15, 9, 0, tzinfo=UTC).timestamp())
    old_body, old_header = fake_stripe.signed(event, timestamp=old)
    later = datetime(2026, 8, 15, 9, 4, tzinfo=UTC)
    assert (
        json.loads(old_body)["id"]
        == stripe_gateway.verify_webhook(old_body, old_header, now=later)["id"]
    )


async def test_off_gateway_refuses_card_work_with_a_clear_sentence() -> None:
    gateway = gateway_from_settings(None, None)
    assert isinstance(gateway, OffGateway)
    assert gateway.enabled is False
    with pytest.raises(GatewayUnavailableError) as caught:
        await gateway.create_payment_intent(
            amount=1,
            currency="USD",
            customer=None,
            payment_method=None,
            off_session=False,
            confirm=False,
            idempotency_key="k",
            metadata={},
        )
    assert caught.value.message.startswith("Card payments are off: no Stripe key is configured")
    for call in (
        gateway.retrieve_payment_intent("pi_1"),
        gateway.cancel_payment_intent("pi_1"),
        gateway.retrieve_refund("re_1"),
        gateway.create_refund(payment_intent="pi_1", amount=1, idempotency_key="k", metadata={}),
        gateway.create_customer(email=None, name="x", metadata={}, idempotency_key="k"),
        gateway.create_setup_intent(customer="cus_1", idempotency_key="k"),
    ):
        with pytest.raises(GatewayUnavailableError):
            await call
    with pytest.raises(InvalidWebhookError):
        gateway.verify_webhook(b"{}", "t=1,v1=x", now=datetime.now(UTC))

    keyed = gateway_from_settings("sk_test_x", None, "http://127.0.0.1:9")
    assert isinstance(keyed, StripeGateway)
    with pytest.raises(InvalidWebhookError):
        keyed.verify_webhook(b"{}", "t=1,v1=x", now=datetime.now(UTC))
    await keyed.aclose()
