"""Payments and refunds through the real HTTP API and the real ``stripe`` library,
against the fake Stripe (rules §6, §7, §12.3): auto-pay in the billing run with its one
retry, card refunds drawing on credit notes, idempotency keys under retries and
concurrency, and the gateway switched off.

``stripe_api`` is the harness both payment test modules use: a uvicorn server whose
settings point the Stripe client at a ``FakeStripe``, whose signed webhooks are
POSTed to the server's ``/webhooks/stripe``; both share the test's FixedClock, so
moving time moves the billing run and the signatures' timestamps together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.auth import issue_token
from app.settings import Settings
from models import Invoice, Payment, Refund, Role, User
from services import accounts, policy
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.fakestripe import FakeStripe

# The stripe library's httpx client sends form bodies as raw ``data=``; httpx warns.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)

INVOICE = """
query($id: ID!) { invoice(id: $id) {
  id status amountPaid { amount } balanceDue { amount }
  payments { id status type attempt errorCode amount { amount } refundedAmount { amount } }
  refunds { id status amount { amount } }
} }"""
PAY = """
mutation($id: ID!, $key: String) { payInvoice(invoiceId: $id, idempotencyKey: $key) {
  clientSecret invoice { status } payment { id status method gatewayPaymentIntentId }
} }"""
CHARGE = """
mutation($id: ID!, $key: String) { chargeInvoice(invoiceId: $id, idempotencyKey: $key) {
  id status type errorCode gatewayPaymentIntentId invoice { status }
} }"""
RECORD = """
mutation($input: RecordPaymentInput!, $key: String) {
  recordPayment(input: $input, idempotencyKey: $key) {
    id status method amount { amount } note receivedOn invoice { status balanceDue { amount } }
} }"""
REFUND = """
mutation($input: RefundPaymentInput!, $key: String) {
  refundPayment(input: $input, idempotencyKey: $key) {
    id status amount { amount } reason gatewayRefundId
    creditNote { id status originalCredit { amount } remainingCredit { amount } }
    payment { refundedAmount { amount } }
} }"""
REFUND_CREDIT = """
mutation($input: RefundCreditInput!, $key: String) {
  refundCredit(input: $input, idempotencyKey: $key) {
    id status amount { amount } payment { id }
    creditNote { status remainingCredit { amount } }
} }"""
CREDIT_NOTE = """
query($id: ID!) { creditNote(id: $id) {
  status remainingCredit { amount } refundedCredit { amount }
  refunds { status amount { amount } }
} }"""
RUN_BILLING = "mutation { runBilling { accountsProcessed } }"


@dataclass
class Desk:
    """One organization behind a running server: an admin, a member with an account,
    and the fake Stripe (or none, when the gateway is off)."""

    api: Api
    fake: FakeStripe | None
    clock: FixedClock
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def stripe(self) -> FakeStripe:
        assert self.fake is not None
        return self.fake

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, *, who: str = "admin"
    ) -> dict[str, Any]:
        return await self.api.gql(query, variables, token=self.tokens[who])

    async def ok(
        self, query: str, variables: dict[str, Any] | None = None, *, who: str = "admin"
    ) -> dict[str, Any]:
        body = await self.gql(query, variables, who=who)
        assert not body.get("errors"), body
        data: dict[str, Any] = body["data"]
        return data

    async def refused(
        self, query: str, variables: dict[str, Any] | None = None, *, who: str = "admin"
    ) -> dict[str, Any]:
        """The first error of a call that must fail."""
        body = await self.gql(query, variables, who=who)
        assert body.get("errors"), body
        error: dict[str, Any] = body["errors"][0]
        return error

    async def member(self, name: str) -> tuple[str, str]:
        """A member with their own account: (token name, account id)."""
        data = await self.ok(
            """mutation($email: String!, $name: String!) {
              createUser(input: {email: $email, name: $name, role: MEMBER}) {
                user { id } account { id } } }""",
            {"email": f"{name.lower()}@harbour.test", "name": name},
        )
        async with self.api.state.sessionmaker() as session:
            user = await session.scalar(
                select(User).where(User.email == f"{name.lower()}@harbour.test")
            )
            assert user is not None
            self.tokens[name] = issue_token(self.settings, user, self.clock.now())
        account_id: str = data["createUser"]["account"]["id"]
        return name, account_id

    async def invoice(self, account_id: str, amount: str = "90.00", *, credit: bool = True) -> str:
        """A finalized invoice, due today (DUE); ``credit`` applies available credit."""
        data = await self.ok(
            """mutation($account: ID!, $amount: Decimal!, $credit: Boolean!) {
              createManualInvoice(input: {accountId: $account, finalizeNow: true,
                applyCredit: $credit, lines: [{description: "Hot desk", unitPrice: $amount}]})
              { id status } }""",
            {"account": account_id, "amount": amount, "credit": credit},
        )
        assert data["createManualInvoice"]["status"] == "DUE"
        invoice_id: str = data["createManualInvoice"]["id"]
        return invoice_id

    async def read_invoice(self, invoice_id: str, who: str = "admin") -> dict[str, Any]:
        invoice: dict[str, Any] = (await self.ok(INVOICE, {"id": invoice_id}, who=who))["invoice"]
        return invoice

    async def deliver(
        self,
        events: list[dict[str, Any]],
        *,
        duplicates: int = 1,
        shuffle: bool = False,
        seed: int = 0,
    ) -> list[int]:
        """The fake POSTs its signed events to the server (from a thread: it is a
        blocking client, and the server runs on this event loop)."""
        return await asyncio.to_thread(
            self.stripe.post_webhooks,
            f"{self.api.url}/webhooks/stripe",
            events,
            duplicates=duplicates,
            shuffle=shuffle,
            seed=seed,
        )

    async def deliver_for(self, object_id: str) -> None:
        statuses = await self.deliver(self.stripe.events_for(object_id))
        assert set(statuses) == {200}, statuses

    async def save_card(self, account_id: str, card: str, *, who: str = "admin") -> None:
        """The member app's card-saving flow: a SetupIntent from the API, the card
        sheet confirms it at Stripe, Stripe's webhook makes it the default method."""
        data = await self.ok(
            """mutation($id: ID!) { startCardSetup(accountId: $id) {
                clientSecret account { hasPaymentMethod } } }""",
            {"id": account_id},
            who=who,
        )
        setup = data["startCardSetup"]
        assert setup["account"]["hasPaymentMethod"] is False
        setup_intent = setup["clientSecret"].split("_secret_")[0]
        self.stripe.confirm_setup(setup_intent, card)
        await self.deliver_for(setup_intent)
        account = await self.ok(
            "query($id: ID!) { node(id: $id) { ... on Account { hasPaymentMethod } } }",
            {"id": account_id},
        )
        assert account["node"]["hasPaymentMethod"] is True

    async def count(self, model: Any) -> int:
        async with self.api.state.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _desk(
    engine: AsyncEngine, clock: FixedClock, fake: FakeStripe | None
) -> AsyncIterator[Desk]:
    stripe = (
        {"stripe_api_key": fake.api_key, "stripe_webhook_secret": fake.webhook_secret,
         "stripe_api_base": fake.url}
        if fake is not None
        else {}
    )  # fmt: skip
    settings = Settings(
        worker_enabled=False, graphiql=False, token_secret=SETTINGS.token_secret, **stripe
    )  # type: ignore[arg-type]
    app = create_app(settings, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            desk = Desk(Api(url=url, app=app, client=client), fake, clock, settings)
            async with desk.api.state.sessionmaker.begin() as session:
                org = await policy.create_organization(
                    session, "Harbour Works", "harbour", "USD", clock.now()
                )
                admin = await accounts.create_user(
                    session, org, email="admin@harbour.test", name="Admin", role=Role.ADMIN,
                    now=clock.now(),
                )  # fmt: skip
            desk.tokens["admin"] = issue_token(settings, admin, clock.now())
            yield desk


@pytest.fixture
async def stripe_api(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Desk]:
    """A server with Stripe on, pointed at a fake Stripe that shares the test clock."""
    with FakeStripe(clock=lambda: clock.now().timestamp()) as fake:
        async for desk in _desk(engine, clock, fake):
            yield desk


@pytest.fixture
async def offline_api(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Desk]:
    """A server without a Stripe key: the gateway is off."""
    async for desk in _desk(engine, clock, None):
        yield desk


async def _paid_by_card(
    desk: Desk, account_id: str, amount: str = "90.00"
) -> tuple[str, dict[str, Any]]:
    """An invoice charged in full to the account's saved card: (invoice id, payment)."""
    invoice_id = await desk.invoice(account_id, amount, credit=False)
    payment = (await desk.ok(CHARGE, {"id": invoice_id}))["chargeInvoice"]
    assert (payment["status"], payment["invoice"]["status"]) == ("SUCCEEDED", "PAID")
    return invoice_id, payment


# --------------------------------------------------------------------------- auto-pay


async def test_autopay_in_the_billing_run_charges_and_retries_a_decline_once(
    stripe_api: Desk,
) -> None:
    desk = stripe_api
    await desk.ok("mutation { updateInvoicePolicy(input: {autopayRetryHours: 6}) { billingDay } }")
    _, visa = await desk.member("Vera")
    _, declined = await desk.member("Dan")
    for account, card in ((visa, "pm_card_visa"), (declined, "pm_card_chargeDeclined")):
        await desk.save_card(account, card, who="Vera" if account == visa else "Dan")
        await desk.ok(
            "mutation($id: ID!) { setAutopay(accountId: $id, enabled: true) { autopay } }",
            {"id": account},
        )
    paid_id = await desk.invoice(visa, "120.00")
    failing_id = await desk.invoice(declined, "45.00")
    start = desk.clock.now()

    await desk.ok(RUN_BILLING)
    paid = await desk.read_invoice(paid_id)
    assert (paid["status"], paid["amountPaid"]["amount"]) == ("PAID", "120.00")
    assert [(p["type"], p["status"]) for p in paid["payments"]] == [("AUTOMATIC", "SUCCEEDED")]
    failing = await desk.read_invoice(failing_id)
    assert failing["status"] == "DUE"
    assert [(p["attempt"], p["status"], p["errorCode"]) for p in failing["payments"]] == [
        (1, "FAILED", "generic_decline")
    ]

    # Not before the configured hours; then exactly once more; then never again.
    attempts = []
    for offset in (timedelta(hours=5, minutes=59), timedelta(hours=6), timedelta(hours=60)):
        desk.clock.set(start + offset)
        await desk.ok(RUN_BILLING)
        attempts.append(len((await desk.read_invoice(failing_id))["payments"]))
    assert attempts == [1, 2, 2]
    failing = await desk.read_invoice(failing_id)
    assert [(p["attempt"], p["type"], p["status"]) for p in failing["payments"]] == [
        (1, "AUTOMATIC", "FAILED"),
        (2, "AUTOMATIC", "FAILED"),
    ]
    assert failing["status"] in ("DUE", "OVERDUE")
    assert len(desk.stripe.payment_intents) == 3  # one success, two declines


# --------------------------------------------------------------------------- refunds


async def test_partial_refund_is_a_credit_note_consumed_by_the_refund(stripe_api: Desk) -> None:
    desk = stripe_api
    _, account = await desk.member("Rita")
    await desk.save_card(account, "pm_card_visa", who="Rita")
    invoice_id, payment = await _paid_by_card(desk, account)
    asked = {"paymentId": payment["id"], "amount": "30.00", "reason": "Noisy"}
    given = {"input": asked, "key": "refund-rita"}

    # The admin's client retries twenty times at once: one refund, one credit note.
    bodies = await asyncio.gather(*(desk.gql(REFUND, given) for _ in range(20)))
    assert all(not body.get("errors") for body in bodies), [b for b in bodies if b.get("errors")]
    assert len({body["data"]["refundPayment"]["id"] for body in bodies}) == 1
    refund = bodies[0]["data"]["refundPayment"]
    assert (refund["status"], refund["amount"]["amount"], refund["reason"]) == (
        "PENDING",
        "30.00",
        "Noisy",
    )
    note = refund["creditNote"]
    assert (
        note["status"],
        note["originalCredit"]["amount"],
        note["remainingCredit"]["amount"],
    ) == ("CONSUMED", "30.00", "0.00")
    assert refund["payment"]["refundedAmount"]["amount"] == "30.00"
    assert [r["amount"] for r in desk.stripe.refunds.values()] == [3000]
    assert await desk.count(Refund) == 1

    desk.stripe.settle_refunds()
    await desk.deliver_for(refund["gatewayRefundId"])
    invoice = await desk.read_invoice(invoice_id)
    assert invoice["status"] == "PAID"  # the refund drew on credit, not on the invoice
    assert [(r["status"], r["amount"]["amount"]) for r in invoice["refunds"]] == [
        ("SUCCEEDED", "30.00")
    ]
    notes = await desk.ok(
        "query { creditNotes { nodes { status refundedCredit { amount } sourcePayment { id } } } }"
    )
    assert notes["creditNotes"]["nodes"] == [
        {
            "status": "CONSUMED",
            "refundedCredit": {"amount": "30.00"},
            "sourcePayment": {"id": payment["id"]},
        }
    ]

    # The same key for another amount is a conflict, not a second refund.
    other = {"input": {**asked, "amount": "31.00"}, "key": "refund-rita"}
    assert (await desk.refused(REFUND, other))["extensions"]["code"] == "CONFLICT"

    # More than is left to refund is refused, and nothing changes anywhere.
    before = (await desk.count(Refund), await desk.count(Invoice), len(desk.stripe.refunds))
    too_much = {"input": {"paymentId": payment["id"], "amount": "60.01"}}
    error = await desk.refused(REFUND, too_much)
    assert (error["extensions"]["code"], error["extensions"]["refundable"]) == ("VALIDATION", 6000)
    assert "$60.00 left to refund" in error["message"], error["message"]
    assert (await desk.count(Refund), await desk.count(Invoice), len(desk.stripe.refunds)) == before
    invoice = await desk.read_invoice(invoice_id)
    assert invoice["payments"][0]["refundedAmount"]["amount"] == "30.00"


async def test_failed_refund_returns_the_credit_which_refund_credit_pays_out(
    stripe_api: Desk,
) -> None:
    desk = stripe_api
    _, account = await desk.member("Fay")
    await desk.save_card(account, "pm_card_visa", who="Fay")
    first_invoice, first = await _paid_by_card(desk, account)
    desk.stripe.fail_refunds_for(first["gatewayPaymentIntentId"])
    refund = (await desk.ok(REFUND, {"input": {"paymentId": first["id"], "amount": "20.00"}}))[
        "refundPayment"
    ]
    desk.stripe.settle_refunds()
    await desk.deliver_for(refund["gatewayRefundId"])

    note_id = refund["creditNote"]["id"]
    note = (await desk.ok(CREDIT_NOTE, {"id": note_id}))["creditNote"]
    assert (note["status"], note["remainingCredit"]["amount"]) == ("AVAILABLE", "20.00")
    assert note["refunds"] == [{"status": "FAILED", "amount": {"amount": "20.00"}}]
    invoice = await desk.read_invoice(first_invoice)
    assert invoice["status"] == "PAID"
    assert invoice["payments"][0]["refundedAmount"]["amount"] == "0.00"

    # The returned credit goes back out through Stripe onto the newest card payment.
    _, second = await _paid_by_card(desk, account, "15.00")
    (out,) = (
        await desk.ok(REFUND_CREDIT, {"input": {"creditNoteId": note_id, "amount": "15.00"}})
    )["refundCredit"]
    assert (out["status"], out["payment"]["id"], out["amount"]["amount"]) == (
        "PENDING",
        second["id"],
        "15.00",
    )
    assert out["creditNote"]["remainingCredit"]["amount"] == "5.00"


# --------------------------------------------------------------------------- idempotency


async def test_a_retried_record_payment_returns_the_first_result(stripe_api: Desk) -> None:
    desk = stripe_api
    _, account = await desk.member("Ida")
    invoice_id = await desk.invoice(account, "90.00")
    given = {"invoiceId": invoice_id, "amount": "40.00", "method": "CHEQUE", "note": "No. 118"}

    first = await desk.ok(RECORD, {"input": given, "key": "cheque-118"})
    again = await desk.ok(RECORD, {"input": given, "key": "cheque-118"})
    assert again == first
    assert first["recordPayment"]["invoice"]["balanceDue"]["amount"] == "50.00"

    at_once = await asyncio.gather(
        *(
            desk.gql(RECORD, {"input": {**given, "amount": "50.00"}, "key": "rest"})
            for _ in range(20)
        )
    )
    assert all(not body.get("errors") for body in at_once), at_once[0]
    assert len({body["data"]["recordPayment"]["id"] for body in at_once}) == 1
    assert await desk.count(Payment) == 2
    assert (await desk.read_invoice(invoice_id))["status"] == "PAID"

    error = await desk.refused(RECORD, {"input": {**given, "amount": "41.00"}, "key": "cheque-118"})
    assert error["extensions"]["code"] == "CONFLICT"
    assert await desk.count(Payment) == 2


async def test_twenty_concurrent_pay_invoice_retries_make_one_payment_and_one_intent(
    stripe_api: Desk,
) -> None:
    desk = stripe_api
    member, account = await desk.member("Cody")
    invoice_id = await desk.invoice(account)
    other_id = await desk.invoice(account, "10.00")

    bodies = await asyncio.gather(
        *(desk.gql(PAY, {"id": invoice_id, "key": "pay-1"}, who=member) for _ in range(20))
    )
    assert all(not body.get("errors") for body in bodies), [b for b in bodies if b.get("errors")]
    results = [body["data"]["payInvoice"] for body in bodies]
    assert len({r["payment"]["id"] for r in results}) == 1
    assert len({r["clientSecret"] for r in results}) == 1
    assert {r["invoice"]["status"] for r in results} == {"PROCESSING"}
    assert await desk.count(Payment) == 1
    assert len(desk.stripe.payment_intents) == 1

    error = await desk.refused(PAY, {"id": other_id, "key": "pay-1"}, who=member)
    assert error["extensions"]["code"] == "CONFLICT"
    assert await desk.count(Payment) == 1
    assert (await desk.read_invoice(other_id))["status"] == "DUE"


# --------------------------------------------------------------------------- access and gateway off


async def test_members_pay_only_their_own_invoices_and_only_admins_charge(
    stripe_api: Desk,
) -> None:
    desk = stripe_api
    alice, alice_account = await desk.member("Alice")
    bob, _ = await desk.member("Bob")
    invoice_id = await desk.invoice(alice_account)

    error = await desk.refused(PAY, {"id": invoice_id}, who=bob)
    assert error["extensions"]["code"] == "FORBIDDEN"
    error = await desk.refused(CHARGE, {"id": invoice_id}, who=alice)
    assert error["extensions"]["code"] == "FORBIDDEN"
    # No saved card: charging is refused with a sentence, and nothing changes.
    error = await desk.refused(CHARGE, {"id": invoice_id})
    assert error["extensions"]["code"] == "INVALID_STATE" and "saved card" in error["message"]
    assert await desk.count(Payment) == 0

    paid = (await desk.ok(PAY, {"id": invoice_id}, who="admin"))["payInvoice"]
    assert paid["payment"]["method"] == "CARD" and paid["clientSecret"]


async def test_gateway_off_refuses_card_payments_while_offline_ones_work(
    offline_api: Desk,
) -> None:
    desk = offline_api
    member, account = await desk.member("Olive")
    invoice_id = await desk.invoice(account, "60.00")

    for query, variables, who in (
        (PAY, {"id": invoice_id}, member),
        (CHARGE, {"id": invoice_id}, "admin"),
        ("mutation($id: ID!) { startCardSetup(accountId: $id) { clientSecret } }",
         {"id": account}, member),
    ):  # fmt: skip
        error = await desk.refused(query, variables, who=who)
        assert error["extensions"]["code"] == "GATEWAY_UNAVAILABLE"
        assert "Card payments are off" in error["message"]
    assert await desk.count(Payment) == 0
    assert (await desk.read_invoice(invoice_id))["status"] == "DUE"

    cash = (
        await desk.ok(
            RECORD,
            {
                "input": {
                    "invoiceId": invoice_id,
                    "amount": "75.00",
                    "method": "CASH",
                    "receivedOn": "2026-08-14",
                    "note": "At the desk",
                }
            },
        )
    )["recordPayment"]
    assert (cash["status"], cash["method"], cash["receivedOn"], cash["note"]) == (
        "SUCCEEDED",
        "CASH",
        "2026-08-14",
        "At the desk",
    )
    assert cash["invoice"]["status"] == "PAID"

    # Card refunds need the gateway; an offline one is recorded against the payment.
    error = await desk.refused(REFUND, {"input": {"paymentId": cash["id"], "amount": "5.00"}})
    assert error["extensions"]["code"] == "GATEWAY_UNAVAILABLE"
    refund = (
        await desk.ok(
            """mutation($input: RecordRefundInput!) { recordRefund(input: $input) {
                status method amount { amount } payment { refundedAmount { amount } } } }""",
            {"input": {"paymentId": cash["id"], "amount": "5.00", "method": "CASH"}},
        )
    )["recordRefund"]
    assert refund == {
        "status": "SUCCEEDED",
        "method": "CASH",
        "amount": {"amount": "5.00"},
        "payment": {"refundedAmount": {"amount": "5.00"}},
    }


async def test_pay_now_with_stripe_down_before_a_customer_exists_says_nothing_was_charged(
    stripe_api: Desk,
) -> None:
    """The account has no Stripe customer yet and Stripe answers every request with a
    500: no payment row exists, so the error says nothing was charged and to try again
    (not that an attempt is kept), and its cause is in our words, not the library's."""
    desk = stripe_api
    member, account = await desk.member("Nadia")
    invoice_id = await desk.invoice(account, "30.00")
    desk.stripe.set_faults(rate_500=1.0, phase="before")

    error = await desk.refused(PAY, {"id": invoice_id}, who=member)
    assert error["extensions"]["code"] == "GATEWAY_UNAVAILABLE"
    assert "nothing was charged" in error["message"] and "Try again" in error["message"]
    assert "kept" not in error["message"]
    cause = error["extensions"]["cause"]
    assert cause == "The card gateway answered with an error of its own (HTTP 500)."
    assert await desk.count(Payment) == 0
    assert (await desk.read_invoice(invoice_id))["status"] == "DUE"

    # Once Stripe answers again the same call works.
    desk.stripe.set_faults()
    paid = (await desk.ok(PAY, {"id": invoice_id}, who=member))["payInvoice"]
    assert paid["invoice"]["status"] == "PROCESSING"
