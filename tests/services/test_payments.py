"""Payments (rules §6) at service level, card payments against the fake Stripe:
offline payments and overpayment credit, pay-now, charge-now, auto-pay with its one
retry, abandoned payments, forward-only state, and 100 charges through a gateway
that loses a fifth of its answers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from models import Invoice, InvoiceStatus, Payment, PaymentStatus, PaymentType
from services import payments
from services.errors import GatewayUnavailableError, InvalidStateError, ValidationError
from services.gateway import GatewayOutcomeUnknownError, IntentState, OffGateway, StripeGateway
from tests.fakestripe import FakeStripe
from tests.fakestripe.fixtures import FAULT_DELAY, fake_stripe, stripe_gateway
from tests.services.payments_builder import World, make_world

__all__ = ["fake_stripe", "stripe_gateway"]


@pytest.fixture
async def world(db, clock) -> World:
    return await make_world(db, clock)


def _intent_id(payment: Payment) -> str:
    assert payment.gateway_payment_intent_id, "the payment reached the gateway"
    return payment.gateway_payment_intent_id


# --------------------------------------------------------------------------- offline


async def test_partial_then_full_offline_payment(world: World) -> None:
    account = await world.account()
    invoice = await world.invoice(account, 10_000)

    async with world.db() as session, session.begin():
        first = await payments.record_payment(
            session, world.org, invoice.id, 4_000, "CASH", world.now, note="At the desk"
        )
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid, fresh.balance_due) == ("DUE", 4_000, 6_000)
    assert (first.status, first.type, first.method) == ("SUCCEEDED", "MANUAL", "CASH")
    assert first.applied_amount == 4_000 and first.note == "At the desk"
    assert first.received_on == world.now.date()

    async with world.db() as session, session.begin():
        await payments.record_payment(
            session, world.org, invoice.id, 6_000, "BANK_TRANSFER", world.now
        )
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid, fresh.paid_at) == ("PAID", 10_000, world.now)
    assert (await world.event_types(invoice_id=invoice.id)).count("payment.created") == 2


async def test_overpayment_becomes_a_credit_note(world: World) -> None:
    account = await world.account()
    invoice = await world.invoice(account, 10_000)

    async with world.db() as session, session.begin():
        payment = await payments.record_payment(
            session, world.org, invoice.id, 12_500, "CHEQUE", world.now
        )
    assert (payment.amount, payment.applied_amount) == (12_500, 10_000)
    (note,) = await world.credit_notes(account.id)
    assert payment.overpayment_credit_note_id == note.id
    assert (note.total, note.credit_remaining, note.credit_note_status) == (
        -2_500,
        2_500,
        "AVAILABLE",
    )
    assert (note.origin, note.source_payment_id, note.source_invoice_id) == (
        "OVERPAYMENT",
        payment.id,
        invoice.id,
    )
    assert (await world.get(Invoice, invoice.id)).status == "PAID"


@pytest.mark.parametrize(
    ("status", "method", "amount", "error"),
    [
        (InvoiceStatus.PAID, "CASH", 100, InvalidStateError),
        (InvoiceStatus.PROCESSING, "CASH", 100, InvalidStateError),
        (InvoiceStatus.DUE, "CARD", 100, ValidationError),
        (InvoiceStatus.DUE, "CASH", 0, ValidationError),
        (InvoiceStatus.DUE, "GOLD", 100, ValidationError),
    ],
)
async def test_offline_payment_refusals_change_nothing(
    world: World, status: InvoiceStatus, method: str, amount: int, error: type
) -> None:
    account = await world.account()
    paid = 10_000 if status == InvoiceStatus.PAID else 0
    invoice = await world.invoice(account, 10_000, status=status, amount_paid=paid)
    with pytest.raises(error):
        async with world.db() as session, session.begin():
            await payments.record_payment(session, world.org, invoice.id, amount, method, world.now)
    assert await world.count(Payment) == 0
    assert (await world.get(Invoice, invoice.id)).amount_paid == paid


# --------------------------------------------------------------------------- pay now / charge now


async def test_pay_now_processing_then_succeeded(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account()
    invoice = await world.invoice(account, 8_000)

    started = await payments.start_card_payment(
        world.db, stripe_gateway, world.org, invoice.id, world.now, actor_user_id=account.user_id
    )
    payment = started.payment
    assert started.client_secret and started.client_secret.startswith(_intent_id(payment))
    assert (payment.status, payment.amount, payment.type) == ("PROCESSING", 8_000, "MANUAL")
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.status_before_processing) == ("PROCESSING", "DUE")
    # The customer was created on first need and kept on the account.
    stored = fake_stripe.payment_intents[_intent_id(payment)]
    assert stored["customer"] == (await world.get(type(account), account.id)).stripe_customer_id
    assert stored["metadata"]["deskbill_payment_id"] == str(payment.id)

    fake_stripe.confirm_with_card(_intent_id(payment), "pm_card_visa")
    fake_stripe.process()
    intent = await stripe_gateway.retrieve_payment_intent(_intent_id(payment))
    async with world.db() as session, session.begin():
        done = await payments.apply_payment_intent_state(
            session, world.org, payment.id, intent, world.now
        )
    assert (done.status, done.applied_amount, done.succeeded_at) == ("SUCCEEDED", 8_000, world.now)
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid, fresh.status_before_processing) == (
        "PAID",
        8_000,
        None,
    )
    statuses = [
        e for e in await world.event_types(payment_id=payment.id) if e.startswith("payment.")
    ]
    assert statuses == ["payment.created", "payment.status_changed", "payment.status_changed"]


async def test_pay_now_with_an_idempotency_key_returns_the_same_intent(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account(customer=None)
    invoice = await world.invoice(
        account, 5_000, status=InvoiceStatus.UPCOMING, due_date=world.now.date() + timedelta(days=3)
    )
    first = await payments.start_card_payment(
        world.db, stripe_gateway, world.org, invoice.id, world.now, idempotency_key="tap-1"
    )
    second = await payments.start_card_payment(
        world.db, stripe_gateway, world.org, invoice.id, world.now, idempotency_key="tap-1"
    )
    assert first.payment.id == second.payment.id
    assert first.client_secret == second.client_secret
    assert len(fake_stripe.payment_intents) == 1
    assert len(await world.payments()) == 1
    assert (await world.get(Invoice, invoice.id)).status_before_processing == "UPCOMING"


async def test_charge_now_decline_is_recorded_and_the_invoice_returns(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account(customer="cus_x", card="pm_card_chargeDeclinedInsufficientFunds")
    fake_stripe.customers["cus_x"] = {"id": "cus_x", "object": "customer"}
    invoice = await world.invoice(
        account, 7_000, status=InvoiceStatus.OVERDUE, due_date=world.now.date() - timedelta(days=10)
    )

    payment = await payments.charge_now(world.db, stripe_gateway, world.org, invoice.id, world.now)
    assert (payment.status, payment.error_code) == ("FAILED", "insufficient_funds")
    assert payment.error_message == "Your card has insufficient funds."
    assert _intent_id(payment) in fake_stripe.payment_intents
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid, fresh.status_before_processing) == ("OVERDUE", 0, None)
    changes = await world.event_types(invoice_id=invoice.id)
    assert changes.count("invoice.status_changed") == 2  # → PROCESSING → OVERDUE


async def test_charge_now_only_for_due_or_overdue_and_with_a_saved_card(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    carded = await world.account(customer="cus_y", card="pm_card_visa")
    upcoming = await world.invoice(
        carded, 1_000, status=InvoiceStatus.UPCOMING, due_date=world.now.date() + timedelta(days=9)
    )
    with pytest.raises(InvalidStateError, match="DUE/OVERDUE"):
        await payments.charge_now(world.db, stripe_gateway, world.org, upcoming.id, world.now)
    bare = await world.account("Bo")
    due = await world.invoice(bare, 1_000)
    with pytest.raises(InvalidStateError, match="no saved card"):
        await payments.charge_now(world.db, stripe_gateway, world.org, due.id, world.now)
    assert await world.count(Payment) == 0
    assert not fake_stripe.payment_intents
    assert (await world.get(Invoice, due.id)).status == "DUE"


async def test_gateway_off_refuses_card_payments_and_nothing_changes(world: World) -> None:
    account = await world.account(customer="cus_z", card="pm_card_visa")
    invoice = await world.invoice(account, 1_000)
    off = OffGateway()
    with pytest.raises(GatewayUnavailableError, match="Card payments are off"):
        await payments.start_card_payment(world.db, off, world.org, invoice.id, world.now)
    with pytest.raises(GatewayUnavailableError):
        await payments.charge_now(world.db, off, world.org, invoice.id, world.now)
    assert await payments.run_autopay(world.db, off, world.org, world.now) == []
    assert await world.count(Payment) == 0
    assert (await world.get(Invoice, invoice.id)).status == "DUE"
    # Offline payments still work without a gateway.
    async with world.db() as session, session.begin():
        await payments.record_payment(session, world.org, invoice.id, 1_000, "CASH", world.now)
    assert (await world.get(Invoice, invoice.id)).status == "PAID"


async def test_state_only_moves_forward(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account(customer="cus_f", card="pm_card_visa")
    fake_stripe.customers["cus_f"] = {"id": "cus_f", "object": "customer"}
    invoice = await world.invoice(account, 3_000)
    payment = await payments.charge_now(world.db, stripe_gateway, world.org, invoice.id, world.now)
    assert payment.status == "SUCCEEDED"
    intent_id = _intent_id(payment)
    stale = [
        IntentState(
            intent_id,
            "requires_payment_method",
            3_000,
            "USD",
            error_code="card_declined",
            error_message="Declined.",
        ),
        IntentState(intent_id, "processing", 3_000, "USD"),
        IntentState(intent_id, "canceled", 3_000, "USD"),
        IntentState(intent_id, "succeeded", 3_000, "USD", amount_received=3_000),
    ]
    for state in stale:
        async with world.db() as session, session.begin():
            again = await payments.apply_payment_intent_state(
                session, world.org, payment.id, state, world.now
            )
        assert again.status == "SUCCEEDED"
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.amount_paid) == ("PAID", 3_000)
    assert (await world.event_types(payment_id=payment.id)).count("payment.status_changed") == 1


# --------------------------------------------------------------------------- auto-pay


async def test_autopay_charges_a_due_invoice_once(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account(customer="cus_a", card="pm_card_visa")
    fake_stripe.customers["cus_a"] = {"id": "cus_a", "object": "customer"}
    invoice = await world.invoice(account, 25_000)
    manual = await world.account("Manual", customer="cus_a", card="pm_card_visa", autopay=False)
    untouched = await world.invoice(manual, 1_000)

    charged = await payments.run_autopay(world.db, stripe_gateway, world.org, world.now)
    assert [p.invoice_id for p in charged] == [invoice.id]
    (payment,) = charged
    assert (payment.type, payment.attempt, payment.status) == ("AUTOMATIC", 1, "SUCCEEDED")
    assert fake_stripe.payment_intents[_intent_id(payment)]["payment_method"] == ("pm_card_visa")
    assert (await world.get(Invoice, invoice.id)).status == "PAID"
    assert (await world.get(Invoice, untouched.id)).status == "DUE"
    assert await payments.run_autopay(world.db, stripe_gateway, world.org, world.now) == []
    assert len(fake_stripe.payment_intents) == 1


async def test_autopay_decline_is_retried_once_after_the_retry_hours(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account(customer="cus_d", card="pm_card_chargeDeclined")
    fake_stripe.customers["cus_d"] = {"id": "cus_d", "object": "customer"}
    invoice = await world.invoice(account, 4_000)
    start = world.now

    (first,) = await payments.run_autopay(world.db, stripe_gateway, world.org, start)
    assert (first.status, first.attempt, first.error_code) == ("FAILED", 1, "generic_decline")
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.status, fresh.autopay_attempts) == ("DUE", 1)
    assert fresh.autopay_retry_at == start + timedelta(hours=4)

    later = start + timedelta(hours=3, minutes=59)
    assert await payments.run_autopay(world.db, stripe_gateway, world.org, later) == []

    retry_time = start + timedelta(hours=4)
    (second,) = await payments.run_autopay(world.db, stripe_gateway, world.org, retry_time)
    assert (second.status, second.attempt, second.type) == ("FAILED", 2, "AUTOMATIC")
    fresh = await world.get(Invoice, invoice.id)
    assert (fresh.autopay_attempts, fresh.autopay_retry_at, fresh.status) == (2, None, "DUE")

    for hours in (8, 48):
        assert (
            await payments.run_autopay(
                world.db, stripe_gateway, world.org, start + timedelta(hours=hours)
            )
            == []
        )
    rows = await world.payments(invoice.id)
    assert [(p.attempt, p.status, p.error_code) for p in rows] == [
        (1, "FAILED", "generic_decline"),
        (2, "FAILED", "generic_decline"),
    ]
    assert len(fake_stripe.payment_intents) == 2


async def test_the_billing_run_charges_auto_pay_through_its_org_jobs(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    from services import billing

    fake_stripe.customers["cus_b"] = {"id": "cus_b", "object": "customer"}
    account = await world.account(customer="cus_b", card="pm_card_visa")
    invoice = await world.invoice(account, 3_300)
    saved = list(billing.ORG_JOBS)
    try:
        payments.register_payment_jobs(OffGateway())
        job = payments.register_payment_jobs(stripe_gateway)
        assert [j for j in billing.ORG_JOBS if isinstance(j, payments.PaymentJobs)] == [job]
        await billing.run_billing(world.db, world.org.id, world.now)
    finally:
        billing.ORG_JOBS[:] = saved
    (payment,) = await world.payments(invoice.id)
    assert (payment.type, payment.status) == ("AUTOMATIC", "SUCCEEDED")
    assert (await world.get(Invoice, invoice.id)).status == "PAID"


# --------------------------------------------------------------------------- abandoned


async def test_abandoned_pay_now_is_canceled_after_30_minutes(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    account = await world.account()
    invoice = await world.invoice(account, 6_000)
    other = await world.invoice(account, 2_000)
    quiet = await payments.start_card_payment(
        world.db, stripe_gateway, world.org, invoice.id, world.now
    )
    # This one was paid at the gateway but its webhook never arrived.
    lost_webhook = await payments.start_card_payment(
        world.db, stripe_gateway, world.org, other.id, world.now
    )
    fake_stripe.confirm_with_card(_intent_id(lost_webhook.payment), "pm_card_visa")
    fake_stripe.process()

    soon = world.now + timedelta(minutes=29)
    assert await payments.abandon_stale_payments(world.db, stripe_gateway, world.org, soon) == []

    late = world.now + timedelta(minutes=31)
    settled = await payments.abandon_stale_payments(world.db, stripe_gateway, world.org, late)
    by_id = {p.id: p for p in settled}
    canceled = by_id[quiet.payment.id]
    assert (canceled.status, canceled.error_code) == ("CANCELED", "abandoned")
    assert fake_stripe.payment_intents[_intent_id(canceled)]["status"] == "canceled"
    assert (await world.get(Invoice, invoice.id)).status == "DUE"
    assert by_id[lost_webhook.payment.id].status == "SUCCEEDED"
    assert (await world.get(Invoice, other.id)).status == "PAID"


# --------------------------------------------------------------------------- faults


async def test_hundred_charges_through_a_lossy_gateway_match_one_intent_each(
    world: World, fake_stripe: FakeStripe, stripe_gateway: StripeGateway
) -> None:
    fake_stripe.customers["cus_many"] = {"id": "cus_many", "object": "customer"}
    accounts = [
        await world.account(f"Member {i}", customer="cus_many", card="pm_card_visa")
        for i in range(5)
    ]
    invoices = [await world.invoice(accounts[i % 5], 1_000 + i) for i in range(100)]
    fake_stripe.set_faults(
        rate_500=0.1, rate_timeout=0.1, phase="random", timeout_delay=FAULT_DELAY, seed=11
    )

    gate = asyncio.Semaphore(10)

    async def charge(invoice_id: int) -> None:
        async with gate:
            try:
                await payments.charge_now(
                    world.db, stripe_gateway, world.org, invoice_id, world.now
                )
            except GatewayOutcomeUnknownError:
                pass  # left PENDING, found below

    await asyncio.gather(*(charge(invoice.id) for invoice in invoices))
    # The billing run asks again about every unanswered attempt until all are known.
    for _ in range(20):
        async with world.db() as session:
            pending = await session.scalar(
                select(Payment.id).where(Payment.status == PaymentStatus.PENDING).limit(1)
            )
        if pending is None:
            break
        await payments.reconcile_payments(
            world.db, stripe_gateway, world.org, world.now, older_than=timedelta(0)
        )

    assert fake_stripe.faults_injected, "faults were injected"
    rows = await world.payments()
    intents = fake_stripe.snapshot()["payment_intents"]
    assert len(rows) == 100
    assert len(intents) == 100, "no duplicate PaymentIntent"
    for row in rows:
        intent = intents[_intent_id(row)]
        assert intent["metadata"]["deskbill_payment_id"] == str(row.id)
        assert intent["amount"] == row.amount
        assert (row.status, intent["status"]) == ("SUCCEEDED", "succeeded")
    async with world.db() as session:
        statuses = set(await session.scalars(select(Invoice.status)))
    assert statuses == {"PAID"}
    assert {p.type for p in rows} == {PaymentType.MANUAL}
