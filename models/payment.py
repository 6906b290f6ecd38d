"""Payments into invoices (gateway or offline) and refunds drawn on credit notes."""

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, UtcDateTime, created_column, enum_check, id_column, org_column
from models.enums import PaymentMethod, PaymentStatus, PaymentType, RefundMethod, RefundStatus


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        enum_check("status", PaymentStatus),
        enum_check("type", PaymentType),
        enum_check("method", PaymentMethod),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("applied_amount BETWEEN 0 AND amount", name="applied_within_amount"),
        # rules §7.4: never refund more than the payment's unrefunded amount.
        CheckConstraint("refunded_amount BETWEEN 0 AND amount", name="refunds_within_amount"),
        ForeignKeyConstraint(["invoice_id", "account_id"], ["invoices.id", "invoices.account_id"]),
        # The payments list's default order, as a keyset range scan.
        Index("ix_payments_org_created_id", "organization_id", "created_at", "id"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    account_id: Mapped[int] = mapped_column(BigId, nullable=False, index=True)
    invoice_id: Mapped[int] = mapped_column(BigId, nullable=False, index=True)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The part of ``amount`` that paid the invoice; the rest became a credit note.
    applied_amount: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    overpayment_credit_note_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    type: Mapped[str] = mapped_column(String(24), nullable=False)
    method: Mapped[str] = mapped_column(String(24), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    gateway_payment_intent_id: Mapped[str | None] = mapped_column(
        String(255), nullable=True, unique=True
    )
    gateway_payment_method_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(120), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    created_by_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()
    succeeded_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        enum_check("status", RefundStatus),
        enum_check("method", RefundMethod),
        CheckConstraint("amount > 0", name="amount_positive"),
        ForeignKeyConstraint(
            ["credit_note_id", "account_id"], ["invoices.id", "invoices.account_id"]
        ),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    account_id: Mapped[int] = mapped_column(BigId, nullable=False, index=True)
    credit_note_id: Mapped[int] = mapped_column(BigId, nullable=False, index=True)
    payment_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("payments.id"), nullable=True, index=True
    )
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    method: Mapped[str] = mapped_column(String(24), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    gateway_refund_id: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    error_code: Mapped[str | None] = mapped_column(String(120), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()
