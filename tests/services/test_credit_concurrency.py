"""Credit is never double-spent under concurrent requests (rules §5.7), on PostgreSQL.

Fifty allocations race for one $100 credit note, each in its own session and
transaction. The account row lock serializes them, so whatever subset wins, the
live allocations add up to the credit note's ``credit_allocated`` and never exceed
its credit. SQLite serializes whole write transactions, which proves nothing here.
"""

from __future__ import annotations

import asyncio
import random
from datetime import date

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database import create_engine, create_sessionmaker
from models import CreditAllocation, CreditNoteStatus, Invoice, Organization
from services import credit
from services.clock import FixedClock
from services.errors import DomainError
from tests.services.test_credit import make_credit_note, make_invoice, make_world

Sessions = async_sessionmaker[AsyncSession]


async def test_fifty_simultaneous_allocations_never_overspend_a_credit_note(
    engine: AsyncEngine, db: Sessions, clock: FixedClock
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row-lock races need PostgreSQL; SQLite serializes whole transactions")
    now = clock.now()
    async with db() as s, s.begin():
        w = await make_world(s, now)
        note = await make_credit_note(s, w.org, w.alice, 10_000, now)
        invoices = [
            await make_invoice(s, w.org, w.alice, 4_000, now, due=date(2026, 8, day))
            for day in (1, 5, 10, 15, 20, 25)
        ]
    org_id, note_id = w.org.id, note.id
    invoice_ids = [inv.id for inv in invoices]
    rng = random.Random(20260815)
    attempts = [(rng.choice(invoice_ids), rng.randint(500, 1_000)) for _ in range(50)]

    # Fifty sessions at once need fifty connections: the app's pool (20 + 10, a 2 s
    # wait) would time some out under a loaded machine, which tests the pool, not the
    # locks. The racers get an engine of their own, large enough for all of them.
    racers = create_engine(
        engine.url.render_as_string(hide_password=False),
        pool_size=len(attempts), max_overflow=0, pool_timeout=60,
    )  # fmt: skip
    racing = create_sessionmaker(racers)

    async def attempt(invoice_id: int, amount: int) -> int:
        async with racing() as session, session.begin():
            org = await session.get(Organization, org_id)
            assert org is not None
            try:
                await credit.allocate(session, org, note_id, invoice_id, amount, now)
            except DomainError:
                return 0
            return amount

    try:
        won = await asyncio.gather(*(attempt(i, a) for i, a in attempts))
    finally:
        await racers.dispose()

    async with db() as s:
        fresh = await s.get(Invoice, note_id)
        assert fresh is not None
        live = await s.scalar(
            select(func.coalesce(func.sum(CreditAllocation.amount), 0)).where(
                CreditAllocation.credit_note_id == note_id, CreditAllocation.removed_at.is_(None)
            )
        )
        assert live == fresh.credit_allocated == sum(won)
        assert live <= 10_000
        # Demand (≈ $375) far exceeds the credit, so the race must have both winners
        # and losers, and the winners must have used the credit up to the last $10.
        assert 0 < sum(1 for a in won if a) < len(attempts)
        assert fresh.credit_remaining < 1_000
        status = (
            CreditNoteStatus.CONSUMED if fresh.credit_remaining == 0 else CreditNoteStatus.AVAILABLE
        )
        assert fresh.credit_note_status == status
        for invoice_id in invoice_ids:
            target = await s.get(Invoice, invoice_id)
            assert target is not None
            into = await s.scalar(
                select(func.coalesce(func.sum(CreditAllocation.amount), 0)).where(
                    CreditAllocation.invoice_id == invoice_id,
                    CreditAllocation.removed_at.is_(None),
                )
            )
            assert target.credit_applied == int(into or 0) <= target.total
