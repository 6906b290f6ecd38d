"""The set-based billing run on PostgreSQL (rules §9.1): the per-account engine's work
(``services.billing``), done for a batch of accounts per transaction with a fixed
number of SQL statements per batch instead of some thirty per account.

A batch is up to ``BillingLimits.batch_size`` accounts of one organization. In its
transaction:

1. the accounts are claimed with ``FOR UPDATE SKIP LOCKED`` — an account another
   worker holds is skipped, as the per-account engine skips it, so two runs started
   together share the work and never bill an account twice; then the organization,
   the accounts' active plans, their open invoices (pending, outstanding, credit
   notes with credit left) and the line totals of their pending invoices are read;
2. each account's work is worked out in memory, account by account in id order, by
   the per-account engine's rules and with its helpers (``plans.chunk_from`` and
   ``plans.period_spec``, ``invoices.validate_spec``, ``services.invoice_status``,
   and the credit order of ``services.credit``): due plan periods onto pending
   invoices, finalization (or discarding an empty invoice), automatic credit
   (rules §5.5), then the statuses time moves — with the same event rows;
3. the block of invoice and credit-note numbers is reserved in ONE statement
   (``UPDATE organizations … RETURNING``), which keeps the organization row locked
   until commit; a batch that rolls back gives its block back, so the series stays
   gap-free. Row ids are reserved from the tables' sequences in one statement too;
4. new invoices, lines, allocations and events are inserted and changed invoices
   and plans updated, one statement per table (``unnest`` of arrays).

Numbers follow the per-account engine billing the batch's accounts one after the
other: by account id, then by invoice id (an account's older pending invoices first,
then those this run created for it, in the order it created them). Batches take
their blocks in the order they reach step 3.

A batch that fails — a bug, a constraint, its time budget — rolls back whole and its
accounts are billed again one by one by the per-account engine, which isolates and
reports the culprit while the others commit. SQLite (one writer anyway), a run with
``billing.EXTRA_STEPS``, finalization hooks other than the credit one, or a
``batch_size`` of 0 use the per-account engine throughout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Table, func, or_, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from models import (
    Account,
    AllocationKind,
    CreditAllocation,
    CreditNoteStatus,
    DocumentType,
    Event,
    Invoice,
    InvoiceStatus,
    LineItem,
    Organization,
    PlanInterval,
    PlanStatus,
    PlanSubscription,
)
from models.base import Base
from models.enums import OUTSTANDING_STATUSES
from services import billing, credit, events, invoices, money, plans
from services.billing import (
    AccountRun,
    BillingLimits,
    BillingRunResult,
    Progress,
    Sessionmaker,
)
from services.clock import start_of_day
from services.errors import ValidationError
from services.events import EventType
from services.invoice_status import mark_milestones, set_status, settle, unpaid_status_now

log = logging.getLogger(__name__)

# What the run may change on an invoice it loaded; only rows whose values moved are
# written back.
_INVOICE_CHANGES = (
    "status",
    "document_type",
    "number",
    "credit_note_status",
    "issue_date",
    "period_start",
    "period_end",
    "subtotal",
    "tax",
    "total",
    "credit_applied",
    "credit_allocated",
    "finalize_at",
    "updated_at",
    "finalized_at",
    "paid_at",
    "became_due_at",
    "became_overdue_at",
)
_PLAN_CHANGES = ("billed_through", "status")
_SETTLED_BY_TIME = (InvoiceStatus.UPCOMING, InvoiceStatus.DUE)


M = TypeVar("M", bound=Base)


def _plain(model: type[M]) -> type[M]:
    """A slotted stand-in for ``model``: its columns as plain attributes and its Python
    properties (``Invoice.balance_due``…), without the ORM's instrumentation, which
    cost the batch a third of its time in attribute reads and writes. The batch's rows
    are these; the engine's functions it calls read and write them as the model's."""
    table: Table = model.__table__  # type: ignore[assignment]
    names = tuple(column.key for column in table.columns)
    properties = {
        key: value
        for klass in reversed(model.__mro__)
        for key, value in vars(klass).items()
        if isinstance(value, property)
    }

    def __init__(self: object, **values: object) -> None:
        for name in names:
            setattr(self, name, values.get(name))

    attributes: dict[str, object] = {"__slots__": names, "__init__": __init__, **properties}
    return type(f"Plain{model.__name__}", (), attributes)  # type: ignore[return-value]


def _rows_of(plain: type[M], model: type[Base], rows: Any) -> list[M]:
    """Plain stand-ins of ``model`` from rows of all its columns, in table order."""
    table: Table = model.__table__  # type: ignore[assignment]
    names = [column.key for column in table.columns]
    return [plain(**dict(zip(names, row, strict=True))) for row in rows]


_PlainInvoice = _plain(Invoice)
_PlainPlan = _plain(PlanSubscription)


def batched_engine_applies(sessionmaker: Sessionmaker, limits: BillingLimits) -> bool:
    """Whether ``run_billing_batched`` bills in batches (else it is the per-account run)."""
    bind = sessionmaker.kw.get("bind")
    return (
        limits.batch_size > 0
        and bind is not None
        and bind.dialect.name == "postgresql"
        and not billing.EXTRA_STEPS
        and invoices.AFTER_FINALIZE == [credit.after_finalize]
    )


async def run_billing_batched(
    sessionmaker: Sessionmaker,
    org_id: int | None,
    as_of: datetime,
    limits: BillingLimits = billing.DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> BillingRunResult:
    """One billing run for ``as_of`` (see the module docstring): the same result as
    ``billing.run_billing``, in batches on PostgreSQL."""
    if not batched_engine_applies(sessionmaker, limits):
        return await billing.run_billing(sessionmaker, org_id, as_of, limits, progress)
    return await _BatchedRun(sessionmaker, as_of, limits, progress).run(org_id)


# --------------------------------------------------------------------------- the run


@dataclass
class _OrgWork:
    org: Organization
    batches_left: int


class _BatchedRun:
    """The run's batches, organizations taken in turn (the first batch of every
    organization before the second of any), worked off by a few tasks."""

    def __init__(
        self,
        sessionmaker: Sessionmaker,
        as_of: datetime,
        limits: BillingLimits,
        progress: Progress | None,
    ):
        self.sessionmaker = sessionmaker
        self.as_of = as_of
        self.limits = limits
        self.progress = progress
        self.result = BillingRunResult(as_of=as_of)
        self.queue: deque[tuple[_OrgWork, list[int]]] = deque()
        self.accounts_total = 0
        self.accounts_done = 0
        self.sequences: dict[str, str] = {}

    async def run(self, org_id: int | None) -> BillingRunResult:
        async with self.sessionmaker() as session:
            orgs = list(await session.scalars(billing.organizations_to_bill(org_id)))
            rows = await session.execute(
                text(
                    "SELECT pg_get_serial_sequence(t, 'id') FROM unnest(CAST(:t AS TEXT[])) "
                    "WITH ORDINALITY AS u(t, n) ORDER BY n"
                ),
                {"t": [table.name for table in _ID_TABLES]},
            )
            self.sequences = {
                table.name: name for table, (name,) in zip(_ID_TABLES, rows, strict=True)
            }
        lists: list[tuple[_OrgWork, list[list[int]]]] = []
        for org in orgs:
            try:
                async with self.sessionmaker() as session:
                    ids = await billing.accounts_with_work(session, org, self.as_of)
            except Exception:
                log.exception("billing run could not list the work of organization %s", org.id)
                self.result.failed_organizations.append(org.id)
                continue
            size = self.limits.batch_size
            chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
            lists.append((_OrgWork(org, len(chunks)), chunks))
            self.accounts_total += len(ids)
        jobs_only = [work for work, chunks in lists if not chunks]
        for turn in range(max((len(chunks) for _, chunks in lists), default=0)):
            for work, chunks in lists:
                if turn < len(chunks):
                    self.queue.append((work, chunks[turn]))
        if self.progress is not None:
            self.progress(0, self.accounts_total)
        for work in jobs_only:
            await billing.run_org_jobs(self.sessionmaker, work.org, self.as_of)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(max(1, self.limits.concurrency), len(self.queue))):
                group.create_task(self._work())
        return self.result

    async def _work(self) -> None:
        while self.queue:
            work, account_ids = self.queue.popleft()
            await self._batch(work.org, account_ids)
            self.accounts_done += len(account_ids)
            if self.progress is not None:
                self.progress(self.accounts_done, self.accounts_total)
            work.batches_left -= 1
            if work.batches_left == 0:
                await billing.run_org_jobs(self.sessionmaker, work.org, self.as_of)

    async def _batch(self, org: Organization, account_ids: list[int]) -> None:
        try:
            async with asyncio.timeout(self.limits.account_seconds):
                async with self.sessionmaker.begin() as session:
                    outcomes = await bill_batch(
                        session,
                        org.id,
                        account_ids,
                        self.as_of,
                        max_periods=self.limits.max_periods_per_account,
                        sequences=self.sequences,
                    )
        except Exception as failure:
            # Rolled back whole; bill its accounts one by one so only a culprit fails.
            log.warning(
                "billing run: a batch of %s accounts of organization %s failed (%s); "
                "billing them one by one",
                len(account_ids),
                org.id,
                type(failure).__name__,
            )
            for account_id in account_ids:
                await billing.bill_account_alone(
                    self.sessionmaker, org, account_id, self.as_of, self.limits, self.result
                )
            return
        for account_id in account_ids:
            outcome = outcomes.get(account_id)
            if outcome is None:
                self.result.accounts_skipped += 1
            else:
                billing.add_outcome(self.result, account_id, outcome)


# --------------------------------------------------------------------------- one batch


_ID_TABLES: tuple[Table, ...] = (
    Invoice.__table__,  # type: ignore[assignment]
    LineItem.__table__,  # type: ignore[assignment]
    CreditAllocation.__table__,  # type: ignore[assignment]
    Event.__table__,  # type: ignore[assignment]
)


async def bill_batch(
    session: AsyncSession,
    organization_id: int,
    account_ids: list[int],
    as_of: datetime,
    *,
    max_periods: int | None,
    sequences: dict[str, str],
) -> dict[int, AccountRun]:
    """All of the run's work for a batch of one organization's accounts, in the
    caller's transaction (PostgreSQL). Returns the outcome of each account it billed;
    an account another worker holds is left out."""
    locked = list(
        await session.scalars(
            select(Account.id)
            .where(Account.id.in_(account_ids), Account.organization_id == organization_id)
            .order_by(Account.id)
            .with_for_update(skip_locked=True)
        )
    )
    if not locked:
        return {}
    org = await session.get(Organization, organization_id, populate_existing=True)
    if org is None:
        return {}
    plan_table: Table = PlanSubscription.__table__  # type: ignore[assignment]
    invoice_table: Table = Invoice.__table__  # type: ignore[assignment]
    subscriptions = _rows_of(
        _PlainPlan,
        PlanSubscription,
        await session.execute(
            select(*plan_table.columns)
            .where(
                PlanSubscription.account_id.in_(locked),
                PlanSubscription.status == PlanStatus.ACTIVE,
            )
            .order_by(PlanSubscription.id)
        ),
    )
    open_invoices = _rows_of(
        _PlainInvoice,
        Invoice,
        await session.execute(
            select(*invoice_table.columns)
            .where(
                Invoice.account_id.in_(locked),
                or_(
                    Invoice.status.in_((InvoiceStatus.PENDING, *OUTSTANDING_STATUSES)),
                    Invoice.credit_note_status == CreditNoteStatus.AVAILABLE,
                ),
            )
            .order_by(Invoice.id)
        ),
    )
    pending_ids = [inv.id for inv in open_invoices if inv.status == InvoiceStatus.PENDING]
    totals: dict[int, _Lines] = {i: _Lines() for i in pending_ids}
    if pending_ids:
        rows = await session.execute(
            select(
                LineItem.invoice_id,
                func.count(LineItem.id),
                func.coalesce(func.sum(LineItem.amount), 0),
                func.coalesce(func.sum(LineItem.tax), 0),
                func.min(LineItem.period_start),
                func.max(LineItem.period_end),
            )
            .where(LineItem.invoice_id.in_(pending_ids))
            .group_by(LineItem.invoice_id)
        )
        for invoice_id, count, amount, tax, first, last in rows:
            totals[invoice_id] = _Lines(int(count), int(amount), int(tax), first, last)
    # From here on the rows are the batch's own: nothing is flushed through the ORM.
    session.expunge_all()

    batch = _Batch(org, as_of, max_periods, totals)
    by_account = {account_id: _AccountRows(account_id) for account_id in locked}
    for subscription in subscriptions:
        by_account[subscription.account_id].plans.append(subscription)
        batch.remember_plan(subscription)
    for invoice in open_invoices:
        by_account[invoice.account_id].invoices.append(invoice)
        batch.remember_invoice(invoice)
    outcomes = {account_id: batch.bill(rows) for account_id, rows in by_account.items()}
    await batch.write(session, sequences)
    return outcomes


@dataclass
class _Lines:
    """What a pending invoice's lines add up to (``invoices.recompute_totals``)."""

    count: int = 0
    amount: int = 0
    tax: int = 0
    first: date | None = None
    last: date | None = None


@dataclass
class _AccountRows:
    account_id: int
    plans: list[PlanSubscription] = field(default_factory=list)
    invoices: list[Invoice] = field(default_factory=list)


def _snapshot(row: object, names: tuple[str, ...]) -> tuple[object, ...]:
    return tuple(getattr(row, name) for name in names)


class _Batch:
    """One batch's work in memory. Rows it creates get temporary negative ids
    (-1, -2, … per table, in creation order) until ``write`` reserves real ones."""

    def __init__(
        self,
        org: Organization,
        now: datetime,
        max_periods: int | None,
        totals: dict[int, _Lines],
    ):
        self.org = org
        self.now = now
        self.max_periods = max_periods
        self.today = invoices.local_today(org, now)
        self.horizon = invoices.next_billing_date(org, self.today)
        self.totals = totals
        # Collects what ``events.record`` adds, as plain values (no ORM state per event).
        self.recorder = events.Recorder()
        self.loaded_invoices: dict[int, tuple[object, ...]] = {}
        self.invoice_rows: dict[int, Invoice] = {}
        self.loaded_plans: dict[int, tuple[object, ...]] = {}
        self.plan_rows: dict[int, PlanSubscription] = {}
        self.new_invoices: list[Invoice] = []
        self.new_lines: list[dict[str, Any]] = []
        self.new_allocations: list[dict[str, Any]] = []
        self.discarded: list[int] = []
        # Finalized invoices in number order, with the events that carry the number.
        self.numbered: list[tuple[Invoice, list[events.RecordedEvent]]] = []

    def remember_invoice(self, invoice: Invoice) -> None:
        self.loaded_invoices[invoice.id] = _snapshot(invoice, _INVOICE_CHANGES)
        self.invoice_rows[invoice.id] = invoice

    def remember_plan(self, subscription: PlanSubscription) -> None:
        self.loaded_plans[subscription.id] = _snapshot(subscription, _PLAN_CHANGES)
        self.plan_rows[subscription.id] = subscription

    @staticmethod
    def order(invoice: Invoice) -> tuple[int, int]:
        """Id order, with the invoices this run creates after every existing one (the
        sequence gives them the highest ids, in creation order)."""
        return (0, invoice.id) if invoice.id > 0 else (1, -invoice.id)

    def record(self, type: str, account_id: int, **fields: Any) -> events.RecordedEvent:
        return events.record(
            self.recorder,
            organization_id=self.org.id,
            type=type,
            at=self.now,
            account_id=account_id,
            **fields,
        )

    # ------------------------------------------------------------------ an account

    def bill(self, rows: _AccountRows) -> AccountRun:
        """``billing.bill_account`` for one account, in memory."""
        outcome = AccountRun()
        self._bill_due_periods(rows, outcome)
        self._finalize_due_invoices(rows, outcome)
        for invoice in sorted(
            (i for i in rows.invoices if i.status in _SETTLED_BY_TIME and i.due_date <= self.today),
            key=self.order,
        ):
            before = invoice.status
            if settle(self.recorder, invoice, self.org, self.now) != before:
                outcome.status_changes += 1
        return outcome

    def _bill_due_periods(self, rows: _AccountRows, outcome: AccountRun) -> None:
        """``plans.bill_due_periods``."""
        for subscription in rows.plans:
            if subscription.interval != PlanInterval.ONE_TIME:
                while (
                    subscription.billed_through is not None
                    and subscription.billed_through <= self.horizon
                    and (
                        subscription.end_date is None
                        or subscription.billed_through <= subscription.end_date
                    )
                ):
                    if self.max_periods is not None and outcome.periods_added >= self.max_periods:
                        outcome.more_due = True
                        break
                    chunk = plans.chunk_from(self.org, subscription, subscription.billed_through)
                    if chunk is None:
                        break
                    if chunk.amount:
                        target = self._pending_invoice(rows, chunk.start)
                        self._add_line(target, plans.period_spec(subscription, chunk))
                    subscription.billed_through = chunk.end
                    outcome.periods_added += 1
                if outcome.more_due:
                    break
            if subscription.end_date is not None and subscription.end_date < self.today:
                subscription.status = PlanStatus.ENDED
                outcome.plans_ended += 1
                self.record(
                    EventType.PLAN_UPDATED,
                    rows.account_id,
                    plan_subscription_id=subscription.id,
                    status=str(PlanStatus.ENDED),
                )

    def _pending_invoice(self, rows: _AccountRows, due_date: date) -> Invoice:
        """``invoices.pending_invoice`` for a billing date."""
        for invoice in rows.invoices:
            if (
                invoice.status == InvoiceStatus.PENDING
                and invoice.due_date == due_date
                and not invoice.due_today
            ):
                return invoice
        org = self.org
        invoice = _PlainInvoice(
            id=-(len(self.new_invoices) + 1),
            organization_id=org.id,
            account_id=rows.account_id,
            number=None,
            status=InvoiceStatus.PENDING,
            document_type=DocumentType.DRAFT,
            credit_note_status=None,
            currency=org.currency,
            issue_date=None,
            due_date=due_date,
            period_start=due_date,
            period_end=invoices.next_billing_date(org, due_date) - plans.ONE_DAY,
            subtotal=0,
            tax=0,
            total=0,
            amount_paid=0,
            credit_applied=0,
            credit_allocated=0,
            credit_refunded=0,
            finalize_at=start_of_day(due_date, org.timezone),
            due_today=False,
            status_before_processing=None,
            origin=None,
            source_invoice_id=None,
            source_payment_id=None,
            autopay_attempts=0,
            autopay_retry_at=None,
            created_at=self.now,
            updated_at=self.now,
            finalized_at=None,
            paid_at=None,
            voided_at=None,
            became_due_at=None,
            became_overdue_at=None,
        )
        self.new_invoices.append(invoice)
        self.totals[invoice.id] = _Lines()
        rows.invoices.append(invoice)
        self.record(
            EventType.INVOICE_CREATED,
            rows.account_id,
            invoice_id=invoice.id,
            status=str(InvoiceStatus.PENDING),
            due_date=due_date.isoformat(),
            due_today=False,
        )
        return invoice

    def _add_line(self, invoice: Invoice, spec: invoices.LineSpec) -> None:
        """``invoices.add_line`` onto a pending invoice."""
        description, kind = invoices.validate_spec(spec)
        rate = invoices.resolve_tax_rate(self.org, spec.tax_rate_ppm, spec.plan_tax_rate_ppm)
        amount = spec.quantity * spec.unit_price
        tax = money.tax(amount, rate)
        money.check_bound(amount, invoice.currency, "quantity × unitPrice")
        money.check_bound(amount + tax, invoice.currency, "The line with its tax")
        line_id = -(len(self.new_lines) + 1)
        self.new_lines.append(
            {
                "id": line_id,
                "organization_id": invoice.organization_id,
                "invoice_id": invoice.id,
                "kind": str(kind),
                "description": description,
                "quantity": spec.quantity,
                "unit_price": spec.unit_price,
                "amount": amount,
                "tax_rate_ppm": rate,
                "tax": tax,
                "total": amount + tax,
                "period_start": spec.period_start,
                "period_end": spec.period_end,
                "booking_id": spec.booking_id,
                "plan_subscription_id": spec.plan_subscription_id,
                "moved_from_invoice_id": None,
                "created_at": self.now,
            }
        )
        lines = self.totals[invoice.id]
        lines.count += 1
        lines.amount += amount
        lines.tax += tax
        if spec.period_start is not None:
            lines.first = min(lines.first or spec.period_start, spec.period_start)
        if spec.period_end is not None:
            lines.last = max(lines.last or spec.period_end, spec.period_end)
        invoice.updated_at = self.now
        if invoice.due_today:
            invoice.finalize_at = self.now + timedelta(minutes=self.org.due_today_grace_minutes)
        self._recompute_totals(invoice)
        self.record(
            EventType.LINE_ITEM_ADDED,
            invoice.account_id,
            invoice_id=invoice.id,
            line_item_id=line_id,
            kind=str(kind),
            amount=amount,
            tax=tax,
            total=amount + tax,
            invoice_total=invoice.total,
        )

    def _recompute_totals(self, invoice: Invoice) -> None:
        lines = self.totals[invoice.id]
        invoice.subtotal = lines.amount
        invoice.tax = lines.tax
        invoice.total = lines.amount + lines.tax
        if lines.first is not None:
            invoice.period_start = lines.first
        if lines.last is not None:
            invoice.period_end = lines.last

    def _finalize_due_invoices(self, rows: _AccountRows, outcome: AccountRun) -> None:
        """``billing.finalize_due_invoices``."""
        due = sorted(
            (
                i
                for i in rows.invoices
                if i.status == InvoiceStatus.PENDING
                and i.finalize_at is not None
                and i.finalize_at <= self.now
            ),
            key=self.order,
        )
        for invoice in due:
            if self.totals[invoice.id].count == 0:
                self.record(
                    EventType.INVOICE_UPDATED,
                    rows.account_id,
                    invoice_id=invoice.id,
                    discarded=True,
                    reason="no lines left when it was due to finalize",
                )
                rows.invoices.remove(invoice)
                self.discarded.append(invoice.id)
                outcome.discarded += 1
                continue
            self._finalize(rows, invoice)
            outcome.finalized += 1

    def _finalize(self, rows: _AccountRows, invoice: Invoice) -> None:
        """``invoices.finalize`` (automatic), then ``credit.after_finalize``; the
        number is filled in by ``write`` once the block is reserved."""
        org, now = self.org, self.now
        self._recompute_totals(invoice)
        credit_note = invoice.total < 0
        invoice.document_type = DocumentType.CREDIT_NOTE if credit_note else DocumentType.INVOICE
        invoice.issue_date = self.today
        invoice.finalized_at = now
        invoice.finalize_at = None
        invoice.updated_at = now
        numbered = [
            self.record(
                EventType.INVOICE_FINALIZED,
                invoice.account_id,
                invoice_id=invoice.id,
                credit_note_id=invoice.id if credit_note else None,
                number=None,
                document_type=str(invoice.document_type),
                total=invoice.total,
                due_date=invoice.due_date.isoformat(),
                manual=False,
            )
        ]
        if credit_note:
            numbered.append(
                self.record(
                    EventType.CREDIT_NOTE_CREATED,
                    invoice.account_id,
                    invoice_id=invoice.id,
                    credit_note_id=invoice.id,
                    number=None,
                    credit=-invoice.total,
                    origin=invoice.origin,
                )
            )
            set_status(self.recorder, invoice, InvoiceStatus.PAID, now)
            settle(self.recorder, invoice, org, now)
        elif invoice.total == 0:
            set_status(self.recorder, invoice, InvoiceStatus.PAID, now)
        else:
            target = unpaid_status_now(invoice, self.today, org.overdue_after_days)
            mark_milestones(self.recorder, invoice, target, now)
            set_status(self.recorder, invoice, target, now)
        self.numbered.append((invoice, numbered))
        if not org.auto_apply_credit:
            return
        if credit_note:
            self._pay_outstanding_with(rows, invoice)
        elif invoice.status in OUTSTANDING_STATUSES and invoice.balance_due > 0:
            self._apply_available_credit(rows, invoice)

    def _apply_available_credit(self, rows: _AccountRows, target: Invoice) -> None:
        """``credit.apply_available_credit``: oldest credit note first."""
        notes = sorted(
            (
                n
                for n in rows.invoices
                if n.document_type == DocumentType.CREDIT_NOTE
                and n.credit_note_status == CreditNoteStatus.AVAILABLE
            ),
            key=lambda n: (n.finalized_at or n.created_at, self.order(n)),
        )
        for note in notes:
            amount = min(note.credit_remaining, target.balance_due)
            if amount <= 0:
                continue
            self._allocate(note, target, amount)
            if target.balance_due == 0:
                break

    def _pay_outstanding_with(self, rows: _AccountRows, note: Invoice) -> None:
        """``credit.pay_outstanding_with_credit_note``: oldest due date first."""
        if note.credit_note_status != CreditNoteStatus.AVAILABLE:
            return
        targets = sorted(
            (
                t
                for t in rows.invoices
                if t.document_type == DocumentType.INVOICE and t.status in OUTSTANDING_STATUSES
            ),
            key=lambda t: (t.due_date, self.order(t)),
        )
        for target in targets:
            amount = min(note.credit_remaining, target.balance_due)
            if amount <= 0:
                continue
            self._allocate(note, target, amount)
            if note.credit_remaining == 0:
                break

    def _allocate(self, note: Invoice, target: Invoice, amount: int) -> None:
        """``credit._allocate_locked`` for an automatic allocation (the callers above
        only hand it amounts its other checks accept)."""
        if note.currency != target.currency:
            raise ValidationError(
                f"Credit note {note.number or note.id} is in {note.currency} but invoice "
                f"{target.number or target.id} is in {target.currency}; credit never crosses "
                "currencies."
            )
        allocation_id = -(len(self.new_allocations) + 1)
        kind = str(AllocationKind.AUTOMATIC)
        self.new_allocations.append(
            {
                "id": allocation_id,
                "organization_id": self.org.id,
                "account_id": note.account_id,
                "credit_note_id": note.id,
                "invoice_id": target.id,
                "amount": amount,
                "kind": kind,
                "created_by_user_id": None,
                "created_at": self.now,
                "removed_at": None,
                "removed_by_user_id": None,
            }
        )
        note.credit_allocated += amount
        note.updated_at = self.now
        target.credit_applied += amount
        target.updated_at = self.now
        self.record(
            EventType.CREDIT_ALLOCATED,
            note.account_id,
            invoice_id=target.id,
            credit_note_id=note.id,
            allocation_id=allocation_id,
            amount=amount,
            kind=kind,
            balance_due=target.balance_due,
            credit_remaining=note.credit_remaining,
        )
        settle(self.recorder, target, self.org, self.now)
        settle(self.recorder, note, self.org, self.now)

    # ------------------------------------------------------------------ writing

    async def write(self, session: AsyncSession, sequences: dict[str, str]) -> None:
        """Reserve numbers and ids, then write the batch: one statement per table."""
        recorded: list[events.RecordedEvent] = list(self.recorder.info.get("events", []))
        invoices_new = sum(1 for inv, _ in self.numbered if inv.total >= 0)
        notes_new = len(self.numbered) - invoices_new
        ids = (
            await session.execute(
                text(
                    "SELECT "
                    + ", ".join(
                        f"ARRAY(SELECT nextval(CAST(:s{i} AS regclass)) "
                        f"FROM generate_series(1, :n{i}))"
                        for i in range(len(_ID_TABLES))
                    )
                ),
                {
                    **{f"s{i}": sequences[t.name] for i, t in enumerate(_ID_TABLES)},
                    **{
                        f"n{i}": n
                        for i, n in enumerate(
                            (
                                len(self.new_invoices),
                                len(self.new_lines),
                                len(self.new_allocations),
                                len(recorded),
                            )
                        )
                    },
                },
            )
        ).one()
        invoice_ids, line_ids, allocation_ids, event_ids = (sorted(a) for a in ids)
        if self.numbered:
            # The organization row stays locked to commit: the block is this batch's.
            first_invoice, first_note = (
                await session.execute(
                    text(
                        "UPDATE organizations SET next_invoice_number = next_invoice_number"
                        " + :i, next_credit_note_number = next_credit_note_number + :c"
                        " WHERE id = :org RETURNING next_invoice_number - :i,"
                        " next_credit_note_number - :c"
                    ),
                    {"i": invoices_new, "c": notes_new, "org": self.org.id},
                )
            ).one()
            for invoice, carriers in self.numbered:
                if invoice.total < 0:
                    invoice.number = f"{invoices.CREDIT_NOTE_PREFIX}{first_note:06d}"
                    first_note += 1
                else:
                    invoice.number = f"{invoices.INVOICE_PREFIX}{first_invoice:06d}"
                    first_invoice += 1
                for event in carriers:
                    event.payload["number"] = invoice.number

        def invoice_id(value: int | None) -> int | None:
            return invoice_ids[-value - 1] if value is not None and value < 0 else value

        for invoice in self.new_invoices:
            invoice.id = invoice_ids[-invoice.id - 1]
        for line in self.new_lines:
            line["id"] = line_ids[-line["id"] - 1]
            line["invoice_id"] = invoice_id(line["invoice_id"])
        for allocation in self.new_allocations:
            allocation["id"] = allocation_ids[-allocation["id"] - 1]
            allocation["invoice_id"] = invoice_id(allocation["invoice_id"])
            allocation["credit_note_id"] = invoice_id(allocation["credit_note_id"])
        event_rows: list[dict[str, Any]] = []
        for event, event_id in zip(recorded, event_ids, strict=True):
            payload = dict(event.payload)
            if isinstance(payload.get("line_item_id"), int) and payload["line_item_id"] < 0:
                payload["line_item_id"] = line_ids[-payload["line_item_id"] - 1]
            if isinstance(payload.get("allocation_id"), int) and payload["allocation_id"] < 0:
                payload["allocation_id"] = allocation_ids[-payload["allocation_id"] - 1]
            event_rows.append(
                {
                    "id": event_id,
                    "organization_id": event.organization_id,
                    "type": event.type,
                    "account_id": event.account_id,
                    "invoice_id": invoice_id(event.invoice_id),
                    "payment_id": event.payment_id,
                    "credit_note_id": invoice_id(event.credit_note_id),
                    "refund_id": event.refund_id,
                    "actor_user_id": event.actor_user_id,
                    "payload": payload,
                    "created_at": event.created_at,
                }
            )

        invoice_table: Table = Invoice.__table__  # type: ignore[assignment]
        columns = [c.name for c in invoice_table.columns]
        await _insert(
            session,
            invoice_table,
            [{name: getattr(inv, name) for name in columns} for inv in self.new_invoices],
        )
        await _insert(session, LineItem.__table__, self.new_lines)  # type: ignore[arg-type]
        changed = [
            inv
            for invoice_key, inv in self.invoice_rows.items()
            if invoice_key not in self.discarded
            and _snapshot(inv, _INVOICE_CHANGES) != self.loaded_invoices[invoice_key]
        ]
        await _update(session, invoice_table, _INVOICE_CHANGES, changed)
        if self.discarded:
            await session.execute(
                text("DELETE FROM invoices WHERE id = ANY(CAST(:ids AS BIGINT[]))"),
                {"ids": self.discarded},
            )
        plan_table: Table = PlanSubscription.__table__  # type: ignore[assignment]
        await _update(
            session,
            plan_table,
            _PLAN_CHANGES,
            [
                p
                for key, p in self.plan_rows.items()
                if _snapshot(p, _PLAN_CHANGES) != self.loaded_plans[key]
            ],
        )
        await _insert(
            session,
            CreditAllocation.__table__,  # type: ignore[arg-type]
            self.new_allocations,
        )
        await _insert(session, Event.__table__, event_rows)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bulk SQL


def _pg_type(table: Table, name: str) -> str:
    return str(table.columns[name].type.compile(dialect=postgresql.dialect()))


async def _insert(session: AsyncSession, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT … SELECT FROM unnest(arrays): all the rows in one statement."""
    if not rows:
        return
    names = [c.name for c in table.columns]
    params: dict[str, list[Any]] = {}
    sources, values = [], []
    for i, name in enumerate(names):
        kind = _pg_type(table, name)
        if kind in ("JSON", "JSONB"):
            params[f"c{i}"] = [json.dumps(row[name]) for row in rows]
            sources.append(f"CAST(:c{i} AS TEXT[])")
            values.append(f"CAST(u.c{i} AS {kind})")
        else:
            params[f"c{i}"] = [row[name] for row in rows]
            sources.append(f"CAST(:c{i} AS {kind}[])")
            values.append(f"u.c{i}")
    aliases = ", ".join(f"c{i}" for i in range(len(names)))
    await session.execute(
        text(
            f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(values)} "
            f"FROM unnest({', '.join(sources)}) AS u({aliases})"
        ),
        params,
    )


async def _update(
    session: AsyncSession, table: Table, names: tuple[str, ...], rows: list[Any]
) -> None:
    """UPDATE … FROM unnest(arrays): the given columns of every row, by id."""
    if not rows:
        return
    params: dict[str, list[Any]] = {"k": [row.id for row in rows]}
    sources = ["CAST(:k AS BIGINT[])"]
    for i, name in enumerate(names):
        params[f"c{i}"] = [getattr(row, name) for row in rows]
        sources.append(f"CAST(:c{i} AS {_pg_type(table, name)}[])")
    aliases = ", ".join(["k", *(f"c{i}" for i in range(len(names)))])
    assignments = ", ".join(f"{name} = u.c{i}" for i, name in enumerate(names))
    await session.execute(
        text(
            f"UPDATE {table.name} AS t SET {assignments} FROM unnest({', '.join(sources)}) "
            f"AS u({aliases}) WHERE t.id = u.k"
        ),
        params,
    )
