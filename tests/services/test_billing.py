"""The billing run (rules §9): a year of monthly invoices, idempotence, concurrent
workers, status transitions with once-only events, per-account atomicity."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_sessionmaker
from models import (
    Account,
    AdditionalChargesPolicy,
    Event,
    Invoice,
    InvoiceStatus,
    LineItem,
    Organization,
    PlanInterval,
    PlanStatus,
    PlanSubscription,
)
from services import billing, invoices, plans
from services.billing import BillingStep, run_billing
from services.clock import FixedClock
from services.events import EventType
from services.invoices import LineSpec
from tests.services.factories import (
    Sessions,
    at,
    d,
    event_types,
    fresh_org,
    invoice,
    invoices_of,
    lines_of,
    make_account,
    make_org,
    row_counts,
)


async def _plan(
    db: Sessions,
    org: Organization,
    account: Account,
    start: date,
    now: datetime,
    *,
    price: int = 31000,
    end: date | None = None,
) -> PlanSubscription:
    async with db.begin() as session:
        fresh = await fresh_org(session, org)
        template = await plans.create_plan_template(
            session, fresh, name="Hot desk", price=price, interval=PlanInterval.MONTHLY, now=now
        )
        return await plans.subscribe(session, fresh, account, template, start, now, end_date=end)


async def _charge(
    db: Sessions, org: Organization, account: Account, now: datetime, amount: int = 2500
) -> LineItem:
    async with db.begin() as session:
        return await invoices.place_additional_charge(
            session, await fresh_org(session, org), account, LineSpec("Room", amount), now
        )


async def test_a_year_of_monthly_billing(db: Sessions, clock: FixedClock) -> None:
    clock.set(at(2025, 12, 20))
    org = await make_org(db, clock, timezone="Europe/Berlin")
    account = await make_account(db, org, clock)
    await _plan(db, org, account, d(2026, 1, 1), clock.now(), price=10000)

    for month in range(1, 13):
        # The start of the billing date in Berlin (UTC+1 in winter, +2 in summer).
        as_of = invoices.start_of_day(d(2026, month, 1), "Europe/Berlin")
        result = await run_billing(db, org.id, as_of)
        assert result.failed_accounts == []
        assert result.invoices_finalized == 1

    finalized = [x for x in await invoices_of(db, account.id) if x.number]
    assert [x.number for x in finalized] == [f"INV-{n:06d}" for n in range(1, 13)]
    for month, inv in enumerate(finalized, start=1):
        assert inv.due_date == inv.issue_date == d(2026, month, 1)
        # Unpaid: each month's run turned the earlier invoices overdue (7 days).
        assert inv.status == (InvoiceStatus.DUE if month == 12 else InvoiceStatus.OVERDUE)
        (line,) = await lines_of(db, inv.id)
        assert line.period_start == d(2026, month, 1)
        assert line.period_end == invoices.add_months(d(2026, month, 1), 1) - timedelta(days=1)
        assert line.amount == 10000
    (pending,) = [x for x in await invoices_of(db, account.id) if x.number is None]
    assert (pending.status, pending.due_date) == ("PENDING", d(2027, 1, 1))


async def test_the_seed_plan_is_billed_on_and_then_the_next_period_is_queued(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 10))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    sub = await _plan(db, org, account, d(2026, 8, 15), clock.now())

    await run_billing(db, org.id, at(2026, 8, 15))
    (first,) = await invoices_of(db, account.id)
    assert (first.number, first.status, first.total) == ("INV-000001", "DUE", 48000)

    # On Sep 1 the October period goes on the Oct 1 pending invoice.
    result = await run_billing(db, org.id, at(2026, 9, 1))
    assert result.plan_periods_added == 1
    _, october = await invoices_of(db, account.id)
    assert (october.status, october.due_date, october.total) == ("PENDING", d(2026, 10, 1), 31000)
    async with db() as session:
        stored = await session.get(PlanSubscription, sub.id)
        assert stored is not None and stored.billed_through == d(2026, 11, 1)


async def test_an_aug_15_booking_charge_is_invoiced_on_sep_1(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account, clock.now())
    assert (await run_billing(db, org.id, at(2026, 8, 31, 23, 59))).invoices_finalized == 0
    await run_billing(db, org.id, at(2026, 9, 1))
    finalized = await invoice(db, line.invoice_id)
    assert (finalized.number, finalized.due_date, finalized.total) == (
        "INV-000001",
        d(2026, 9, 1),
        2500,
    )


async def test_running_twice_for_the_same_instant_changes_nothing(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 10))
    org = await make_org(db, clock, overdue_after_days=3)
    first = await make_account(db, org, clock, "Ada Lovelace")
    second = await make_account(db, org, clock, "Grace Hopper")
    await _plan(db, org, first, d(2026, 8, 15), clock.now())
    await _charge(db, org, second, clock.now())

    as_of = at(2026, 9, 5)
    busy = await run_billing(db, org.id, as_of)
    assert busy.changed_anything
    counts, log = await row_counts(db), await event_types(db)
    again = await run_billing(db, org.id, as_of)
    assert not again.changed_anything
    assert again.accounts_processed == 0  # nothing selected: no work, no transactions
    assert await row_counts(db) == counts
    assert await event_types(db) == log


async def test_status_moves_upcoming_due_overdue_with_each_event_once(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock, overdue_after_days=7)
    account = await make_account(db, org, clock)
    async with db.begin() as session:
        made = await invoices.create_manual_invoice(
            session,
            await fresh_org(session, org),
            account,
            [invoices.ManualCharge("Locker", 1500)],
            clock.now(),
            due_date=d(2026, 8, 20),
            finalize_now=True,
        )
    assert made.status == InvoiceStatus.UPCOMING

    for day, expected in [
        (19, "UPCOMING"),
        (20, "DUE"),
        (21, "DUE"),
        (26, "DUE"),
        (27, "OVERDUE"),
        (28, "OVERDUE"),
    ]:
        await run_billing(db, org.id, at(2026, 8, day, 6))
        await run_billing(db, org.id, at(2026, 8, day, 6))
        assert (await invoice(db, made.id)).status == expected, day
    types = await event_types(db, invoice_id=made.id)
    assert types.count(EventType.INVOICE_BECAME_DUE) == 1
    assert types.count(EventType.INVOICE_BECAME_OVERDUE) == 1
    assert types.count(EventType.INVOICE_STATUS_CHANGED) == 3  # PENDING→UPCOMING→DUE→OVERDUE


async def test_overdue_after_zero_days_is_overdue_on_the_due_date(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock, overdue_after_days=0)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account, clock.now())
    await run_billing(db, org.id, at(2026, 9, 1))
    assert (await invoice(db, line.invoice_id)).status == InvoiceStatus.OVERDUE


async def test_a_due_today_invoice_finalizes_after_its_grace(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(
        db,
        clock,
        additional_charges=AdditionalChargesPolicy.NEW_INVOICE_DUE_TODAY,
        due_today_grace_minutes=30,
    )
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account, at(2026, 8, 15, 10))
    await _charge(db, org, account, at(2026, 8, 15, 10, 20))
    await run_billing(db, org.id, at(2026, 8, 15, 10, 49))
    assert (await invoice(db, line.invoice_id)).status == InvoiceStatus.PENDING
    await run_billing(db, org.id, at(2026, 8, 15, 10, 50))
    done = await invoice(db, line.invoice_id)
    assert (done.number, done.status, done.total) == ("INV-000001", "DUE", 5000)


async def test_an_emptied_pending_invoice_is_discarded_not_numbered(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    line = await _charge(db, org, account, clock.now())
    async with db.begin() as session:
        await invoices.remove_line(session, org, line, clock.now())
    result = await run_billing(db, org.id, at(2026, 9, 1))
    assert (result.invoices_discarded, result.invoices_finalized) == (1, 0)
    assert await invoices_of(db, account.id) == []
    async with db() as session:
        stored = await session.get(Organization, org.id)
        assert stored is not None and stored.next_invoice_number == 1


async def test_plans_end_after_their_end_date(db: Sessions, clock: FixedClock) -> None:
    clock.set(at(2026, 8, 10))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    sub = await _plan(db, org, account, d(2026, 8, 15), clock.now(), end=d(2026, 10, 15))
    await run_billing(db, org.id, at(2026, 9, 1))
    await run_billing(db, org.id, at(2026, 10, 1))
    lines = await lines_of(db, (await invoices_of(db, account.id))[-1].id)
    assert [(x.amount, x.period_start, x.period_end) for x in lines] == [
        (15000, d(2026, 10, 1), d(2026, 10, 15))  # 310 / 31 × 15
    ]
    result = await run_billing(db, org.id, at(2026, 10, 16))
    assert result.plans_ended == 1
    async with db() as session:
        stored = await session.get(PlanSubscription, sub.id)
        assert stored is not None and stored.status == PlanStatus.ENDED


async def test_extra_steps_run_in_the_account_transaction(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    quiet = await make_account(db, org, clock, "Ada Lovelace")
    seen: list[tuple[int, datetime]] = []

    async def select_accounts(session, step_org, as_of):  # type: ignore[no-untyped-def]
        return [quiet.id]

    async def run(session, step_org, account, as_of) -> int:  # type: ignore[no-untyped-def]
        seen.append((account.id, as_of))
        return 1

    billing.EXTRA_STEPS.append(BillingStep("probe", select_accounts, run))
    try:
        result = await run_billing(db, org.id, clock.now())
    finally:
        billing.EXTRA_STEPS.pop()
    assert seen == [(quiet.id, clock.now())]
    assert result.steps["probe"] == 1


async def test_a_failing_account_is_rolled_back_and_the_others_are_billed(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    good = await make_account(db, org, clock, "Ada Lovelace")
    bad = await make_account(db, org, clock, "Grace Hopper")
    good_line = await _charge(db, org, good, clock.now())
    bad_line = await _charge(db, org, bad, clock.now())

    async def none(session, step_org, as_of):  # type: ignore[no-untyped-def]
        return []

    async def crash(session, step_org, account, as_of) -> int:  # type: ignore[no-untyped-def]
        if account.id == bad.id:
            raise RuntimeError("simulated crash after finalizing")
        return 0

    billing.EXTRA_STEPS.append(BillingStep("crash", none, crash))
    try:
        result = await run_billing(db, org.id, at(2026, 9, 1))
    finally:
        billing.EXTRA_STEPS.pop()
    assert result.failed_accounts == [bad.id]
    assert (await invoice(db, good_line.invoice_id)).number == "INV-000001"
    untouched = await invoice(db, bad_line.invoice_id)
    assert (untouched.status, untouched.number) == ("PENDING", None)
    # The next run finishes it, with the next number in the series: no gap.
    await run_billing(db, org.id, at(2026, 9, 1))
    assert (await invoice(db, bad_line.invoice_id)).number == "INV-000002"


async def test_concurrent_runs_never_duplicate_work(
    db: Sessions, clock: FixedClock, engine: AsyncEngine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks with SKIP LOCKED are a PostgreSQL matter")
    clock.set(at(2026, 8, 10))
    org = await make_org(db, clock)
    accounts = [await make_account(db, org, clock, f"Member {i}") for i in range(12)]
    for account in accounts:
        await _plan(db, org, account, d(2026, 8, 15), clock.now(), price=31000)
        await _charge(db, org, account, clock.now())

    workers = [create_sessionmaker(engine), create_sessionmaker(engine)]
    for as_of in (at(2026, 8, 15), at(2026, 9, 1), at(2026, 10, 1)):
        results = await asyncio.gather(*(run_billing(w, org.id, as_of) for w in workers))
        assert all(r.failed_accounts == [] for r in results)
        # Every account's invoice was finalized by exactly one of the two workers.
        assert sum(r.invoices_finalized for r in results) == len(accounts)

    async with db() as session:
        numbers = list(
            await session.scalars(
                select(Invoice.number).where(Invoice.number.is_not(None)).order_by(Invoice.number)
            )
        )
        # Per account: the Aug 15 first invoice, Sep 1 (booking charge), Oct 1 (plan).
        assert numbers == [f"INV-{n:06d}" for n in range(1, 3 * len(accounts) + 1)]
        pending = await session.scalar(
            select(func.count()).where(Invoice.status == InvoiceStatus.PENDING)
        )
        assert pending == len(accounts)  # each has exactly one: November's
        plan_lines = list(
            await session.execute(
                select(LineItem.plan_subscription_id, LineItem.period_start, func.count())
                .where(LineItem.plan_subscription_id.is_not(None))
                .group_by(LineItem.plan_subscription_id, LineItem.period_start, LineItem.kind)
            )
        )
        assert all(count == 1 for _, _, count in plan_lines)
        finalized_events = await session.scalar(
            select(func.count()).where(Event.type == EventType.INVOICE_FINALIZED)
        )
        assert finalized_events == len(numbers)


async def test_automatic_finalization_applies_credit_through_the_hook(
    db: Sessions, clock: FixedClock
) -> None:
    # The seam services.credit plugs into: with its hook registered, an invoice that
    # finalizes automatically is paid from the account's available credit.
    from services import credit

    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    async with db.begin() as session:
        note = await invoices.create_manual_invoice(
            session,
            await fresh_org(session, org),
            account,
            [invoices.ManualCredit("Goodwill", 5000)],
            clock.now(),
        )
    assert note.number == "CN-000001"
    line = await _charge(db, org, account, clock.now(), amount=3000)

    registered = credit.after_finalize not in invoices.AFTER_FINALIZE
    if registered:
        invoices.AFTER_FINALIZE.append(credit.after_finalize)
    try:
        await run_billing(db, org.id, at(2026, 9, 1))
    finally:
        if registered:
            invoices.AFTER_FINALIZE.remove(credit.after_finalize)
    paid = await invoice(db, line.invoice_id)
    assert (paid.number, paid.status, paid.credit_applied) == ("INV-000001", "PAID", 3000)
    assert (await invoice(db, note.id)).credit_remaining == 2000
