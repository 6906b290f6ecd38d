"""Stripe webhooks at service level: signed events from the fake Stripe go through
``handle_stripe_webhook``; duplicates, reordering, concurrency, races with our own
bookkeeping, and refused signatures."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from models import Account, Invoice, Payment, PaymentType, ProcessedWebhook
from services import payments
from services.gateway import InvalidWebhookError, StripeGateway
from services.webhooks import handle_stripe_webhook
from tests.fakestripe import FakeStripe
from tests.fakestripe.fixtures import fake_stripe, stripe_gateway
from tests.services.payments_builder import World, make_world

__all__ = ["fake_stripe", "stripe_gateway"]


@pytest.fixture
async def world(db, clock, fake_stripe: FakeStripe) -> World:
    # Signatures carry the engine's time, so the 300 s tolerance is checked on it.
    fake_stripe.clock = lambda: clock.now().timestamp()
    return await make_world(db, clock)


def _intent_id(payment: Payment) -> str:
    assert payment.gateway_payment_intent_id
    return payment.gateway_payment_intent_id


async def _deliver(world: World, gateway: StripeGateway, body: bytes, header: str | None):
    return await handle_stripe_webhook(world.db, gateway, body, header, world.clock)


async def _pay_now(world: World, gateway: StripeGateway, total: int = 9_000):
    account = await world.account()
    invoice = await world.invoice(account, total)
    started = await payments.start_card_payment(world.db, gateway, world.org, invoice.id, world.now)
    return invoice, started.payment


async def test_pay_now_then_signed_succeeded_webhook_pays_the_invoice(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    invoice, payment = await _pay_now(world, stripe_gateway)
    assert (await world.get(Invoice, invoice.id)).status == "PROCESSING"

    fake_stripe.confirm_with_card(_intent_id(payment), "pm_card_visa")
    fake_stripe.process()
    (succeeded,) = [
        e for e in fake_stripe.events_for(_intent_id(payment)) if e["type"].endswith("succeeded")
    ]
    outcome = await _deliver(world, stripe_gateway, *fake_stripe.signed(succeeded))

    assert (outcome.applied, outcome.duplicate) == (True, False)
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid) == ("PAID", 9_000)
    assert (await world.get(Payment, payment.id)).status == "SUCCEEDED"


async def test_five_shuffled_copies_with_a_failure_end_in_one_success(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    invoice, payment = await _pay_now(world, stripe_gateway)
    # The member's first card is declined in the sheet, the second one goes through.
    fake_stripe.confirm_with_card(_intent_id(payment), "pm_card_chargeDeclined")
    fake_stripe.process()
    fake_stripe.confirm_with_card(_intent_id(payment), "pm_card_visa")
    fake_stripe.process()
    events = fake_stripe.events_for(_intent_id(payment))
    assert {"payment_intent.payment_failed", "payment_intent.succeeded"} <= {
        e["type"] for e in events
    }

    for seed in (1, 2, 3):
        outcomes = [
            await _deliver(world, stripe_gateway, body, header)
            for body, header in fake_stripe.deliveries(
                events, duplicates=5, shuffle=True, seed=seed
            )
        ]
        fresh_payment = await world.get(Payment, payment.id)
        assert fresh_payment.status == "SUCCEEDED"
        if seed == 1:
            assert sum(not o.duplicate for o in outcomes) == len(events)
        else:
            assert all(o.duplicate for o in outcomes)

    assert len(await world.payments()) == 1
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid) == ("PAID", 9_000)
    assert await world.count(ProcessedWebhook) == len(events)


async def test_concurrent_duplicates_apply_once(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    invoice, payment = await _pay_now(world, stripe_gateway, 4_000)
    fake_stripe.confirm_with_card(_intent_id(payment), "pm_card_visa")
    fake_stripe.process()
    succeeded = fake_stripe.events_for(_intent_id(payment))[-1]
    body, header = fake_stripe.signed(succeeded)

    outcomes = await asyncio.gather(
        *(_deliver(world, stripe_gateway, body, header) for _ in range(10))
    )
    assert sum(not o.duplicate for o in outcomes) == 1
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid) == ("PAID", 4_000)
    changes = await world.event_types(payment_id=payment.id)
    assert changes.count("payment.status_changed") == 2  # PENDING→PROCESSING→SUCCEEDED


async def test_webhook_that_beats_our_own_bookkeeping_finds_the_payment(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    fake_stripe.customers["cus_r"] = {"id": "cus_r", "object": "customer"}
    account = await world.account(customer="cus_r", card="pm_card_visa")
    invoice = await world.invoice(account, 2_500)
    # Transaction 1 and the gateway call happened; transaction 2 has not run yet.
    async with world.db() as session, session.begin():
        row = await payments._open_card_payment(
            session,
            world.org.id,
            invoice.id,
            world.now,
            off_session=True,
            type_=PaymentType.MANUAL,
            actor_user_id=None,
        )
    intent = await stripe_gateway.create_payment_intent(
        amount=row.amount,
        currency="USD",
        customer="cus_r",
        payment_method="pm_card_visa",
        off_session=True,
        confirm=True,
        idempotency_key=payments.payment_idempotency_key(row.id),
        metadata=payments.intent_metadata(row),
    )
    succeeded = fake_stripe.events_for(intent.id)[-1]
    outcome = await _deliver(world, stripe_gateway, *fake_stripe.signed(succeeded))
    assert outcome.applied

    stored = await world.get(Payment, row.id)
    assert (stored.status, stored.gateway_payment_intent_id) == ("SUCCEEDED", intent.id)
    # Transaction 2 now arrives late and changes nothing.
    async with world.db() as session, session.begin():
        await payments.apply_payment_intent_state(session, world.org, row.id, intent, world.now)
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid) == ("PAID", 2_500)


async def test_bad_or_stale_signatures_change_nothing(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    invoice, payment = await _pay_now(world, stripe_gateway)
    fake_stripe.confirm_with_card(_intent_id(payment), "pm_card_visa")
    fake_stripe.process()
    succeeded = fake_stripe.events_for(_intent_id(payment))[-1]
    body, header = fake_stripe.signed(succeeded)

    forged = json.loads(body)
    forged["data"]["object"]["amount"] = 1
    stale_body, stale_header = fake_stripe.signed(
        succeeded, timestamp=int(world.now.timestamp()) - 301
    )
    for bad_body, bad_header in [
        (body, header.replace("v1=", "v1=00")),
        (json.dumps(forged).encode(), header),
        (body, None),
        (body, "garbage"),
        (stale_body, stale_header),
    ]:
        with pytest.raises(InvalidWebhookError):
            await _deliver(world, stripe_gateway, bad_body, bad_header)

    # A genuine delivery replayed after the tolerance is refused too.
    world.clock.advance(timedelta(seconds=301))
    with pytest.raises(InvalidWebhookError):
        await _deliver(world, stripe_gateway, body, header)

    assert await world.count(ProcessedWebhook) == 0
    assert (await world.get(Payment, payment.id)).status == "PROCESSING"
    assert (await world.get(Invoice, invoice.id)).status == "PROCESSING"


async def test_events_that_are_not_ours_are_acknowledged(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    foreign = await stripe_gateway.create_payment_intent(
        amount=700,
        currency="USD",
        customer=None,
        payment_method="pm_card_visa",
        off_session=True,
        confirm=True,
        idempotency_key="someone-else",
        metadata={"deskbill_payment_id": "999", "deskbill_organization_id": "999"},
    )
    outcomes = [
        await _deliver(world, stripe_gateway, body, header)
        for body, header in fake_stripe.deliveries(fake_stripe.events_for(foreign.id))
    ]
    assert [o.applied for o in outcomes] == [False, False]
    assert {o.type for o in outcomes} == {"payment_intent.created", "payment_intent.succeeded"}
    assert await world.count(ProcessedWebhook) == 2
    assert await world.count(Payment) == 0


async def test_saved_card_becomes_the_default_method(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account(autopay=True)
    await payments.start_card_setup(
        world.db, stripe_gateway, world.org, account.id, request_key="r1"
    )
    (setup_id,) = fake_stripe.setup_intents
    fake_stripe.confirm_setup(setup_id, "pm_card_mastercard")
    succeeded = fake_stripe.events_for(setup_id)[-1]
    outcome = await _deliver(world, stripe_gateway, *fake_stripe.signed(succeeded))
    assert outcome.applied
    stored = await world.get(Account, account.id)
    assert stored.default_payment_method_id == "pm_card_mastercard"
    assert stored.stripe_customer_id == fake_stripe.setup_intents[setup_id]["customer"]
