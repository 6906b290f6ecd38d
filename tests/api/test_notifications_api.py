"""A month of billing through the real HTTP API, the real ``stripe`` library against
the fake Stripe, and a real SMTP server (aiosmtpd): every member gets exactly the
e-mails it should, with the right amounts, on the right local day — even with the
notification worker killed again and again mid-round — pays from the link in the
e-mail without signing in, and gets the receipt; the admin sees every notification
and its delivery state.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.lifecycle import invoice_document_path
from models import Invoice, Notification
from services.clock import FixedClock
from services.mailer import mailer_from_url
from services.notifications import NotificationConfig, notify_once
from services.paylinks import pay_link_secret
from tests.api.test_payments_api import Desk, _desk
from tests.fakestripe import FakeStripe
from tests.smtp import Inbox, smtp_server

__all__ = ["smtp_server"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)

PAY_LINK = re.compile(r"https?://\S+/pay/[0-9]+\.[0-9]+\.[A-Za-z0-9_-]+")
NOTIFICATIONS = """
query($after: String, $filter: NotificationFilter) {
  notifications(first: 100, after: $after, filter: $filter) {
    totalCount pageInfo { hasNextPage endCursor }
    nodes { kind status recipient subject attempts lastError sentAt invoiceId }
} }"""


@pytest.fixture
async def desk(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Desk]:
    with FakeStripe(clock=lambda: clock.now().timestamp()) as fake:
        async for desk in _desk(engine, clock, fake):
            yield desk


class Worker:
    """The notification worker of the test: complete rounds, and rounds killed at a
    random point (task cancellation, as at a shutdown or crash of the loop)."""

    def __init__(self, desk: Desk, smtp_url: str, seed: int = 7) -> None:
        self.desk = desk
        self.mailer = mailer_from_url(smtp_url)
        self.config = NotificationConfig(
            public_url=desk.api.url,
            backoff_seconds=60,
            invoice_document_path=invoice_document_path,
        )
        self.random = random.Random(seed)
        self.kills = 0
        self.secret: str | None = None

    async def round(self) -> None:
        db = self.desk.api.state.sessionmaker
        if self.secret is None:  # as the worker does: once, when it starts
            self.secret = await pay_link_secret(db, self.desk.clock.now())
        await notify_once(db, self.mailer, self.config, self.secret, self.desk.clock)

    async def killed_round(self) -> None:
        if self.secret is None:
            await self.round()
        task = asyncio.create_task(self.round())
        for _ in range(self.random.randint(0, 40)):
            await asyncio.sleep(0)
        if not task.done():
            self.kills += 1
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def step(self) -> None:
        """What a worker does between two instants: killed twice, then a whole round."""
        await self.killed_round()
        await self.killed_round()
        await self.round()


async def _bill(desk: Desk, worker: Worker, instant: datetime) -> None:
    desk.clock.set(instant)
    await desk.ok("mutation { runBilling { accountsProcessed } }")
    await worker.step()


async def _september_number(desk: Desk, account_id: str) -> str:
    data = await desk.ok(
        """query($id: ID!) { invoices(filter: {accountId: [$id], documentType: [INVOICE]})
          { nodes { number } } }""",
        {"id": account_id},
    )
    [invoice] = data["invoices"]["nodes"]
    number: str = invoice["number"]
    return number


def _subjects(inbox: Inbox, address: str) -> list[str]:
    return [str(m["Subject"]) for m in inbox.to(address)]


async def _pending_invoice(desk: Desk, account_id: str, amount: str, due: str) -> None:
    await desk.ok(
        """mutation($account: ID!, $amount: Decimal!, $due: Date!) {
          createManualInvoice(input: {accountId: $account, dueDate: $due,
            lines: [{description: "Private office, September", unitPrice: $amount}]})
          { status } }""",
        {"account": account_id, "amount": amount, "due": due},
    )


async def test_a_month_of_billing_mails_each_member_exactly_what_it_should(
    desk: Desk, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    worker = Worker(desk, url)
    await desk.ok(
        """mutation { updateInvoicePolicy(input: {timezone: "America/New_York",
          overdueAfterDays: 3, autopayRetryHours: 6}) { timezone } }"""
    )
    settings = await desk.ok(
        """mutation { updateNotificationSettings(input: {emailFrom: "billing@harbour.test",
          emailReplyTo: "desk@harbour.test"}) { reminderDays enabledKinds } }"""
    )
    assert settings["updateNotificationSettings"]["reminderDays"] == 2
    # Ada pays by auto-pay; Bob's card is declined twice; Cleo pays from the e-mail.
    _, ada = await desk.member("Ada")
    _, bob = await desk.member("Bob")
    _, cleo = await desk.member("Cleo")
    await desk.save_card(ada, "pm_card_visa")
    await desk.save_card(bob, "pm_card_chargeDeclinedInsufficientFunds")
    await desk.save_card(cleo, "pm_card_visa")
    await desk.ok(
        "mutation($id: ID!) { setAutopay(accountId: $id, enabled: false) { autopay } }",
        {"id": cleo},
        who="Cleo",
    )
    for account, amount in ((ada, "310.00"), (bob, "250.00"), (cleo, "120.00")):
        await _pending_invoice(desk, account, amount, "2026-09-01")
    # A $20.00 credit for Cleo, which her September invoice uses when it finalizes.
    await desk.ok(
        """mutation($account: ID!) { createManualInvoice(input: {accountId: $account,
          finalizeNow: true, lines: [{description: "Goodwill", creditAmount: "20.00"}]})
          { status } }""",
        {"account": cleo},
    )

    # New York's Aug 30 begins at 04:00 UTC: the reminders come on that local day.
    for day in range(16, 30):
        await _bill(desk, worker, datetime(2026, 8, day, 12, tzinfo=UTC))
    await _bill(desk, worker, datetime(2026, 8, 30, 3, 59, tzinfo=UTC))
    assert _subjects(inbox, "ada@harbour.test") == []
    await _bill(desk, worker, datetime(2026, 8, 30, 4, 0, tzinfo=UTC))
    assert _subjects(inbox, "ada@harbour.test") == [
        "Harbour Works: your next invoice of $310.00 is due on 1 September 2026"
    ]
    reminder = Inbox.text(inbox.to("ada@harbour.test")[0])
    assert "charged to your saved card on its due date" in reminder
    assert inbox.to("ada@harbour.test")[0]["Reply-To"] == "desk@harbour.test"
    assert "billing@harbour.test" in str(inbox.to("ada@harbour.test")[0]["From"])
    cleo_reminder = Inbox.text(inbox.to("cleo@harbour.test")[-1])
    assert "Balance due: $120.00" in cleo_reminder and "once it is issued" in cleo_reminder

    # Sep 1, local midnight: finalized, due, auto-pay charges Ada and fails Bob's card.
    await _bill(desk, worker, datetime(2026, 9, 1, 4, 0, tzinfo=UTC))
    await _bill(desk, worker, datetime(2026, 9, 1, 10, 0, tzinfo=UTC))  # Bob's retry

    # That afternoon Cleo pays from the link in her invoice e-mail, without signing in.
    cleo_invoice = inbox.to("cleo@harbour.test")[-1]
    assert str(cleo_invoice["Subject"]).startswith("Harbour Works: invoice INV-")
    text = Inbox.text(cleo_invoice)
    assert "Goodwill" not in text and "Paid or credited: $20.00" in text
    assert "Balance due: $100.00" in text
    [link] = PAY_LINK.findall(text)
    assert link in Inbox.html(cleo_invoice)
    [document] = re.findall(r"PDF \(sign in to open it\): (\S+)", text)
    pdf = await desk.api.client.get(
        document, headers={"Authorization": f"Bearer {desk.tokens['Cleo']}"}
    )
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    page = await desk.api.client.get(link)
    assert page.status_code == 200
    assert "Private office, September" in page.text and "$100.00" in page.text
    assert "Ada" not in page.text and "Bob" not in page.text
    paid = await desk.api.client.post(link)
    assert paid.status_code == 200, paid.text
    assert "Thank you: $100.00 was paid" in paid.text
    [intent] = [pi for pi in desk.stripe.snapshot()["payment_intents"].values()
                if pi["amount"] == 10000]  # fmt: skip
    await desk.deliver_for(intent["id"])  # Stripe's webhook settles it, as for payInvoice
    again = await desk.api.client.post(link)
    assert again.status_code == 409 and "is paid" in again.text
    tampered = await desk.api.client.get(link[:-2] + ("AA" if not link.endswith("AA") else "BB"))
    assert tampered.status_code == 404 and "not valid" in tampered.text
    assert len(desk.stripe.snapshot()["payment_intents"]) == 4  # no charge from either

    for day in range(2, 6):  # Bob's invoice turns overdue on Sep 4 (due + 3 days)
        await _bill(desk, worker, datetime(2026, 9, day, 12, tzinfo=UTC))

    # Ada gets part of her payment back.
    payments = await desk.ok(
        "query($id: ID!) { payments(filter: {accountId: [$id]}) { nodes { id } } }",
        {"id": ada},
    )
    [ada_payment] = payments["payments"]["nodes"]
    await desk.ok(
        """mutation($id: ID!) { refundPayment(input: {paymentId: $id, amount: "10.00",
          reason: "Air conditioning was down"}) { status } }""",
        {"id": ada_payment["id"]},
    )
    for refund in desk.stripe.settle_refunds():
        await desk.deliver_for(refund)
    for day in range(6, 12):  # (tokens last 30 days)
        await _bill(desk, worker, datetime(2026, 9, day, 12, tzinfo=UTC))

    assert worker.kills >= 10  # the worker really was killed mid-round, again and again
    # The billing run numbers the three September invoices in an order of its own.
    a, b, c = [await _september_number(desk, account) for account in (ada, bob, cleo)]
    assert _subjects(inbox, "ada@harbour.test") == [
        "Harbour Works: your next invoice of $310.00 is due on 1 September 2026",
        f"Harbour Works: invoice {a} ($310.00), due 1 September 2026",
        f"Harbour Works: receipt for $310.00 paid on {a}",
        "Harbour Works: refund of $10.00",
    ]
    assert _subjects(inbox, "bob@harbour.test") == [
        "Harbour Works: your next invoice of $250.00 is due on 1 September 2026",
        f"Harbour Works: invoice {b} ($250.00), due 1 September 2026",
        f"Harbour Works: we could not charge $250.00 for {b}; we will try again",
        f"Harbour Works: your payment of $250.00 for {b} did not go through",
    ]
    retry = Inbox.text(inbox.to("bob@harbour.test")[2])
    assert "Why: The card has insufficient funds." in retry
    assert "1 September 2026 at 06:00 (America/New_York)" in retry
    assert PAY_LINK.search(retry)
    assert _subjects(inbox, "cleo@harbour.test") == [
        "Harbour Works: credit note CN-000001 for $20.00",
        "Harbour Works: your next invoice of $120.00 is due on 1 September 2026",
        f"Harbour Works: invoice {c} ($120.00), due 1 September 2026",
        f"Harbour Works: receipt for $100.00 paid on {c}",
    ]
    assert _subjects(inbox, "admin@harbour.test") == [
        f"Auto-pay failed: Bob, {b} ($250.00)",
        f"Auto-pay failed: Bob, {b} ($250.00)",
        "Harbour Works: 1 invoice turned overdue on 4 September 2026",
    ]
    digest = Inbox.text(inbox.to("admin@harbour.test")[2])
    assert f"{b} · Bob · due 1 September 2026 · $250.00 owed · now OVERDUE" in digest
    assert len(inbox.messages) == 15

    # The admin sees every notification and its delivery state; members see none.
    seen = await desk.ok(NOTIFICATIONS)
    nodes = seen["notifications"]["nodes"]
    assert seen["notifications"]["totalCount"] == 15
    assert {(n["status"], n["lastError"]) for n in nodes} == {("SENT", None)}
    assert sorted(n["kind"] for n in nodes) == sorted(
        ["INVOICE_UPCOMING"] * 3 + ["INVOICE_FINALIZED"] * 3 + ["PAYMENT_SUCCEEDED"] * 2
        + ["ADMIN_AUTOPAY_FAILED"] * 2 + ["AUTOPAY_RETRY_SCHEDULED", "PAYMENT_FAILED",
        "CREDIT_NOTE_ISSUED", "REFUND_ISSUED", "ADMIN_OVERDUE_DIGEST"]
    )  # fmt: skip
    failed = await desk.ok(NOTIFICATIONS, {"filter": {"kinds": ["PAYMENT_FAILED"]}})
    assert [n["recipient"] for n in failed["notifications"]["nodes"]] == ["bob@harbour.test"]
    refused = await desk.refused(NOTIFICATIONS, who="Ada")
    assert refused["extensions"]["code"] == "FORBIDDEN"


async def test_reminders_can_be_turned_off_by_the_member_and_the_organization(
    desk: Desk, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    worker = Worker(desk, url)
    _, ada = await desk.member("Ada")
    _, bob = await desk.member("Bob")
    await desk.ok(
        "mutation($id: ID!) { setInvoiceReminders(accountId: $id, enabled: false) { id } }",
        {"id": ada},
        who="Ada",
    )
    refused = await desk.refused(
        "mutation($id: ID!) { setInvoiceReminders(accountId: $id, enabled: false) { id } }",
        {"id": bob},
        who="Ada",
    )
    assert refused["extensions"]["code"] in ("FORBIDDEN", "NOT_FOUND")
    for account in (ada, bob):
        await _pending_invoice(desk, account, "50.00", "2026-08-20")
    await _bill(desk, worker, datetime(2026, 8, 18, 12, tzinfo=UTC))
    assert _subjects(inbox, "ada@harbour.test") == []
    assert len(_subjects(inbox, "bob@harbour.test")) == 1

    bad = await desk.refused(
        "mutation { updateNotificationSettings(input: {reminderDays: 61}) { reminderDays } }"
    )
    assert bad["extensions"]["code"] == "VALIDATION"
    bad = await desk.refused(
        """mutation { updateNotificationSettings(input: {emailFrom: "not an address"})
          { reminderDays } }"""
    )
    assert bad["extensions"]["code"] == "VALIDATION"
    await desk.ok(
        """mutation { updateNotificationSettings(input: {enabledKinds: [PAYMENT_SUCCEEDED]})
          { enabledKinds } }"""
    )
    # Finalized on Aug 20: no invoice e-mail (turned off) for either.
    await _bill(desk, worker, datetime(2026, 8, 20, 12, tzinfo=UTC))
    assert len(inbox.messages) == 1


async def test_send_invoice_mails_it_again_and_a_link_expires(
    desk: Desk, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    worker = Worker(desk, url)
    _, ada = await desk.member("Ada")
    invoice_id = await desk.invoice(ada, "42.00")
    await worker.round()
    sent = await desk.ok(
        "mutation($id: ID!) { sendInvoice(invoiceId: $id) { number } }", {"id": invoice_id}
    )
    assert sent["sendInvoice"]["number"] == "INV-000001"
    member = await desk.refused(
        "mutation($id: ID!) { sendInvoice(invoiceId: $id) { number } }",
        {"id": invoice_id},
        who="Ada",
    )
    assert member["extensions"]["code"] == "FORBIDDEN"
    await worker.round()
    assert _subjects(inbox, "ada@harbour.test") == [
        "Harbour Works: invoice INV-000001 ($42.00), due 15 August 2026",
        "Harbour Works: invoice INV-000001 ($42.00 due)",
    ]
    [link] = PAY_LINK.findall(Inbox.text(inbox.to("ada@harbour.test")[1]))
    page = await desk.api.client.get(link)
    assert page.status_code == 200 and "No card is saved for this account" in page.text
    assert 'method="post"' not in page.text
    nothing = await desk.api.client.post(link)
    assert nothing.status_code == 200 and len(desk.stripe.snapshot()["payment_intents"]) == 0

    desk.clock.advance(timedelta(days=31))
    expired = await desk.api.client.get(link)
    assert expired.status_code == 410 and "expired" in expired.text
    posted = await desk.api.client.post(link)
    assert posted.status_code == 410
    assert len(desk.stripe.snapshot()["payment_intents"]) == 0
    async with desk.api.state.sessionmaker() as session:
        invoice = await session.scalar(select(Invoice).where(Invoice.number == "INV-000001"))
        assert invoice is not None and invoice.status == "DUE"
        links = list(await session.scalars(select(Notification.pay_link_used_at)))
    assert links == [None, None]


async def test_a_pay_link_with_a_payment_in_flight_is_used_and_charges_nothing_more(
    desk: Desk, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    worker = Worker(desk, url)
    _, ada = await desk.member("Ada")
    await desk.save_card(ada, "pm_card_visa")
    await desk.ok(
        "mutation($id: ID!) { setAutopay(accountId: $id, enabled: false) { autopay } }",
        {"id": ada},
    )
    await desk.invoice(ada, "42.00")
    await worker.round()
    [link] = PAY_LINK.findall(Inbox.text(inbox.to("ada@harbour.test")[0]))
    # Stripe never answers: the payment stays PENDING, the invoice PROCESSING.
    desk.stripe.set_faults(rate_timeout=1.0, phase="before", paths=("/v1/payment_intents",))
    lost = await desk.api.client.post(link)
    assert lost.status_code == 202 and "did not answer yet" in lost.text
    desk.stripe.set_faults()
    again = await desk.api.client.get(link)
    assert again.status_code == 410 and "already used" in again.text
    twice = await desk.api.client.post(link)
    assert twice.status_code == 410
    assert len(desk.stripe.snapshot()["payment_intents"]) == 0
