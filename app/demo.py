"""The demo coworking space behind ``deskbill demo`` and ``deskbill serve --demo``.

``load_demo`` fills a database with "Harbour Works": an admin, an analyst, a dozen
members with their own accounts, two teams, three plans, four months of history and
the tokens to explore it. Everything goes through the billing engine, one transaction
per step, on a clock that starts four months ago and ticks forward to now, running
the billing clock on the way like the server's worker would. So the data is what the
engine itself produces: prorated first invoices, plan periods, bookings and day
passes, cancellations that earn credit, credit notes applied in part, card and cash
payments, a refund, voided invoices, and invoices in every status but PROCESSING (a
card payment in flight only lasts until its webhook arrives).

The space is a sandbox organization (rules §9.4): its test clock follows the story
and stops at the moment the demo was loaded; an admin moves it on with
``advanceTestClock`` to see the next months billed.

Card payments need a gateway; the demo must not touch a real one, so its card
payments go through ``DemoCardTerminal``, which approves every PaymentIntent and
refund at once — the engine records them exactly as it records Stripe's answers.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import issue_token
from app.database import create_engine, create_sessionmaker
from app.lifecycle import build_gateway, install_engine_hooks
from app.settings import Settings
from app.signing import with_demo_secret
from models import (
    Account,
    AccountKind,
    Booking,
    DocumentType,
    Invoice,
    LineItem,
    LineKind,
    Organization,
    Payment,
    PaymentMethod,
    PaymentStatus,
    PlanInterval,
    PlanTemplate,
    Role,
    User,
)
from models.enums import OUTSTANDING_STATUSES
from services import (
    accounts,
    billing,
    bookings,
    invoices,
    payments,
    plans,
    policy,
    refunds,
    test_clocks,
)
from services.clock import FixedClock, SystemClock
from services.errors import GatewayError
from services.gateway import IntentState, InvalidWebhookError, RefundState, SavedCard

SLUG = "harbour-works"
TIMEZONE = "Europe/London"
DOMAIN = "harbourworks.example"
ADMIN = ("Harriet Hale", f"harriet@{DOMAIN}")
ANALYST = ("Theo Marsh", f"theo@{DOMAIN}")
# The member whose token is printed: she has her own account and is in a team.
MEMBERS = [
    "Maya Patel", "Liam O'Connor", "Sofia Rossi", "Noah Williams", "Aisha Khan",
    "Lucas Martin", "Emma Schmidt", "Oliver Brown", "Chloe Dubois", "Kenji Tanaka",
    "Zara Ahmed", "Daniel Kim",
]  # fmt: skip
TEAMS = {"Acme Studio": [0, 1, 2, 3], "Northwind Labs": [4, 5, 6]}
MONTHS_OF_HISTORY = 4

SAMPLE_QUERY = """{
  invoices(first: 5, sort: {field: DUE_DATE, direction: DESC}) {
    totalCount
    nodes {
      number status dueDate
      account { name }
      lines { description amount { formatted } }
      total { formatted } balanceDue { formatted }
      payments { method status amount { formatted } }
    }
  }
  creditNotes(first: 5) {
    nodes { number status remainingCredit { formatted } allocations { amount { formatted } } }
  }
}"""


class DemoCardTerminal:
    """A card gateway for demo data only: every PaymentIntent succeeds and every
    refund goes through at once, as if the member's card had been confirmed and the
    webhook had already arrived. It never talks to the network."""

    enabled = True

    def __init__(self) -> None:
        # Gateway ids are unique across the database: a second demo space
        # (``deskbill demo --force``) must not reuse the first one's.
        space = secrets.token_hex(4)
        self._ids = (f"{space}_{n}" for n in itertools.count(1))
        self._intents: dict[str, IntentState] = {}
        self._refunds: dict[str, RefundState] = {}

    async def create_customer(
        self, *, email: str | None, name: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        return f"cus_demo_{next(self._ids)}"

    async def create_setup_intent(self, *, customer: str, idempotency_key: str) -> str:
        return f"seti_demo_{next(self._ids)}_secret"

    async def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None,
        payment_method: str | None,
        off_session: bool,
        confirm: bool,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> IntentState:
        intent = IntentState(
            id=f"pi_demo_{next(self._ids)}",
            status="succeeded",
            amount=amount,
            currency=currency.upper(),
            amount_received=amount,
            payment_method=payment_method or "pm_demo_visa_4242",
            metadata=dict(metadata),
        )
        self._intents[intent.id] = intent
        return intent

    async def retrieve_payment_intent(self, intent_id: str) -> IntentState:
        return self._intents[intent_id]

    async def cancel_payment_intent(self, intent_id: str) -> IntentState:
        return self._intents[intent_id]

    async def create_refund(
        self, *, payment_intent: str, amount: int, idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> RefundState:  # fmt: skip
        refund = RefundState(
            id=f"re_demo_{next(self._ids)}",
            status="succeeded",
            amount=amount,
            payment_intent=payment_intent,
            metadata=dict(metadata),
        )
        self._refunds[refund.id] = refund
        return refund

    async def retrieve_refund(self, refund_id: str) -> RefundState:
        return self._refunds[refund_id]

    async def list_cards(self, customer: str) -> list[SavedCard]:
        return []  # the demo's cards are never saved at a gateway

    async def retrieve_card(self, payment_method: str) -> SavedCard:
        raise GatewayError("The demo card terminal keeps no saved cards.")

    async def detach_card(self, payment_method: str) -> SavedCard:
        raise GatewayError("The demo card terminal keeps no saved cards.")

    def verify_webhook(
        self, raw_body: bytes, signature_header: str | None, *, now: datetime
    ) -> dict[str, Any]:
        raise InvalidWebhookError("The demo card terminal sends no webhooks.")


@dataclass
class DemoPeople:
    """Whose tokens to print."""

    organization: str
    admin: User
    member: User
    member_accounts: list[str] = field(default_factory=list)


def _local(day: date, hour: int, minute: int = 0) -> datetime:
    """An instant given as a wall-clock time at the space (Europe/London)."""
    return datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(TIMEZONE)).astimezone(UTC)


@dataclass
class _Builder:
    """Builds the space step by step; ``clock`` is the demo's "now" for each step."""

    sessionmaker: async_sessionmaker[AsyncSession]
    clock: FixedClock
    terminal: DemoCardTerminal
    slug: str
    org_id: int = 0
    admin: User | None = None
    users: list[User] = field(default_factory=list)
    member_accounts: list[Account] = field(default_factory=list)
    teams: dict[str, Account] = field(default_factory=dict)
    templates: dict[str, PlanTemplate] = field(default_factory=dict)

    @property
    def now(self) -> datetime:
        return self.clock.now()

    @property
    def admin_id(self) -> int:
        assert self.admin is not None
        return self.admin.id

    @asynccontextmanager
    async def step(self) -> AsyncIterator[tuple[AsyncSession, Organization]]:
        """One transaction, as one request would be, at the sandbox's clock (moved to
        the story's "now" first)."""
        async with self.sessionmaker.begin() as session:
            org = await policy.get_organization(session, self.org_id)
            actor = self.admin.id if self.admin is not None else None
            test_clocks.move_test_clock(session, org, self.now, actor_user_id=actor)
            yield session, org

    async def sync_clock(self) -> None:
        """The sandbox's test clock to the story's "now" (it only moves forward)."""
        async with self.step():
            pass

    async def organization(self) -> Organization:
        async with self.sessionmaker() as session:
            return await policy.get_organization(session, self.org_id)

    def at(self, instant: datetime) -> None:
        """Move the demo's clock forward to the next thing that happens."""
        assert instant >= self.clock.now(), "the story is told in order"
        self.clock.set(instant)

    async def bill(self, instant: datetime) -> None:
        """Move the clock and run the billing clock there, as the worker would have
        (only where it has work: billing dates and a plan's start date)."""
        self.at(instant)
        await billing.run_billing(self.sessionmaker, self.org_id, instant)
        await self.sync_clock()

    def account(self, who: int | str) -> Account:
        return self.teams[who] if isinstance(who, str) else self.member_accounts[who]

    # ------------------------------------------------------------------ the space

    async def open_space(self) -> None:
        async with self.sessionmaker.begin() as session:
            org = await policy.create_organization(
                session, "Harbour Works", self.slug, "USD", self.now,
                timezone=TIMEZONE, billing_day=1, overdue_after_days=7,
                sandbox=True, clock_start=self.now,
            )  # fmt: skip
            self.org_id = org.id
            self.admin = await accounts.create_user(
                session, org, email=ADMIN[1], name=ADMIN[0], role=Role.ADMIN, now=self.now
            )
            await accounts.create_user(
                session, org, email=ANALYST[1], name=ANALYST[0], role=Role.ANALYST,
                now=self.now, actor_user_id=self.admin.id,
            )  # fmt: skip
        async with self.step() as (session, org):
            for name in MEMBERS:
                email = f"{name.split()[0].lower()}@{DOMAIN}"
                user = await accounts.create_user(
                    session, org, email=email, name=name, now=self.now,
                    actor_user_id=self.admin_id,
                )  # fmt: skip
                self.users.append(user)
                account = await accounts.create_account(
                    session, org, kind=AccountKind.USER, user=user, now=self.now,
                    actor_user_id=self.admin_id,
                )  # fmt: skip
                self.member_accounts.append(account)
        async with self.step() as (session, org):
            for team_name, member_indexes in TEAMS.items():
                team = await accounts.create_account(
                    session, org, kind=AccountKind.TEAM, name=team_name,
                    email=f"billing@{team_name.split()[0].lower()}.example", now=self.now,
                    actor_user_id=self.admin_id,
                )  # fmt: skip
                self.teams[team_name] = team
                for index in member_indexes:
                    await accounts.add_team_member(
                        session, org, team, self.users[index], self.now,
                        actor_user_id=self.admin_id,
                    )  # fmt: skip
        async with self.step() as (session, org):
            for key, name, price, interval, setup, deposit in (
                ("hot", "Hot desk", 25000, PlanInterval.MONTHLY, 0, 0),
                ("dedicated", "Dedicated desk", 45000, PlanInterval.MONTHLY, 10000, 30000),
                ("office", "Private office (4 desks)", 240000, PlanInterval.QUARTERLY, 0,
                 120000),
            ):  # fmt: skip
                self.templates[key] = await plans.create_plan_template(
                    session, org, name=name, price=price, interval=interval, now=self.now,
                    setup_fee=setup, deposit=deposit, actor_user_id=self.admin_id,
                )  # fmt: skip

    async def subscribe(self, who: int | str, plan: str, start: date) -> None:
        async with self.step() as (session, org):
            await plans.subscribe(
                session, org, self.account(who), self.templates[plan], start, self.now,
                actor_user_id=self.admin_id,
            )  # fmt: skip

    # ------------------------------------------------------------------ charges

    async def book(
        self, who: int | str, resource: str, day: date, hour: int, hours: int, rate: int
    ) -> Booking:
        """A member books a room in the app (hourly rate × duration)."""
        booked_by = self.users[who].id if isinstance(who, int) else self.admin_id
        async with self.step() as (session, org):
            return await bookings.create_booking(
                session, org, self.account(who), resource_name=resource,
                starts_at=_local(day, hour), ends_at=_local(day, hour + hours), now=self.now,
                hourly_rate=rate, booked_by_user_id=booked_by, actor_user_id=booked_by,
            )  # fmt: skip

    async def cancel(self, booking: Booking, who: int) -> None:
        async with self.step() as (session, org):
            await bookings.cancel_booking(
                session, org, booking, self.now, actor_user_id=self.users[who].id
            )

    async def day_pass(self, who: int, price: int = 3000) -> None:
        async with self.step() as (session, org):
            await bookings.check_in_day_pass(
                session, org, self.account(who), price=price, now=self.now,
                actor_user_id=self.admin_id,
            )  # fmt: skip

    async def manual_invoice(
        self, who: int | str, lines: list[invoices.ManualCharge | invoices.ManualCredit], *,
        due: date | None = None, apply_credit: bool = True,
    ) -> Invoice:  # fmt: skip
        async with self.step() as (session, org):
            return await invoices.create_manual_invoice(
                session, org, self.account(who), lines, self.now, due_date=due,
                finalize_now=True, apply_credit=apply_credit, actor_user_id=self.admin_id,
            )  # fmt: skip

    # ------------------------------------------------------------------ payments

    async def outstanding(self, who: int | str, due: date) -> Invoice | None:
        """The account's unpaid invoice due on ``due``, if it has one."""
        async with self.sessionmaker() as session:
            found: Invoice | None = await session.scalar(
                select(Invoice)
                .where(
                    Invoice.account_id == self.account(who).id,
                    Invoice.document_type == DocumentType.INVOICE,
                    Invoice.due_date == due,
                    Invoice.status.in_(OUTSTANDING_STATUSES),
                )
                .order_by(Invoice.id)
                .limit(1)
            )
            return found

    async def pay(
        self, who: int | str, due: date, method: PaymentMethod, amount: int | None = None,
        note: str | None = None,
    ) -> Payment | None:  # fmt: skip
        """Pay the invoice due on ``due``: by card in the app, or offline at the desk
        (``amount`` defaults to the balance; more than it becomes credit)."""
        invoice = await self.outstanding(who, due)
        if invoice is None or invoice.balance_due <= 0:
            return None
        if method == PaymentMethod.CARD:
            payer = self.users[who].id if isinstance(who, int) else self.admin_id
            paid = await payments.start_card_payment(
                self.sessionmaker, self.terminal, await self.organization(), invoice.id,
                self.now, actor_user_id=payer,
            )  # fmt: skip
            return paid.payment
        async with self.step() as (session, org):
            return await payments.record_payment(
                session, org, invoice.id, amount or invoice.balance_due, method, self.now,
                note=note, actor_user_id=self.admin_id,
            )  # fmt: skip


async def _build(builder: _Builder, now: datetime) -> None:
    """Four months of a coworking space, told in the order it happened."""
    b = builder
    today = now.astimezone(ZoneInfo(TIMEZONE)).date()
    this_month = today.replace(day=1)
    months = [invoices.add_months(this_month, k - MONTHS_OF_HISTORY)
              for k in range(MONTHS_OF_HISTORY + 1)]  # fmt: skip
    m0, m4 = months[0], months[-1]

    def on(month: date, day: int, hour: int = 10) -> datetime:
        return _local(month + timedelta(days=day - 1), hour)

    # Ten days before the first billing date: the space opens its books.
    b.clock.set(on(m0, -9))
    await b.open_space()
    for member in (0, 1, 2, 3, 4):
        await b.subscribe(member, "hot", m0)
    for member in (5, 6):
        await b.subscribe(member, "dedicated", m0)
    await b.subscribe("Acme Studio", "office", m0)
    await b.subscribe("Northwind Labs", "dedicated", m0)
    b.at(on(m0, -5, 14))
    await b.day_pass(10)

    card, cash, transfer = PaymentMethod.CARD, PaymentMethod.CASH, PaymentMethod.BANK_TRANSFER
    kenji_boardroom: Booking | None = None
    for n, month in enumerate(months[:-1]):
        await b.bill(_local(month, 0, 5))  # the billing date: invoices finalize

        b.at(on(month, 2, 9))  # members pay by card in the app
        for member in (0, 1, 5, 8, 9):
            await b.pay(member, month, card)
        if n == 2:
            await b.pay(11, month, card)

        b.at(on(month, 3))  # and at the front desk or by transfer
        await b.pay(2, month, cash, note="Paid at the front desk")
        await b.pay(4, month, transfer)
        await b.pay(10, month, cash)
        await b.pay("Northwind Labs", month, transfer, note=f"BACS ref NW-{month:%Y%m}")
        await b.pay("Acme Studio", month, transfer, note="Private office, by transfer")
        if n < 2:  # then Noah stops paying: his later invoices go overdue
            await b.pay(3, month, cash)
        if n < 3:
            await b.pay(6, month, cash)
        else:
            await b.pay(6, month, cash, amount=20000, note="Part payment; rest next week")
        if n == 3:  # Oliver rounds up; the change becomes credit for next month
            await b.pay(7, month, cash, amount=30000, note="Rounded up, keep the change")

        if n == 3:
            b.at(on(month, 4))
            await _remove_duplicate_day_pass(b, 11, month)
        if n == 2:
            b.at(on(month, 5))
            booth = await b.book(9, "Phone booth 2", month + timedelta(days=6), 10, 1, 1500)
            b.at(on(month, 5, 15))
            await b.cancel(booth, 9)  # not invoiced yet: the charge is simply removed
            await b.book(9, "Boardroom Harbour", month + timedelta(days=21), 13, 2, 6000)
            await b.book(1, "Meeting room Kelp", month + timedelta(days=22), 10, 1, 3500)

        b.at(on(month, 6, 11))
        await b.book(8, "Meeting room Kelp", month + timedelta(days=7), 14, 2, 3500)

        if n == 1:
            b.at(on(month, 8, 12))
            locker = await b.manual_invoice(
                10, [invoices.ManualCharge("Locker rental, 3 months", 4500)]
            )
            b.at(on(month, 9))
            async with b.step() as (session, org):
                # Raised for the wrong member: voided, and it keeps its number.
                wrong = await invoices.get_invoice(session, org, locker.id)
                await invoices.void(session, org, wrong, b.now, actor_user_id=b.admin_id)
            b.at(on(month, 10, 15))
            assert kenji_boardroom is not None
            await b.cancel(kenji_boardroom, 9)  # invoiced and paid: credited (rules §5.2)
            # Oliver joins mid-month: a prorated first invoice due on his start date.
            await b.subscribe(7, "hot", month + timedelta(days=14))

        b.at(on(month, 12, 9))
        await b.day_pass(10)
        if n >= 1:
            await b.day_pass(11)
        if n == 2:  # checked in twice by mistake; the admin removes one next month
            await b.day_pass(11)
        if n == 3:
            b.at(on(month, 12, 10))
            await b.manual_invoice("Northwind Labs", [invoices.ManualCredit(
                "Air-conditioning outage: two weeks' goodwill credit", 60000)],
                apply_credit=False)  # fmt: skip

        if n == 1:
            await b.bill(_local(month + timedelta(days=14), 0, 5))
            b.at(on(month, 15, 12))
            await b.pay(7, month + timedelta(days=14), card)
        if n == 0:
            b.at(on(month, 20, 16))
            # Booked for next month: invoiced on its first, paid, later cancelled.
            kenji_boardroom = await b.book(
                9, "Boardroom Harbour", months[1] + timedelta(days=17), 9, 4, 6000
            )
        if n == 2:
            b.at(on(month, 20, 11))
            maya_card = await _card_payment_of(b, 0, month)
            if maya_card is not None:
                await refunds.refund_payment(
                    b.sessionmaker, b.terminal, await b.organization(), maya_card, 5000,
                    b.now, reason="Hot desk closed two days for refurbishment",
                    actor_user_id=b.admin_id,
                )  # fmt: skip

    # This month's billing date, then today.
    await b.bill(min(_local(m4, 0, 5), now))
    b.at(now)
    # Most have paid this month's invoice by now; Noah, Emma, Oliver and Daniel have not.
    for member in (0, 1, 5, 8):
        await b.pay(member, m4, card)
    await b.pay(2, m4, cash)
    await b.pay(4, m4, transfer)
    await b.pay(10, m4, cash)
    await b.manual_invoice("Acme Studio", [
        invoices.ManualCharge("Event space hire: product launch evening", 85000),
        invoices.ManualCharge("Catering for 40 guests", 32000),
    ], due=today + timedelta(days=14))  # fmt: skip
    await b.manual_invoice(8, [invoices.ManualCharge("Printing and mail handling", 1850)])
    await b.bill(now)


async def _card_payment_of(b: _Builder, who: int, due: date) -> int | None:
    async with b.sessionmaker() as session:
        found: int | None = await session.scalar(
            select(Payment.id)
            .join(Invoice, Invoice.id == Payment.invoice_id)
            .where(
                Invoice.account_id == b.account(who).id,
                Invoice.due_date == due,
                Payment.method == PaymentMethod.CARD,
                Payment.status == PaymentStatus.SUCCEEDED,
            )
            .limit(1)
        )
        return found


async def _remove_duplicate_day_pass(b: _Builder, who: int, due: date) -> None:
    """The admin takes the duplicated check-in off a finalized invoice: the line moves
    onto a VOID invoice (rules §4.7) and the balance drops."""
    async with b.step() as (session, org):
        line = await session.scalar(
            select(LineItem)
            .join(Invoice, Invoice.id == LineItem.invoice_id)
            .where(
                Invoice.account_id == b.account(who).id,
                Invoice.due_date == due,
                Invoice.status.in_(OUTSTANDING_STATUSES),
                LineItem.kind == LineKind.DAY_PASS,
            )
            .order_by(LineItem.id.desc())
            .limit(1)
        )
        if line is not None:
            await invoices.remove_line(session, org, line, b.now, actor_user_id=b.admin_id)


# --------------------------------------------------------------------------- who to print


async def _people(session: AsyncSession, org: Organization) -> DemoPeople | None:
    """The demo admin and member of ``org`` (or, in a space that is not the demo, its
    first admin and first member)."""

    async def first(role: Role, email: str) -> User | None:
        users = list(
            await session.scalars(
                select(User)
                .where(User.organization_id == org.id, User.role == role, User.active.is_(True))
                .order_by(User.id)
            )
        )
        return next((u for u in users if u.email == email), users[0] if users else None)

    admin = await first(Role.ADMIN, ADMIN[1])
    member = await first(Role.MEMBER, f"{MEMBERS[0].split()[0].lower()}@{DOMAIN}")
    if admin is None or member is None:
        return None
    ids = await accounts.account_ids_for_user(session, org, member.id)
    names = await session.scalars(select(Account.name).where(Account.id.in_(ids)))
    return DemoPeople(org.name, admin, member, sorted(names))


def _print_welcome(settings: Settings, people: DemoPeople, host: str, now: datetime) -> None:
    admin_token = issue_token(settings, people.admin, now)
    member_token = issue_token(settings, people.member, now)
    sees = ", ".join(people.member_accounts)
    rule = "─" * 72
    print(
        f"""
{rule}
Deskbill demo: {people.organization}
{rule}
GraphiQL:      {host}/graphql
Send a token as the header   Authorization: Bearer <token>

ADMIN token for {people.admin.name} ({people.admin.email}):
  {admin_token}

MEMBER token for {people.member.name} ({people.member.email}; sees {sees}):
  {member_token}

Tokens last {settings.token_ttl_hours // 24} days. Try this query in GraphiQL:

{SAMPLE_QUERY}
{rule}""",
        flush=True,
    )


async def load_demo(
    settings: Settings, *, force: bool = False, host: str = "http://127.0.0.1:8000"
) -> None:
    """Fill the database at ``settings.database_url`` with the demo space and print how
    to use it. When it already holds an organization (and not ``force``), nothing is
    added: the tokens are printed again. The schema must be migrated already."""
    install_engine_hooks(build_gateway(settings))
    engine = create_engine(settings.database_url, limits=settings.database_limits)
    sessionmaker = create_sessionmaker(engine)
    now = SystemClock().now()
    try:
        settings = await with_demo_secret(settings, sessionmaker)
        async with sessionmaker() as session:
            orgs = list(await session.scalars(select(Organization).order_by(Organization.id)))
        if orgs and not force:
            existing = next((o for o in orgs if o.slug == SLUG), orgs[0])
            async with sessionmaker() as session:
                people = await _people(session, existing)
            if people is None:
                print(f"The database already holds “{existing.name}”, which has no active "
                      "admin and member to print tokens for; run `deskbill demo --force` to "
                      "add the demo space next to it.", flush=True)  # fmt: skip
                return
            print("The database already has data; no demo data was added.", flush=True)
            _print_welcome(settings, people, host, now)
            return
        taken = {o.slug for o in orgs}
        candidates = itertools.chain([SLUG], (f"{SLUG}-{n}" for n in itertools.count(2)))
        slug = next(s for s in candidates if s not in taken)
        builder = _Builder(sessionmaker, FixedClock(now), DemoCardTerminal(), slug)
        await _build(builder, now)
        await builder.sync_clock()
        async with sessionmaker() as session:
            org = await policy.get_organization(session, builder.org_id)
            people = await _people(session, org)
        assert people is not None
        _print_welcome(settings, people, host, now)
    finally:
        await engine.dispose()


async def demo_settings(settings: Settings) -> Settings:
    """``settings`` with the demo database's own signing secret when none is set."""
    engine = create_engine(settings.database_url)
    try:
        return await with_demo_secret(settings, create_sessionmaker(engine))
    finally:
        await engine.dispose()
