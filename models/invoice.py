"""Invoices (credit notes are finalized invoices with a negative total), their line
items, and the allocations that move credit from a credit note onto an invoice.

The balance rules of rules §5.7 are CHECK constraints here, so that no bug in the
engine can ever write a double-spent credit note or an over-paid invoice.
"""

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
    UniqueConstraint,
    column,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, UtcDateTime, created_column, enum_check, id_column, org_column
from models.enums import AllocationKind, CreditNoteStatus, DocumentType, InvoiceStatus, LineKind

Amount = BigInteger
_OPEN = "status IN ('UPCOMING', 'DUE', 'OVERDUE', 'PROCESSING')"
_CREDIT_NOTE = "document_type = 'CREDIT_NOTE'"


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        enum_check("status", InvoiceStatus),
        enum_check("document_type", DocumentType),
        CheckConstraint(
            "credit_note_status IS NULL OR credit_note_status IN ('AVAILABLE','CONSUMED','VOID')",
            name="credit_note_status_valid",
        ),
        CheckConstraint("subtotal + tax = total", name="total_is_sum"),
        CheckConstraint(
            "amount_paid >= 0 AND credit_applied >= 0 AND credit_allocated >= 0"
            " AND credit_refunded >= 0",
            name="applied_non_negative",
        ),
        # Payments + credit allocated into an invoice never exceed its total.
        CheckConstraint("total < 0 OR amount_paid + credit_applied <= total", name="not_overpaid"),
        # Allocated + refunded from a credit note never exceed its credit.
        CheckConstraint(
            "total >= 0 OR (credit_allocated + credit_refunded <= -total"
            " AND amount_paid = 0 AND credit_applied = 0)",
            name="credit_not_overspent",
        ),
        CheckConstraint(
            "total < 0 OR (credit_allocated = 0 AND credit_refunded = 0)",
            name="only_credit_notes_give_credit",
        ),
        CheckConstraint(
            "(status = 'PENDING') = (document_type = 'DRAFT') OR status = 'VOID'",
            name="draft_iff_pending",
        ),
        UniqueConstraint("organization_id", "number"),
        UniqueConstraint("id", "account_id"),
        ForeignKeyConstraint(
            ["account_id", "organization_id"],
            ["accounts.id", "accounts.organization_id"],
            ondelete="CASCADE",
        ),
        # rules §4.2: at most one PENDING invoice per account and due date (a due-today
        # invoice for additional charges is kept apart from the billing-date one).
        Index(
            "uq_invoices_one_pending_per_due_date",
            "account_id",
            "due_date",
            "due_today",
            unique=True,
            postgresql_where=text("status = 'PENDING'"),
            sqlite_where=text("status = 'PENDING'"),
        ),
        Index("ix_invoices_org_status_due", "organization_id", "status", "due_date"),
        Index("ix_invoices_account_status", "account_id", "status"),
        Index("ix_invoices_finalize_at", "finalize_at"),
        # The read lists' sort orders, each ending in the id so a keyset page is an
        # index range scan with no sort. NUMBER and ISSUE_DATE sort on the same
        # coalesce() the list uses (drafts have neither; they sort first ascending),
        # with an inline literal so the query's expression matches the index.
        Index("ix_invoices_org_due_id", "organization_id", "due_date", "id"),
        Index("ix_invoices_org_created_id", "organization_id", "created_at", "id"),
        Index("ix_invoices_org_total_id", "organization_id", "total", "id"),
        Index(
            "ix_invoices_org_number_id",
            "organization_id",
            func.coalesce(column("number"), literal_column("''")),
            "id",
        ),
        Index(
            "ix_invoices_org_issue_id",
            "organization_id",
            func.coalesce(column("issue_date"), literal_column("'1970-01-01'")),
            "id",
        ),
        Index("ix_invoices_account_due_id", "account_id", "due_date", "id"),
        # Analytics: receivables aging and outstanding credit read only open invoices
        # or only credit notes, grouped by account; these partial indexes cover every
        # column those figures read, so PostgreSQL answers from the index alone.
        Index(
            "ix_invoices_open_by_account",
            "organization_id",
            "account_id",
            postgresql_include=[
                "due_date",
                "total",
                "amount_paid",
                "credit_applied",
                "document_type",
            ],
            postgresql_where=text(_OPEN),
            sqlite_where=text(_OPEN),
        ),
        Index(
            "ix_invoices_credit_notes_by_account",
            "organization_id",
            "account_id",
            postgresql_include=[
                "total",
                "credit_allocated",
                "credit_refunded",
                "status",
                "issue_date",
            ],
            postgresql_where=text(_CREDIT_NOTE),
            sqlite_where=text(_CREDIT_NOTE),
        ),
        # The number filter is a prefix match (LIKE 'INV-00%'): PostgreSQL needs
        # pattern ordering for that under a non-C collation.
        Index(
            "ix_invoices_org_number_prefix",
            "organization_id",
            "number",
            postgresql_ops={"number": "text_pattern_ops"},
        ),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    number: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(24), nullable=False, default=InvoiceStatus.PENDING)
    document_type: Mapped[str] = mapped_column(
        String(24), nullable=False, default=DocumentType.DRAFT
    )
    credit_note_status: Mapped[str | None] = mapped_column(String(24), nullable=True)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)

    issue_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    due_date: Mapped[date] = mapped_column(Date, nullable=False)
    period_start: Mapped[date | None] = mapped_column(Date, nullable=True)
    period_end: Mapped[date | None] = mapped_column(Date, nullable=True)

    subtotal: Mapped[int] = mapped_column(Amount, nullable=False, default=0)
    tax: Mapped[int] = mapped_column(Amount, nullable=False, default=0)
    total: Mapped[int] = mapped_column(Amount, nullable=False, default=0)
    # Money applied to this invoice by succeeded payments (the part within its total).
    amount_paid: Mapped[int] = mapped_column(Amount, nullable=False, default=0)
    # Credit allocated *into* this invoice by live allocations.
    credit_applied: Mapped[int] = mapped_column(Amount, nullable=False, default=0)
    # For a credit note: credit allocated *out* of it, and refunded from it.
    credit_allocated: Mapped[int] = mapped_column(Amount, nullable=False, default=0)
    credit_refunded: Mapped[int] = mapped_column(Amount, nullable=False, default=0)

    # When a pending invoice finalizes by itself: the start of its due date in the
    # organization's timezone, or last change + grace for a due-today invoice.
    finalize_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    due_today: Mapped[bool] = mapped_column(default=False, nullable=False)
    status_before_processing: Mapped[str | None] = mapped_column(String(24), nullable=True)
    # Where a credit note or trail invoice came from (REFUND, OVERPAYMENT, MOVED_LINE…).
    origin: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source_invoice_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("invoices.id", ondelete="SET NULL"), nullable=True
    )
    source_payment_id: Mapped[int | None] = mapped_column(BigId, nullable=True)

    autopay_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    autopay_retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()
    finalized_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    voided_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    became_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    became_overdue_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    @property
    def is_credit_note(self) -> bool:
        return self.document_type == DocumentType.CREDIT_NOTE

    @property
    def balance_due(self) -> int:
        """What is still owed; zero for credit notes and void invoices."""
        if self.total <= 0 or self.status == InvoiceStatus.VOID:
            return 0
        return self.total - self.amount_paid - self.credit_applied

    @property
    def credit_remaining(self) -> int:
        """Credit a credit note can still give (allocate or refund)."""
        if not self.is_credit_note or self.status == InvoiceStatus.VOID:
            return 0
        return -self.total - self.credit_allocated - self.credit_refunded


CREDIT_NOTE_STATUSES = tuple(CreditNoteStatus)


class LineItem(Base):
    __tablename__ = "line_items"
    __table_args__ = (
        enum_check("kind", LineKind),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("amount = quantity * unit_price", name="amount_is_product"),
        CheckConstraint("total = amount + tax", name="total_is_sum"),
        CheckConstraint("tax_rate_ppm BETWEEN 0 AND 1000000", name="tax_rate_range"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    invoice_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kind: Mapped[str] = mapped_column(String(24), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    unit_price: Mapped[int] = mapped_column(Amount, nullable=False)
    amount: Mapped[int] = mapped_column(Amount, nullable=False)
    tax_rate_ppm: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    tax: Mapped[int] = mapped_column(Amount, nullable=False, default=0)
    total: Mapped[int] = mapped_column(Amount, nullable=False)
    period_start: Mapped[date | None] = mapped_column(Date, nullable=True)
    period_end: Mapped[date | None] = mapped_column(Date, nullable=True)
    booking_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("bookings.id", ondelete="SET NULL"), nullable=True, index=True
    )
    plan_subscription_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("plan_subscriptions.id", ondelete="SET NULL"), nullable=True, index=True
    )
    # Set when a line was moved here from another invoice (rules §4.7, §5.6).
    moved_from_invoice_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = created_column()


class CreditAllocation(Base):
    """Credit moved from a credit note onto an invoice of the same account."""

    __tablename__ = "credit_allocations"
    __table_args__ = (
        enum_check("kind", AllocationKind),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("credit_note_id <> invoice_id", name="not_self"),
        # Both ends belong to the allocation's account: credit never crosses accounts.
        ForeignKeyConstraint(
            ["credit_note_id", "account_id"], ["invoices.id", "invoices.account_id"]
        ),
        ForeignKeyConstraint(["invoice_id", "account_id"], ["invoices.id", "invoices.account_id"]),
        Index("ix_credit_allocations_credit_note", "credit_note_id"),
        Index("ix_credit_allocations_invoice", "invoice_id"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    account_id: Mapped[int] = mapped_column(BigId, nullable=False, index=True)
    credit_note_id: Mapped[int] = mapped_column(BigId, nullable=False)
    invoice_id: Mapped[int] = mapped_column(BigId, nullable=False)
    amount: Mapped[int] = mapped_column(Amount, nullable=False)
    kind: Mapped[str] = mapped_column(String(24), nullable=False)
    created_by_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = created_column()
    removed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    removed_by_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
