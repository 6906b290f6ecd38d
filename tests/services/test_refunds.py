"""Refunds (rules §7): every refund draws on a credit note; card refunds execute at the
fake Stripe and settle by webhook; failed ones give their credit back; nothing is
ever refunded twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from models import Invoice, Payment, Refund
from services import payments, refunds
from services.errors import GatewayUnavailableError, InvalidStateError, ValidationError
from services.gateway import OffGateway, StripeGateway
from services.webhooks import handle_stripe_webhook
from tests.fakestripe import FakeStripe
from tests.fakestripe.fixtures import fake_stripe, stripe_gateway
from tests.services.payments_builder import World, make_world

__all__ = ["fake_stripe", "stripe_gateway"]


@pytest.fixture
async def world(db, clock, fake_stripe: FakeStripe) -> World:
    fake_stripe.clock = lambda: clock.now().timestamp()
    fake_stripe.customers["cus_r"] = {"id": "cus_r", "object": "customer"}
    return await make_world(db, clock)


async def _paid_by_card(world: World, gateway: StripeGateway, total: int = 10_000) -> Payment:
    account = await world.account(customer="cus_r", card="pm_card_visa")
    invoice = await world.invoice(account, total)
    payment = await payments.charge_now(world.db, gateway, world.org, invoice.id, world.now)
    assert payment.status == "SUCCEEDED"
    return payment


async def _deliver_all(world: World, fake: FakeStripe, gateway: StripeGateway, object_id: str):
    for body, header in fake.deliveries(fake.events_for(object_id), duplicates=2, shuffle=True):
        await handle_stripe_webhook(world.db, gateway, body, header, world.clock)


async def test_partial_refund_is_a_credit_note_consumed_by_the_refund(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    payment = await _paid_by_card(world, stripe_gateway)
    refund = await refunds.refund_payment(
        world.db, stripe_gateway, world.org, payment.id, 3_000, world.now, reason="Desk broken"
    )

    assert (refund.status, refund.amount, refund.method, refund.reason) == (
        "PENDING",
        3_000,
        "CARD",
        "Desk broken",
    )
    (note,) = await world.credit_notes(payment.account_id)
    assert refund.credit_note_id == note.id
    assert (note.total, note.credit_refunded, note.credit_note_status) == (
        -3_000,
        3_000,
        "CONSUMED",
    )
    assert note.origin == "REFUND" and note.source_payment_id == payment.id
    assert (await world.get(Payment, payment.id)).refunded_amount == 3_000
    assert (await world.get(Invoice, payment.invoice_id)).status == "PAID"
    stored = fake_stripe.refunds[refund.gateway_refund_id or ""]
    assert (stored["amount"], stored["payment_intent"]) == (
        3_000,
        payment.gateway_payment_intent_id,
    )

    fake_stripe.settle_refunds()
    await _deliver_all(world, fake_stripe, stripe_gateway, stored["id"])
    assert (await world.get(Refund, refund.id)).status == "SUCCEEDED"
    assert (await world.get(Invoice, note.id)).credit_note_status == "CONSUMED"


async def test_failed_refund_gives_its_credit_back(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    payment = await _paid_by_card(world, stripe_gateway)
    fake_stripe.fail_refunds_for(payment.gateway_payment_intent_id or "")
    refund = await refunds.refund_payment(
        world.db, stripe_gateway, world.org, payment.id, 3_000, world.now
    )
    fake_stripe.settle_refunds()
    await _deliver_all(world, fake_stripe, stripe_gateway, refund.gateway_refund_id or "")

    failed = await world.get(Refund, refund.id)
    assert (failed.status, failed.error_code) == ("FAILED", "expired_or_canceled_card")
    note = await world.get(Invoice, refund.credit_note_id)
    assert (note.credit_refunded, note.credit_remaining, note.credit_note_status) == (
        0,
        3_000,
        "AVAILABLE",
    )
    assert (await world.get(Payment, payment.id)).refunded_amount == 0

    # The returned credit is this payment's refund already owed: a new refund draws
    # on it rather than issuing more credit, and cannot go beyond the payment.
    with pytest.raises(ValidationError, match="came back as credit"):
        await refunds.refund_payment(
            world.db, stripe_gateway, world.org, payment.id, 8_000, world.now
        )
    again = await refunds.refund_payment(
        world.db, stripe_gateway, world.org, payment.id, 3_000, world.now
    )
    assert again.credit_note_id == note.id
    assert len(await world.credit_notes(payment.account_id)) == 1


async def test_over_refund_is_refused_and_nothing_changes(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    payment = await _paid_by_card(world, stripe_gateway)
    await refunds.refund_payment(world.db, stripe_gateway, world.org, payment.id, 6_000, world.now)
    events_before = await world.event_types()

    with pytest.raises(ValidationError, match="left to refund"):
        await refunds.refund_payment(
            world.db, stripe_gateway, world.org, payment.id, 4_001, world.now
        )
    assert len(await world.refunds()) == 1
    assert len(await world.credit_notes(payment.account_id)) == 1
    assert len(fake_stripe.refunds) == 1
    assert (await world.get(Payment, payment.id)).refunded_amount == 6_000
    assert await world.event_types() == events_before

    # Two concurrent refunds that each fit, but not together: exactly one happens.
    results = await asyncio.gather(
        refunds.refund_payment(world.db, stripe_gateway, world.org, payment.id, 3_000, world.now),
        refunds.refund_payment(world.db, stripe_gateway, world.org, payment.id, 3_000, world.now),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Refund", "ValidationError"]
    assert (await world.get(Payment, payment.id)).refunded_amount == 9_000


async def test_refund_credit_splits_across_the_most_recent_card_payments(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account(customer="cus_r", card="pm_card_visa")
    older_invoice = await world.invoice(account, 5_000)
    newer_invoice = await world.invoice(account, 4_000)
    older = await payments.charge_now(
        world.db, stripe_gateway, world.org, older_invoice.id, world.now
    )
    world.clock.advance(timedelta(minutes=1))
    newer = await payments.charge_now(
        world.db, stripe_gateway, world.org, newer_invoice.id, world.now
    )
    # An overpayment left 6,500 of credit on a third invoice.
    third = await world.invoice(account, 1_000)
    async with world.db() as session, session.begin():
        cash = await payments.record_payment(session, world.org, third.id, 7_500, "CASH", world.now)
    note_id = cash.overpayment_credit_note_id
    assert note_id is not None

    with pytest.raises(ValidationError, match="at most"):
        await refunds.refund_credit(world.db, stripe_gateway, world.org, note_id, 9_001, world.now)
    made = await refunds.refund_credit(
        world.db, stripe_gateway, world.org, note_id, 6_000, world.now
    )
    assert [(r.payment_id, r.amount) for r in made] == [(newer.id, 4_000), (older.id, 2_000)]
    assert {r.credit_note_id for r in made} == {note_id}
    note = await world.get(Invoice, note_id)
    assert (note.credit_refunded, note.credit_remaining, note.credit_note_status) == (
        6_000,
        500,
        "AVAILABLE",
    )
    assert (await world.get(Payment, newer.id)).refunded_amount == 4_000
    assert (await world.get(Payment, older.id)).refunded_amount == 2_000
    assert sorted(r["amount"] for r in fake_stripe.refunds.values()) == [2_000, 4_000]
    with pytest.raises(ValidationError, match="available"):
        await refunds.refund_credit(world.db, stripe_gateway, world.org, note_id, 501, world.now)


async def test_offline_refunds_are_recorded_not_executed(
    world: World, fake_stripe: FakeStripe
) -> None:
    account = await world.account()
    invoice = await world.invoice(account, 5_000)
    async with world.db() as session, session.begin():
        cash = await payments.record_payment(
            session, world.org, invoice.id, 5_000, "CASH", world.now
        )
        back = await refunds.record_refund(
            session, world.org, 2_000, "CASH", world.now, payment_id=cash.id, reason="Moved out"
        )
    assert (back.status, back.method, back.payment_id) == ("SUCCEEDED", "CASH", cash.id)
    note = await world.get(Invoice, back.credit_note_id)
    assert (note.total, note.credit_note_status) == (-2_000, "CONSUMED")
    assert (await world.get(Payment, cash.id)).refunded_amount == 2_000
    assert not fake_stripe.refunds

    with pytest.raises(ValidationError):
        async with world.db() as session, session.begin():
            await refunds.record_refund(
                session, world.org, 3_001, "BANK_TRANSFER", world.now, payment_id=cash.id
            )
    with pytest.raises(ValidationError, match="gateway"):
        async with world.db() as session, session.begin():
            await refunds.record_refund(
                session, world.org, 1, "CARD", world.now, payment_id=cash.id
            )
    with pytest.raises(InvalidStateError, match="not through the gateway"):
        await refunds.refund_payment(world.db, _OnGateway(), world.org, cash.id, 1, world.now)
    with pytest.raises(GatewayUnavailableError):
        await refunds.refund_payment(world.db, OffGateway(), world.org, cash.id, 1, world.now)
    assert len(await world.refunds()) == 1


class _OnGateway(OffGateway):
    """Reports itself enabled, so refund_payment reaches its own checks."""

    enabled = True
