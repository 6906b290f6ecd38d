"""The set-based billing run (services.batch_billing) against the per-account engine.

THE test builds a randomized set of accounts (plans of every interval, some ending,
some far behind; bookings and one-off charges; credit that turns pending invoices
into credit notes; custom credit notes; outstanding invoices for credit to pay) in
one PostgreSQL database, copies it (``CREATE DATABASE … TEMPLATE``), bills one copy
with the batched run and the other with the per-account engine at the same instants,
and compares them row for row: invoices, numbers, lines, allocations, plans, the
organizations' number series, and every event, account by account in order.

What may differ, and only that: the ids of rows a run creates (invoices, lines,
allocations, events), because the per-account engine takes the organizations'
accounts in turn one at a time while a batch creates all of its rows together. Such
rows are compared by what they are — an invoice by its number (a pending one by its
account, due date and kind), a line by its invoice and content, an allocation by its
two invoices and amount, an event by its place in its account's log. Timestamps do
not differ: both runs stamp everything with the run's instant.

Numbers follow the same rule in both: by account id, then invoice id, because both
runs here take one account (one batch) at a time.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

import models
from app.database import create_engine, create_sessionmaker
from models import (
    AdditionalChargesPolicy,
    CreditAllocation,
    Event,
    Invoice,
    LineItem,
    Organization,
    PlanInterval,
    PlanSubscription,
)
from services import billing, bookings, credit, invoices, plans
from services.batch_billing import run_billing_batched
from services.billing import BillingLimits, BillingRunResult
from services.clock import FixedClock
from services.invoices import LineSpec, ManualCharge
from tests.conftest import PG_DATABASE, PG_SERVER
from tests.services.factories import Sessions, at, fresh_org, make_account, make_org

BATCHED = BillingLimits(max_periods_per_account=3, concurrency=1, batch_size=7)
PER_ACCOUNT = BillingLimits(max_periods_per_account=3, concurrency=1, batch_size=0)


# --------------------------------------------------------------------------- databases


async def _admin(sql: str) -> None:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await admin.dispose()


@pytest.fixture
async def pg_name() -> AsyncIterator[str]:
    """A database of this test's own (named after the run's, so the run drops it too)."""
    try:
        name = f"{PG_DATABASE}_batch_{secrets.token_hex(3)}"
        await asyncio.wait_for(_admin(f'CREATE DATABASE "{name}"'), timeout=10)
    except Exception as exc:
        from tests.conftest import IN_CI

        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}: {exc}")
    engine = create_engine(f"{PG_SERVER}/{name}")
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.create_all)
    await engine.dispose()
    yield name
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _copy(name: str) -> str:
    copy = f"{name}_copy"
    await _admin(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
    return copy


# --------------------------------------------------------------------------- the accounts


async def _build(db: Sessions, seed: int) -> None:
    """Two organizations of randomized accounts, built through the engine."""
    rng = random.Random(seed)
    clock = FixedClock(at(2025, 11, 10, 9))
    orgs = [
        await make_org(db, clock, default_tax_rate_ppm=200_000),
        await make_org(
            db,
            clock,
            billing_day=15,
            timezone="America/New_York",
            overdue_after_days=0,
            auto_apply_credit=rng.random() < 0.8,
            additional_charges=AdditionalChargesPolicy.NEW_INVOICE_DUE_TODAY,
            due_today_grace_minutes=90,
        ),
    ]
    templates: dict[int, list[Any]] = {}
    for org in orgs:
        async with db.begin() as session:
            fresh = await fresh_org(session, org)
            templates[org.id] = [
                await plans.create_plan_template(
                    session,
                    fresh,
                    name=f"{interval.title()} desk",
                    price=rng.choice([9_900, 31_000, 45_550]) * months,
                    interval=interval,
                    now=clock.now(),
                    setup_fee=rng.choice([0, 2_500]),
                    deposit=rng.choice([0, 10_000]),
                    tax_rate_ppm=rng.choice([None, 50_000]),
                )
                for interval, months in (
                    (PlanInterval.MONTHLY, 1),
                    (PlanInterval.QUARTERLY, 3),
                    (PlanInterval.YEARLY, 12),
                    (PlanInterval.ONE_TIME, 1),
                )
            ]
    for n in range(36):
        org = orgs[n % 2]
        account = await make_account(db, org, clock, name=f"Member {n}")
        async with db.begin() as session:
            fresh = await fresh_org(session, org)
            if rng.random() < 0.85:
                start = date(2025, 11, 10) + timedelta(days=rng.randint(-150, 100))
                end = start + timedelta(days=rng.randint(20, 200)) if rng.random() < 0.3 else None
                template = rng.choice(templates[org.id])
                await plans.subscribe(
                    session, fresh, account, template, start, clock.now(), end_date=end
                )
            if rng.random() < 0.5:
                begins = clock.now() + timedelta(days=rng.randint(1, 20), hours=rng.randint(0, 8))
                booking = await bookings.create_booking(
                    session,
                    fresh,
                    account,
                    resource_name="Meeting room",
                    starts_at=begins,
                    ends_at=begins + timedelta(hours=rng.randint(1, 3)),
                    now=clock.now(),
                    hourly_rate=rng.choice([1_500, 4_000]),
                )
                if rng.random() < 0.3:
                    # Its charge leaves the pending invoice, which may be left empty and
                    # is then discarded when it is due to finalize.
                    await bookings.cancel_booking(session, fresh, booking, clock.now())
            if rng.random() < 0.4:
                # Credit landing on the pending invoice: big enough, it finalizes into
                # a credit note that pays the account's outstanding invoices.
                await invoices.place_additional_charge(
                    session,
                    fresh,
                    account,
                    LineSpec("Goodwill credit", -rng.choice([5_000, 60_000, 400_000])),
                    clock.now(),
                )
            if rng.random() < 0.3:
                await credit.issue_credit_note(
                    session,
                    fresh,
                    account,
                    rng.choice([3_000, 25_000, 90_000]),
                    "Custom credit",
                    clock.now(),
                    origin="CUSTOM",
                )
            if rng.random() < 0.4:
                await invoices.create_manual_invoice(
                    session,
                    fresh,
                    account,
                    [ManualCharge("Printing", rng.choice([1_200, 7_700]), rng.randint(1, 3))],
                    clock.now(),
                    due_date=date(2025, 11, 10) + timedelta(days=rng.randint(5, 40)),
                    finalize_now=True,
                    apply_credit=False,
                )


# --------------------------------------------------------------------------- comparing


def _row(obj: object, skip: set[str]) -> dict[str, Any]:
    table = obj.__table__  # type: ignore[attr-defined]
    return {c.name: getattr(obj, c.name) for c in table.columns if c.name not in skip}


async def _state(db: Sessions) -> dict[str, Any]:
    """Everything a run writes, with run-made ids replaced by what the row is."""
    async with db() as session:
        all_invoices = list(await session.scalars(select(Invoice).order_by(Invoice.id)))
        lines = list(await session.scalars(select(LineItem).order_by(LineItem.id)))
        allocations = list(
            await session.scalars(select(CreditAllocation).order_by(CreditAllocation.id))
        )
        logged = list(await session.scalars(select(Event).order_by(Event.id)))
        subscriptions = list(
            await session.scalars(select(PlanSubscription).order_by(PlanSubscription.id))
        )
        orgs = list(await session.scalars(select(Organization).order_by(Organization.id)))
    key: dict[int | None, object] = {None: None}
    for inv in all_invoices:
        key[inv.id] = (
            (inv.organization_id, inv.number)
            if inv.number
            else (
                inv.account_id,
                "pending",
                inv.due_date,
                inv.due_today,
            )
        )
    line_key = {
        line.id: (key[line.invoice_id], line.description, line.period_start, line.amount)
        for line in lines
    }
    allocation_key = {
        a.id: (key[a.credit_note_id], key[a.invoice_id], a.amount, a.created_at)
        for a in allocations
    }
    logs: dict[int | None, list[tuple[Any, ...]]] = defaultdict(list)
    for ev in logged:
        payload = dict(ev.payload)
        if "line_item_id" in payload:
            payload["line_item_id"] = line_key.get(payload["line_item_id"], "gone")
        if "allocation_id" in payload:
            payload["allocation_id"] = allocation_key[payload["allocation_id"]]
        logs[ev.account_id].append(
            (
                ev.type,
                key.get(ev.invoice_id, "gone"),
                key.get(ev.credit_note_id, "gone"),
                ev.payment_id,
                ev.created_at,
                sorted(payload.items(), key=repr),
            )
        )
    return {
        "invoices": sorted(
            ((key[i.id], _row(i, {"id", "source_invoice_id"})) for i in all_invoices), key=repr
        ),
        "lines": sorted(
            ((key[x.invoice_id], _row(x, {"id", "invoice_id"})) for x in lines), key=repr
        ),
        "allocations": sorted(
            (allocation_key[a.id], _row(a, {"id", "credit_note_id", "invoice_id"}))
            for a in allocations
        ),
        "plans": [_row(s, set()) for s in subscriptions],
        "orgs": [(o.id, o.next_invoice_number, o.next_credit_note_number) for o in orgs],
        "events": dict(logs),
    }


@contextmanager
def _statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements sent through ``engine`` meanwhile."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", record)


def _counts(result: BillingRunResult) -> tuple[Any, ...]:
    return (
        result.accounts_processed,
        result.invoices_finalized,
        result.invoices_discarded,
        result.status_changes,
        result.plan_periods_added,
        result.plans_ended,
        sorted(result.accounts_continued),
        sorted(result.failures),
    )


async def test_batched_run_matches_the_per_account_engine(pg_name: str) -> None:
    engine = create_engine(f"{PG_SERVER}/{pg_name}")
    await _build(create_sessionmaker(engine), seed=int(os.environ.get("DESKBILL_TEST_SEED", "13")))
    await engine.dispose()
    copy = await _copy(pg_name)
    batched_engine = create_engine(f"{PG_SERVER}/{pg_name}")
    engine_one = create_engine(f"{PG_SERVER}/{copy}")
    batched_db, per_account_db = (
        create_sessionmaker(batched_engine),
        create_sessionmaker(engine_one),
    )
    try:
        assert await _state(batched_db) == await _state(per_account_db)
        continued: list[int] = []
        discarded: list[int] = []
        instants = [
            at(2025, 12, 1),
            at(2026, 1, 1, 5),
            at(2026, 1, 15, 6),
            at(2026, 3, 20),
            # Far ahead: plans catch up three periods per run.
            at(2026, 11, 2),
            at(2026, 11, 3),
        ]
        for instant in instants:
            with _statements(batched_engine) as batched_statements:
                ours = await run_billing_batched(batched_db, None, instant, BATCHED)
            with _statements(engine_one) as one_by_one:
                theirs = await billing.run_billing(per_account_db, None, instant, PER_ACCOUNT)
            continued.append(len(ours.accounts_continued))
            discarded.append(ours.invoices_discarded)
            assert len(batched_statements) < len(one_by_one)
            assert _counts(ours) == _counts(theirs)
            assert ours.accounts_processed > 0 and not ours.failures
            mine, reference = await _state(batched_db), await _state(per_account_db)
            for part in reference:
                assert mine[part] == reference[part], f"{part} differ after the run at {instant}"
        # The run did all kinds of work on the way.
        assert reference["allocations"]
        assert sum(continued) > 0 and sum(discarded) > 0
        kinds = {e[0] for log in reference["events"].values() for e in log}
        assert {
            "invoice.finalized",
            "credit.allocated",
            "credit_note.created",
            "invoice.became_overdue",
            "plan.updated",
            "line_item.added",
        } <= kinds
    finally:
        await batched_engine.dispose()
        await engine_one.dispose()
        await _admin(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


async def _poison(db: Sessions, account_id: int, instant: datetime) -> None:
    """A CHECK that the account's finalization at ``instant`` violates (and nothing
    else does): its batch fails in the database, not in Python."""
    async with db.begin() as session:
        await session.execute(
            text(
                "ALTER TABLE invoices ADD CONSTRAINT poison CHECK (account_id <> "
                f"{int(account_id)} OR finalized_at IS NULL OR finalized_at < "
                f"'{instant.isoformat()}') NOT VALID"
            )
        )


async def test_a_poisoned_account_fails_alone_and_the_rest_of_its_batch_commits(
    pg_name: str,
) -> None:
    engine = create_engine(f"{PG_SERVER}/{pg_name}")
    db = create_sessionmaker(engine)
    await _build(db, seed=13)
    instant = at(2025, 12, 1)
    async with db() as session:
        poisoned = await session.scalar(
            select(Invoice.account_id)
            .where(Invoice.status == "PENDING", Invoice.finalize_at <= instant)
            .order_by(Invoice.account_id)
            .offset(3)
            .limit(1)
        )
    assert poisoned is not None
    await _poison(db, poisoned, instant)
    await engine.dispose()
    copy = await _copy(pg_name)
    batched_engine = create_engine(f"{PG_SERVER}/{pg_name}")
    engine_one = create_engine(f"{PG_SERVER}/{copy}")
    batched_db, per_account_db = (
        create_sessionmaker(batched_engine),
        create_sessionmaker(engine_one),
    )
    try:
        before = await _state(batched_db)
        ours = await run_billing_batched(batched_db, None, instant, BATCHED)
        theirs = await billing.run_billing(per_account_db, None, instant, PER_ACCOUNT)
        assert ours.failures == theirs.failures == {poisoned: "IntegrityError"}
        assert f"failed accounts: {poisoned} (IntegrityError)" in ours.summary()
        assert _counts(ours) == _counts(theirs)
        after, reference = await _state(batched_db), await _state(per_account_db)
        assert after == reference
        # The poisoned account was rolled back whole; its batch's others were billed.
        assert after["events"].get(poisoned) == before["events"].get(poisoned)
        assert ours.accounts_processed >= BATCHED.batch_size
    finally:
        await batched_engine.dispose()
        await engine_one.dispose()
        await _admin(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


# --------------------------------------------------------------------------- two workers


async def _monthly_accounts(db: Sessions, count: int) -> Organization:
    """The issue's shape: each account a monthly plan and a pending January invoice,
    every fifth with a credit note that pays part of it."""
    clock = FixedClock(at(2025, 12, 10, 9))
    org = await make_org(db, clock)
    async with db.begin() as session:
        fresh = await fresh_org(session, org)
        template = await plans.create_plan_template(
            session,
            fresh,
            name="Hot desk",
            price=31_000,
            interval=PlanInterval.MONTHLY,
            now=clock.now(),
        )
    for n in range(count):
        account = await make_account(db, org, clock, name=f"Member {n}")
        async with db.begin() as session:
            fresh = await fresh_org(session, org)
            await plans.subscribe(session, fresh, account, template, date(2026, 1, 1), clock.now())
            if n % 5 == 0:
                await credit.issue_credit_note(
                    session, fresh, account, 5_000, "Welcome credit", clock.now(), origin="CUSTOM"
                )
    return org


async def test_two_workers_share_the_work_without_double_billing_or_gaps(pg_name: str) -> None:
    engine = create_engine(f"{PG_SERVER}/{pg_name}")
    db = create_sessionmaker(engine)
    org = await _monthly_accounts(db, 60)
    await engine.dispose()
    first, second = (create_engine(f"{PG_SERVER}/{pg_name}") for _ in range(2))
    limits = BillingLimits(concurrency=1, batch_size=6)
    try:
        results = await asyncio.gather(
            run_billing_batched(create_sessionmaker(first), None, at(2026, 1, 1), limits),
            run_billing_batched(create_sessionmaker(second), None, at(2026, 1, 1), limits),
        )
        assert not any(r.failures for r in results)
        # Every account is billed by one worker; the other skips it (held) or, when it
        # comes after the commit, finds nothing left to do — or, when it lists the work
        # after the first worker's commits (a loaded machine), does not see it at all.
        assert sum(r.invoices_finalized for r in results) == 60
        assert sum(r.plan_periods_added for r in results) == 60
        assert all(r.accounts_skipped + r.accounts_processed <= 60 for r in results)
        assert max(r.accounts_skipped + r.accounts_processed for r in results) == 60
        db = create_sessionmaker(first)
        async with db() as session:
            numbers = sorted(
                await session.scalars(
                    select(Invoice.number).where(
                        Invoice.organization_id == org.id, Invoice.number.like("INV-%")
                    )
                )
            )
            february = list(
                await session.scalars(
                    select(func.count())
                    .select_from(LineItem)
                    .where(LineItem.period_start == date(2026, 2, 1))
                    .group_by(LineItem.plan_subscription_id)
                )
            )
            finalized = await session.scalar(
                select(func.count()).where(
                    Event.type == "invoice.finalized", Event.created_at == at(2026, 1, 1)
                )
            )
            next_number = await session.scalar(
                select(Organization.next_invoice_number).where(Organization.id == org.id)
            )
        assert numbers == [f"INV-{n:06d}" for n in range(1, 61)]  # gap-free, none twice
        assert next_number == 61
        assert february == [1] * 60  # one February line per plan
        assert finalized == 60
        # Both did some of it (they take turns on the batches).
        assert all(r.invoices_finalized > 0 for r in results)
    finally:
        await first.dispose()
        await second.dispose()


async def test_statements_per_batch_do_not_grow_with_its_accounts(pg_name: str) -> None:
    engine = create_engine(f"{PG_SERVER}/{pg_name}")
    db = create_sessionmaker(engine)
    small, large = await _monthly_accounts(db, 10), await _monthly_accounts(db, 40)
    counted: dict[int, int] = {}
    try:
        for org in (small, large):
            with _statements(engine) as seen:
                result = await run_billing_batched(
                    db, org.id, at(2026, 1, 1), BillingLimits(concurrency=1, batch_size=50)
                )
            assert result.accounts_processed == result.invoices_finalized
            counted[result.accounts_processed] = len(seen)
    finally:
        await engine.dispose()
    # The organizations, the sequences, the work list (3), then one batch: lock,
    # organization, plans, invoices, line totals, ids, numbers, 4 inserts, 2 updates.
    assert counted == {10: 18, 40: 18}
