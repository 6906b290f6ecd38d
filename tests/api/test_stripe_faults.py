"""Stripe misbehaving under the real HTTP API: answering 500, timing out (before or
after it acted), answering slowly. Each time the API answers with coded errors (never
a 500 or INTERNAL_ERROR), recovers by itself once Stripe is well — a retry with the
same idempotency key finishes the payment — writes an event for every payment row and
status change, and charges nobody twice: the fake holds one PaymentIntent per invoice.

The server's gateway is the real ``stripe`` library with a short client timeout
(``tests.fakestripe.fixtures.make_gateway``), so lost answers cost fractions of a
second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from models import Event, Payment
from services.clock import FixedClock
from tests.api.test_payments_api import CHARGE, PAY, Desk, _desk
from tests.fakestripe import FakeStripe
from tests.fakestripe.fixtures import CLIENT_TIMEOUT, FAULT_DELAY, make_gateway

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)
GATEWAY_CODES = {"GATEWAY_ERROR", "GATEWAY_UNAVAILABLE"}


@pytest.fixture
async def desk(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Desk]:
    with FakeStripe(clock=lambda: clock.now().timestamp()) as fake:
        async for desk in _desk(engine, clock, fake):
            desk.api.state.services["gateway"] = make_gateway(fake)
            yield desk


async def intents_for(desk: Desk, invoice_id: str) -> int:
    """PaymentIntents the fake holds for the invoice: the money side of "twice"."""
    rows = await payment_rows(desk)
    intents = {r.gateway_payment_intent_id for r in rows if r.gateway_payment_intent_id}
    assert intents <= set(desk.stripe.payment_intents), "a payment names an unknown intent"
    return len(desk.stripe.payment_intents)


async def payment_rows(desk: Desk) -> list[Payment]:
    async with desk.api.state.sessionmaker() as session:
        return list(await session.scalars(select(Payment).order_by(Payment.id)))


async def events_match_payments(desk: Desk) -> None:
    """Every payment row has its payment.created event (none lost, none doubled)."""
    async with desk.api.state.sessionmaker() as session:
        created = await session.scalar(
            select(func.count()).select_from(Event).where(Event.type == "payment.created")
        )
    assert created == len(await payment_rows(desk))


def coded(body: dict[str, Any]) -> str:
    (error,) = body["errors"]
    code: str = error["extensions"]["code"]
    assert code in GATEWAY_CODES, body
    assert "Traceback" not in error["message"] and error["message"].endswith("."), error
    return code


async def carded_invoice(desk: Desk, name: str) -> str:
    _, account = await desk.member(name)
    await desk.save_card(account, "pm_card_visa")
    return await desk.invoice(account, credit=False)


@pytest.mark.parametrize("phase", ["before", "after"])
async def test_stripe_answering_500_is_coded_and_a_retry_charges_once(
    desk: Desk, phase: str
) -> None:
    invoice_id = await carded_invoice(desk, "Ada")
    desk.stripe.set_faults(rate_500=1.0, phase=phase, paths=("/v1/payment_intents",))
    failed = await desk.gql(CHARGE, {"id": invoice_id, "key": "charge-1"})
    coded(failed)
    assert (await desk.read_invoice(invoice_id))["status"] in {"DUE", "PROCESSING"}

    desk.stripe.set_faults()  # Stripe is well again
    done = await desk.ok(CHARGE, {"id": invoice_id, "key": "charge-1"})
    assert (done["chargeInvoice"]["status"], done["chargeInvoice"]["invoice"]["status"]) == (
        "SUCCEEDED",
        "PAID",
    )
    assert await intents_for(desk, invoice_id) == 1
    await events_match_payments(desk)


async def test_stripe_timing_out_after_acting_is_coded_and_charges_once(desk: Desk) -> None:
    invoice_id = await carded_invoice(desk, "Grace")
    # Stripe creates and confirms the intent, but every answer comes too late.
    desk.stripe.set_faults(rate_timeout=1.0, phase="after", timeout_delay=FAULT_DELAY)
    lost = await desk.gql(CHARGE, {"id": invoice_id, "key": "charge-1"})
    coded(lost)
    assert len(desk.stripe.payment_intents) == 1  # it did act

    desk.stripe.set_faults()
    done = await desk.ok(CHARGE, {"id": invoice_id, "key": "charge-1"})
    assert done["chargeInvoice"]["invoice"]["status"] == "PAID"
    assert await intents_for(desk, invoice_id) == 1  # the retry found it, made no second
    await events_match_payments(desk)


async def test_stripe_answering_slowly_still_pays_once(desk: Desk) -> None:
    invoice_id = await carded_invoice(desk, "Hedy")
    assert FAULT_DELAY / 5 < CLIENT_TIMEOUT
    # Slow but within the client's patience: no error at all.
    desk.stripe.set_faults(rate_timeout=1.0, phase="after", timeout_delay=FAULT_DELAY / 5)
    done = await desk.ok(CHARGE, {"id": invoice_id})
    assert done["chargeInvoice"]["invoice"]["status"] == "PAID"
    assert await intents_for(desk, invoice_id) == 1
    await events_match_payments(desk)


async def test_pay_invoice_while_stripe_is_down_is_coded_then_recovers(desk: Desk) -> None:
    name, account = await desk.member("Katherine")
    invoice_id = await desk.invoice(account, credit=False)
    desk.stripe.set_faults(rate_timeout=1.0, phase="before", timeout_delay=FAULT_DELAY)
    down = await desk.gql(PAY, {"id": invoice_id, "key": "pay-1"}, who=name)
    coded(down)
    await events_match_payments(desk)

    desk.stripe.set_faults()
    paid = await desk.ok(PAY, {"id": invoice_id, "key": "pay-1"}, who=name)
    assert paid["payInvoice"]["invoice"]["status"] == "PROCESSING"
    assert paid["payInvoice"]["clientSecret"]
    assert await intents_for(desk, invoice_id) == 1
    await events_match_payments(desk)


async def test_stripe_unreachable_before_a_customer_exists_says_nothing_was_kept(
    desk: Desk,
) -> None:
    """The review's finding: with Stripe unreachable, on an account without a Stripe
    customer yet, ``payInvoice`` said "the attempt is kept and will be checked again"
    although no payment row existed, and ``extensions.cause`` showed the Stripe
    library's network message. Now it says what happened, in the API's words."""
    name, account = await desk.member("Lin")
    invoice_id = await desk.invoice(account, credit=False)
    desk.stripe.set_faults(rate_timeout=1.0, phase="before", timeout_delay=FAULT_DELAY)
    down = await desk.gql(PAY, {"id": invoice_id, "key": "pay-lin"}, who=name)
    coded(down)
    (error,) = down["errors"]
    assert await payment_rows(desk) == []  # nothing was kept …
    assert "kept" not in error["message"] and "checked again" not in error["message"], error
    cause = str(error["extensions"].get("cause", ""))
    # … and nothing of the Stripe library's internals leaks out.
    for internal in ("stripe", "Stripe's API", "urllib", "httpx", "requests", "Errno"):
        assert internal.lower() not in cause.lower(), error
    assert (await desk.read_invoice(invoice_id))["status"] == "DUE"
