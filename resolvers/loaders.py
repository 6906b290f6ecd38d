"""The DataLoader registry: one batched query per relation per request.

A fresh ``Loaders`` is built for every request (and after every mutation), so
nothing is cached across callers. Each batch opens its own short read session,
because loaders of different relations run concurrently.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from strawberry.dataloader import DataLoader

from models import (
    Account,
    Booking,
    CreditAllocation,
    DocumentType,
    Event,
    Invoice,
    InvoiceStatus,
    LineItem,
    Organization,
    Payment,
    Refund,
    TeamMembership,
    User,
)
from models.enums import OUTSTANDING_STATUSES
from resolvers import mapping
from resolvers.viewer import Viewer
from schema import types as t
from services.documents import current_issuer

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Loaders:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], viewer: Viewer) -> None:
        self._sessionmaker = sessionmaker
        self.viewer = viewer
        c = viewer.currency
        org = viewer.organization_id

        self.account = self._one(select(Account).where(Account.organization_id == org), Account.id,
                                 mapping.account)  # fmt: skip
        self.user = self._one(
            select(User).where(User.organization_id == org), User.id, mapping.user
        )
        self.invoice = self._one(
            select(Invoice).where(Invoice.organization_id == org), Invoice.id, mapping.invoice
        )
        self.credit_note = self._one(
            select(Invoice).where(
                Invoice.organization_id == org,
                Invoice.document_type == DocumentType.CREDIT_NOTE,
            ),
            Invoice.id,
            mapping.credit_note,
        )
        self.payment = self._one(
            select(Payment).where(Payment.organization_id == org), Payment.id, mapping.payment
        )
        self.booking = self._one(
            select(Booking).where(Booking.organization_id == org),
            Booking.id,
            lambda row: mapping.booking(row, c),
        )
        self.lines_by_invoice = self._many(
            select(LineItem).order_by(LineItem.id),
            LineItem.invoice_id,
            lambda row: mapping.line(row, c),
        )
        self.payments_by_invoice = self._many(
            select(Payment).order_by(Payment.id), Payment.invoice_id, mapping.payment
        )
        self.allocations_into = self._many(
            select(CreditAllocation).order_by(CreditAllocation.id),
            CreditAllocation.invoice_id,
            lambda row: mapping.allocation(row, c),
        )
        self.allocations_from = self._many(
            select(CreditAllocation).order_by(CreditAllocation.id),
            CreditAllocation.credit_note_id,
            lambda row: mapping.allocation(row, c),
        )
        self.refunds_by_payment = self._many(
            select(Refund).order_by(Refund.id), Refund.payment_id, mapping.refund
        )
        self.refunds_by_credit_note = self._many(
            select(Refund).order_by(Refund.id), Refund.credit_note_id, mapping.refund
        )
        self.refunds_by_invoice = self._many(
            select(Refund, Payment.invoice_id)
            .join(Payment, Payment.id == Refund.payment_id)
            .order_by(Refund.id),
            Payment.invoice_id,
            mapping.refund,
        )
        self.events_by_invoice = self._many(
            select(Event).order_by(Event.id), Event.invoice_id, mapping.event
        )
        self.members_by_team = self._many(
            select(User, TeamMembership.team_account_id)
            .join(TeamMembership, TeamMembership.user_id == User.id)
            .order_by(User.name, User.id),
            TeamMembership.team_account_id,
            mapping.user,
        )
        self.accounts_by_user: DataLoader[int, list[t.Account]] = DataLoader(self._accounts_by_user)
        self.available_credit: DataLoader[int, t.Money] = DataLoader(self._available_credit)
        self.balance_due_by_account: DataLoader[int, t.Money] = DataLoader(self._balance_due)
        self.invoice_policy: DataLoader[int, t.InvoicePolicy] = DataLoader(self._policy)
        self.document_issuer: DataLoader[int, t.DocumentIssuer | None] = DataLoader(
            self._document_issuer
        )

    # -- generic shapes -------------------------------------------------------

    def _one(
        self, base: Select[Any], key: Any, to_type: Callable[[Any], V]
    ) -> DataLoader[int, V | None]:
        async def load(keys: Sequence[int]) -> list[V | None]:
            rows = await self._scalars(base.where(key.in_(keys)))
            found = {getattr(row, key.key): to_type(row) for row in rows}
            return [found.get(k) for k in keys]

        return DataLoader(load)

    def _many(self, base: Any, key: Any, to_type: Callable[[Any], V]) -> DataLoader[int, list[V]]:
        """Rows grouped by ``key``; ``base`` may select (entity, key) or just the entity."""
        joined = len(base.column_descriptions) > 1

        async def load(keys: Sequence[int]) -> list[list[V]]:
            grouped: dict[int, list[V]] = defaultdict(list)
            async with self._sessionmaker() as session:
                result = await session.execute(base.where(key.in_(keys)))
                for row in result:
                    entity = row[0]
                    group = row[1] if joined else getattr(entity, key.key)
                    grouped[group].append(to_type(entity))
            return [grouped.get(k, []) for k in keys]

        return DataLoader(load)

    async def _scalars(self, stmt: Select[Any]) -> list[Any]:
        async with self._sessionmaker() as session:
            return list(await session.scalars(stmt))

    # -- bespoke --------------------------------------------------------------

    async def _accounts_by_user(self, keys: Sequence[int]) -> list[list[t.Account]]:
        org = self.viewer.organization_id
        personal = select(Account, Account.user_id.label("owner")).where(
            Account.organization_id == org, Account.user_id.in_(keys)
        )
        teams = (
            select(Account, TeamMembership.user_id.label("owner"))
            .join(TeamMembership, TeamMembership.team_account_id == Account.id)
            .where(Account.organization_id == org, TeamMembership.user_id.in_(keys))
        )
        grouped: dict[int, list[t.Account]] = defaultdict(list)
        async with self._sessionmaker() as session:
            for stmt in (personal, teams):
                for row, owner in await session.execute(stmt):
                    assert owner is not None
                    if self.viewer.can_see_account(row.id):
                        grouped[owner].append(mapping.account(row))
        return [grouped.get(k, []) for k in keys]

    async def _sum_by_account(self, keys: Sequence[int], amount: Any, *where: Any) -> list[t.Money]:
        stmt = (
            select(Invoice.account_id, func.coalesce(func.sum(amount), 0))
            .where(Invoice.account_id.in_(keys), *where)
            .group_by(Invoice.account_id)
        )
        async with self._sessionmaker() as session:
            sums = {acc: int(total) for acc, total in await session.execute(stmt)}
        return [mapping.money(sums.get(k, 0), self.viewer.currency) for k in keys]

    async def _available_credit(self, keys: Sequence[int]) -> list[t.Money]:
        remaining = -Invoice.total - Invoice.credit_allocated - Invoice.credit_refunded
        return await self._sum_by_account(
            keys,
            remaining,
            Invoice.document_type == DocumentType.CREDIT_NOTE,
            Invoice.status != InvoiceStatus.VOID,
        )

    async def _balance_due(self, keys: Sequence[int]) -> list[t.Money]:
        owed = Invoice.total - Invoice.amount_paid - Invoice.credit_applied
        statuses = [*OUTSTANDING_STATUSES, InvoiceStatus.PROCESSING]
        return await self._sum_by_account(
            keys,
            case((Invoice.total > 0, owed), else_=0),
            Invoice.status.in_(statuses),
        )

    async def _policy(self, keys: Sequence[int]) -> list[t.InvoicePolicy]:
        async with self._sessionmaker() as session:
            orgs = {o.id: o for o in await session.scalars(
                select(Organization).where(Organization.id.in_(keys)))}  # fmt: skip
            locked = set(
                await session.scalars(
                    select(Invoice.organization_id)
                    .where(Invoice.organization_id.in_(keys))
                    .group_by(Invoice.organization_id)
                )
            )
        return [mapping.invoice_policy(orgs[k], k in locked) for k in keys]

    async def _document_issuer(self, keys: Sequence[int]) -> list[t.DocumentIssuer | None]:
        # Only the viewer's organization is ever asked for (Organization is the viewer's).
        async with self._sessionmaker() as session:
            found = {k: await current_issuer(session, k) for k in keys}
        return [None if (row := found[k]) is None else mapping.document_issuer(row) for k in keys]
