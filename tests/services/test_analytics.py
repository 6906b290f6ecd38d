"""The analytics engine against a recomputation from the rows.

A random billing history is built through the engine (manual invoices and credit
notes, plans, offline and card payments, allocations and their removal, refunds,
voids, billing runs) over weeks that cross daylight-saving changes, at random hours
so that instants fall on both sides of local midnight. Then every figure is asked
for with random spans, groupings and account filters, and compared exactly with the
same figure recomputed in Python from the raw rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.worker import billing_loop
from models import (
    ROLLUPS,
    Account,
    AccountKind,
    CreditAllocation,
    Invoice,
    Organization,
    Payment,
    PaymentStatus,
    PaymentType,
    PlanInterval,
    PlanSubscription,
    PlanTemplate,
    Refund,
    figures,
)
from services import (
    accounts,
    analytics,
    batch_billing,
    billing,
    credit,
    invoices,
    money,
    payments,
    plans,
)
from services import refunds as refund_service
from services.analytics import Grouping, Scope, Span
from services.clock import FixedClock, local_date
from services.errors import DomainError, ValidationError
from services.invoice_status import settle
from tests.services.factories import Sessions, make_org

ZONES = ["Europe/Berlin", "America/New_York", "Pacific/Auckland", "Asia/Kolkata", "UTC"]


@dataclass
class Rows:
    org: Organization
    accounts: list[Account]
    invoices: list[Invoice]
    payments: list[Payment]
    refunds: list[Refund]
    allocations: list[CreditAllocation]
    subscriptions: list[PlanSubscription]
    templates: list[PlanTemplate]


async def _card_payment(db: Sessions, rng: random.Random, invoice_id: int, now: datetime) -> None:
    """A gateway payment as the webhook leaves it: succeeded (applied), or failed."""
    async with db.begin() as session:
        target = await session.get(Invoice, invoice_id)
        assert target is not None
        succeeded = rng.random() < 0.7 and target.balance_due > 0
        amount = rng.randint(1, target.balance_due) if succeeded else rng.randint(100, 9000)
        session.add(
            Payment(
                organization_id=target.organization_id, account_id=target.account_id,
                invoice_id=target.id, amount=amount, applied_amount=amount if succeeded else 0,
                currency=target.currency,
                status=PaymentStatus.SUCCEEDED if succeeded else rng.choice(
                    [PaymentStatus.FAILED, PaymentStatus.CANCELED]),
                type=PaymentType.AUTOMATIC, method=rng.choice(["CARD", "BANK_DEBIT"]),
                created_at=now - timedelta(minutes=rng.randint(0, 40)), updated_at=now,
                succeeded_at=now if succeeded else None,
            )
        )  # fmt: skip
        if succeeded:
            target.amount_paid += amount
            org = await session.get(Organization, target.organization_id)
            assert org is not None
            settle(session, target, org, now)


async def build_history(db: Sessions, seed: int) -> Rows:
    rng = random.Random(seed)
    zone = ZONES[seed % len(ZONES)]
    clock = FixedClock(datetime(2026, 10, 8, rng.randint(0, 23), tzinfo=UTC))
    org = await make_org(db, clock, timezone=zone, overdue_after_days=rng.choice([0, 3, 7]))
    people: list[Account] = []
    async with db.begin() as session:
        for i in range(4):
            user = await accounts.create_user(
                session, org, email=f"m{i}@example.com", name=f"Member {i}", now=clock.now()
            )
            people.append(
                await accounts.create_account(
                    session, org, kind=AccountKind.USER, user=user, now=clock.now()
                )
            )
        people.append(
            await accounts.create_account(
                session, org, kind=AccountKind.TEAM, name="Studio", now=clock.now()
            )
        )
        templates = [
            await plans.create_plan_template(
                session,
                org,
                name=f"{interval.title()} desk",
                price=price,
                interval=interval,
                now=clock.now(),
                setup_fee=rng.choice([0, 2500]),
            )
            for interval, price in (
                (PlanInterval.MONTHLY, 31000),
                (PlanInterval.QUARTERLY, 85001),
                (PlanInterval.YEARLY, 300007),
                (PlanInterval.ONE_TIME, 5000),
            )
        ]

    @asynccontextmanager
    async def attempt() -> AsyncIterator[tuple[AsyncSession, Organization]]:
        try:
            async with db.begin() as session:
                fresh = await session.get(Organization, org.id, populate_existing=True)
                assert fresh is not None
                yield session, fresh
        except DomainError:
            pass  # the engine refused a random move; that is part of the game

    async def open_invoices() -> list[Invoice]:
        async with db() as session:
            return list(
                await session.scalars(
                    select(Invoice)
                    .where(
                        Invoice.organization_id == org.id,
                        Invoice.status.in_(["UPCOMING", "DUE", "OVERDUE"]),
                    )
                    .order_by(Invoice.id)
                )
            )

    async def notes_with_credit() -> list[Invoice]:
        async with db() as session:
            found = await session.scalars(
                select(Invoice)
                .where(Invoice.organization_id == org.id, Invoice.document_type == "CREDIT_NOTE")
                .order_by(Invoice.id)
            )
            return [n for n in found if n.credit_remaining > 0]

    for step in range(70):
        clock.advance(timedelta(minutes=rng.randint(30, 60 * 26)))
        now = clock.now()
        today = local_date(now, zone)
        who = rng.choice(people)
        roll = rng.random()
        if roll < 0.22:
            lines: list[invoices.ManualCharge | invoices.ManualCredit] = [
                invoices.ManualCharge(
                    f"Charge {step}.{n}",
                    rng.randint(100, 40000),
                    rng.randint(1, 3),
                    rng.choice([None, 0, 82_500, 200_000]),
                )
                for n in range(rng.randint(1, 3))
            ]
            due = today + timedelta(days=rng.choice([0, 0, 5, 15]))
            async with attempt() as (s, o):
                await invoices.create_manual_invoice(
                    s, o, who, lines, now, due_date=due, finalize_now=True,
                    apply_credit=rng.random() < 0.5,
                )  # fmt: skip
        elif roll < 0.30:
            async with attempt() as (s, o):
                await credit.issue_credit_note(
                    s, o, who, rng.randint(100, 20000), "Goodwill", now, origin="CUSTOM"
                )
        elif roll < 0.36:
            start = today + timedelta(days=rng.randint(-20, 20))
            end = start + timedelta(days=rng.randint(10, 200)) if rng.random() < 0.4 else None
            template = rng.choice(templates)
            async with attempt() as (s, o):
                await plans.subscribe(s, o, who, template, start, now, end_date=end)
        elif roll < 0.52:
            owed = await open_invoices()
            if owed:
                target = rng.choice(owed)
                if rng.random() < 0.4:
                    await _card_payment(db, rng, target.id, now)
                else:
                    amount = rng.randint(1, target.balance_due + 3000)
                    method = rng.choice(["CASH", "CHEQUE", "BANK_TRANSFER", "OTHER"])
                    received = rng.choice([None, today, today - timedelta(days=rng.randint(1, 9))])
                    async with attempt() as (s, o):
                        await payments.record_payment(
                            s, o, target.id, amount, method, now, received_on=received
                        )
        elif roll < 0.64:
            notes, owed = await notes_with_credit(), await open_invoices()
            pairs = [(n, i) for n in notes for i in owed if n.account_id == i.account_id]
            if pairs:
                n, i = rng.choice(pairs)
                amount = rng.randint(1, min(n.credit_remaining, i.balance_due))
                async with attempt() as (s, o):
                    await credit.allocate(s, o, n.id, i.id, amount, now)
        elif roll < 0.70:
            async with db() as session:
                live = list(
                    await session.scalars(
                        select(CreditAllocation.id).where(
                            CreditAllocation.organization_id == org.id,
                            CreditAllocation.removed_at.is_(None),
                        )
                    )
                )
            if live:
                chosen = rng.choice(live)
                async with attempt() as (s, o):
                    await credit.remove_allocation(s, o, chosen, now)
        elif roll < 0.80:
            async with db() as session:
                paid = list(
                    await session.scalars(
                        select(Payment).where(
                            Payment.organization_id == org.id,
                            Payment.status == "SUCCEEDED",
                            Payment.refunded_amount < Payment.amount,
                        )
                    )
                )
            notes = await notes_with_credit()
            if paid and (not notes or rng.random() < 0.5):
                p = rng.choice(paid)
                amount = rng.randint(1, p.amount - p.refunded_amount)
                async with attempt() as (s, o):
                    await refund_service.record_refund(s, o, amount, "CASH", now, payment_id=p.id)
            elif notes:
                n = rng.choice(notes)
                amount = rng.randint(1, n.credit_remaining)
                async with attempt() as (s, o):
                    await refund_service.record_refund(
                        s, o, amount, "BANK_TRANSFER", now, credit_note_id=n.id
                    )
        elif roll < 0.86:
            owed = await open_invoices()
            if owed:
                victim = rng.choice(owed)
                async with attempt() as (s, o):
                    await invoices.void(s, o, victim, now)
        else:
            await billing.run_billing(db, org.id, now)

    async with db() as session:

        async def every(model: Any) -> list[Any]:
            return list(
                await session.scalars(
                    select(model).where(model.organization_id == org.id).order_by(model.id)
                )
            )

        fresh = await session.get(Organization, org.id)
        assert fresh is not None
        return Rows(
            fresh, await every(Account), await every(Invoice), await every(Payment),
            await every(Refund), await every(CreditAllocation), await every(PlanSubscription),
            await every(PlanTemplate),
        )  # fmt: skip


# --------------------------------------------------------------------------- by hand


def _in(scope: Scope, rows: Rows, account_id: int) -> bool:
    kinds = {a.id: a.kind for a in rows.accounts}
    if scope.account_ids is not None and account_id not in scope.account_ids:
        return False
    return scope.account_kind is None or kinds[account_id] == scope.account_kind


def _payment_day(p: Payment, zone: str) -> date:
    if p.received_on is not None:
        return p.received_on
    return local_date(p.succeeded_at or p.created_at, zone)


def expected_revenue(rows: Rows, scope: Scope, span: Span, g: Grouping) -> list[tuple[Any, ...]]:
    zone = rows.org.timezone
    sums: dict[date, list[int]] = defaultdict(lambda: [0] * 6)

    def add(day: date | None, index: int, amount: int, account_id: int) -> None:
        if day is not None and span.first <= day <= span.last and _in(scope, rows, account_id):
            sums[analytics.period_start(day, g)][index] += amount

    for inv in rows.invoices:
        if inv.document_type in ("INVOICE", "CREDIT_NOTE") and inv.status != "VOID":
            add(inv.issue_date, 0, inv.total, inv.account_id)
            add(inv.issue_date, 1, inv.tax, inv.account_id)
            if inv.document_type == "CREDIT_NOTE":
                add(inv.issue_date, 2, -inv.total, inv.account_id)
    for p in rows.payments:
        if p.status == "SUCCEEDED":
            add(_payment_day(p, zone), 3, p.amount, p.account_id)
    for r in rows.refunds:
        if r.status == "SUCCEEDED":
            add(local_date(r.created_at, zone), 4, r.amount, r.account_id)
    for a in rows.allocations:
        if a.removed_at is None:
            add(local_date(a.created_at, zone), 5, a.amount, a.account_id)
    return [
        (first, last, *sums[key], sums[key][3] - sums[key][4])
        for key, first, last in analytics.periods(span, g)
    ]


def expected_collections(rows: Rows, scope: Scope, span: Span, g: Grouping) -> list[Any]:
    sums: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0] * 5)
    for inv in rows.invoices:
        day = inv.issue_date
        if inv.document_type != "INVOICE" or day is None or not _in(scope, rows, inv.account_id):
            continue
        if span.first <= day <= span.last:
            cell = sums[(analytics.period_start(day, g), inv.status)]
            owed = inv.total - inv.amount_paid - inv.credit_applied
            open_ = inv.status in ("UPCOMING", "DUE", "OVERDUE", "PROCESSING") and inv.total > 0
            for i, v in enumerate(
                (1, inv.total, inv.amount_paid, inv.credit_applied, owed if open_ else 0)
            ):
                cell[i] += v
    return [
        (first, last, [(s.value, *sums[(key, s.value)]) for s in analytics.FINALIZED_STATUSES])
        for key, first, last in analytics.periods(span, g)
    ]


def _open_balances(rows: Rows, scope: Scope) -> list[Invoice]:
    return [
        inv
        for inv in rows.invoices
        if inv.document_type == "INVOICE"
        and inv.status in ("UPCOMING", "DUE", "OVERDUE", "PROCESSING")
        and inv.total - inv.amount_paid - inv.credit_applied > 0
        and _in(scope, rows, inv.account_id)
    ]


def expected_aging(rows: Rows, scope: Scope, as_of: date) -> tuple[Any, list[Any]]:
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for inv in _open_balances(rows, scope):
        bucket = analytics.aging_bucket((as_of - inv.due_date).days).value
        owed = inv.total - inv.amount_paid - inv.credit_applied
        for cell in (total[bucket], per[inv.account_id][bucket]):
            cell[0] += owed
            cell[1] += 1
    names = {a.id: a.name for a in rows.accounts}

    def shape(cells: dict[str, list[int]]) -> list[tuple[str, int, int]]:
        return [(b.value, *cells[b.value]) for b in analytics.AGING_BUCKETS]

    accounts_ = sorted(
        (
            (
                aid,
                names[aid],
                sum(c[0] for c in cells.values()),
                sum(c[1] for c in cells.values()),
                shape(cells),
            )
            for aid, cells in per.items()
        ),
        key=lambda r: (-r[2], r[0]),
    )
    return (len(per), shape(total)), accounts_


def expected_credit(rows: Rows, scope: Scope) -> tuple[Any, list[Any]]:
    per: dict[int, list[Any]] = {}
    for inv in rows.invoices:
        if inv.credit_remaining > 0 and _in(scope, rows, inv.account_id):
            cell = per.setdefault(inv.account_id, [0, 0, inv.issue_date])
            cell[0] += inv.credit_remaining
            cell[1] += 1
            cell[2] = min(cell[2], inv.issue_date)
    names = {a.id: a.name for a in rows.accounts}
    listed = sorted(
        ((aid, names[aid], *cell) for aid, cell in per.items()), key=lambda r: (-r[2], r[0])
    )
    totals = (
        sum(c[0] for c in per.values()),
        sum(c[1] for c in per.values()),
        len(per),
        min((c[2] for c in per.values()), default=None),
    )
    return totals, listed


def expected_recurring(rows: Rows, scope: Scope, as_of: date) -> tuple[Any, list[Any]]:
    times = {"MONTHLY": 12, "QUARTERLY": 4, "YEARLY": 1}
    per: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for sub in rows.subscriptions:
        if (
            sub.interval in times
            and sub.start_date <= as_of
            and (sub.end_date is None or sub.end_date >= as_of)
            and _in(scope, rows, sub.account_id)
        ):
            per[sub.template_id][0] += 1
            per[sub.template_id][1] += sub.price * times[sub.interval]
    names = {t.id: t.name for t in rows.templates}
    listed = sorted(
        ((tid, names[tid], n, arr, money.round_half_up(arr, 12)) for tid, (n, arr) in per.items()),
        key=lambda r: (-r[3], r[0]),
    )
    arr = sum(c[1] for c in per.values())
    return (sum(c[0] for c in per.values()), arr, money.round_half_up(arr, 12)), listed


def expected_payments(rows: Rows, scope: Scope, span: Span) -> list[Any]:
    due = {inv.id: inv.due_date for inv in rows.invoices}
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for p in rows.payments:
        day = _payment_day(p, rows.org.timezone)
        if not (span.first <= day <= span.last and _in(scope, rows, p.account_id)):
            continue
        cell = cells[(p.method, p.status)]
        cell[0] += 1
        cell[1] += p.amount
        cell[2] += p.refunded_amount
        if p.status == "SUCCEEDED":
            cell[3] += (day - due[p.invoice_id]).days
            cell[4] += 1
    return [(m, s, *v) for (m, s), v in sorted(cells.items())]


# --------------------------------------------------------------------------- the check


def _random_scope(rng: random.Random, rows: Rows) -> Scope:
    ids: tuple[int, ...] | None = None
    kind = None
    choice = rng.random()
    if choice < 0.3:
        ids = tuple(a.id for a in rng.sample(rows.accounts, rng.randint(1, 3)))
    elif choice < 0.45:
        kind = rng.choice(["USER", "TEAM"])
    return Scope(rows.org.id, rows.org.timezone, ids, kind)


def _random_span(rng: random.Random) -> Span:
    first = date(2026, 9, 25) + timedelta(days=rng.randint(0, 30))
    return Span.of(first, first + timedelta(days=rng.randint(0, 90)))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_figure_matches_the_rows(db: Sessions, seed: int) -> None:
    rows = await build_history(db, seed)
    # The history must be rich enough for the comparison to mean something.
    assert sum(1 for i in rows.invoices if i.document_type == "INVOICE") >= 8
    assert any(p.status == "SUCCEEDED" and p.received_on is None for p in rows.payments)
    assert any(p.received_on is not None for p in rows.payments)
    assert rows.allocations and rows.refunds and rows.subscriptions
    rng = random.Random(seed * 101)
    async with db() as session:
        for _ in range(6):
            scope = _random_scope(rng, rows)
            span = _random_span(rng)
            for g in Grouping:
                got = [
                    (p.start, p.end, p.invoiced, p.tax, p.credit_issued, p.received,
                     p.refunded, p.credit_applied, p.collected)
                    for p in await analytics.revenue(session, scope, span, g)
                ]  # fmt: skip
                assert got == expected_revenue(rows, scope, span, g), (scope, span, g)
                collections = [
                    (c.start, c.end,
                     [(s.status.value, s.count, s.total, s.amount_paid, s.credit_applied,
                       s.balance_due) for s in c.statuses])
                    for c in await analytics.invoice_collections(session, scope, span, g)
                ]  # fmt: skip
                assert collections == expected_collections(rows, scope, span, g)

            as_of = date(2026, 10, 1) + timedelta(days=rng.randint(0, 80))
            (account_count, buckets), per_account = expected_aging(rows, scope, as_of)
            aging = await analytics.receivables_aging(session, scope, as_of)
            assert [(b.bucket.value, b.balance, b.count) for b in aging.buckets] == buckets
            assert aging.account_count == account_count
            assert (aging.balance, aging.count) == (
                sum(b[1] for b in buckets),
                sum(b[2] for b in buckets),
            )
            listed = await analytics.receivables_by_account(session, scope, as_of)
            assert [
                (a.account_id, a.account_name, a.balance, a.count,
                 [(b.bucket.value, b.balance, b.count) for b in a.buckets])
                for a in listed.rows
            ] == per_account  # fmt: skip
            # Keyset pages of two walk the same list.
            walked: list[int] = []
            after = None
            while True:
                page = await analytics.receivables_by_account(
                    session, scope, as_of, first=2, after=after
                )
                walked += [a.account_id for a in page.rows]
                if not page.has_next:
                    break
                after = (page.rows[-1].balance, page.rows[-1].account_id)
            assert walked == [a[0] for a in per_account]

            totals, per_credit = expected_credit(rows, scope)
            got_totals = await analytics.credit_outstanding(session, scope)
            assert (
                got_totals.remaining, got_totals.credit_note_count, got_totals.account_count,
                got_totals.oldest_issue_date,
            ) == totals  # fmt: skip
            credit_page = await analytics.credit_by_account(session, scope)
            assert [
                (c.account_id, c.account_name, c.remaining, c.credit_note_count,
                 c.oldest_issue_date)
                for c in credit_page.rows
            ] == per_credit  # fmt: skip

            recurring_total, per_template = expected_recurring(rows, scope, as_of)
            recurring = await analytics.recurring_revenue(session, scope, as_of)
            t = recurring.total
            assert (t.subscriptions, t.arr, t.mrr) == recurring_total
            assert [
                (r.template_id, r.name, r.figures.subscriptions, r.figures.arr, r.figures.mrr)
                for r in recurring.templates
            ] == per_template

            summary = await analytics.payments_summary(session, scope, span)
            assert [
                (g.method, g.status, g.count, g.amount, g.refunded, g.days_after_due_total,
                 g.days_after_due_count)
                for g in summary
            ] == expected_payments(rows, scope, span)  # fmt: skip


def test_utc_offsets_find_each_change_to_the_second() -> None:
    from zoneinfo import ZoneInfo

    start = datetime(2026, 1, 1, tzinfo=UTC)
    pieces = analytics._utc_offsets(ZoneInfo("Europe/Berlin"), start, start + timedelta(days=365))
    assert pieces == [
        (start, 3600),
        (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), 7200),
        (datetime(2026, 10, 25, 1, 0, tzinfo=UTC), 3600),
    ]


def test_spans_are_bounded() -> None:
    with pytest.raises(ValidationError, match="on or after"):
        Span.of(date(2026, 2, 1), date(2026, 1, 31))
    with pytest.raises(ValidationError, match="five years"):
        Span.of(date(2020, 1, 1), date(2025, 1, 2))
    assert Span.of(date(2021, 1, 1), date(2025, 12, 31)).last == date(2025, 12, 31)


def test_periods_are_clipped_to_the_span() -> None:
    span = Span.of(date(2026, 1, 15), date(2026, 3, 3))
    assert analytics.periods(span, Grouping.MONTH) == [
        (date(2026, 1, 1), date(2026, 1, 15), date(2026, 1, 31)),
        (date(2026, 2, 1), date(2026, 2, 1), date(2026, 2, 28)),
        (date(2026, 3, 1), date(2026, 3, 1), date(2026, 3, 3)),
    ]
    weeks = analytics.periods(span, Grouping.WEEK)
    assert weeks[0] == (date(2026, 1, 12), date(2026, 1, 15), date(2026, 1, 18))
    assert all(key.weekday() == 0 for key, _, _ in weeks)


# --------------------------------------------------------------------------- rollups


async def _rollup_rows(session: AsyncSession, org: int) -> dict[str, list[tuple[Any, ...]]]:
    """Each rollup's figures per key (fresh and compacted rows summed), zero keys left out."""
    out = {}
    for rollup in ROLLUPS:
        keys = [rollup.c[k] for k in figures.keys_of(rollup)]
        sums = [func.sum(rollup.c[m]) for m in figures.measures_of(rollup)]
        stmt = (
            select(*keys, *sums)
            .where(rollup.c.organization_id == org)
            .group_by(*keys)
            .having(or_(*[s != 0 for s in sums]))
            .order_by(*keys)
        )
        out[rollup.name] = [tuple(r) for r in (await session.execute(stmt)).all()]
    return out


async def _rebuilt(db: Sessions, org: int) -> dict[str, list[tuple[Any, ...]]]:
    """The rollups as recomputed from the whole ledger, in a transaction rolled back."""
    async with db() as session:
        await session.execute(
            text("SELECT deskbill_rebuild_figures(ARRAY[CAST(:org AS bigint)])"), {"org": org}
        )
        rebuilt = await _rollup_rows(session, org)
        await session.rollback()
    return rebuilt


async def _whole_figures(db: Sessions, scope: Scope) -> list[Any]:
    span = Span.of(date(2026, 9, 1), date(2027, 3, 1))
    async with db() as session:
        return [
            await analytics.revenue(session, scope, span, Grouping.DAY),
            await analytics.invoice_collections(session, scope, span, Grouping.WEEK),
            await analytics.payments_summary(session, scope, span),
            await analytics.receivables_aging(session, scope, date(2026, 11, 20)),
            await analytics.receivables_by_account(session, scope, date(2026, 11, 20), first=2),
        ]


@pytest.mark.parametrize("seed", [4, 5])
async def test_rollups_follow_every_change_to_the_ledger(db: Sessions, seed: int) -> None:
    """The triggers' running deltas equal a rebuild from the ledger after a random
    history, a batched billing run, a due date moved under its payments and a new time
    zone; compaction changes no figure; rollup and ledger paths answer the same."""
    async with db() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("the rollups are kept by PostgreSQL triggers; SQLite reads the ledger")
    rows = await build_history(db, seed)
    org = rows.org.id
    scope = Scope(org, rows.org.timezone)
    ledger = Scope(org, rows.org.timezone, from_ledger=True)

    async def check(scope: Scope, ledger: Scope) -> dict[str, list[tuple[Any, ...]]]:
        async with db() as session:
            kept = await _rollup_rows(session, org)
        assert kept == await _rebuilt(db, org)
        assert await _whole_figures(db, scope) == await _whole_figures(db, ledger)
        return kept

    kept = await check(scope, ledger)
    assert kept["revenue_days"] and kept["payment_days"] and kept["open_dues"]

    await batch_billing.run_billing_batched(db, org, datetime(2027, 1, 2, 9, tzinfo=UTC))
    await check(scope, ledger)

    async with db.begin() as session:
        moved = await session.execute(
            text(
                "UPDATE invoices SET due_date = due_date + 3 WHERE organization_id = :org "
                "AND id IN (SELECT invoice_id FROM payments WHERE status = 'SUCCEEDED')"
            ),
            {"org": org},
        )
        assert moved.rowcount  # type: ignore[attr-defined]
    kept = await check(scope, ledger)

    async with db.begin() as session:
        await analytics.compact(session)
    async with db() as session:
        assert await _rollup_rows(session, org) == kept
        fresh = await session.scalar(
            select(func.count())
            .select_from(figures.revenue_days)
            .where(figures.revenue_days.c.fresh)
        )
        assert fresh == 0
    await check(scope, ledger)

    zone = next(z for z in ZONES if z != rows.org.timezone)
    async with db.begin() as session:
        organization = await session.get(Organization, org)
        assert organization is not None
        organization.timezone = zone
    await check(Scope(org, zone), Scope(org, zone, from_ledger=True))


async def test_the_worker_compacts_the_rollups(db: Sessions) -> None:
    async with db() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("the rollups are kept by PostgreSQL triggers; SQLite reads the ledger")
    rows = await build_history(db, 6)

    async def fresh_rows() -> int:
        async with db() as session:
            total = 0
            for rollup in ROLLUPS:
                total += (
                    await session.scalar(
                        select(func.count()).select_from(rollup).where(rollup.c.fresh)
                    )
                    or 0
                )
            return total

    assert await fresh_rows() > 0
    before = await _whole_figures(db, Scope(rows.org.id, rows.org.timezone))

    async def announce(org: int, event_id: int) -> None:
        pass

    clock = FixedClock(datetime(2026, 12, 20, 9, tzinfo=UTC))
    worker = asyncio.create_task(billing_loop(db, clock, 0.05, announce))
    try:
        async with asyncio.timeout(30):
            while await fresh_rows():  # noqa: ASYNC110 (the worker is another task)
                await asyncio.sleep(0.05)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    # Billing on the 20th may have added to the figures; compaction itself moves none.
    async with db() as session:
        kept = await _rollup_rows(session, rows.org.id)
    assert kept == await _rebuilt(db, rows.org.id)
    assert before  # figures were there to compact
