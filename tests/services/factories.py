"""Builders shared by the service tests: an organization with its policy, accounts,
and small readers that look at the database the way an auditor would.

Each builder runs in its own committed transaction, like a real request would, and
returns detached objects (the session factory keeps attributes after commit).
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import models
from models import (
    Account,
    AccountKind,
    Event,
    Invoice,
    LineItem,
    Organization,
    Payment,
    PaymentMethod,
    PaymentStatus,
    PaymentType,
)
from services import accounts, policy
from services.clock import FixedClock
from services.invoice_status import settle

Sessions = async_sessionmaker[AsyncSession]
_slugs = itertools.count(1)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An aware UTC instant."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def d(year: int, month: int, day: int) -> date:
    return date(year, month, day)


async def make_org(db: Sessions, clock: FixedClock, **settings: Any) -> Organization:
    async with db.begin() as session:
        return await policy.create_organization(
            session, "Hive Coworking", f"hive-{next(_slugs)}", "USD", clock.now(), **settings
        )


async def make_account(
    db: Sessions, org: Organization, clock: FixedClock, name: str = "Ada Lovelace"
) -> Account:
    async with db.begin() as session:
        user = await accounts.create_user(
            session,
            org,
            email=f"{name.split()[0].lower()}{next(_slugs)}@example.com",
            name=name,
            now=clock.now(),
        )
        return await accounts.create_account(
            session, org, kind=AccountKind.USER, user=user, now=clock.now()
        )


async def fresh_org(session: AsyncSession, org: Organization) -> Organization:
    found = await session.get(Organization, org.id, populate_existing=True)
    assert found is not None
    return found


async def invoices_of(db: Sessions, account_id: int) -> list[Invoice]:
    async with db() as session:
        rows = await session.scalars(
            select(Invoice).where(Invoice.account_id == account_id).order_by(Invoice.id)
        )
        return list(rows)


async def invoice(db: Sessions, invoice_id: int) -> Invoice:
    async with db() as session:
        found = await session.get(Invoice, invoice_id)
        assert found is not None
        return found


async def lines_of(db: Sessions, invoice_id: int) -> list[LineItem]:
    async with db() as session:
        rows = await session.scalars(
            select(LineItem).where(LineItem.invoice_id == invoice_id).order_by(LineItem.id)
        )
        return list(rows)


async def event_types(db: Sessions, **filters: Any) -> list[str]:
    async with db() as session:
        query = select(Event.type).order_by(Event.id)
        for column, value in filters.items():
            query = query.where(getattr(Event, column) == value)
        return list(await session.scalars(query))


async def row_counts(db: Sessions) -> dict[str, int]:
    """Rows per table: two identical snapshots mean nothing was written between them."""
    counts: dict[str, int] = {}
    async with db() as session:
        for table in models.Base.metadata.sorted_tables:
            counts[table.name] = int(
                await session.scalar(select(func.count()).select_from(table)) or 0
            )
    return counts


async def record_payment(db: Sessions, invoice_id: int, amount: int, clock: FixedClock) -> Payment:
    """A succeeded offline payment written straight to the tables, then the invoice
    settled (the payment service is not under test here)."""
    async with db.begin() as session:
        target = await session.get(Invoice, invoice_id)
        assert target is not None
        payment = Payment(
            organization_id=target.organization_id,
            account_id=target.account_id,
            invoice_id=target.id,
            amount=amount,
            applied_amount=amount,
            currency=target.currency,
            status=PaymentStatus.SUCCEEDED,
            type=PaymentType.MANUAL,
            method=PaymentMethod.CASH,
            created_at=clock.now(),
            updated_at=clock.now(),
            succeeded_at=clock.now(),
        )
        session.add(payment)
        target.amount_paid += amount
        await session.flush()
        org = await session.get(Organization, target.organization_id)
        assert org is not None
        settle(session, target, org, clock.now())
        return payment
