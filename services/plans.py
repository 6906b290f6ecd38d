"""Plan templates, plan subscriptions and the periods they put on invoices (rules §8.2–8.3).

Plans bill in advance, in periods aligned to the organization's billing day: a
MONTHLY, QUARTERLY or YEARLY plan's periods are 1, 3 or 12 months long and start on the
first billing date on or after the plan's start date (the anchor), then every period
after it. A ONE_TIME plan is a single charge.

The first invoice of a plan is a pending invoice due on its start date (due today when
the plan starts today or earlier) and holds the prorated part up to the anchor, the
first full period, the setup fee and the deposit. Later periods are added by the
billing run (``bill_due_periods``) onto the pending invoice due on the period's first
day, once that day is no later than the next billing date. A period cut by the plan's
end date is prorated by days. ``subscription.billed_through`` is the exclusive end of
the last period put on an invoice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import (
    Account,
    Invoice,
    InvoiceStatus,
    LineItem,
    LineKind,
    Organization,
    PlanInterval,
    PlanStatus,
    PlanSubscription,
    PlanTemplate,
)
from services import credit, events, invoices, money
from services.errors import InvalidStateError, NotFoundError, ValidationError
from services.events import EventType
from services.invoices import LineSpec
from services.locks import lock_account

PERIOD_MONTHS = {PlanInterval.MONTHLY: 1, PlanInterval.QUARTERLY: 3, PlanInterval.YEARLY: 12}
ONE_DAY = timedelta(days=1)


# --------------------------------------------------------------------------- templates


async def create_plan_template(
    session: AsyncSession,
    org: Organization,
    *,
    name: str,
    price: int,
    interval: PlanInterval,
    now: datetime,
    setup_fee: int = 0,
    deposit: int = 0,
    tax_rate_ppm: int | None = None,
    actor_user_id: int | None = None,
) -> PlanTemplate:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValidationError("A plan needs a name of at most 200 characters.")
    try:
        interval = PlanInterval(interval)
    except ValueError:
        raise ValidationError("interval must be MONTHLY, QUARTERLY, YEARLY or ONE_TIME.") from None
    for what, amount in (("price", price), ("setup fee", setup_fee), ("deposit", deposit)):
        if amount < 0:
            raise ValidationError(f"A plan's {what} cannot be negative.")
    if tax_rate_ppm is not None and not 0 <= tax_rate_ppm <= money.PPM:
        raise ValidationError("A tax rate must lie between 0 and 100 percent.")
    template = PlanTemplate(
        organization_id=org.id,
        name=name,
        price=price,
        interval=interval,
        setup_fee=setup_fee,
        deposit=deposit,
        tax_rate_ppm=tax_rate_ppm,
        active=True,
        created_at=now,
    )
    session.add(template)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.PLAN_TEMPLATE_CREATED,
        at=now,
        actor_user_id=actor_user_id,
        plan_template_id=template.id,
        name=name,
        price=price,
        interval=str(interval),
    )
    return template


async def get_template(session: AsyncSession, org: Organization, template_id: int) -> PlanTemplate:
    template = await session.scalar(
        select(PlanTemplate).where(
            PlanTemplate.id == template_id, PlanTemplate.organization_id == org.id
        )
    )
    if template is None:
        raise NotFoundError(f"No plan template {template_id} in this organization.")
    return template


async def get_subscription(
    session: AsyncSession, org: Organization, subscription_id: int
) -> PlanSubscription:
    found = await session.scalar(
        select(PlanSubscription).where(
            PlanSubscription.id == subscription_id, PlanSubscription.organization_id == org.id
        )
    )
    if found is None:
        raise NotFoundError(f"No plan subscription {subscription_id} in this organization.")
    return found


# --------------------------------------------------------------------------- periods


def anchor(org: Organization, subscription: PlanSubscription) -> date:
    """The first full period's first day: the billing date on or after the start."""
    return invoices.billing_date_on_or_after(org, subscription.start_date)


def period_containing(
    org: Organization, subscription: PlanSubscription, day: date
) -> tuple[date, date]:
    """The aligned period [start, exclusive end) of a recurring plan that holds ``day``."""
    months = PERIOD_MONTHS[PlanInterval(subscription.interval)]
    first = anchor(org, subscription)
    if day < first:
        return invoices.add_months(first, -months), first
    elapsed = (day.year - first.year) * 12 + day.month - first.month
    if day.day < first.day:
        elapsed -= 1
    start = invoices.add_months(first, elapsed // months * months)
    return start, invoices.add_months(start, months)


@dataclass(frozen=True)
class Chunk:
    """A run of days billed as one line: [start, end) with its (prorated) price."""

    start: date
    end: date
    amount: int

    @property
    def last_day(self) -> date:
        return self.end - ONE_DAY


def chunk_from(org: Organization, subscription: PlanSubscription, day: date) -> Chunk | None:
    """What to bill from ``day`` to the end of its period, cut at the plan's end date;
    a part-period is the price ÷ days in the period × days billed, half-up."""
    start, end = period_containing(org, subscription, day)
    stop = end
    if subscription.end_date is not None:
        stop = min(stop, subscription.end_date + ONE_DAY)
    if stop <= day:
        return None
    days, full = (stop - day).days, (end - start).days
    amount = subscription.price if days == full else money.prorate(subscription.price, days, full)
    return Chunk(start=day, end=stop, amount=amount)


def _day_text(day: date) -> str:
    return f"{day:%b} {day.day}, {day.year}"


def _period_text(first: date, last: date | None) -> str:
    if last is None:
        return f"from {_day_text(first)}"
    if first == last:
        return _day_text(first)
    return f"{_day_text(first)} – {_day_text(last)}"


def period_spec(subscription: PlanSubscription, chunk: Chunk) -> LineSpec:
    return LineSpec(
        description=f"{subscription.name}: {_period_text(chunk.start, chunk.last_day)}",
        unit_price=chunk.amount,
        kind=LineKind.PLAN,
        plan_tax_rate_ppm=subscription.tax_rate_ppm,
        period_start=chunk.start,
        period_end=chunk.last_day,
        plan_subscription_id=subscription.id,
    )


# --------------------------------------------------------------------------- subscribing


async def subscribe(
    session: AsyncSession,
    org: Organization,
    account: Account,
    template: PlanTemplate,
    start_date: date,
    now: datetime,
    *,
    end_date: date | None = None,
    actor_user_id: int | None = None,
) -> PlanSubscription:
    """Put ``account`` on ``template`` from ``start_date`` (to ``end_date``, inclusive,
    or until cancelled) and build its first invoice (see the module docstring). When
    the plan starts today or earlier, the first invoice is the account's due-today
    invoice and finalizes per the grace rule (at once with zero grace)."""
    if template.organization_id != org.id:
        raise NotFoundError(f"No plan template {template.id} in this organization.")
    if not template.active:
        raise InvalidStateError(f"Plan “{template.name}” is no longer offered.")
    if end_date is not None and end_date < start_date:
        raise ValidationError("A plan cannot end before it starts.")
    account = await lock_account(session, org.id, account.id)
    if not account.active:
        raise InvalidStateError(
            f"Account “{account.name}” is inactive; reactivate it before adding a plan."
        )
    subscription = PlanSubscription(
        organization_id=org.id,
        account_id=account.id,
        template_id=template.id,
        name=template.name,
        price=template.price,
        interval=template.interval,
        tax_rate_ppm=template.tax_rate_ppm,
        start_date=start_date,
        end_date=end_date,
        status=PlanStatus.ACTIVE,
        created_at=now,
    )
    session.add(subscription)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.PLAN_SUBSCRIBED,
        at=now,
        account_id=account.id,
        actor_user_id=actor_user_id,
        plan_subscription_id=subscription.id,
        plan_template_id=template.id,
        start_date=start_date.isoformat(),
        end_date=end_date.isoformat() if end_date else None,
    )

    specs: list[LineSpec] = []
    if subscription.interval == PlanInterval.ONE_TIME:
        specs.append(
            LineSpec(
                description=f"{subscription.name}: {_period_text(start_date, end_date)}",
                unit_price=subscription.price,
                kind=LineKind.PLAN,
                plan_tax_rate_ppm=subscription.tax_rate_ppm,
                period_start=start_date,
                period_end=end_date,
                plan_subscription_id=subscription.id,
            )
        )
        # Nothing recurs: the one charge covers the plan to its end (or its first day).
        subscription.billed_through = (end_date or start_date) + ONE_DAY
    else:
        billed_through = start_date
        first = chunk_from(org, subscription, start_date)
        if first is not None:
            specs.append(period_spec(subscription, first))
            billed_through = first.end
            # Started mid-period: the next full period goes on the same invoice.
            if start_date != anchor(org, subscription):
                following = chunk_from(org, subscription, first.end)
                if following is not None:
                    specs.append(period_spec(subscription, following))
                    billed_through = following.end
        subscription.billed_through = billed_through
    if template.setup_fee:
        specs.append(
            LineSpec(
                description=f"{subscription.name}: setup fee",
                unit_price=template.setup_fee,
                kind=LineKind.SETUP_FEE,
                plan_tax_rate_ppm=subscription.tax_rate_ppm,
                plan_subscription_id=subscription.id,
            )
        )
    if template.deposit:
        # A deposit is held, not sold: no tax on it.
        specs.append(
            LineSpec(
                description=f"{subscription.name}: deposit",
                unit_price=template.deposit,
                kind=LineKind.DEPOSIT,
                tax_rate_ppm=0,
                plan_subscription_id=subscription.id,
            )
        )
    specs = [spec for spec in specs if spec.unit_price != 0]  # a free period adds no line
    if not specs:
        return subscription

    today = invoices.local_today(org, now)
    starts_now = start_date <= today
    first_invoice = await invoices.pending_invoice(
        session,
        org,
        account,
        today if starts_now else start_date,
        due_today=starts_now,
        now=now,
        actor_user_id=actor_user_id,
    )
    for spec in specs:
        await invoices.add_line(session, org, first_invoice, spec, now, actor_user_id=actor_user_id)
    if starts_now and org.due_today_grace_minutes == 0:
        await invoices.finalize(
            session,
            org,
            first_invoice,
            now,
            manual=False,
            apply_credit=org.auto_apply_credit,
            actor_user_id=actor_user_id,
        )
    return subscription


# --------------------------------------------------------------------------- billing run


@dataclass
class PlanBilling:
    periods_added: int = 0
    plans_ended: int = 0
    # The period budget ran out with periods still due: the next run continues.
    more_due: bool = False


async def bill_due_periods(
    session: AsyncSession,
    org: Organization,
    account: Account,
    now: datetime,
    *,
    max_periods: int | None = None,
) -> PlanBilling:
    """The billing run's plan step for one account (its lock is held): put every period
    that starts on or before the next billing date on the pending invoice due on its
    first day, and mark plans ENDED once their end date has passed and is billed.

    At most ``max_periods`` periods are added (over all the account's plans), so a plan
    far behind — started years ago — catches up in bounded steps over several runs
    instead of holding the account's lock for one enormous transaction. Each period
    lands on the invoice of its own first day, so the steps add up to what one
    unbounded run would have done."""
    today = invoices.local_today(org, now)
    horizon = invoices.next_billing_date(org, today)
    outcome = PlanBilling()
    active = await session.scalars(
        select(PlanSubscription)
        .where(
            PlanSubscription.account_id == account.id,
            PlanSubscription.status == PlanStatus.ACTIVE,
        )
        .order_by(PlanSubscription.id)
    )
    for subscription in list(active):
        if subscription.interval != PlanInterval.ONE_TIME:
            while (
                subscription.billed_through is not None
                and subscription.billed_through <= horizon
                and (
                    subscription.end_date is None
                    or subscription.billed_through <= subscription.end_date
                )
            ):
                if max_periods is not None and outcome.periods_added >= max_periods:
                    outcome.more_due = True
                    break
                chunk = chunk_from(org, subscription, subscription.billed_through)
                if chunk is None:
                    break
                if chunk.amount:
                    target = await invoices.pending_invoice(
                        session, org, account, chunk.start, now=now
                    )
                    await invoices.add_line(
                        session, org, target, period_spec(subscription, chunk), now
                    )
                subscription.billed_through = chunk.end
                outcome.periods_added += 1
            if outcome.more_due:
                break  # ending this plan (or a later one) waits until it is billed
        if subscription.end_date is not None and subscription.end_date < today:
            subscription.status = PlanStatus.ENDED
            outcome.plans_ended += 1
            events.record(
                session,
                organization_id=org.id,
                type=EventType.PLAN_UPDATED,
                at=now,
                account_id=account.id,
                plan_subscription_id=subscription.id,
                status=str(PlanStatus.ENDED),
            )
    await session.flush()
    return outcome


def needs_billing_clause(today: date, horizon: date) -> ColumnElement[bool]:
    """SQL condition selecting subscriptions the plan step would change (for the run's
    cheap "which accounts have work" query)."""
    return (PlanSubscription.status == PlanStatus.ACTIVE) & (
        (
            (PlanSubscription.interval != PlanInterval.ONE_TIME)
            & (PlanSubscription.billed_through <= horizon)
            & (
                PlanSubscription.end_date.is_(None)
                | (PlanSubscription.billed_through <= PlanSubscription.end_date)
            )
        )
        | (PlanSubscription.end_date < today)
    )


# --------------------------------------------------------------------------- end dates


@dataclass
class PlanChange:
    """What changing a plan's end did: pending lines trimmed or removed, and the
    credit lines placed for invoiced-and-paid days after the new end."""

    subscription: PlanSubscription
    removed_line_ids: list[int] = field(default_factory=list)
    trimmed_line_ids: list[int] = field(default_factory=list)
    credit_lines: list[LineItem] = field(default_factory=list)


async def _trim_pending_lines(
    session: AsyncSession,
    org: Organization,
    subscription: PlanSubscription,
    last_day: date,
    now: datetime,
    change: PlanChange,
    *,
    fees_too: bool,
    actor_user_id: int | None,
) -> None:
    """Lines still on pending invoices are simply cut back to ``last_day`` (no credit
    is due for what was never invoiced, rules §5.3)."""
    kinds = [LineKind.PLAN]
    if fees_too:
        kinds += [LineKind.SETUP_FEE, LineKind.DEPOSIT]
    lines = await session.scalars(
        select(LineItem)
        .join(Invoice, Invoice.id == LineItem.invoice_id)
        .where(
            LineItem.plan_subscription_id == subscription.id,
            LineItem.kind.in_(kinds),
            Invoice.status == InvoiceStatus.PENDING,
        )
        .order_by(LineItem.id)
    )
    for line in list(lines):
        if line.kind != LineKind.PLAN or line.period_start is None:
            change.removed_line_ids.append(line.id)
            await invoices.remove_line(session, org, line, now, actor_user_id=actor_user_id)
            continue
        if line.period_start > last_day:
            change.removed_line_ids.append(line.id)
            await invoices.remove_line(session, org, line, now, actor_user_id=actor_user_id)
            continue
        if (
            line.period_end is None
            or line.period_end <= last_day
            or subscription.interval == PlanInterval.ONE_TIME
        ):
            continue  # a one-time charge is not prorated
        start, end = period_containing(org, subscription, line.period_start)
        kept = (last_day - line.period_start).days + 1
        amount = money.prorate(subscription.price, kept, (end - start).days)
        if amount == 0:
            change.removed_line_ids.append(line.id)
            await invoices.remove_line(session, org, line, now, actor_user_id=actor_user_id)
            continue
        await invoices.reprice_pending_line(
            session,
            org,
            line,
            amount,
            now,
            description=f"{subscription.name}: {_period_text(line.period_start, last_day)}",
            period_end=last_day,
            actor_user_id=actor_user_id,
        )
        change.trimmed_line_ids.append(line.id)


async def _credit_paid_periods(
    session: AsyncSession,
    org: Organization,
    account: Account,
    subscription: PlanSubscription,
    last_day: date,
    now: datetime,
    change: PlanChange,
    *,
    credit_unused_periods: bool | None,
    deposit_return: int,
    actor_user_id: int | None,
) -> None:
    owed = await credit.credit_for_plan_change(
        session,
        org,
        subscription,
        last_day,
        credit_unused_periods=credit_unused_periods,
        deposit_return=deposit_return,
    )
    for spec in owed.lines:
        change.credit_lines.append(
            await invoices.place_additional_charge(
                session,
                org,
                account,
                LineSpec(
                    description=spec.description,
                    unit_price=spec.amount,
                    kind=LineKind.CREDIT,
                    tax_rate_ppm=spec.tax_rate_ppm,
                    period_start=spec.period_start,
                    period_end=spec.period_end,
                    plan_subscription_id=spec.plan_subscription_id,
                ),
                now,
                actor_user_id=actor_user_id,
            )
        )


async def update_end_date(
    session: AsyncSession,
    org: Organization,
    subscription: PlanSubscription,
    end_date: date | None,
    now: datetime,
    *,
    credit_unused_periods: bool | None = None,
    deposit_return: int = 0,
    actor_user_id: int | None = None,
) -> PlanChange:
    """Move a plan's last day of service (``None``: run until cancelled).

    Earlier: periods after the new end still on pending invoices are removed or cut
    back (prorated); periods already invoiced and paid are credited per
    ``credit_unused_periods`` (default: the organization's policy) through
    ``services.credit.credit_for_plan_change``, the credit placed like any other
    (rules §5.4), with an optional ``deposit_return``. Invoiced-but-unpaid periods stay
    (the admin may remove their lines, rules §4.7). Later: the billing run bills the
    added days. An ENDED plan whose end moves past today is active again.
    """
    account = await lock_account(session, org.id, subscription.account_id)
    subscription = await get_subscription(session, org, subscription.id)
    await session.refresh(subscription)
    if subscription.status == PlanStatus.CANCELLED:
        raise InvalidStateError(
            f"Plan “{subscription.name}” was cancelled; subscribe the account again instead."
        )
    if end_date is not None and end_date < subscription.start_date:
        raise ValidationError(
            f"The plan starts on {subscription.start_date.isoformat()}; it cannot end before "
            "that. Cancel it instead."
        )
    change = PlanChange(subscription=subscription)
    previous = subscription.end_date
    subscription.end_date = end_date
    today = invoices.local_today(org, now)
    if end_date is not None and (previous is None or end_date < previous):
        await _trim_pending_lines(
            session, org, subscription, end_date, now, change,
            fees_too=False, actor_user_id=actor_user_id,
        )  # fmt: skip
        await _credit_paid_periods(
            session, org, account, subscription, end_date, now, change,
            credit_unused_periods=credit_unused_periods, deposit_return=deposit_return,
            actor_user_id=actor_user_id,
        )  # fmt: skip
        if subscription.billed_through is not None:
            # Days after the end are no longer billed; a later extension bills them anew.
            subscription.billed_through = min(subscription.billed_through, end_date + ONE_DAY)
    if subscription.status == PlanStatus.ENDED and (end_date is None or end_date >= today):
        subscription.status = PlanStatus.ACTIVE
    events.record(
        session,
        organization_id=org.id,
        type=EventType.PLAN_UPDATED,
        at=now,
        account_id=account.id,
        actor_user_id=actor_user_id,
        plan_subscription_id=subscription.id,
        end_date=end_date.isoformat() if end_date else None,
        previous_end_date=previous.isoformat() if previous else None,
        status=str(subscription.status),
        credit=-sum(line.amount for line in change.credit_lines),
    )
    await session.flush()
    return change


async def cancel(
    session: AsyncSession,
    org: Organization,
    subscription: PlanSubscription,
    now: datetime,
    *,
    last_day: date | None = None,
    credit_unused_periods: bool | None = None,
    deposit_return: int = 0,
    actor_user_id: int | None = None,
) -> PlanChange:
    """Stop a plan now: status CANCELLED, no further periods billed. ``last_day`` (the
    last day of service, default today) must fall inside what is already billed — to
    end a plan later, set its end date instead. Periods after it are handled as in
    ``update_end_date``. A plan cancelled before it starts loses all its pending lines,
    setup fee and deposit included."""
    account = await lock_account(session, org.id, subscription.account_id)
    subscription = await get_subscription(session, org, subscription.id)
    await session.refresh(subscription)
    if subscription.status == PlanStatus.CANCELLED:
        raise InvalidStateError(f"Plan “{subscription.name}” is already cancelled.")
    today = invoices.local_today(org, now)
    last = last_day or today
    if subscription.billed_through is not None and last >= subscription.billed_through:
        raise ValidationError(
            f"The plan is billed through {_day_text(subscription.billed_through - ONE_DAY)}; "
            "to end it later, set its end date instead of cancelling."
        )
    change = PlanChange(subscription=subscription)
    never_started = last < subscription.start_date
    cutoff = subscription.start_date - ONE_DAY if never_started else last
    await _trim_pending_lines(
        session, org, subscription, cutoff, now, change,
        fees_too=never_started, actor_user_id=actor_user_id,
    )  # fmt: skip
    await _credit_paid_periods(
        session, org, account, subscription, cutoff, now, change,
        credit_unused_periods=credit_unused_periods, deposit_return=deposit_return,
        actor_user_id=actor_user_id,
    )  # fmt: skip
    previous = subscription.end_date
    # The end date is never before the start (a CHECK): a plan that never started ends
    # on its start date, with nothing billed for it.
    subscription.end_date = max(cutoff, subscription.start_date)
    subscription.status = PlanStatus.CANCELLED
    events.record(
        session,
        organization_id=org.id,
        type=EventType.PLAN_UPDATED,
        at=now,
        account_id=account.id,
        actor_user_id=actor_user_id,
        plan_subscription_id=subscription.id,
        status=str(PlanStatus.CANCELLED),
        end_date=subscription.end_date.isoformat(),
        previous_end_date=previous.isoformat() if previous else None,
        credit=-sum(line.amount for line in change.credit_lines),
    )
    await session.flush()
    return change
