"""The billing run (rules §9): everything time-driven, done for one instant.

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

The clock cannot be stalled by one tenant (``BillingLimits``): an account adds at most
a bounded number of plan periods per run (a plan far behind catches up over several
runs), an account's transaction has a time budget, organizations' accounts are taken
in turn (round robin) by a few concurrent workers, and an account that fails or runs
out of time is rolled back, reported in the result and retried by the next run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Select, select
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
# Told (accounts done, accounts in the run) as the run goes; must not raise or block.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BillingLimits:
    """Bounds of one billing run (see the module docstring)."""

    max_periods_per_account: int | None = 12
    concurrency: int = 4  # accounts billed at once (SQLite: always one writer)
    account_seconds: float = 30.0
    # Accounts per transaction of the set-based run (services.batch_billing, PostgreSQL);
    # 0 bills every account in its own transaction.
    batch_size: int = 500


DEFAULT_LIMITS = BillingLimits()


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
    # Why each failed account failed, in a few words (the log has the details).
    failures: dict[int, str] = field(default_factory=dict)
    # Accounts whose plans still have periods to catch up in the next runs.
    accounts_continued: list[int] = field(default_factory=list)
    failed_organizations: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """One log line: what the run did and what it left for the next one."""
        parts = [
            f"as of {self.as_of.isoformat()}",
            f"{self.accounts_processed} accounts",
            f"{self.invoices_finalized} finalized",
            f"{self.invoices_discarded} discarded",
            f"{self.status_changes} status changes",
            f"{self.plan_periods_added} plan periods",
            f"{self.plans_ended} plans ended",
        ]
        parts += [f"{count} {name}" for name, count in sorted(self.steps.items()) if count]
        if self.accounts_skipped:
            parts.append(f"{self.accounts_skipped} skipped (held elsewhere)")
        if self.accounts_continued:
            parts.append(f"{len(self.accounts_continued)} catching up next run")
        if self.failures:
            failed = ", ".join(f"{a} ({why})" for a, why in sorted(self.failures.items()))
            parts.append(f"failed accounts: {failed}")
        if self.failed_organizations:
            parts.append(f"failed organizations: {self.failed_organizations}")
        return "billing run " + "; ".join(parts)

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
    more_due: bool = False
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
    session: AsyncSession,
    organization_id: int,
    account_id: int,
    as_of: datetime,
    *,
    max_periods: int | None = None,
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
    billed = await plans.bill_due_periods(session, org, account, as_of, max_periods=max_periods)
    outcome.periods_added, outcome.plans_ended = billed.periods_added, billed.plans_ended
    outcome.more_due = billed.more_due
    outcome.finalized, outcome.discarded = await finalize_due_invoices(session, org, account, as_of)
    outcome.status_changes = await settle_outstanding(session, org, account, as_of)
    for step in EXTRA_STEPS:
        outcome.steps[step.name] += await step.run(session, org, account, as_of)
    return outcome


def organizations_to_bill(org_id: int | None) -> Select[Organization]:
    """The organizations a run bills: the one named, or every live one. A sandbox's
    time is its test clock (rules §9.4), so a run for all never bills it by the wall
    clock; ``services.test_clocks`` names it when its clock moves."""
    query = select(Organization).order_by(Organization.id)
    if org_id is not None:
        return query.where(Organization.id == org_id)
    return query.where(Organization.sandbox.is_(False))


async def run_billing(
    sessionmaker: Sessionmaker,
    org_id: int | None,
    as_of: datetime,
    limits: BillingLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> BillingRunResult:
    """One billing run for ``as_of``, over one organization or all of them.
    All of them means every live organization: a sandbox's time is its test clock
    (rules §9.4), so it is billed only when named (``services.test_clocks``).
    ``progress``, if given, hears ``(accounts done, accounts in the run)`` once the
    run's accounts are known and after every account (the command's progress bar)."""
    return await _Run(sessionmaker, as_of, limits, progress).run(org_id)


@dataclass
class _Organization:
    org: Organization
    accounts_left: int
    jobs_done: bool = False


class _Run:
    """One run's queue: the organizations' accounts interleaved, so the first account
    of every organization comes before the second of any, worked off by a few tasks."""

    def __init__(
        self,
        sessionmaker: Sessionmaker,
        as_of: datetime,
        limits: BillingLimits,
        progress: Progress | None = None,
    ):
        self.sessionmaker = sessionmaker
        self.as_of = as_of
        self.limits = limits
        self.progress = progress
        self.accounts_total = 0
        self.accounts_done = 0
        self.result = BillingRunResult(as_of=as_of)
        self.queue: deque[tuple[_Organization, int | None]] = deque()

    async def run(self, org_id: int | None) -> BillingRunResult:
        async with self.sessionmaker() as session:
            orgs = list(await session.scalars(organizations_to_bill(org_id)))
        lists: list[tuple[_Organization, list[int]]] = []
        for org in orgs:
            try:
                async with self.sessionmaker() as session:
                    account_ids = await accounts_with_work(session, org, self.as_of)
            except Exception:
                log.exception("billing run could not list the work of organization %s", org.id)
                self.result.failed_organizations.append(org.id)
                continue
            lists.append((_Organization(org, len(account_ids)), account_ids))
        for entry, account_ids in lists:
            if not account_ids:
                self.queue.append((entry, None))  # only its jobs
        for turn in range(max((len(ids) for _, ids in lists), default=0)):
            for entry, account_ids in lists:
                if turn < len(account_ids):
                    self.queue.append((entry, account_ids[turn]))
        self.accounts_total = sum(len(ids) for _, ids in lists)
        if self.progress is not None:
            self.progress(0, self.accounts_total)
        bind = self.sessionmaker.kw.get("bind")
        one_writer = bind is not None and bind.dialect.name == "sqlite"
        workers = 1 if one_writer else max(1, self.limits.concurrency)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(workers, len(self.queue))):
                group.create_task(self._work())
        return self.result

    async def _work(self) -> None:
        while self.queue:
            entry, account_id = self.queue.popleft()
            if account_id is not None:
                await self._account(entry.org, account_id)
                entry.accounts_left -= 1
                self.accounts_done += 1
                if self.progress is not None:
                    self.progress(self.accounts_done, self.accounts_total)
            if entry.accounts_left == 0 and not entry.jobs_done:
                entry.jobs_done = True
                await self._jobs(entry.org)

    async def _account(self, org: Organization, account_id: int) -> None:
        await bill_account_alone(
            self.sessionmaker, org, account_id, self.as_of, self.limits, self.result
        )

    async def _jobs(self, org: Organization) -> None:
        await run_org_jobs(self.sessionmaker, org, self.as_of)


async def bill_account_alone(
    sessionmaker: Sessionmaker,
    org: Organization,
    account_id: int,
    as_of: datetime,
    limits: BillingLimits,
    result: BillingRunResult,
) -> None:
    """Bill one account in its own transaction and add what happened to ``result``:
    a failure or an overrun rolls back this account alone and is reported."""
    try:
        # The budget covers the whole transaction, commit included; on PostgreSQL
        # every statement in it is also under the connection's statement and lock
        # timeouts, and the account row itself is taken with SKIP LOCKED.
        async with asyncio.timeout(limits.account_seconds):
            async with sessionmaker.begin() as session:
                outcome = await bill_account(
                    session,
                    org.id,
                    account_id,
                    as_of,
                    max_periods=limits.max_periods_per_account,
                )
    except TimeoutError:
        log.warning(
            "billing run: account %s took over %.0fs and was rolled back; retried next run",
            account_id,
            limits.account_seconds,
        )
        result.failed_accounts.append(account_id)
        result.failures[account_id] = f"over {limits.account_seconds:g}s"
        return
    except Exception as failure:
        # One account's failure (a bug, a constraint) must not stop the others;
        # its transaction rolled back, so it is retried by the next run.
        log.exception("billing run failed for account %s at %s", account_id, as_of)
        result.failed_accounts.append(account_id)
        result.failures[account_id] = type(failure).__name__
        return
    if outcome is None:
        result.accounts_skipped += 1
        return
    add_outcome(result, account_id, outcome)


def add_outcome(result: BillingRunResult, account_id: int, outcome: AccountRun) -> None:
    """Count one billed account's outcome into the run's result."""
    result.accounts_processed += 1
    result.invoices_finalized += outcome.finalized
    result.invoices_discarded += outcome.discarded
    result.status_changes += outcome.status_changes
    result.plan_periods_added += outcome.periods_added
    result.plans_ended += outcome.plans_ended
    result.steps.update(outcome.steps)
    if outcome.more_due:
        result.accounts_continued.append(account_id)


async def run_org_jobs(sessionmaker: Sessionmaker, org: Organization, as_of: datetime) -> None:
    """The organization's ``ORG_JOBS``, each on its own; a failing job is logged."""
    for job in ORG_JOBS:
        try:
            await job(sessionmaker, org, as_of)
        except Exception:
            log.exception("billing job %r failed for organization %s", job, org.id)
