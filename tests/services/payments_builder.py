"""Test data for the payment, refund and webhook tests, written as plain model rows
(organization, accounts with a Stripe customer and saved card, finalized invoices
with a line and totals) so these tests do not depend on the invoice engine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import (
    Account,
    AccountKind,
    DocumentType,
    Event,
    Invoice,
    InvoiceStatus,
    LineItem,
    LineKind,
    Organization,
    Payment,
    Refund,
    User,
)
from services.clock import FixedClock


@dataclass
class World:
    db: async_sessionmaker[AsyncSession]
    clock: FixedClock
    org: Organization

    @property
    def now(self) -> datetime:
        return self.clock.now()

    async def account(
        self,
        name: str = "Ada",
        *,
        customer: str | None = None,
        card: str | None = None,
        autopay: bool = True,
    ) -> Account:
        async with self.db() as session, session.begin():
            count = await session.scalar(select(func.count(User.id)))
            user = User(
                organization_id=self.org.id,
                email=f"member{count}@example.com",
                name=name,
                created_at=self.now,
            )
            session.add(user)
            await session.flush()
            account = Account(
                organization_id=self.org.id,
                kind=AccountKind.USER,
                name=name,
                email=user.email,
                user_id=user.id,
                autopay=autopay,
                stripe_customer_id=customer,
                default_payment_method_id=card,
                created_at=self.now,
            )
            session.add(account)
        return account

    async def invoice(
        self,
        account: Account,
        total: int = 10_000,
        *,
        status: InvoiceStatus = InvoiceStatus.DUE,
        due_date: date | None = None,
        amount_paid: int = 0,
    ) -> Invoice:
        """A finalized invoice with one charge line of ``total`` (no tax)."""
        due = due_date or self.now.date()
        async with self.db() as session, session.begin():
            org = await session.get(Organization, self.org.id)
            assert org is not None
            number = f"INV-{org.next_invoice_number:06d}"
            org.next_invoice_number += 1
            invoice = Invoice(
                organization_id=org.id,
                account_id=account.id,
                number=number,
                status=status,
                document_type=DocumentType.INVOICE,
                currency=org.currency,
                issue_date=due - timedelta(days=1),
                due_date=due,
                subtotal=total,
                tax=0,
                total=total,
                amount_paid=amount_paid,
                created_at=self.now,
                updated_at=self.now,
                finalized_at=self.now,
                became_due_at=(
                    self.now if status in (InvoiceStatus.DUE, InvoiceStatus.OVERDUE) else None
                ),
            )
            session.add(invoice)
            await session.flush()
            session.add(
                LineItem(
                    organization_id=org.id,
                    invoice_id=invoice.id,
                    kind=LineKind.CHARGE,
                    description="Hot desk, August",
                    quantity=1,
                    unit_price=total,
                    amount=total,
                    tax_rate_ppm=0,
                    tax=0,
                    total=total,
                    created_at=self.now,
                )
            )
        return invoice

    async def get(self, model: Any, ident: int) -> Any:
        async with self.db() as session:
            return await session.get(model, ident)

    async def payments(self, invoice_id: int | None = None) -> list[Payment]:
        async with self.db() as session:
            query = select(Payment).order_by(Payment.id)
            if invoice_id is not None:
                query = query.where(Payment.invoice_id == invoice_id)
            return list(await session.scalars(query))

    async def refunds(self) -> list[Refund]:
        async with self.db() as session:
            return list(await session.scalars(select(Refund).order_by(Refund.id)))

    async def credit_notes(self, account_id: int) -> list[Invoice]:
        async with self.db() as session:
            return list(
                await session.scalars(
                    select(Invoice)
                    .where(
                        Invoice.account_id == account_id,
                        Invoice.document_type == DocumentType.CREDIT_NOTE,
                    )
                    .order_by(Invoice.id)
                )
            )

    async def event_types(self, **where: int) -> list[str]:
        async with self.db() as session:
            query = select(Event.type).order_by(Event.id)
            for column, value in where.items():
                query = query.where(getattr(Event, column) == value)
            return list(await session.scalars(query))

    async def count(self, model: Any) -> int:
        async with self.db() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def make_world(
    db: async_sessionmaker[AsyncSession], clock: FixedClock, **policy: Any
) -> World:
    async with db() as session, session.begin():
        org = Organization(
            name="Hive Coworking",
            slug="hive",
            currency="USD",
            timezone="UTC",
            autopay_retry_hours=4,
            overdue_after_days=7,
            created_at=clock.now(),
            **policy,
        )
        session.add(org)
    return World(db=db, clock=clock, org=org)
