"""A randomized simulation of credit and payments, checking rules §5.7 after every step.

Hypothesis drives random sequences of charges, credit notes, allocations, removals,
automatic credit application, moved credit lines, offline payments, refunds drawn on
credit and voids over two accounts (a user and a team). After every step the
invariants are re-read from the database, never from the machine's own bookkeeping:

- a credit note: Σ live allocations out of it == ``credit_allocated``, Σ refunds ==
  ``credit_refunded``, and together they never exceed its credit; its credit-note
  status agrees with what is left;
- an invoice: Σ payments == ``amount_paid``, Σ live allocations into it ==
  ``credit_applied``, together ≤ its total; ``balance_due`` ≥ 0 and PAID iff it is 0;
- no allocation crosses accounts (and, around every issue and spend of credit, the
  account's available credit moves by exactly what was issued or spent);
- credit-note numbers are gap-free; a pending invoice's total is the sum of its lines.

Each allocation attempt also carries its own oracle: it must succeed exactly when the
rules of §5.6 say it may. The machine's steps are synchronous, so it runs the async
engine on an event loop of its own, over its own engine on a temporary SQLite file.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
import sqlalchemy.event
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import models
from app.database import create_engine, create_sessionmaker
from models import (
    Account,
    CreditAllocation,
    CreditNoteStatus,
    DocumentType,
    Invoice,
    InvoiceStatus,
    LineItem,
    Organization,
    Payment,
    PaymentMethod,
    PaymentStatus,
    PaymentType,
    Refund,
    RefundMethod,
    RefundStatus,
)
from models.enums import OUTSTANDING_STATUSES
from services import credit
from services.errors import DomainError
from services.invoice_status import settle
from services.locks import lock_account, lock_invoices
from tests.services.test_credit import make_credit_note, make_invoice, make_pending, make_world

T = TypeVar("T")

amounts = st.integers(min_value=1, max_value=20_000)

# Building the schema costs more than a whole example, so it is built once into a
# template file that each example copies; the copies live in shared memory where
# there is one, and skip fsync (a crash here loses nothing worth keeping).
_SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
_template: Path | None = None


def _schema_template() -> Path:
    global _template
    if _template is None:
        folder = Path(tempfile.mkdtemp(prefix="deskbill-credit-template-", dir=_SCRATCH))
        path = folder / "template.db"
        sync_engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        models.Base.metadata.create_all(sync_engine)
        sync_engine.dispose()
        _template = path
    return _template


def _no_fsync(engine: AsyncEngine) -> None:
    @sqlalchemy.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()


picks = st.integers(min_value=0, max_value=10_000)


class CreditMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="deskbill-credit-machine-", dir=_SCRATCH))
        shutil.copyfile(_schema_template(), self.tmp / "machine.db")
        self.engine = create_engine(f"sqlite+aiosqlite:///{self.tmp / 'machine.db'}")
        _no_fsync(self.engine)
        self.reader = sqlalchemy.create_engine(f"sqlite:///{self.tmp / 'machine.db'}")
        self.sessions = create_sessionmaker(self.engine)
        self.now = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)
        # Ids only: every step re-reads rows in its own session.
        self.invoices: list[int] = []
        self.owner: dict[int, int] = {}  # invoice or credit note id -> account id
        self.notes: list[int] = []
        self.allocations: list[int] = []
        self.credit_lines: list[int] = []
        self.pending_due = date(2026, 9, 1)
        self.run(self._setup())

    async def _setup(self) -> None:
        async with self.sessions() as s, s.begin():
            world = await make_world(s, self.now)
            self.org_id = world.org.id
            self.accounts = [world.alice.id, world.team.id]
            # Every account starts with one invoice owed and one credit note to spend,
            # so allocations are possible from the first step.
            opening = ((world.alice, 9_000, 5_000), (world.team, 4_000, 12_000))
            for account, owed, given in opening:
                invoice = await make_invoice(s, world.org, account, owed, self.now)
                note = await make_credit_note(s, world.org, account, given, self.now)
                self.invoices.append(invoice.id)
                self.notes.append(note.id)
                self.owner[invoice.id] = self.owner[note.id] = account.id

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.engine.dispose())
        self.reader.dispose()
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def in_transaction(
        self, work: Callable[[AsyncSession, Organization], Awaitable[T]]
    ) -> T | None:
        """Run ``work`` in one transaction; a refusal (DomainError) rolls it back."""

        async def go() -> T | None:
            try:
                async with self.sessions() as s, s.begin():
                    org = await s.get(Organization, self.org_id)
                    assert org is not None
                    return await work(s, org)
            except DomainError:
                return None

        return self.run(go())

    async def _account(self, s: AsyncSession, index: int) -> Account:
        account = await s.get(Account, self.accounts[index % len(self.accounts)])
        assert account is not None
        return account

    # ----------------------------------------------------------------------- rules

    @rule(who=picks, amount=amounts, due_offset=st.integers(-20, 20))
    def charge(self, who: int, amount: int, due_offset: int) -> None:
        async def work(s: AsyncSession, org: Organization) -> int:
            account = await self._account(s, who)
            due = self.now.date() + timedelta(days=due_offset)
            return (await make_invoice(s, org, account, amount, self.now, due=due)).id

        invoice_id = self.in_transaction(work)
        assert invoice_id is not None
        self.invoices.append(invoice_id)
        self.owner[invoice_id] = self.accounts[who % len(self.accounts)]

    @rule(who=picks, amount=amounts, spend=st.booleans())
    def issue_credit(self, who: int, amount: int, spend: bool) -> None:
        async def work(s: AsyncSession, org: Organization) -> int:
            account = await self._account(s, who)
            before = await credit.available_credit(s, account.id)
            note = await credit.issue_credit_note(
                s, org, account, amount, "Custom credit", self.now, origin="MANUAL"
            )
            made = await credit.after_finalize(s, org, note, self.now, spend, True)
            spent = sum(a.amount for a in made)
            assert await credit.available_credit(s, account.id) == before + amount - spent
            self.allocations.extend(a.id for a in made)
            return note.id

        note_id = self.in_transaction(work)
        assert note_id is not None
        self.notes.append(note_id)
        self.owner[note_id] = self.accounts[who % len(self.accounts)]

    @precondition(lambda self: self.notes and self.invoices)
    @rule(
        note_pick=picks,
        invoice_pick=picks,
        same_account=st.booleans(),
        percent=st.integers(1, 130),
        automatic=st.booleans(),
    )
    def allocate(
        self, note_pick: int, invoice_pick: int, same_account: bool, percent: int, automatic: bool
    ) -> None:
        note_id = self.notes[note_pick % len(self.notes)]
        # Half the attempts aim at the note's own account, so that allocations are
        # accepted often enough; the other half mostly probe the cross-account refusal.
        candidates = [
            i for i in self.invoices if not same_account or self.owner[i] == self.owner[note_id]
        ] or self.invoices
        invoice_id = candidates[invoice_pick % len(candidates)]

        async def work(s: AsyncSession, org: Organization) -> CreditAllocation:
            note, target = await s.get(Invoice, note_id), await s.get(Invoice, invoice_id)
            assert note is not None and target is not None
            # A share of what could be applied: above 100 % it must be refused.
            limit = min(note.credit_remaining, target.balance_due)
            amount = max(1, limit * percent // 100) if limit > 0 else percent * 100
            allowed = (
                note.account_id == target.account_id
                and note.credit_note_status == CreditNoteStatus.AVAILABLE
                and target.status in OUTSTANDING_STATUSES
                and amount <= limit
            )
            try:
                made = await credit.allocate(
                    s, org, note_id, invoice_id, amount, self.now, automatic=automatic
                )
            except DomainError:
                assert not allowed, "a valid allocation was refused"
                raise
            assert allowed, "an invalid allocation was accepted"
            assert made.kind == ("AUTOMATIC" if automatic else "MANUAL")
            return made

        made = self.in_transaction(work)
        event("allocate: accepted" if made is not None else "allocate: refused")
        if made is not None:
            self.allocations.append(made.id)

    @precondition(lambda self: self.invoices)
    @rule(invoice_pick=picks)
    def apply_available_credit(self, invoice_pick: int) -> None:
        invoice_id = self.invoices[invoice_pick % len(self.invoices)]

        async def work(s: AsyncSession, org: Organization) -> list[int]:
            invoice = await s.get(Invoice, invoice_id)
            assert invoice is not None
            before = await credit.available_credit(s, invoice.account_id)
            owed = invoice.balance_due
            made = await credit.apply_available_credit(s, org, invoice, self.now, automatic=True)
            # It spends as much as it can: until the invoice is paid or credit runs out.
            spent = sum(a.amount for a in made)
            assert spent == min(before, owed)
            assert await credit.available_credit(s, invoice.account_id) == before - spent
            return [a.id for a in made]

        self.allocations.extend(self.in_transaction(work) or [])

    @precondition(lambda self: self.allocations)
    @rule(pick=picks)
    def remove_allocation(self, pick: int) -> None:
        allocation_id = self.allocations[pick % len(self.allocations)]

        async def work(s: AsyncSession, org: Organization) -> None:
            row = await s.get(CreditAllocation, allocation_id)
            assert row is not None
            was_live = row.removed_at is None
            try:
                await credit.remove_allocation(s, org, allocation_id, self.now)
            except DomainError:
                assert not was_live, "removing a live allocation was refused"
                raise
            assert was_live, "an allocation was removed twice"

        self.in_transaction(work)

    @precondition(lambda self: self.invoices)
    @rule(invoice_pick=picks, amount=amounts, method=st.sampled_from(["CASH", "BANK_TRANSFER"]))
    def pay_offline(self, invoice_pick: int, amount: int, method: str) -> None:
        invoice_id = self.invoices[invoice_pick % len(self.invoices)]

        async def work(s: AsyncSession, org: Organization) -> None:
            found = await s.get(Invoice, invoice_id)
            assert found is not None
            await lock_account(s, org.id, found.account_id)
            (invoice,) = await lock_invoices(s, [invoice_id])
            if invoice.status not in OUTSTANDING_STATUSES:
                return
            paid = min(amount, invoice.balance_due)
            s.add(
                Payment(
                    organization_id=org.id,
                    account_id=invoice.account_id,
                    invoice_id=invoice.id,
                    amount=paid,
                    applied_amount=paid,
                    currency=org.currency,
                    status=PaymentStatus.SUCCEEDED,
                    type=PaymentType.MANUAL,
                    method=PaymentMethod(method),
                    created_at=self.now,
                    updated_at=self.now,
                    succeeded_at=self.now,
                )
            )
            invoice.amount_paid += paid
            settle(s, invoice, org, self.now)

        self.in_transaction(work)

    @precondition(lambda self: self.notes)
    @rule(note_pick=picks, amount=amounts)
    def refund_credit(self, note_pick: int, amount: int) -> None:
        note_id = self.notes[note_pick % len(self.notes)]

        async def work(s: AsyncSession, org: Organization) -> None:
            found = await s.get(Invoice, note_id)
            assert found is not None
            await lock_account(s, org.id, found.account_id)
            (note,) = await lock_invoices(s, [note_id])
            refunded = min(amount, note.credit_remaining)
            if note.credit_note_status != CreditNoteStatus.AVAILABLE or refunded <= 0:
                return
            s.add(
                Refund(
                    organization_id=org.id,
                    account_id=note.account_id,
                    credit_note_id=note.id,
                    amount=refunded,
                    currency=org.currency,
                    status=RefundStatus.SUCCEEDED,
                    method=RefundMethod.CASH,
                    created_at=self.now,
                    updated_at=self.now,
                )
            )
            note.credit_refunded += refunded
            settle(s, note, org, self.now)

        self.in_transaction(work)

    @precondition(lambda self: self.notes)
    @rule(note_pick=picks)
    def void_credit_note(self, note_pick: int) -> None:
        note_id = self.notes[note_pick % len(self.notes)]

        async def work(s: AsyncSession, org: Organization) -> None:
            note = await s.get(Invoice, note_id)
            assert note is not None
            live = await s.scalar(
                select(func.count(CreditAllocation.id)).where(
                    CreditAllocation.credit_note_id == note_id,
                    CreditAllocation.removed_at.is_(None),
                )
            )
            allowed = not live and note.credit_refunded == 0 and note.status != "VOID"
            try:
                await credit.void_credit_note(s, org, note_id, self.now)
            except DomainError:
                assert not allowed, "a voidable credit note was refused"
                raise
            assert allowed, "a credit note in use was voided"

        self.in_transaction(work)

    @rule(who=picks, charge=amounts, credit_amount=amounts)
    def pending_credit_line(self, who: int, charge: int, credit_amount: int) -> None:
        self.pending_due += timedelta(days=1)
        due = self.pending_due

        async def work(s: AsyncSession, org: Organization) -> int:
            account = await self._account(s, who)
            _, (_, line) = await make_pending(
                s, org, account, [charge, -credit_amount], self.now, due=due
            )
            return line.id

        line_id = self.in_transaction(work)
        assert line_id is not None
        self.credit_lines.append(line_id)

    @precondition(lambda self: self.credit_lines and self.invoices)
    @rule(line_pick=picks, invoice_pick=picks)
    def move_credit_line(self, line_pick: int, invoice_pick: int) -> None:
        line_id = self.credit_lines[line_pick % len(self.credit_lines)]
        invoice_id = self.invoices[invoice_pick % len(self.invoices)]

        async def work(s: AsyncSession, org: Organization) -> tuple[int, int]:
            note, allocation = await credit.move_credit_line(s, org, line_id, invoice_id, self.now)
            return note.id, allocation.id

        moved = self.in_transaction(work)
        event("move credit line: accepted" if moved is not None else "move credit line: refused")
        if moved is not None:
            self.notes.append(moved[0])
            self.owner[moved[0]] = self.owner[invoice_id]
            self.allocations.append(moved[1])
            self.credit_lines.remove(line_id)

    @rule(days=st.integers(0, 10))
    def time_passes(self, days: int) -> None:
        self.now += timedelta(days=days)

    # ----------------------------------------------------------------------- invariants

    @invariant()
    def books_balance(self) -> None:
        # Read through a plain synchronous connection to the same file: the same rows,
        # without paying the async driver's thread hand-off on every query.
        with Session(self.reader) as s:
            invoices = {i.id: i for i in s.scalars(select(Invoice))}
            allocations = list(s.scalars(select(CreditAllocation)))
            live = [a for a in allocations if a.removed_at is None]
            payments = list(s.scalars(select(Payment)))
            refunds = list(s.scalars(select(Refund)))
            lines = list(s.scalars(select(LineItem)))

            for a in allocations:
                note, target = invoices[a.credit_note_id], invoices[a.invoice_id]
                assert note.document_type == DocumentType.CREDIT_NOTE
                assert target.document_type == DocumentType.INVOICE
                assert a.account_id == note.account_id == target.account_id
                assert a.amount > 0

            for inv in invoices.values():
                out = sum(a.amount for a in live if a.credit_note_id == inv.id)
                into = sum(a.amount for a in live if a.invoice_id == inv.id)
                paid = sum(
                    p.applied_amount
                    for p in payments
                    if p.invoice_id == inv.id and p.status == PaymentStatus.SUCCEEDED
                )
                refunded = sum(
                    r.amount
                    for r in refunds
                    if r.credit_note_id == inv.id
                    and r.status in (RefundStatus.PENDING, RefundStatus.SUCCEEDED)
                )
                assert inv.subtotal + inv.tax == inv.total
                if inv.document_type == DocumentType.CREDIT_NOTE:
                    assert inv.status in (InvoiceStatus.PAID, InvoiceStatus.VOID)
                    assert inv.credit_allocated == out and inv.credit_refunded == refunded
                    assert out + refunded <= -inv.total
                    assert inv.amount_paid == inv.credit_applied == into == paid == 0
                    if inv.status == InvoiceStatus.VOID:
                        assert inv.credit_note_status == CreditNoteStatus.VOID and out == 0
                    elif inv.credit_remaining > 0:
                        assert inv.credit_note_status == CreditNoteStatus.AVAILABLE
                    else:
                        assert inv.credit_note_status == CreditNoteStatus.CONSUMED
                elif inv.document_type == DocumentType.INVOICE:
                    assert inv.amount_paid == paid and inv.credit_applied == into
                    assert paid + into <= inv.total
                    assert inv.balance_due == inv.total - paid - into >= 0
                    assert (inv.status == InvoiceStatus.PAID) == (inv.balance_due == 0)
                    assert out == 0 and inv.credit_allocated == inv.credit_refunded == 0
                else:
                    assert inv.status == InvoiceStatus.PENDING
                    own = [li for li in lines if li.invoice_id == inv.id]
                    assert inv.total == sum(li.total for li in own)
                    assert into == out == inv.amount_paid == inv.credit_applied == 0

            numbers = sorted(
                inv.number
                for inv in invoices.values()
                if inv.document_type == DocumentType.CREDIT_NOTE and inv.number
            )
            assert numbers == [f"CN-{n:06d}" for n in range(1, len(numbers) + 1)]
            org = s.get(Organization, self.org_id)
            assert org is not None and org.next_credit_note_number == len(numbers) + 1


CreditMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCreditMachine = CreditMachine.TestCase
