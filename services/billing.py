"""The billing run (SPEC §9): everything time-driven, done for one instant.

``run_billing`` finds the accounts that have work at ``as_of`` with a few indexed
queries (so 10,000 idle accounts cost nothing), then handles each account in its own
transaction: it takes the account row with ``SKIP LOCKED`` — another worker holding it
is doing the same work, so this one moves on — and, under that lock,

1. puts due plan periods on pending invoices (before finalizing, so a period due
   today is on today's invoice when it finalizes),
2. finalizes pending invoices whose ``finalize_at`` has come (automatically: credit
   is applied per ``autoApplyCredit``); an empty pending invoice is discarded,
3. settles UPCOMING/DUE invoices so UPCOMING→DUE→OVERDUE happen, each event once,
4. runs the ``EXTRA_STEPS`` other modules registered.

Every step re-reads under the lock and only acts on what is still due, so the run is
idempotent and several workers may run it at once. A crash leaves each account either
fully processed or untouched. After an organization's accounts, its ``ORG_JOBS`` run
(work that owns its own transactions, e.g. gateway calls that must not hold locks).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Account, Invoice, InvoiceStatus, LineItem, Organization, PlanSubscription
from services import events, invoices, plans
from services.clock import local_date
from services.events import EventType
from services.invoice_status import settle
from services.locks import lock_invoices, try_lock_account

log = logging.getLogger(__name__)

Sessionmaker = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class BillingStep:
    """A per-account step another module adds to the run. ``select_accounts`` names
    the organization's accounts it has work for at the instant (cheaply); ``run`` does
    that work inside the account's transaction, the account lock held, and returns
    how many things it changed."""

    name: str
    select_accounts: Callable[[AsyncSession, Organization, datetime], Awaitable[Iterable[int]]]
    run: Callable[[AsyncSession, Organization, Account, datetime], Awaitable[int]]


# Per-account steps, run after the engine's own, in the same transaction.
EXTRA_STEPS: list[BillingStep] = []
# Per-organization jobs run after its accounts, each owning its own transactions
# (``services.payments.run_payment_jobs`` with the gateway bound fits here).
OrgJob = Callable[[Sessionmaker, Organization, datetime], Awaitable[object]]
ORG_JOBS: list[OrgJob] = []


@dataclass
class BillingRunResult:
    as_of: datetime
    accounts_processed: int = 0
    accounts_skipped: int = 0
    invoices_finalized: int = 0
    invoices_discarded: int = 0
    status_changes: int = 0
    plan_periods_added: int = 0
    plans_ended: int = 0
    steps: Counter[str] = field(default_factory=Counter)
    failed_accounts: list[int] = field(default_factory=list)

    @property
    def changed_anything(self) -> bool:
        return bool(
            self.invoices_finalized
            or self.invoices_discarded
            or self.status_changes
            or self.plan_periods_added
            or self.plans_ended
            or any(self.steps.values())
        )


async def accounts_with_work(
    session: AsyncSession, org: Organization, as_of: datetime
) -> list[int]:
    """The organization's accounts the run has something to do for at ``as_of``."""
    today = local_date(as_of, org.timezone)
    horizon = invoices.next_billing_date(org, today)
    overdue_due_date = today - timedelta(days=org.overdue_after_days)
    to_finalize = select(Invoice.account_id).where(
        Invoice.organization_id == org.id,
        Invoice.status == InvoiceStatus.PENDING,
        Invoice.finalize_at <= as_of,
    )
    # Only the statuses time moves: UPCOMING once due, DUE once overdue.
    to_settle = select(Invoice.account_id).where(
        Invoice.organization_id == org.id,
        ((Invoice.status == InvoiceStatus.UPCOMING) & (Invoice.due_date <= today))
        | ((Invoice.status == InvoiceStatus.DUE) & (Invoice.due_date <= overdue_due_date)),
    )
    to_bill = select(PlanSubscription.account_id).where(
        PlanSubscription.organization_id == org.id,
        plans.needs_billing_clause(today, horizon),
    )
    found: set[int] = set()
    for query in (to_finalize, to_settle, to_bill):
        found.update(await session.scalars(query.distinct()))
    for step in EXTRA_STEPS:
        found.update(await step.select_accounts(session, org, as_of))
    return sorted(found)


@dataclass
class AccountRun:
    finalized: int = 0
    discarded: int = 0
    status_changes: int = 0
    periods_added: int = 0
    plans_ended: int = 0
    steps: Counter[str] = field(default_factory=Counter)


async def finalize_due_invoices(
    session: AsyncSession, org: Organization, account: Account, as_of: datetime
) -> tuple[int, int]:
    """Finalize the account's pending invoices whose time has come (lock held).
    Returns (finalized, discarded): a pending invoice left without lines — its last
    charge was removed — is deleted rather than given a number."""
    due = list(
        await session.scalars(
            select(Invoice)
            .where(
                Invoice.account_id == account.id,
                Invoice.status == InvoiceStatus.PENDING,
                Invoice.finalize_at <= as_of,
            )
            .order_by(Invoice.id)
        )
    )
    finalized = discarded = 0
    for invoice in due:
        has_lines = await session.scalar(
            select(LineItem.id).where(LineItem.invoice_id == invoice.id).limit(1)
        )
        if has_lines is None:
            events.record(
                session,
                organization_id=org.id,
                type=EventType.INVOICE_UPDATED,
                at=as_of,
                account_id=account.id,
                invoice_id=invoice.id,
                discarded=True,
                reason="no lines left when it was due to finalize",
            )
            await session.delete(invoice)
            discarded += 1
            continue
        await invoices.finalize(
            session, org, invoice, as_of, manual=False, apply_credit=org.auto_apply_credit
        )
        finalized += 1
    await session.flush()
    return finalized, discarded


async def settle_outstanding(
    session: AsyncSession, org: Organization, account: Account, as_of: datetime
) -> int:
    """Move UPCOMING/DUE invoices whose dates have come; returns status changes."""
    today = local_date(as_of, org.timezone)
    ids = list(
        await session.scalars(
            select(Invoice.id).where(
                Invoice.account_id == account.id,
                Invoice.status.in_((InvoiceStatus.UPCOMING, InvoiceStatus.DUE)),
                Invoice.due_date <= today,
            )
        )
    )
    changes = 0
    for invoice in await lock_invoices(session, ids):
        before = invoice.status
        if settle(session, invoice, org, as_of) != before:
            changes += 1
    await session.flush()
    return changes


async def bill_account(
    session: AsyncSession, organization_id: int, account_id: int, as_of: datetime
) -> AccountRun | None:
    """All of the run's work for one account, in the caller's transaction; None when
    another worker holds the account."""
    account = await try_lock_account(session, account_id)
    if account is None:
        return None
    org = await session.get(Organization, organization_id, populate_existing=True)
    if org is None or account.organization_id != organization_id:
        return AccountRun()
    outcome = AccountRun()
    billed = await plans.bill_due_periods(session, org, account, as_of)
    outcome.periods_added, outcome.plans_ended = billed.periods_added, billed.plans_ended
    outcome.finalized, outcome.discarded = await finalize_due_invoices(session, org, account, as_of)
    outcome.status_changes = await settle_outstanding(session, org, account, as_of)
    for step in EXTRA_STEPS:
        outcome.steps[step.name] += await step.run(session, org, account, as_of)
    return outcome


async def run_billing(
    sessionmaker: Sessionmaker, org_id: int | None, as_of: datetime
) -> BillingRunResult:
    """One billing run for ``as_of``, over one organization or all of them."""
    result = BillingRunResult(as_of=as_of)
    async with sessionmaker() as session:
        query = select(Organization).order_by(Organization.id)
        if org_id is not None:
            query = query.where(Organization.id == org_id)
        orgs = list(await session.scalars(query))
    for org in orgs:
        async with sessionmaker() as session:
            account_ids = await accounts_with_work(session, org, as_of)
        for account_id in account_ids:
            try:
                async with sessionmaker.begin() as session:
                    outcome = await bill_account(session, org.id, account_id, as_of)
            except Exception:
                # One account's failure (a bug, a constraint) must not stop the others;
                # its transaction rolled back, so it is retried by the next run.
                log.exception("billing run failed for account %s at %s", account_id, as_of)
                result.failed_accounts.append(account_id)
                continue
            if outcome is None:
                result.accounts_skipped += 1
                continue
            result.accounts_processed += 1
            result.invoices_finalized += outcome.finalized
            result.invoices_discarded += outcome.discarded
            result.status_changes += outcome.status_changes
            result.plan_periods_added += outcome.periods_added
            result.plans_ended += outcome.plans_ended
            result.steps.update(outcome.steps)
        for job in ORG_JOBS:
            try:
                await job(sessionmaker, org, as_of)
            except Exception:
                log.exception("billing job %r failed for organization %s", job, org.id)
    return result
