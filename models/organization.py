"""The tenant: a coworking operator, its currency and its invoice policy."""

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UtcDateTime, created_column, enum_check, id_column
from models.enums import AdditionalChargesPolicy


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint("billing_day BETWEEN 1 AND 28", name="billing_day_range"),
        CheckConstraint("due_today_grace_minutes >= 0", name="grace_non_negative"),
        CheckConstraint("overdue_after_days >= 0", name="overdue_non_negative"),
        CheckConstraint("autopay_retry_hours >= 0", name="retry_non_negative"),
        CheckConstraint(
            "default_tax_rate_ppm BETWEEN 0 AND 1000000", name="default_tax_rate_range"
        ),
        CheckConstraint("next_invoice_number >= 1", name="invoice_number_positive"),
        CheckConstraint("next_credit_note_number >= 1", name="credit_note_number_positive"),
        enum_check("additional_charges", AdditionalChargesPolicy),
        CheckConstraint("reminder_days BETWEEN 0 AND 60", name="reminder_days_range"),
        CheckConstraint(
            "(sandbox AND test_clock_at IS NOT NULL) OR (NOT sandbox AND test_clock_at IS NULL)",
            name="sandbox_has_test_clock",
        ),
    )

    id: Mapped[int] = id_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(80), unique=True, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)

    # The invoice policy (rules §3). Tax rates are parts per million of the amount:
    # a percent with four decimals (8.2500 %) is exactly 82,500 ppm, so no float.
    billing_day: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    timezone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    additional_charges: Mapped[str] = mapped_column(
        String(24), nullable=False, default=AdditionalChargesPolicy.NEXT_PENDING_INVOICE
    )
    due_today_grace_minutes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    overdue_after_days: Mapped[int] = mapped_column(Integer, nullable=False, default=7)
    auto_apply_credit: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    credit_unused_plan_periods: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    block_bookings_when_overdue: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False
    )
    autopay_default: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    autopay_retry_hours: Mapped[int] = mapped_column(Integer, nullable=False, default=4)
    default_tax_rate_ppm: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # A space for trying things out on a clock of its own (rules §9.4): a sandbox's
    # now is ``test_clock_at``, moved only forward by advanceTestClock; a live
    # organization has none (its clock is the wall clock).
    sandbox: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    test_clock_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    # E-mail notifications: the reminder's lead in days (0 = no reminders), the kinds
    # turned off (comma-separated NotificationKind names), and the sender's addresses.
    reminder_days: Mapped[int] = mapped_column(
        Integer, nullable=False, default=2, server_default="2"
    )
    notifications_off: Mapped[str] = mapped_column(
        String(500), nullable=False, default="", server_default=""
    )
    email_from: Mapped[str | None] = mapped_column(String(254), nullable=True)
    email_reply_to: Mapped[str | None] = mapped_column(String(254), nullable=True)

    # Gap-free number series, advanced only under this row's lock in the
    # transaction that finalizes the invoice (a sequence would leave gaps on rollback).
    next_invoice_number: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    next_credit_note_number: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    created_at: Mapped[datetime] = created_column()
    policy_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
