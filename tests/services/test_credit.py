"""Credit notes and credit allocations (rules §5), on SQLite and PostgreSQL.

The fixtures are built by inserting model rows directly (the small builder below), so
these tests depend only on the data model and on services/credit.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import (
    Account,
    AccountKind,
    AllocationKind,
    CreditNoteStatus,
    DocumentType,
    Event,
    Invoice,
    InvoiceStatus,
    LineItem,
    LineKind,
    Organization,
    PlanInterval,
    PlanSubscription,
    PlanTemplate,
    Role,
    User,
)
from services import credit, money
from services.clock import FixedClock, local_date
from services.errors import InvalidStateError, ValidationError
from services.events import EventType
from services.invoice_status import settle

# --------------------------------------------------------------------------- builder


@dataclass
class World:
    org: Organization
    admin_id: int
    alice: Account
    bob: Account
    team: Account


async def make_world(session: AsyncSession, now: datetime, *, slug: str = "space") -> World:
    org = Organization(name="Space", slug=slug, currency="USD", created_at=now)
    session.add(org)
    await session.flush()
    users = [
        User(organization_id=org.id, email=f"{n}@{slug}.test", name=n, role=r, created_at=now)
        for n, r in (("admin", Role.ADMIN), ("alice", Role.MEMBER), ("bob", Role.MEMBER))
    ]
    session.add_all(users)
    await session.flush()
    alice = Account(
        organization_id=org.id,
        kind=AccountKind.USER,
        name="Alice",
        user_id=users[1].id,
        created_at=now,
    )
    bob = Account(
        organization_id=org.id,
        kind=AccountKind.USER,
        name="Bob",
        user_id=users[2].id,
        created_at=now,
    )
    team = Account(organization_id=org.id, kind=AccountKind.TEAM, name="Acme", created_at=now)
    session.add_all([alice, bob, team])
    await session.flush()
    return World(org=org, admin_id=users[0].id, alice=alice, bob=bob, team=team)


def _line(
    org: Organization,
    amount: int,
    now: datetime,
    *,
    tax_rate_ppm: int = 0,
    kind: LineKind | None = None,
    description: str | None = None,
) -> LineItem:
    tax = money.tax(amount, tax_rate_ppm)
    return LineItem(
        organization_id=org.id,
        kind=kind or (LineKind.CHARGE if amount > 0 else LineKind.CREDIT),
        description=description or ("Meeting room" if amount > 0 else "Cancelled booking"),
        quantity=1,
        unit_price=amount,
        amount=amount,
        tax_rate_ppm=tax_rate_ppm,
        tax=tax,
        total=amount + tax,
        created_at=now,
    )


async def make_invoice(
    session: AsyncSession,
    org: Organization,
    account: Account,
    amount: int,
    now: datetime,
    *,
    due: date | None = None,
    tax_rate_ppm: int = 0,
    line_kind: LineKind | None = None,
) -> Invoice:
    """A finalized invoice of one line; ``settle`` gives it the status its dates give."""
    line = _line(org, amount, now, tax_rate_ppm=tax_rate_ppm, kind=line_kind)
    due = due or local_date(now, org.timezone)
    invoice = Invoice(
        organization_id=org.id,
        account_id=account.id,
        number=f"INV-{org.next_invoice_number:06d}",
        status=InvoiceStatus.UPCOMING,
        document_type=DocumentType.INVOICE,
        currency=org.currency,
        issue_date=local_date(now, org.timezone),
        due_date=due,
        subtotal=line.amount,
        tax=line.tax,
        total=line.total,
        created_at=now,
        updated_at=now,
        finalized_at=now,
    )
    org.next_invoice_number += 1
    session.add(invoice)
    await session.flush()
    line.invoice_id = invoice.id
    session.add(line)
    settle(session, invoice, org, now)
    await session.flush()
    return invoice


async def make_credit_note(
    session: AsyncSession,
    org: Organization,
    account: Account,
    credit: int,
    now: datetime,
    *,
    finalized_at: datetime | None = None,
) -> Invoice:
    """A finalized credit note of ``credit`` (positive) with one credit line."""
    at = finalized_at or now
    line = _line(org, -credit, at)
    note = Invoice(
        organization_id=org.id,
        account_id=account.id,
        number=f"CN-{org.next_credit_note_number:06d}",
        status=InvoiceStatus.PAID,
        document_type=DocumentType.CREDIT_NOTE,
        credit_note_status=CreditNoteStatus.AVAILABLE,
        currency=org.currency,
        issue_date=at.date(),
        due_date=at.date(),
        subtotal=-credit,
        tax=0,
        total=-credit,
        created_at=at,
        updated_at=at,
        finalized_at=at,
    )
    org.next_credit_note_number += 1
    session.add(note)
    await session.flush()
    line.invoice_id = note.id
    session.add(line)
    await session.flush()
    return note


async def make_pending(
    session: AsyncSession,
    org: Organization,
    account: Account,
    amounts: list[int],
    now: datetime,
    *,
    due: date,
    tax_rate_ppm: int = 0,
) -> tuple[Invoice, list[LineItem]]:
    lines = [_line(org, a, now, tax_rate_ppm=tax_rate_ppm) for a in amounts]
    invoice = Invoice(
        organization_id=org.id,
        account_id=account.id,
        status=InvoiceStatus.PENDING,
        document_type=DocumentType.DRAFT,
        currency=org.currency,
        due_date=due,
        subtotal=sum(line.amount for line in lines),
        tax=sum(line.tax for line in lines),
        total=sum(line.total for line in lines),
        created_at=now,
        updated_at=now,
    )
    session.add(invoice)
    await session.flush()
    for line in lines:
        line.invoice_id = invoice.id
    session.add_all(lines)
    await session.flush()
    return invoice, lines


async def event_types(session: AsyncSession, **where: int) -> list[str]:
    query = select(Event.type).order_by(Event.id)
    for column, value in where.items():
        query = query.where(getattr(Event, column) == value)
    return list(await session.scalars(query))


Sessions = async_sessionmaker[AsyncSession]

# --------------------------------------------------------------------------- allocate


async def test_allocation_pays_invoice_and_keeps_rest_of_credit(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 10_000, now)
        invoice = await make_invoice(s, w.org, w.alice, 6_000, now)
        assert invoice.status == InvoiceStatus.DUE

        allocation = await credit.allocate(
            s, w.org, note.id, invoice.id, 6_000, now, actor_user_id=w.admin_id
        )

        assert allocation.kind == AllocationKind.MANUAL
        assert allocation.created_by_user_id == w.admin_id
        assert allocation.account_id == w.alice.id
        assert invoice.status == InvoiceStatus.PAID
        assert invoice.credit_applied == 6_000 and invoice.balance_due == 0
        assert invoice.paid_at == now
        assert note.credit_allocated == 6_000 and note.credit_remaining == 4_000
        assert note.credit_note_status == CreditNoteStatus.AVAILABLE
        assert await credit.available_credit(s, w.alice.id) == 4_000
        types = await event_types(s, invoice_id=invoice.id)
        assert EventType.CREDIT_ALLOCATED in types and EventType.INVOICE_PAID in types


async def test_allocation_that_uses_up_the_credit_consumes_the_note(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 3_000, now)
        invoice = await make_invoice(s, w.org, w.alice, 5_000, now, due=date(2026, 9, 1))

        await credit.allocate(s, w.org, note.id, invoice.id, 3_000, now, automatic=True)

        assert note.credit_note_status == CreditNoteStatus.CONSUMED
        assert note.status == InvoiceStatus.PAID
        # Partial payment is not a status: the invoice keeps UPCOMING with a smaller balance.
        assert invoice.status == InvoiceStatus.UPCOMING and invoice.balance_due == 2_000
        assert await credit.available_credit(s, w.alice.id) == 0
        assert EventType.CREDIT_NOTE_STATUS_CHANGED in await event_types(s, credit_note_id=note.id)


async def test_team_credit_never_pays_a_personal_invoice(db: Sessions, clock: FixedClock) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        team_note = await make_credit_note(s, w.org, w.team, 10_000, now)
        personal = await make_invoice(s, w.org, w.alice, 1_000, now)
        personal_note = await make_credit_note(s, w.org, w.alice, 1_000, now)
        team_invoice = await make_invoice(s, w.org, w.team, 1_000, now)

        with pytest.raises(ValidationError, match="team's credit never pays a personal invoice"):
            await credit.allocate(s, w.org, team_note.id, personal.id, 1_000, now)
        with pytest.raises(ValidationError, match="own account"):
            await credit.allocate(s, w.org, personal_note.id, team_invoice.id, 1_000, now)
        # Nor does it flow there automatically: only Alice's own credit pays her invoice.
        made = await credit.apply_available_credit(s, w.org, personal, now, automatic=True)
        assert [(a.credit_note_id, a.amount) for a in made] == [(personal_note.id, 1_000)]
        assert personal.credit_applied == 1_000
        assert team_note.credit_allocated == 0 and team_invoice.credit_applied == 0


async def test_allocation_refusals(db: Sessions, clock: FixedClock) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 2_000, now)
        invoice = await make_invoice(s, w.org, w.alice, 5_000, now)
        small = await make_invoice(s, w.org, w.alice, 500, now)

        with pytest.raises(ValidationError, match=r"only \$20.00 of credit left"):
            await credit.allocate(s, w.org, note.id, invoice.id, 2_001, now)
        with pytest.raises(ValidationError, match=r"balance of \$5.00"):
            await credit.allocate(s, w.org, note.id, small.id, 501, now)
        for bad in (0, -100):
            with pytest.raises(ValidationError, match="greater than zero"):
                await credit.allocate(s, w.org, note.id, invoice.id, bad, now)
        other_note = await make_credit_note(s, w.org, w.alice, 100, now)
        with pytest.raises(ValidationError, match="is a credit note"):
            await credit.allocate(s, w.org, note.id, other_note.id, 100, now)
        with pytest.raises(ValidationError, match="itself"):
            await credit.allocate(s, w.org, note.id, note.id, 100, now)
        with pytest.raises(ValidationError, match="not a credit note"):
            await credit.allocate(s, w.org, invoice.id, small.id, 100, now)
        assert note.credit_allocated == 0 and invoice.credit_applied == 0


async def test_credit_stuck_on_a_pending_invoice_is_not_applied(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 2_000, now)
        pending, _ = await make_pending(s, w.org, w.alice, [5_000], now, due=date(2026, 9, 1))

        with pytest.raises(InvalidStateError, match="still pending"):
            await credit.allocate(s, w.org, note.id, pending.id, 1_000, now)
        with pytest.raises(InvalidStateError, match="pending"):
            await credit.apply_available_credit(s, w.org, pending, now, automatic=False)
        assert await credit.after_finalize(s, w.org, pending, now, True, True) == []
        assert pending.credit_applied == 0 and note.credit_remaining == 2_000


async def test_paid_target_and_spent_or_void_credit_are_refused(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 1_000, now)
        paid = await make_invoice(s, w.org, w.alice, 1_000, now)
        await credit.allocate(s, w.org, note.id, paid.id, 1_000, now)
        other = await make_invoice(s, w.org, w.alice, 1_000, now)
        spare = await make_credit_note(s, w.org, w.alice, 1_000, now)

        with pytest.raises(InvalidStateError, match="is paid"):
            await credit.allocate(s, w.org, spare.id, paid.id, 100, now)
        with pytest.raises(InvalidStateError, match="fully used"):
            await credit.allocate(s, w.org, note.id, other.id, 100, now)
        await credit.void_credit_note(s, w.org, spare.id, now, w.admin_id)
        with pytest.raises(InvalidStateError, match="void"):
            await credit.allocate(s, w.org, spare.id, other.id, 100, now)


# --------------------------------------------------------------------------- remove


async def test_removing_an_allocation_returns_credit_and_unpays(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 4_000, now)
        invoice = await make_invoice(s, w.org, w.alice, 4_000, now, due=date(2026, 8, 1))
        assert invoice.status == InvoiceStatus.OVERDUE
        allocation = await credit.allocate(s, w.org, note.id, invoice.id, 4_000, now)
        assert invoice.status == InvoiceStatus.PAID
        assert note.credit_note_status == CreditNoteStatus.CONSUMED

        later = now + timedelta(hours=1)
        removed = await credit.remove_allocation(s, w.org, allocation.id, later, w.admin_id)

        assert removed.removed_at == later and removed.removed_by_user_id == w.admin_id
        assert invoice.status == InvoiceStatus.OVERDUE and invoice.paid_at is None
        assert invoice.credit_applied == 0 and invoice.balance_due == 4_000
        assert note.credit_note_status == CreditNoteStatus.AVAILABLE
        assert note.credit_remaining == 4_000
        assert EventType.CREDIT_ALLOCATION_REMOVED in await event_types(s, invoice_id=invoice.id)
        with pytest.raises(InvalidStateError, match="already removed"):
            await credit.remove_allocation(s, w.org, allocation.id, later, w.admin_id)
        # The unassigned credit can be applied again.
        again = await credit.allocate(s, w.org, note.id, invoice.id, 4_000, later)
        assert again.id != allocation.id and invoice.status == InvoiceStatus.PAID
        live = await credit.allocations_of(s, w.org, invoice_id=invoice.id, include_removed=False)
        assert [a.id for a in live] == [again.id]


# --------------------------------------------------------------------------- oldest first


async def test_available_credit_pays_oldest_credit_note_first(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        newer = await make_credit_note(s, w.org, w.alice, 3_000, now - timedelta(days=1))
        older = await make_credit_note(s, w.org, w.alice, 2_000, now - timedelta(days=30))
        newest = await make_credit_note(s, w.org, w.alice, 9_000, now)
        invoice = await make_invoice(s, w.org, w.alice, 4_000, now)

        made = await credit.apply_available_credit(s, w.org, invoice, now, automatic=True)

        assert [(a.credit_note_id, a.amount) for a in made] == [
            (older.id, 2_000),
            (newer.id, 2_000),
        ]
        assert all(a.kind == AllocationKind.AUTOMATIC for a in made)
        assert invoice.status == InvoiceStatus.PAID
        assert older.credit_note_status == CreditNoteStatus.CONSUMED
        assert newer.credit_remaining == 1_000 and newest.credit_remaining == 9_000
        # A paid invoice takes no more credit.
        assert await credit.apply_available_credit(s, w.org, invoice, now, automatic=True) == []


async def test_new_credit_note_pays_oldest_outstanding_invoice_first(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        upcoming = await make_invoice(s, w.org, w.alice, 3_000, now, due=date(2026, 9, 1))
        overdue = await make_invoice(s, w.org, w.alice, 1_000, now, due=date(2026, 7, 1))
        due = await make_invoice(s, w.org, w.alice, 1_500, now, due=date(2026, 8, 15))
        processing = await make_invoice(s, w.org, w.alice, 500, now, due=date(2026, 6, 1))
        processing.status = InvoiceStatus.PROCESSING
        teams = await make_invoice(s, w.org, w.team, 500, now, due=date(2026, 6, 1))
        await s.flush()
        note = await credit.issue_credit_note(
            s, w.org, w.alice, 3_500, "Goodwill", now, origin="MANUAL", actor_user_id=w.admin_id
        )

        made = await credit.after_finalize(s, w.org, note, now, apply_credit=True, automatic=False)

        assert [(a.invoice_id, a.amount) for a in made] == [
            (overdue.id, 1_000),
            (due.id, 1_500),
            (upcoming.id, 1_000),
        ]
        assert all(a.kind == AllocationKind.MANUAL for a in made)
        assert overdue.status == due.status == InvoiceStatus.PAID
        assert upcoming.status == InvoiceStatus.UPCOMING and upcoming.balance_due == 2_000
        assert processing.credit_applied == 0 and teams.credit_applied == 0
        assert note.credit_note_status == CreditNoteStatus.CONSUMED


async def test_after_finalize_follows_the_apply_credit_decision(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 1_000, now)
        invoice = await make_invoice(s, w.org, w.alice, 2_500, now)

        assert await credit.after_finalize(s, w.org, invoice, now, False, True) == []
        assert invoice.credit_applied == 0
        made = await credit.after_finalize(s, w.org, invoice, now, True, True)
        assert [(a.credit_note_id, a.amount, a.kind) for a in made] == [
            (note.id, 1_000, AllocationKind.AUTOMATIC)
        ]
        assert invoice.balance_due == 1_500 and invoice.status == InvoiceStatus.DUE


async def test_credit_never_expires(db: Sessions, clock: FixedClock) -> None:
    now = clock.now()
    two_years_ago = now - timedelta(days=731)
    async with db() as s, s.begin():
        w = await make_world(s, now)
        ancient = await make_credit_note(s, w.org, w.alice, 1_200, two_years_ago)
        invoice = await make_invoice(s, w.org, w.alice, 1_200, now)

        made = await credit.apply_available_credit(s, w.org, invoice, now, automatic=True)

        assert [a.credit_note_id for a in made] == [ancient.id]
        assert invoice.status == InvoiceStatus.PAID


# --------------------------------------------------------------------------- create credit


async def test_issue_credit_note_numbers_the_credit_note_series(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        first = await credit.issue_credit_note(
            s, w.org, w.team, 2_500, "Overpayment of INV-000003", now, origin="OVERPAYMENT"
        )
        second = await credit.issue_credit_note(
            s, w.org, w.team, 100, "Refund of payment 7", now, origin="REFUND", source_payment_id=7
        )

        assert (first.number, second.number) == ("CN-000001", "CN-000002")
        assert w.org.next_credit_note_number == 3
        assert first.document_type == DocumentType.CREDIT_NOTE
        assert first.status == InvoiceStatus.PAID and first.total == -2_500
        assert first.credit_note_status == CreditNoteStatus.AVAILABLE
        assert (first.origin, second.origin, second.source_payment_id) == (
            "OVERPAYMENT",
            "REFUND",
            7,
        )
        lines = list(await s.scalars(select(LineItem).where(LineItem.invoice_id == first.id)))
        assert [(li.kind, li.amount, li.description) for li in lines] == [
            (LineKind.CREDIT, -2_500, "Overpayment of INV-000003")
        ]
        assert await credit.available_credit(s, w.team.id) == 2_600
        notes = await credit.credit_notes_of_account(s, w.org, w.team.id)
        assert [n.id for n in notes] == [first.id, second.id]
        assert EventType.CREDIT_NOTE_CREATED in await event_types(s, credit_note_id=first.id)
        with pytest.raises(ValidationError, match="greater than zero"):
            await credit.issue_credit_note(s, w.org, w.team, 0, "Nothing", now, origin="MANUAL")


# --------------------------------------------------------------------------- move credit line


async def test_move_credit_line_onto_an_outstanding_invoice(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        w.org.next_credit_note_number = 41
        pending, (_charge, credit_line) = await make_pending(
            s, w.org, w.alice, [10_000, -3_000], now, due=date(2026, 9, 1), tax_rate_ppm=100_000
        )
        target = await make_invoice(s, w.org, w.alice, 5_000, now, tax_rate_ppm=100_000)
        assert target.total == 5_500

        note, allocation = await credit.move_credit_line(
            s, w.org, credit_line.id, target.id, now, w.admin_id
        )

        assert note.number == "CN-000041" and w.org.next_credit_note_number == 42
        assert note.document_type == DocumentType.CREDIT_NOTE and note.origin == "MOVED_LINE"
        assert (note.subtotal, note.tax, note.total) == (-3_000, -300, -3_300)
        assert credit_line.invoice_id == note.id and credit_line.moved_from_invoice_id == pending.id
        assert (pending.subtotal, pending.tax, pending.total) == (10_000, 1_000, 11_000)
        assert allocation.kind == AllocationKind.MANUAL and allocation.amount == 3_300
        assert allocation.invoice_id == target.id and allocation.created_by_user_id == w.admin_id
        assert target.balance_due == 2_200 and target.status == InvoiceStatus.DUE
        assert note.credit_note_status == CreditNoteStatus.CONSUMED
        assert EventType.LINE_ITEM_MOVED in await event_types(s, invoice_id=pending.id)


async def test_moved_credit_beyond_the_balance_stays_available(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        pending, (credit_line,) = await make_pending(
            s, w.org, w.alice, [-8_000], now, due=date(2026, 9, 1)
        )
        target = await make_invoice(s, w.org, w.alice, 5_000, now)

        note, allocation = await credit.move_credit_line(s, w.org, credit_line.id, target.id, now)

        assert allocation.amount == 5_000 and target.status == InvoiceStatus.PAID
        assert note.credit_remaining == 3_000
        assert note.credit_note_status == CreditNoteStatus.AVAILABLE
        assert pending.total == 0


async def test_move_credit_line_refusals(db: Sessions, clock: FixedClock) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        pending, (charge, credit_line) = await make_pending(
            s, w.org, w.alice, [1_000, -500], now, due=date(2026, 9, 1)
        )
        other_pending, _ = await make_pending(
            s, w.org, w.alice, [1_000], now, due=date(2026, 10, 1)
        )
        team_invoice = await make_invoice(s, w.org, w.team, 1_000, now)
        target = await make_invoice(s, w.org, w.alice, 1_000, now)

        with pytest.raises(ValidationError, match="is a charge"):
            await credit.move_credit_line(s, w.org, charge.id, target.id, now)
        with pytest.raises(InvalidStateError, match="upcoming, due or overdue"):
            await credit.move_credit_line(s, w.org, credit_line.id, other_pending.id, now)
        with pytest.raises(ValidationError, match="own account"):
            await credit.move_credit_line(s, w.org, credit_line.id, team_invoice.id, now)
        assert credit_line.invoice_id == pending.id and pending.total == 500
        assert w.org.next_credit_note_number == 1


# --------------------------------------------------------------------------- void


async def test_void_is_refused_while_credit_is_allocated(db: Sessions, clock: FixedClock) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 5_000, now)
        invoice = await make_invoice(s, w.org, w.alice, 2_000, now)
        allocation = await credit.allocate(s, w.org, note.id, invoice.id, 2_000, now)

        with pytest.raises(InvalidStateError, match=rf"\$20.00 on {invoice.number}") as refused:
            await credit.void_credit_note(s, w.org, note.id, now, w.admin_id)
        assert refused.value.extensions["invoice_ids"] == [invoice.id]
        assert note.status == InvoiceStatus.PAID

        await credit.remove_allocation(s, w.org, allocation.id, now, w.admin_id)
        voided = await credit.void_credit_note(s, w.org, note.id, now, w.admin_id)

        assert voided.status == InvoiceStatus.VOID and voided.voided_at == now
        assert voided.credit_note_status == CreditNoteStatus.VOID
        assert voided.number == "CN-000001" and voided.credit_remaining == 0
        assert await credit.available_credit(s, w.alice.id) == 0
        assert invoice.status == InvoiceStatus.DUE
        assert EventType.INVOICE_VOIDED in await event_types(s, invoice_id=note.id)
        with pytest.raises(InvalidStateError, match="already void"):
            await credit.void_credit_note(s, w.org, note.id, now, w.admin_id)


# --------------------------------------------------------------------------- plan change


async def _paid_plan_period(
    s: AsyncSession,
    w: World,
    sub: PlanSubscription,
    start: date,
    end: date,
    amount: int,
    now: datetime,
    *,
    paid: bool = True,
) -> Invoice:
    invoice = await make_invoice(s, w.org, w.alice, amount, now, line_kind=LineKind.PLAN)
    line = await s.scalar(select(LineItem).where(LineItem.invoice_id == invoice.id))
    assert line is not None
    line.plan_subscription_id, line.period_start, line.period_end = sub.id, start, end
    if paid:
        invoice.amount_paid = invoice.total
        settle(s, invoice, w.org, now)
    await s.flush()
    return invoice


async def _subscription(s: AsyncSession, w: World, now: datetime) -> PlanSubscription:
    template = PlanTemplate(
        organization_id=w.org.id,
        name="Hot desk",
        price=31_000,
        interval=PlanInterval.MONTHLY,
        deposit=50_000,
        created_at=now,
    )
    s.add(template)
    await s.flush()
    sub = PlanSubscription(
        organization_id=w.org.id,
        account_id=w.alice.id,
        template_id=template.id,
        name="Hot desk",
        price=31_000,
        interval=PlanInterval.MONTHLY,
        start_date=date(2026, 8, 1),
        billed_through=date(2026, 11, 1),
        created_at=now,
    )
    s.add(sub)
    await s.flush()
    return sub


async def test_plan_shortened_credits_paid_periods_after_the_new_end(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        sub = await _subscription(s, w, now)
        await _paid_plan_period(s, w, sub, date(2026, 8, 1), date(2026, 8, 31), 31_000, now)
        await _paid_plan_period(s, w, sub, date(2026, 9, 1), date(2026, 9, 30), 31_000, now)
        # October is invoiced but not paid: its charge stays, no credit (rules §5.3).
        await _paid_plan_period(
            s, w, sub, date(2026, 10, 1), date(2026, 10, 31), 31_000, now, paid=False
        )

        result = await credit.credit_for_plan_change(
            s, w.org, sub, date(2026, 8, 20), deposit_return=50_000
        )

        # Aug 21–31 unused: 310.00 / 31 × 11 = 110.00; September in full; the deposit.
        assert [(line.amount, line.period_start, line.period_end) for line in result.lines] == [
            (-11_000, date(2026, 8, 21), date(2026, 8, 31)),
            (-31_000, date(2026, 9, 1), date(2026, 9, 30)),
            (-50_000, None, None),
        ]
        assert result.amount == 92_000
        assert all(line.plan_subscription_id == sub.id for line in result.lines)
        assert "2026-08-21" in result.lines[0].description

        no_periods = await credit.credit_for_plan_change(
            s, w.org, sub, date(2026, 8, 20), credit_unused_periods=False
        )
        assert no_periods.amount == 0 and no_periods.lines == []
        w.org.credit_unused_plan_periods = False
        assert (await credit.credit_for_plan_change(s, w.org, sub, date(2026, 8, 20))).amount == 0


async def test_plan_shortened_twice_never_credits_a_day_twice(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        sub = await _subscription(s, w, now)
        await _paid_plan_period(s, w, sub, date(2026, 9, 1), date(2026, 9, 30), 30_000, now)
        first = await credit.credit_for_plan_change(s, w.org, sub, date(2026, 9, 20))
        assert first.amount == 10_000  # Sep 21–30: 300.00 / 30 × 10
        # The caller places that credit; emulate it on a pending invoice.
        _pending, (line,) = await make_pending(
            s, w.org, w.alice, [first.lines[0].amount], now, due=date(2026, 10, 1)
        )
        line.plan_subscription_id = sub.id
        line.period_start, line.period_end = first.lines[0].period_start, first.lines[0].period_end
        await s.flush()

        second = await credit.credit_for_plan_change(s, w.org, sub, date(2026, 9, 10))

        assert second.amount == 10_000  # Sep 11–20 only
        assert (await credit.credit_for_plan_change(s, w.org, sub, date(2026, 9, 25))).amount == 0


async def test_credit_notes_of_account_filters_by_status(db: Sessions, clock: FixedClock) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        used = await make_credit_note(s, w.org, w.bob, 500, now - timedelta(days=2))
        free = await make_credit_note(s, w.org, w.bob, 700, now)
        invoice = await make_invoice(s, w.org, w.bob, 500, now)
        await credit.allocate(s, w.org, used.id, invoice.id, 500, now)

        available = await credit.credit_notes_of_account(
            s, w.org, w.bob.id, status=CreditNoteStatus.AVAILABLE
        )
        assert [n.id for n in available] == [free.id]
        assert [n.id for n in await credit.credit_notes_of_account(s, w.org, w.bob.id)] == [
            used.id,
            free.id,
        ]
        assert await credit.available_credit(s, w.bob.id) == 700


async def test_plan_change_credit_lands_on_the_next_pending_invoice(
    db: Sessions, clock: FixedClock
) -> None:
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        sub = await _subscription(s, w, now)
        await _paid_plan_period(s, w, sub, date(2026, 9, 1), date(2026, 9, 30), 30_000, now)

        placed = await credit.apply_plan_change_credit(
            s, w.org, sub, date(2026, 9, 20), now, deposit_return=5_000, actor_user_id=w.admin_id
        )

        assert [(li.kind, li.amount, li.period_start) for li in placed] == [
            (LineKind.CREDIT, -10_000, date(2026, 9, 21)),
            (LineKind.CREDIT, -5_000, None),
        ]
        pending = await s.get(Invoice, placed[0].invoice_id)
        assert pending is not None and pending.status == InvoiceStatus.PENDING
        assert pending.due_date == date(2026, 9, 1) and pending.total == -15_000
        assert placed[1].invoice_id == pending.id


async def test_finalization_applies_credit_through_the_hook(
    db: Sessions, clock: FixedClock
) -> None:
    from services import invoices

    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        assert credit.after_finalize in invoices.AFTER_FINALIZE
        note = await make_credit_note(s, w.org, w.alice, 5_500, now - timedelta(days=400))
        manual, _ = await make_pending(s, w.org, w.alice, [5_000], now, due=date(2026, 9, 1))
        automatic, _ = await make_pending(s, w.org, w.alice, [1_000], now, due=date(2026, 8, 10))
        declined, _ = await make_pending(s, w.org, w.alice, [700], now, due=date(2026, 10, 1))

        await invoices.finalize(s, w.org, manual, now, manual=True, apply_credit=True)
        await invoices.finalize(s, w.org, automatic, now, manual=False, apply_credit=True)
        await invoices.finalize(s, w.org, declined, now, manual=True, apply_credit=False)

        made = await credit.allocations_of(s, w.org, credit_note_id=note.id)
        assert [(a.invoice_id, a.amount, a.kind) for a in made] == [
            (manual.id, 5_000, AllocationKind.MANUAL),
            (automatic.id, 500, AllocationKind.AUTOMATIC),
        ]
        assert manual.status == InvoiceStatus.PAID
        assert automatic.status == InvoiceStatus.DUE and automatic.balance_due == 500
        assert declined.credit_applied == 0 and declined.status == InvoiceStatus.DUE
        assert note.credit_note_status == CreditNoteStatus.CONSUMED
