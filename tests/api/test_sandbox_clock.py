"""A sandbox organization on its own test clock, over real HTTP on SQLite and
PostgreSQL, with the real ``stripe`` library against the fake Stripe (issue 11).

The walk: a space in Los Angeles (billing day 1, overdue after 5 days, auto-pay retry
after 6 hours) starts its clock on 20 September 2026 at noon and is moved through two
months with ``advanceTestClock``. Alice pays by auto-pay with a card the fake declines
once; Bob pays by hand, books a room that lands on October's invoice, pays it, cancels
the booking at 23:59 on 31 October (06:59 UTC on 1 November) and so gets credit on the
invoice that finalizes at 00:00 on 1 November, Los Angeles time; he leaves that one
unpaid and it is OVERDUE five days later (across the end of daylight saving time).

The server's ``FixedClock`` stands for the wall clock and never moves here: only the
sandbox's test clock does, and everything of the sandbox goes by it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.auth import issue_token
from app.settings import Settings
from models import User
from services import batch_billing, billing, provisioning
from services.clock import FixedClock
from services.errors import ValidationError
from tests.api.conftest import SETTINGS, Api, serve
from tests.api.test_billing_api import at, iso
from tests.api.test_live_clock import backwards
from tests.fakestripe import FakeStripe

ADVANCE = """mutation($to: DateTime!) { advanceTestClock(to: $to) {
  previous now invoicesFinalized statusChanges paymentsAttempted stoppedShort
  steps { at invoicesFinalized statusChanges paymentsAttempted planPeriodsAdded } } }"""
NOW = "{ organization { sandbox now } }"
INVOICES = """{ invoices(first: 50, sort: {field: NUMBER, direction: ASC}) { nodes {
  number status account { name } issueDate dueDate finalizedAt paidAt
  total { amount } balanceDue { amount } creditApplied { amount }
  lines { description amount { amount } }
  payments { attempt type status errorCode amount { amount } createdAt }
} } }"""
EVENTS = """query($after: String) { events(first: 100, after: $after) {
  nodes { type invoiceId createdAt payload } pageInfo { hasNextPage endCursor } } }"""

WALL = at(2026, 8, 15, 9)  # the server's wall clock, which stays put
START = at(2026, 9, 20, 19)  # noon in Los Angeles (PDT, UTC-7)


@dataclass
class Sandbox:
    api: Api
    fake: FakeStripe
    settings: Settings
    org_id: int
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, who: str = "admin"
    ) -> dict[str, Any]:
        return await self.api.gql(query, variables, token=self.tokens[who])

    async def ok(
        self, query: str, variables: dict[str, Any] | None = None, who: str = "admin"
    ) -> dict[str, Any]:
        body = await self.gql(query, variables, who)
        assert not body.get("errors"), body
        data: dict[str, Any] = body["data"]
        return data

    async def refused(
        self, query: str, variables: dict[str, Any] | None = None, who: str = "admin"
    ) -> dict[str, Any]:
        body = await self.gql(query, variables, who)
        assert body.get("errors") and not body.get("data"), body
        (error,) = body["errors"]
        return dict(error)

    async def advance(self, to: datetime) -> dict[str, Any]:
        report: dict[str, Any] = (await self.ok(ADVANCE, {"to": iso(to)}))["advanceTestClock"]
        assert report["now"] == to.isoformat()
        assert (await self.ok(NOW))["organization"] == {"sandbox": True, "now": to.isoformat()}
        return report

    async def member(self, name: str) -> str:
        data = await self.ok(
            """mutation($email: String!, $name: String!) {
              createUser(input: {email: $email, name: $name, role: MEMBER}) {
                user { id } account { id } } }""",
            {"email": f"{name.lower()}@sunset.test", "name": name},
        )
        async with self.api.state.sessionmaker() as session:
            user = await session.scalar(
                select(User).where(User.email == f"{name.lower()}@sunset.test")
            )
            assert user is not None
        self.tokens[name] = issue_token(self.settings, user, WALL)
        account: str = data["createUser"]["account"]["id"]
        self.ids[name] = account
        return account

    async def invoices(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = (await self.ok(INVOICES))["invoices"]["nodes"]
        return nodes

    async def events(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = (await self.ok(EVENTS, {"after": after}))["events"]
            found += page["nodes"]
            if not page["pageInfo"]["hasNextPage"]:
                return found
            after = page["pageInfo"]["endCursor"]


async def _sandbox(engine: AsyncEngine, clock: FixedClock, api_key: str) -> AsyncIterator[Sandbox]:
    clock.set(WALL)
    with FakeStripe(api_key=api_key, clock=lambda: clock.now().timestamp()) as fake:
        settings = Settings(
            worker_enabled=False, graphiql=False, token_secret=SETTINGS.token_secret,
            stripe_api_key=fake.api_key, stripe_webhook_secret=fake.webhook_secret,
            stripe_api_base=fake.url,
        )  # fmt: skip
        app = create_app(settings, engine=engine, clock=clock, start_worker=False)
        async for url in serve(app):
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                api = Api(url=url, app=app, client=client)
                async with api.state.sessionmaker.begin() as session:
                    org, admin = await provisioning.provision_organization(
                        session, name="Sunset Desks", currency="USD",
                        admin_email="admin@sunset.test", admin_name="Sam Admin",
                        now=clock.now(), timezone="America/Los_Angeles", sandbox=True,
                        clock_start=START,
                    )  # fmt: skip
                space = Sandbox(api, fake, settings, org.id)
                space.tokens["admin"] = issue_token(settings, admin, WALL)
                yield space


@pytest.fixture
async def sandbox(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Sandbox]:
    async for space in _sandbox(engine, clock, "sk_test_deskbill_fake"):
        yield space


def brief(invoices: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(number, account, status, total, balance due, due date) per invoice."""
    return [
        (i["number"], i["account"]["name"], i["status"], i["total"]["amount"],
         i["balanceDue"]["amount"], i["dueDate"])
        for i in invoices
    ]  # fmt: skip


def steps(report: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """(instant, invoices finalized, status changes, payments attempted) per step."""
    return [
        (st["at"], st["invoicesFinalized"], st["statusChanges"], st["paymentsAttempted"])
        for st in report["steps"]
    ]


def status_moves(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (e["invoiceId"], e["payload"]["previous_status"], e["payload"]["status"])
        for e in events
        if e["type"] == "invoice.status_changed"
    ]


async def test_two_months_of_a_sandbox_on_its_test_clock(sandbox: Sandbox) -> None:
    s = sandbox
    assert (await s.ok(NOW))["organization"] == {"sandbox": True, "now": START.isoformat()}
    await s.ok(
        """mutation { updateInvoicePolicy(input: {overdueAfterDays: 5, autopayRetryHours: 6,
             autopayDefault: false}) { timezone } }"""
    )
    alice, bob = await s.member("Alice"), await s.member("Bob")
    plan = (
        await s.ok(
            """mutation { createPlanTemplate(input: {name: "Hot desk", price: "300.00",
                 interval: MONTHLY}) { id } }"""
        )
    )["createPlanTemplate"]["id"]
    for account in (alice, bob):
        await s.ok(
            """mutation($a: ID!, $p: ID!) { subscribeToPlan(input: {accountId: $a,
                 planTemplateId: $p, startDate: "2026-10-01"}) { id } }""",
            {"a": account, "p": plan},
        )
    # Alice saves a card (Stripe's webhook makes it her default) and turns auto-pay on;
    # the fake declines its next charge (funds arrive later), then it pays.
    setup = (
        await s.ok(
            "mutation($id: ID!) { startCardSetup(accountId: $id) { clientSecret } }",
            {"id": alice},
            "Alice",
        )
    )["startCardSetup"]["clientSecret"].split("_secret_")[0]
    s.fake.confirm_setup(setup, "pm_card_visa")
    delivered = await asyncio.to_thread(
        s.fake.post_webhooks, f"{s.api.url}/webhooks/stripe", s.fake.events_for(setup)
    )
    assert set(delivered) == {200}
    await s.ok(
        "mutation($id: ID!) { setAutopay(accountId: $id, enabled: true) { autopay } }",
        {"id": alice},
    )
    s.fake.decline_next("pm_card_visa")
    # Bob books a room for November now: it goes on the invoice of 1 October.
    booking = (
        await s.ok(
            """mutation($a: ID!) { createBooking(input: {accountId: $a, resourceName: "Room 2",
                 startsAt: "2026-11-05T10:00:00-08:00", endsAt: "2026-11-05T12:00:00-08:00",
                 hourlyRate: "25.00"}) { id price { amount } createdAt } }""",
            {"a": bob},
            "Bob",
        )
    )["createBooking"]
    assert (booking["price"], booking["createdAt"]) == ({"amount": "50.00"}, START.isoformat())
    assert brief(await s.invoices()) == [
        (None, "Alice", "PENDING", "300.00", "300.00", "2026-10-01"),
        (None, "Bob", "PENDING", "350.00", "350.00", "2026-10-01"),
    ]

    # 1 October, 00:00 in Los Angeles (07:00 UTC): both finalize, due at once; Alice's
    # auto-pay is declined and retried six hours later, at 13:00 UTC.
    report = await s.advance(at(2026, 10, 1, 12))
    assert report["previous"] == START.isoformat()
    assert steps(report) == [
        ("2026-10-01T07:00:00+00:00", 2, 4, 1),  # PENDING→DUE ×2, DUE→PROCESSING→DUE
        ("2026-10-01T12:00:00+00:00", 0, 0, 0),
    ]
    assert report["steps"][0]["planPeriodsAdded"] == 2  # November's, on new pending invoices
    assert (report["invoicesFinalized"], report["statusChanges"]) == (2, 4)
    invoices = await s.invoices()
    assert brief(invoices) == [
        (None, "Alice", "PENDING", "300.00", "300.00", "2026-11-01"),
        (None, "Bob", "PENDING", "300.00", "300.00", "2026-11-01"),
        ("INV-000001", "Alice", "DUE", "300.00", "300.00", "2026-10-01"),
        ("INV-000002", "Bob", "DUE", "350.00", "350.00", "2026-10-01"),
    ]
    assert [(i["issueDate"], i["finalizedAt"]) for i in invoices[2:]] == [
        ("2026-10-01", "2026-10-01T07:00:00+00:00")
    ] * 2
    assert [(p["attempt"], p["status"], p["errorCode"], p["createdAt"])
            for p in invoices[2]["payments"]] == [
        (1, "FAILED", "insufficient_funds", "2026-10-01T07:00:00+00:00")
    ]  # fmt: skip

    report = await s.advance(at(2026, 10, 3, 19))  # noon on 3 October
    assert steps(report) == [
        ("2026-10-01T13:00:00+00:00", 0, 2, 1),  # DUE→PROCESSING→PAID
        ("2026-10-03T19:00:00+00:00", 0, 0, 0),
    ]
    alice_october = (await s.invoices())[2]
    assert (alice_october["status"], alice_october["paidAt"]) == (
        "PAID", "2026-10-01T13:00:00+00:00"
    )  # fmt: skip
    assert [(p["attempt"], p["status"]) for p in alice_october["payments"]] == [
        (1, "FAILED"), (2, "SUCCEEDED")
    ]  # fmt: skip
    october = {i["number"]: i for i in await s.invoices()}
    bob_october = october["INV-000002"]
    paid = (
        await s.ok(
            """mutation($id: ID!) { recordPayment(input: {invoiceId: $id, amount: "350.00",
                 method: CASH}) { receivedOn createdAt invoice { status paidAt } } }""",
            {"id": next(e["invoiceId"] for e in await s.events()
                        if e["payload"].get("number") == "INV-000002")},
        )
    )["recordPayment"]  # fmt: skip
    assert bob_october["status"] == "DUE"
    assert paid == {
        "receivedOn": "2026-10-03", "createdAt": "2026-10-03T19:00:00+00:00",
        "invoice": {"status": "PAID", "paidAt": "2026-10-03T19:00:00+00:00"},
    }  # fmt: skip

    # 31 October, 23:59 in Los Angeles — already 1 November in UTC. Nothing is due in
    # between, so the walk is one step. Bob cancels his paid booking: the credit lands
    # on the invoice of 1 November (the next billing date in Los Angeles), not December's.
    report = await s.advance(at(2026, 11, 1, 6, 59))
    assert steps(report) == [("2026-11-01T06:59:00+00:00", 0, 0, 0)]
    cancelled = (
        await s.ok(
            """mutation($id: ID!) { cancelBooking(bookingId: $id) { adjustment
                 booking { status cancelledAt }
                 creditLine { amount { amount } createdAt invoice { status dueDate } } } }""",
            {"id": booking["id"]},
            "Bob",
        )
    )["cancelBooking"]
    assert cancelled == {
        "adjustment": "CREDITED",
        "booking": {"status": "CANCELLED", "cancelledAt": "2026-11-01T06:59:00+00:00"},
        "creditLine": {"amount": {"amount": "-50.00"}, "createdAt": "2026-11-01T06:59:00+00:00",
                       "invoice": {"status": "PENDING", "dueDate": "2026-11-01"}},
    }  # fmt: skip

    # 00:00 on 1 November in Los Angeles (still PDT: 07:00 UTC).
    report = await s.advance(at(2026, 11, 1, 12))
    assert steps(report) == [
        ("2026-11-01T07:00:00+00:00", 2, 4, 1),  # PENDING→DUE ×2, Alice DUE→PROCESSING→PAID
        ("2026-11-01T12:00:00+00:00", 0, 0, 0),
    ]
    invoices = await s.invoices()
    assert brief(invoices) == [
        (None, "Alice", "PENDING", "300.00", "300.00", "2026-12-01"),
        (None, "Bob", "PENDING", "300.00", "300.00", "2026-12-01"),
        ("INV-000001", "Alice", "PAID", "300.00", "0.00", "2026-10-01"),
        ("INV-000002", "Bob", "PAID", "350.00", "0.00", "2026-10-01"),
        ("INV-000003", "Alice", "PAID", "300.00", "0.00", "2026-11-01"),
        ("INV-000004", "Bob", "DUE", "250.00", "250.00", "2026-11-01"),
    ]
    assert sorted(line["amount"]["amount"] for line in invoices[5]["lines"]) == [
        "-50.00", "300.00"
    ]  # fmt: skip
    assert invoices[5]["finalizedAt"] == "2026-11-01T07:00:00+00:00"

    # Overdue five days after 1 November: 6 November, 00:00 PST (08:00 UTC: daylight
    # saving time ended on 1 November).
    report = await s.advance(at(2026, 11, 7, 8))
    assert steps(report) == [
        ("2026-11-06T08:00:00+00:00", 0, 1, 0),
        ("2026-11-07T08:00:00+00:00", 0, 0, 0),
    ]
    bob_november = (await s.invoices())[5]
    assert (bob_november["number"], bob_november["status"]) == ("INV-000004", "OVERDUE")

    # 1 December, 00:00 PST (08:00 UTC): the second month's invoices.
    report = await s.advance(at(2026, 12, 1, 9))
    assert steps(report) == [
        ("2026-12-01T08:00:00+00:00", 2, 4, 1),
        ("2026-12-01T09:00:00+00:00", 0, 0, 0),
    ]
    assert brief(await s.invoices())[2:] == [
        ("INV-000001", "Alice", "PAID", "300.00", "0.00", "2026-10-01"),
        ("INV-000002", "Bob", "PAID", "350.00", "0.00", "2026-10-01"),
        ("INV-000003", "Alice", "PAID", "300.00", "0.00", "2026-11-01"),
        ("INV-000004", "Bob", "OVERDUE", "250.00", "250.00", "2026-11-01"),
        ("INV-000005", "Alice", "PAID", "300.00", "0.00", "2026-12-01"),
        ("INV-000006", "Bob", "DUE", "300.00", "300.00", "2026-12-01"),
    ]
    assert len(s.fake.payment_intents) == 4  # October twice (declined, paid), Nov, Dec

    # Every event of the sandbox carries its clock, never the wall clock (15 August);
    # each invoice became due and overdue once; no status moved backwards.
    events = await s.events()
    assert all(e["createdAt"] >= START.isoformat() for e in events)
    assert sorted(e["createdAt"] for e in events) == [e["createdAt"] for e in events]
    due = [e["invoiceId"] for e in events if e["type"] == "invoice.became_due"]
    overdue = [e["invoiceId"] for e in events if e["type"] == "invoice.became_overdue"]
    assert (len(due), len(set(due)), len(overdue)) == (6, 6, 1)
    moves = status_moves(events)
    assert len(moves) == 16 and backwards(moves) == []  # 7 in October, 5 in Nov, 4 in Dec
    # The wall clock never moved, and the worker's run over all organizations leaves
    # a sandbox alone (its time is its test clock).
    assert s.api.state.clock.now() == WALL
    for run in (billing.run_billing, batch_billing.run_billing_batched):  # the worker's
        ran = await run(s.api.state.sessionmaker, None, at(2027, 6, 1))
        assert (ran.accounts_processed, ran.invoices_finalized) == (0, 0)
    assert brief(await s.invoices())[7] == (
        "INV-000006", "Bob", "DUE", "300.00", "300.00", "2026-12-01"
    )  # fmt: skip


RUN = "mutation($asOf: DateTime) { runBilling(asOf: $asOf) { asOf invoicesFinalized } }"


async def test_a_test_clock_only_moves_forward_within_bounds_and_changes_nothing_else(
    sandbox: Sandbox,
) -> None:
    s = sandbox
    before = await s.events()
    for to, words in (
        (START, "only moves forward"),
        (at(2026, 9, 1), "only moves forward"),
        (at(2028, 9, 21), "at most 731 days"),
    ):
        error = await s.refused(ADVANCE, {"to": iso(to)})
        assert error["extensions"]["code"] == "VALIDATION", error
        assert words in error["message"], error
    # Only admins move it; members and analysts are refused before anything happens.
    await s.member("Mia")
    error = await s.refused(ADVANCE, {"to": iso(at(2026, 9, 21))}, "Mia")
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert len(await s.events()) == len(before) + 2  # Mia's user and account, nothing else
    assert (await s.ok(NOW))["organization"]["now"] == START.isoformat()

    # runBilling of a sandbox goes by its clock: the default instant is its now, a later
    # one is refused (advance instead), an earlier one is a catch-up.
    assert (await s.ok(RUN))["runBilling"]["asOf"] == START.isoformat()
    error = await s.refused(RUN, {"asOf": iso(at(2026, 9, 20, 19, 1))})
    assert error["extensions"]["code"] == "VALIDATION"
    assert "advanceTestClock" in error["message"]
    assert (await s.ok(RUN, {"asOf": iso(at(2026, 9, 1))}))["runBilling"]["asOf"] == (
        "2026-09-01T00:00:00+00:00"
    )

    # The largest advance is allowed, in bounded steps (an empty sandbox: its billing dates).
    far = (await s.ok(ADVANCE, {"to": iso(START + timedelta(days=731))}))["advanceTestClock"]
    assert far["stoppedShort"] is False
    assert len(far["steps"]) == 25  # 1 October 2026 … 1 September 2028, then the target


async def test_a_live_organization_has_no_test_clock_to_advance(
    api: Api, clock: FixedClock
) -> None:
    clock.set(WALL)
    async with api.state.sessionmaker.begin() as session:
        _, admin = await provisioning.provision_organization(
            session, name="Quay Live", currency="USD", admin_email="ada@quay.test",
            admin_name="Ada", now=clock.now(),
        )  # fmt: skip
    token = issue_token(SETTINGS, admin, WALL)
    body = await api.gql(ADVANCE, {"to": iso(at(2026, 9, 1))}, token=token)
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "NOT_A_SANDBOX", error
    assert "live organization" in error["message"]
    body = await api.gql(NOW, token=token)
    assert body["data"]["organization"] == {"sandbox": False, "now": WALL.isoformat()}
    with pytest.raises(ValidationError):
        async with api.state.sessionmaker.begin() as session:
            await provisioning.provision_organization(
                session, name="Quay Two", currency="USD", admin_email="bo@quay.test",
                admin_name="Bo", now=clock.now(), clock_start=START,
            )  # fmt: skip


@pytest.fixture
async def live_keyed_sandbox(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Sandbox]:
    # The fake answers any key; the server must not send it a live one for a sandbox.
    async for space in _sandbox(engine, clock, "sk_live_" + secrets.token_hex(12)):
        yield space


async def test_a_sandbox_never_uses_a_live_stripe_key(live_keyed_sandbox: Sandbox) -> None:
    s = live_keyed_sandbox
    account = await s.member("Lee")
    error = await s.refused(
        "mutation($id: ID!) { startCardSetup(accountId: $id) { clientSecret } }",
        {"id": account},
        "Lee",
    )
    assert error["extensions"]["code"] == "SANDBOX_LIVE_KEY", error
    assert "test-mode key" in error["message"]
    invoice = (
        await s.ok(
            """mutation($a: ID!) { createManualInvoice(input: {accountId: $a, finalizeNow: true,
                 lines: [{description: "Day pass", unitPrice: "20.00"}]}) { id status } }""",
            {"a": account},
        )
    )["createManualInvoice"]
    assert invoice["status"] == "DUE"
    for mutation in (
        "mutation($id: ID!) { payInvoice(invoiceId: $id) { clientSecret } }",
        "mutation($id: ID!) { chargeInvoice(invoiceId: $id) { id } }",
    ):
        error = await s.refused(mutation, {"id": invoice["id"]}, "admin")
        assert error["extensions"]["code"] == "SANDBOX_LIVE_KEY", error
    # The billing run's payment jobs skip the sandbox; offline payments keep working.
    report = (await s.ok(ADVANCE, {"to": iso(at(2026, 9, 21))}))["advanceTestClock"]
    assert report["paymentsAttempted"] == 0
    paid = await s.ok(
        """mutation($id: ID!) { recordPayment(input: {invoiceId: $id, amount: "20.00",
             method: CASH}) { invoice { status } } }""",
        {"id": invoice["id"]},
    )
    assert paid["recordPayment"]["invoice"]["status"] == "PAID"
    assert s.fake.requests == []  # not one call reached Stripe
