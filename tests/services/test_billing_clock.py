"""A billing clock no tenant can stall: plan catch-up in bounded steps that add up to
one unbounded run, organizations taken in turn, a slow or failing account rolled back
alone and reported, an account held elsewhere skipped."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from models import Account, Event, Organization, PlanInterval, PlanSubscription
from services import billing, invoices, plans
from services.billing import BillingLimits, BillingStep, run_billing
from services.clock import FixedClock
from tests.services.factories import (
    Sessions,
    at,
    d,
    fresh_org,
    invoices_of,
    lines_of,
    make_account,
    make_org,
)

TODAY = at(2026, 8, 15, 9)


async def plan_from(
    db: Sessions,
    org: Organization,
    account: Account,
    start: date,
    now: datetime,
    end: date | None = None,
) -> PlanSubscription:
    async with db.begin() as session:
        fresh = await fresh_org(session, org)
        template = await plans.create_plan_template(
            session, fresh, name="Hot desk", price=31000, interval=PlanInterval.MONTHLY, now=now
        )
        return await plans.subscribe(session, fresh, account, template, start, now, end_date=end)


async def charge(db: Sessions, org: Organization, account: Account, now: datetime) -> int:
    async with db.begin() as session:
        line = await invoices.place_additional_charge(
            session, await fresh_org(session, org), account, invoices.LineSpec("Room", 2500), now
        )
        return line.invoice_id


async def projection(db: Sessions, org: Organization, account: Account) -> dict[str, Any]:
    """Everything billing decided for the account, without ids or event order."""
    docs = []
    for inv in await invoices_of(db, account.id):
        lines = [
            (x.description, x.amount, x.period_start, x.period_end)
            for x in await lines_of(db, inv.id)
        ]
        docs.append((inv.number, inv.status, inv.due_date, inv.issue_date, inv.total, lines))
    async with db() as session:
        sub = (
            await session.scalars(
                select(PlanSubscription).where(PlanSubscription.account_id == account.id)
            )
        ).one()
        kinds = Counter(
            await session.scalars(select(Event.type).where(Event.organization_id == org.id))
        )
    return {"documents": docs, "plan": (sub.status, sub.billed_through), "events": kinds}


@pytest.mark.parametrize(
    ("end", "steps"),
    [
        (None, [12, 12, 12, 8]),  # Feb 2023 … Sep 2026 (the next billing date)
        (d(2025, 6, 30), [12, 12, 5]),  # ended long ago: ENDED only once all is billed
    ],
)
async def test_a_plan_far_behind_catches_up_in_bounded_runs_that_add_up_to_one(
    db: Sessions, clock: FixedClock, end: date | None, steps: list[int]
) -> None:
    clock.set(at(2023, 1, 1))
    bounded_org, unbounded_org = await make_org(db, clock), await make_org(db, clock)
    bounded = await make_account(db, bounded_org, clock)
    unbounded = await make_account(db, unbounded_org, clock)
    for org, account in ((bounded_org, bounded), (unbounded_org, unbounded)):
        await plan_from(db, org, account, d(2023, 1, 1), clock.now(), end)

    one = await run_billing(
        db, unbounded_org.id, TODAY, BillingLimits(max_periods_per_account=None)
    )
    assert one.plan_periods_added == sum(steps)
    assert one.accounts_continued == []

    added = []
    for _ in range(10):
        result = await run_billing(db, bounded_org.id, TODAY, BillingLimits(12))
        assert result.plan_periods_added <= 12 and result.failed_accounts == []
        added.append(result.plan_periods_added)
        if not result.accounts_continued:
            break
    assert added == steps
    assert await projection(db, bounded_org, bounded) == await projection(
        db, unbounded_org, unbounded
    )


async def test_a_huge_catch_up_does_not_stop_another_tenant_in_the_same_run(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2016, 1, 1))
    behind_org, other_org = await make_org(db, clock), await make_org(db, clock)
    behind = await make_account(db, behind_org, clock)
    await plan_from(db, behind_org, behind, d(2016, 1, 1), clock.now())  # 10 years behind
    clock.set(TODAY)
    other = await make_account(db, other_org, clock)
    other_invoice = await charge(db, other_org, other, clock.now())

    result = await run_billing(db, None, at(2026, 9, 1), BillingLimits(max_periods_per_account=12))
    assert result.accounts_continued == [behind.id]
    assert result.plan_periods_added == 12
    assert "1 catching up next run" in result.summary()
    (finalized,) = [x for x in await invoices_of(db, other.id) if x.id == other_invoice]
    assert finalized.number is not None and finalized.status == "DUE"


def probe(name: str, accounts: list[int], run: Any) -> BillingStep:
    async def select_accounts(session, org, as_of):  # type: ignore[no-untyped-def]
        return [a for a in accounts if a in await _ids_of(session, org)]

    return BillingStep(name, select_accounts, run)


async def _ids_of(session: Any, org: Organization) -> set[int]:
    return set(await session.scalars(select(Account.id).where(Account.organization_id == org.id)))


async def test_organizations_take_turns_account_by_account(db: Sessions, clock: FixedClock) -> None:
    big, small = await make_org(db, clock), await make_org(db, clock)
    big_accounts = [(await make_account(db, big, clock, f"Big {i}")).id for i in range(4)]
    small_accounts = [(await make_account(db, small, clock, f"Small {i}")).id for i in range(2)]
    order: list[int] = []

    async def record(session, org, account, as_of) -> int:  # type: ignore[no-untyped-def]
        order.append(account.id)
        return 1

    billing.EXTRA_STEPS.append(probe("order", big_accounts + small_accounts, record))
    try:
        result = await run_billing(db, None, TODAY, BillingLimits(concurrency=1))
    finally:
        billing.EXTRA_STEPS.pop()
    assert result.steps["order"] == 6
    # The small organization does not wait behind the big one's accounts.
    assert order == [
        big_accounts[0], small_accounts[0], big_accounts[1], small_accounts[1],
        big_accounts[2], big_accounts[3],
    ]  # fmt: skip


async def test_a_slow_account_is_cut_off_rolled_back_and_reported(
    db: Sessions, clock: FixedClock
) -> None:
    slow_org, other_org = await make_org(db, clock), await make_org(db, clock)
    slow = await make_account(db, slow_org, clock)
    other = await make_account(db, other_org, clock)
    slow_invoice = await charge(db, slow_org, slow, clock.now())
    other_invoice = await charge(db, other_org, other, clock.now())

    async def stall(session, org, account, as_of) -> int:  # type: ignore[no-untyped-def]
        if account.id == slow.id:
            await asyncio.sleep(3600)  # stands for any step that never ends
        return 0

    billing.EXTRA_STEPS.append(probe("stall", [slow.id], stall))
    try:
        result = await run_billing(db, None, at(2026, 9, 1), BillingLimits(account_seconds=0.5))
    finally:
        billing.EXTRA_STEPS.pop()
    assert result.failed_accounts == [slow.id]
    assert result.failures == {slow.id: "over 0.5s"}
    assert f"failed accounts: {slow.id} (over 0.5s)" in result.summary()
    (untouched,) = [x for x in await invoices_of(db, slow.id) if x.id == slow_invoice]
    assert (untouched.status, untouched.number) == ("PENDING", None)  # rolled back
    (billed,) = [x for x in await invoices_of(db, other.id) if x.id == other_invoice]
    assert billed.number == "INV-000001"
    # Nothing stalls it the next time: the account is billed as if nothing happened.
    again = await run_billing(db, None, at(2026, 9, 1))
    assert again.failed_accounts == [] and again.invoices_finalized == 1


async def test_a_failing_account_of_one_tenant_rolls_back_alone(
    db: Sessions, clock: FixedClock
) -> None:
    bad_org, good_org = await make_org(db, clock), await make_org(db, clock)
    bad = await make_account(db, bad_org, clock)
    good = await make_account(db, good_org, clock)
    bad_invoice = await charge(db, bad_org, bad, clock.now())
    good_invoice = await charge(db, good_org, good, clock.now())

    async def crash(session, org, account, as_of) -> int:  # type: ignore[no-untyped-def]
        if account.id == bad.id:
            raise RuntimeError("simulated bug")
        return 0

    billing.EXTRA_STEPS.append(probe("crash", [bad.id], crash))
    try:
        result = await run_billing(db, None, at(2026, 9, 1))
    finally:
        billing.EXTRA_STEPS.pop()
    assert result.failures == {bad.id: "RuntimeError"}
    assert [x.status for x in await invoices_of(db, bad.id) if x.id == bad_invoice] == ["PENDING"]
    assert [x.status for x in await invoices_of(db, good.id) if x.id == good_invoice] == ["DUE"]


async def test_an_account_locked_elsewhere_is_skipped_and_other_tenants_billed(
    db: Sessions, clock: FixedClock, engine: AsyncEngine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks are a PostgreSQL matter (SQLite has one writer)")
    held_org, other_org = await make_org(db, clock), await make_org(db, clock)
    held = await make_account(db, held_org, clock)
    other = await make_account(db, other_org, clock)
    held_invoice = await charge(db, held_org, held, clock.now())
    await charge(db, other_org, other, clock.now())

    async with engine.connect() as stuck:  # a transaction stuck holding the row lock
        await stuck.execute(
            text("SELECT id FROM accounts WHERE id = :a FOR UPDATE"), {"a": held.id}
        )
        result = await run_billing(db, None, at(2026, 9, 1))
        await stuck.rollback()
    assert (result.accounts_skipped, result.invoices_finalized) == (1, 1)
    assert [x.status for x in await invoices_of(db, held.id) if x.id == held_invoice] == ["PENDING"]
