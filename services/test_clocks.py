"""Test clocks of sandbox organizations (rules §9.4): moving one forward.

A sandbox organization's now is ``Organization.test_clock_at``. ``advance_test_clock``
moves it forward to an instant, and on the way runs the billing run at every boundary
it crosses, in order, as the worker would have run it had that time really passed:

* a pending invoice's ``finalize_at``,
* the start of an unpaid invoice's due date (UPCOMING → DUE) and of the day it becomes
  overdue (DUE → OVERDUE),
* an auto-pay retry's ``autopay_retry_at``, a card payment's abandonment time,
* the start of the next billing date (plan periods).

Each step is one ``services.billing.run_billing`` for the step's instant (its own
transaction per account, then the payment jobs), then the clock moves there in a
transaction of its own that also writes the step's event: a failure leaves the clock
at the last step that completed, and advancing again carries on from there. The
boundaries are read again after every step, since a step makes new ones (a finalized
invoice's due date, a failed charge's retry). One call moves at most
``MAX_ADVANCE`` and takes at most ``MAX_STEPS`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Event, Invoice, InvoiceStatus, Organization, Payment, PaymentStatus
from services import billing, events, invoices
from services.clock import local_date, start_of_day
from services.errors import ConflictError, DomainError, NotFoundError, ValidationError
from services.events import EventType
from services.locks import lock_organization
from services.payments import ABANDON_AFTER, MAX_AUTOPAY_ATTEMPTS

Sessionmaker = async_sessionmaker[AsyncSession]

# One call crosses at most two years (two of every yearly plan's renewals); a longer
# walk is several calls, each answering with its own report.
MAX_ADVANCE = timedelta(days=731)
# A step bills the sandbox's accounts one at a time, in id order, so walking the same
# story numbers its invoices the same way every time (a live run bills several at once).
SANDBOX_LIMITS = billing.BillingLimits(concurrency=1)
# A sandbox with a few accounts has a handful of boundaries a month; the cap keeps one
# call bounded whatever the data (the report says when it stopped short).
MAX_STEPS = 400


class NotASandboxError(DomainError):
    code = "NOT_A_SANDBOX"


@dataclass
class ClockStep:
    """What one step of an advance did, at its instant."""

    at: datetime
    invoices_finalized: int = 0
    status_changes: int = 0
    payments_attempted: int = 0
    plan_periods_added: int = 0
    failed_accounts: list[int] = field(default_factory=list)


@dataclass
class ClockAdvance:
    """The report of one advance: where the clock was and is, and each step."""

    previous: datetime
    now: datetime
    steps: list[ClockStep] = field(default_factory=list)
    # True when MAX_STEPS stopped the walk before ``to``; ``now`` says where it is.
    stopped_short: bool = False

    @property
    def invoices_finalized(self) -> int:
        return sum(s.invoices_finalized for s in self.steps)

    @property
    def status_changes(self) -> int:
        return sum(s.status_changes for s in self.steps)

    @property
    def payments_attempted(self) -> int:
        return sum(s.payments_attempted for s in self.steps)


async def _sandbox(session: AsyncSession, organization_id: int) -> Organization:
    org = await session.get(Organization, organization_id, populate_existing=True)
    if org is None:
        raise NotFoundError(f"No organization {organization_id}.")
    if not org.sandbox or org.test_clock_at is None:
        raise NotASandboxError(
            f"“{org.slug}” is a live organization: its clock is the wall clock, which no "
            "one advances. Try billing over time in a sandbox organization "
            "(`deskbill org create --sandbox`)."
        )
    return org


def check_advance(current: datetime, to: datetime) -> datetime:
    """``to`` as an aware UTC instant if the clock may move there from ``current``."""
    if to.tzinfo is None:
        raise ValidationError(
            "`to` needs a timezone offset, e.g. 2026-09-01T00:00:00Z.", field="to"
        )
    to = to.astimezone(UTC)
    if to <= current:
        raise ValidationError(
            f"A test clock only moves forward: it is at {current.isoformat()}, so `to` must "
            f"be later than that (it was {to.isoformat()}).",
            field="to",
        )
    if to - current > MAX_ADVANCE:
        raise ValidationError(
            f"One advance moves the clock at most {MAX_ADVANCE.days} days (to "
            f"{(current + MAX_ADVANCE).isoformat()}); advance in several calls.",
            field="to",
        )
    return to


async def next_boundary(
    session: AsyncSession, org: Organization, after: datetime
) -> datetime | None:
    """The earliest instant after ``after`` at which the billing run has something new
    to do for ``org`` (see the module docstring), or None."""
    today = local_date(after, org.timezone)
    open_unpaid = (Invoice.organization_id == org.id,)
    finalize_at = await session.scalar(
        select(func.min(Invoice.finalize_at)).where(
            Invoice.organization_id == org.id,
            Invoice.status == InvoiceStatus.PENDING,
            Invoice.finalize_at > after,
        )
    )
    due = await session.scalar(
        select(func.min(Invoice.due_date)).where(
            *open_unpaid, Invoice.status == InvoiceStatus.UPCOMING, Invoice.due_date > today
        )
    )
    overdue_from = today - timedelta(days=org.overdue_after_days)
    overdue = await session.scalar(
        select(func.min(Invoice.due_date)).where(
            *open_unpaid,
            Invoice.status.in_((InvoiceStatus.UPCOMING, InvoiceStatus.DUE)),
            Invoice.due_date > overdue_from,
        )
    )
    retry = await session.scalar(
        select(func.min(Invoice.autopay_retry_at)).where(
            Invoice.organization_id == org.id,
            Invoice.status.in_((InvoiceStatus.DUE, InvoiceStatus.OVERDUE)),
            Invoice.autopay_attempts < MAX_AUTOPAY_ATTEMPTS,
            Invoice.autopay_retry_at > after,
        )
    )
    in_flight = await session.scalar(
        select(func.min(Payment.created_at)).where(
            Payment.organization_id == org.id,
            Payment.status.in_((PaymentStatus.PENDING, PaymentStatus.PROCESSING)),
            Payment.created_at > after - ABANDON_AFTER,
        )
    )
    found = [start_of_day(invoices.next_billing_date(org, today), org.timezone)]
    if finalize_at is not None:
        found.append(finalize_at)
    if due is not None:
        found.append(start_of_day(due, org.timezone))
    if overdue is not None:
        found.append(start_of_day(overdue + timedelta(days=org.overdue_after_days), org.timezone))
    if retry is not None:
        found.append(retry)
    if in_flight is not None:
        found.append(in_flight + ABANDON_AFTER)
    later = [instant for instant in found if instant > after]
    return min(later) if later else None


async def _newest_ids(session: AsyncSession, org_id: int) -> tuple[int, int]:
    event_id = await session.scalar(
        select(func.coalesce(func.max(Event.id), 0)).where(Event.organization_id == org_id)
    )
    payment_id = await session.scalar(
        select(func.coalesce(func.max(Payment.id), 0)).where(Payment.organization_id == org_id)
    )
    return int(event_id or 0), int(payment_id or 0)


async def _step_counts(
    session: AsyncSession, org_id: int, event_after: int, payment_after: int
) -> tuple[int, int]:
    """(status changes, payments attempted) written since the ids taken before a step."""
    changes = await session.scalar(
        select(func.count(Event.id)).where(
            Event.organization_id == org_id,
            Event.id > event_after,
            Event.type == EventType.INVOICE_STATUS_CHANGED,
        )
    )
    attempts = await session.scalar(
        select(func.count(Payment.id)).where(
            Payment.organization_id == org_id, Payment.id > payment_after
        )
    )
    return int(changes or 0), int(attempts or 0)


def move_test_clock(
    session: AsyncSession,
    org: Organization,
    instant: datetime,
    *,
    actor_user_id: int | None = None,
    **report: int,
) -> None:
    """Set a sandbox's clock to ``instant`` (not earlier than it is) with its event, in
    the caller's transaction; the caller has billed up to ``instant`` (or tells a story
    in order, as the demo does)."""
    previous = org.test_clock_at
    if not org.sandbox or previous is None:
        raise NotASandboxError(f"“{org.slug}” is a live organization; it has no test clock.")
    if instant < previous:
        raise ValidationError(
            f"A test clock only moves forward: it is at {previous.isoformat()}.", field="to"
        )
    if instant == previous:
        return
    org.test_clock_at = instant
    events.record(
        session,
        organization_id=org.id,
        type=EventType.TEST_CLOCK_ADVANCED,
        at=instant,
        actor_user_id=actor_user_id,
        previous=previous.isoformat(),
        now=instant.isoformat(),
        **report,
    )


async def advance_test_clock(
    sessionmaker: Sessionmaker,
    organization_id: int,
    to: datetime,
    *,
    actor_user_id: int | None = None,
    limits: billing.BillingLimits = SANDBOX_LIMITS,
) -> ClockAdvance:
    """Move a sandbox organization's test clock forward to ``to``, billing at every
    boundary on the way (module docstring). A live organization is refused
    (NOT_A_SANDBOX), and so is a ``to`` that is not later or too far (VALIDATION);
    a refusal changes nothing."""
    async with sessionmaker() as session:
        org = await _sandbox(session, organization_id)
        assert org.test_clock_at is not None
        start = org.test_clock_at
    target = check_advance(start, to)
    report = ClockAdvance(previous=start, now=start)
    current = start
    while current < target:
        if len(report.steps) >= MAX_STEPS:
            report.stopped_short = True
            break
        async with sessionmaker() as session:
            org = await _sandbox(session, organization_id)
            boundary = await next_boundary(session, org, current)
            event_after, payment_after = await _newest_ids(session, organization_id)
        instant = target if boundary is None else min(boundary, target)
        run = await billing.run_billing(sessionmaker, organization_id, instant, limits)
        step = ClockStep(
            at=instant,
            invoices_finalized=run.invoices_finalized,
            plan_periods_added=run.plan_periods_added,
            failed_accounts=sorted(run.failed_accounts),
        )
        async with sessionmaker.begin() as session:
            step.status_changes, step.payments_attempted = await _step_counts(
                session, organization_id, event_after, payment_after
            )
            # Taken under the row lock: a second advance running at once finds the clock
            # moved and stops, instead of walking the same steps again.
            org = await lock_organization(session, organization_id)
            if org.test_clock_at != current:
                raise ConflictError(
                    "Another advance of this test clock ran at the same time; read "
                    "`organization { now }` and advance again from there."
                )
            move_test_clock(
                session, org, instant, actor_user_id=actor_user_id,
                invoices_finalized=step.invoices_finalized,
                status_changes=step.status_changes,
                payments_attempted=step.payments_attempted,
            )  # fmt: skip
        report.steps.append(step)
        current = report.now = instant
    return report
