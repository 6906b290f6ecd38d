"""Row locks taken in one fixed order so concurrent work never deadlocks:
the account row first, then invoices in id order, then the organization row (only
for the gap-free number series at finalization).

On PostgreSQL these are ``SELECT … FOR UPDATE``; on SQLite the whole write
transaction already holds the database's write lock (``BEGIN IMMEDIATE``), so the
same calls simply read the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, Invoice, Organization
from services.errors import NotFoundError


async def lock_account(session: AsyncSession, organization_id: int, account_id: int) -> Account:
    account = await session.scalar(
        select(Account)
        .where(Account.id == account_id, Account.organization_id == organization_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if account is None:
        raise NotFoundError(f"No account {account_id} in this organization.")
    return account


async def try_lock_account(session: AsyncSession, account_id: int) -> Account | None:
    """Lock an account unless another worker holds it (billing runs skip, not wait)."""
    return await session.scalar(
        select(Account)
        .where(Account.id == account_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )


async def lock_invoices(session: AsyncSession, invoice_ids: Iterable[int]) -> list[Invoice]:
    ids = sorted(set(invoice_ids))
    if not ids:
        return []
    rows = await session.scalars(
        select(Invoice)
        .where(Invoice.id.in_(ids))
        .order_by(Invoice.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def lock_invoice(session: AsyncSession, organization_id: int, invoice_id: int) -> Invoice:
    invoice = await session.scalar(
        select(Invoice)
        .where(Invoice.id == invoice_id, Invoice.organization_id == organization_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if invoice is None:
        raise NotFoundError(f"No invoice {invoice_id} in this organization.")
    return invoice


async def lock_organization(session: AsyncSession, organization_id: int) -> Organization:
    """Serialize the number series. ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: every
    insert that references the organization holds a KEY SHARE lock on its row, which
    FOR UPDATE would wait on, deadlocking two finalizations that both inserted rows."""
    org = await session.scalar(
        select(Organization)
        .where(Organization.id == organization_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if org is None:
        raise NotFoundError("No such organization.")
    return org


def ordered(invoices: Sequence[Invoice]) -> list[Invoice]:
    return sorted(invoices, key=lambda inv: inv.id)
