"""Plans: the first invoice (proration, full period, fees), period alignment, end
dates and cancellation (rules §8.2–8.3, §5.2–5.3)."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from models import (
    Account,
    InvoiceStatus,
    LineKind,
    Organization,
    PlanInterval,
    PlanStatus,
    PlanSubscription,
    PlanTemplate,
)
from services import plans
from services.clock import FixedClock
from services.errors import InvalidStateError, ValidationError
from tests.services.factories import (
    Sessions,
    at,
    d,
    fresh_org,
    invoice,
    invoices_of,
    lines_of,
    make_account,
    make_org,
    record_payment,
)


async def _template(
    db: Sessions,
    org: Organization,
    clock: FixedClock,
    *,
    price: int = 31000,
    interval: PlanInterval = PlanInterval.MONTHLY,
    setup_fee: int = 5000,
    deposit: int = 10000,
    tax_rate_ppm: int | None = None,
) -> PlanTemplate:
    async with db.begin() as session:
        return await plans.create_plan_template(
            session,
            org,
            name="Dedicated desk",
            price=price,
            interval=interval,
            setup_fee=setup_fee,
            deposit=deposit,
            tax_rate_ppm=tax_rate_ppm,
            now=clock.now(),
        )


async def _subscribe(
    db: Sessions,
    org: Organization,
    account: Account,
    template: PlanTemplate,
    start: date,
    now: datetime,
    end: date | None = None,
) -> PlanSubscription:
    async with db.begin() as session:
        return await plans.subscribe(
            session, await fresh_org(session, org), account, template, start, now, end_date=end
        )


def _summary(lines) -> list[tuple[str, int, date | None, date | None]]:  # type: ignore[no-untyped-def]
    return [(str(x.kind), x.amount, x.period_start, x.period_end) for x in lines]


async def test_seed_example_prorates_aug_15_to_the_next_billing_date(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 10, 12))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock)
    sub = await _subscribe(db, org, account, template, d(2026, 8, 15), clock.now())

    (first,) = await invoices_of(db, account.id)
    assert (first.status, first.due_date, first.due_today) == ("PENDING", d(2026, 8, 15), False)
    assert first.finalize_at == at(2026, 8, 15)
    lines = await lines_of(db, first.id)
    assert _summary(lines) == [
        ("PLAN", 17000, d(2026, 8, 15), d(2026, 8, 31)),  # 310 / 31 × 17 = 170.00
        ("PLAN", 31000, d(2026, 9, 1), d(2026, 9, 30)),
        ("SETUP_FEE", 5000, None, None),
        ("DEPOSIT", 10000, None, None),
    ]
    assert all(x.plan_subscription_id == sub.id for x in lines)
    assert lines[0].description == "Dedicated desk: Aug 15, 2026 – Aug 31, 2026"
    assert first.total == 17000 + 31000 + 5000 + 10000
    assert (first.period_start, first.period_end) == (d(2026, 8, 15), d(2026, 9, 30))
    assert sub.billed_through == d(2026, 10, 1)


async def test_plan_tax_comes_from_the_template_and_deposits_are_untaxed(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 10))
    org = await make_org(db, clock, default_tax_rate_ppm=200_000)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock, tax_rate_ppm=100_000)
    await _subscribe(db, org, account, template, d(2026, 8, 15), clock.now())
    (first,) = await invoices_of(db, account.id)
    taxes = [(str(x.kind), x.tax_rate_ppm, x.tax) for x in await lines_of(db, first.id)]
    assert taxes == [
        ("PLAN", 100_000, 1700),
        ("PLAN", 100_000, 3100),
        ("SETUP_FEE", 100_000, 500),
        ("DEPOSIT", 0, 0),
    ]


async def test_a_plan_starting_on_a_billing_date_bills_one_full_period(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock, setup_fee=0, deposit=0)
    sub = await _subscribe(db, org, account, template, d(2026, 9, 1), clock.now())
    (first,) = await invoices_of(db, account.id)
    assert first.due_date == d(2026, 9, 1)
    assert _summary(await lines_of(db, first.id)) == [
        ("PLAN", 31000, d(2026, 9, 1), d(2026, 9, 30))
    ]
    assert sub.billed_through == d(2026, 10, 1)


async def test_a_plan_starting_today_is_invoiced_due_today_per_the_grace_rule(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock)
    await _subscribe(db, org, account, template, d(2026, 8, 15), clock.now())
    (first,) = await invoices_of(db, account.id)
    assert (first.number, first.status, first.due_date) == ("INV-000001", "DUE", d(2026, 8, 15))
    assert first.total == 17000 + 31000 + 5000 + 10000

    # With a grace period the due-today invoice waits instead.
    org2 = await make_org(db, clock, due_today_grace_minutes=15)
    other = await make_account(db, org2, clock)
    template2 = await _template(db, org2, clock)
    await _subscribe(db, org2, other, template2, d(2026, 8, 15), clock.now())
    (waiting,) = await invoices_of(db, other.id)
    assert (waiting.status, waiting.due_today) == ("PENDING", True)
    assert waiting.finalize_at == at(2026, 8, 15, 9, 15)


async def test_quarterly_periods_are_aligned_to_the_billing_day(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 1))
    org = await make_org(db, clock, billing_day=5)
    account = await make_account(db, org, clock)
    template = await _template(
        db, org, clock, price=90000, interval=PlanInterval.QUARTERLY, setup_fee=0, deposit=0
    )
    sub = await _subscribe(db, org, account, template, d(2026, 8, 20), clock.now())
    (first,) = await invoices_of(db, account.id)
    # The quarter holding Aug 20 is Jun 5 – Sep 4 (92 days); 16 of them are billed.
    assert _summary(await lines_of(db, first.id)) == [
        ("PLAN", 15652, d(2026, 8, 20), d(2026, 9, 4)),
        ("PLAN", 90000, d(2026, 9, 5), d(2026, 12, 4)),
    ]
    assert sub.billed_through == d(2026, 12, 5)
    assert plans.period_containing(org, sub, d(2027, 1, 10)) == (d(2026, 12, 5), d(2027, 3, 5))


async def test_an_end_date_inside_the_first_period_prorates_to_it(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 1))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock, setup_fee=0, deposit=0)
    sub = await _subscribe(
        db, org, account, template, d(2026, 8, 15), clock.now(), end=d(2026, 8, 20)
    )
    (first,) = await invoices_of(db, account.id)
    assert _summary(await lines_of(db, first.id)) == [
        ("PLAN", 6000, d(2026, 8, 15), d(2026, 8, 20))  # 310 / 31 × 6
    ]
    assert sub.billed_through == d(2026, 8, 21)


async def test_one_time_plans_are_a_single_charge(db: Sessions, clock: FixedClock) -> None:
    clock.set(at(2026, 8, 1))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(
        db, org, clock, price=12000, interval=PlanInterval.ONE_TIME, setup_fee=0, deposit=0
    )
    await _subscribe(db, org, account, template, d(2026, 8, 15), clock.now())
    (first,) = await invoices_of(db, account.id)
    assert _summary(await lines_of(db, first.id)) == [("PLAN", 12000, d(2026, 8, 15), None)]


async def test_moving_the_end_earlier_trims_pending_periods(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 10))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock)
    sub = await _subscribe(db, org, account, template, d(2026, 8, 15), clock.now())
    async with db.begin() as session:
        change = await plans.update_end_date(
            session, await fresh_org(session, org), sub, d(2026, 9, 10), clock.now()
        )
    assert len(change.trimmed_line_ids) == 1 and change.credit_lines == []
    (first,) = await invoices_of(db, account.id)
    assert _summary(await lines_of(db, first.id))[:2] == [
        ("PLAN", 17000, d(2026, 8, 15), d(2026, 8, 31)),
        ("PLAN", 10333, d(2026, 9, 1), d(2026, 9, 10)),  # 310 / 30 × 10
    ]
    assert change.subscription.billed_through == d(2026, 9, 11)
    with pytest.raises(ValidationError, match="cannot end before"):
        async with db.begin() as session:
            await plans.update_end_date(session, org, sub, d(2026, 8, 1), clock.now())


async def test_cancelling_before_the_start_removes_every_pending_line(
    db: Sessions, clock: FixedClock
) -> None:
    clock.set(at(2026, 8, 10))
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock)
    sub = await _subscribe(db, org, account, template, d(2026, 8, 15), clock.now())
    async with db.begin() as session:
        change = await plans.cancel(session, await fresh_org(session, org), sub, clock.now())
    assert len(change.removed_line_ids) == 4
    assert change.subscription.status == PlanStatus.CANCELLED
    (first,) = await invoices_of(db, account.id)
    assert await lines_of(db, first.id) == []
    with pytest.raises(InvalidStateError, match="already cancelled"):
        async with db.begin() as session:
            await plans.cancel(session, org, sub, clock.now())


async def test_cancelling_a_paid_plan_credits_the_unused_days(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    template = await _template(db, org, clock, setup_fee=0, deposit=0)
    sub = await _subscribe(db, org, account, template, d(2026, 8, 15), clock.now())
    (first,) = await invoices_of(db, account.id)
    await record_payment(db, first.id, first.total, clock)
    assert (await invoice(db, first.id)).status == InvoiceStatus.PAID

    clock.set(at(2026, 9, 20, 12))
    async with db.begin() as session:
        change = await plans.cancel(session, await fresh_org(session, org), sub, clock.now())
    (credit,) = change.credit_lines
    # Sep 21 – Sep 30 of a 30-day period was paid and is returned: 310 / 30 × 10.
    assert (credit.kind, credit.amount) == (LineKind.CREDIT, -10333)
    assert (credit.period_start, credit.period_end) == (d(2026, 9, 21), d(2026, 9, 30))
    pending = await invoice(db, credit.invoice_id)
    assert (pending.status, pending.due_date) == ("PENDING", d(2026, 10, 1))

    # Cancelling past what is billed is refused: that is an end date, not a cancellation.
    other = await _subscribe(db, org, account, template, d(2026, 9, 20), clock.now())
    with pytest.raises(ValidationError, match="set its end date"):
        async with db.begin() as session:
            await plans.cancel(session, org, other, clock.now(), last_day=d(2027, 1, 1))
