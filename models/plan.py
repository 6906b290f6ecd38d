"""Plan templates (what a space sells) and plan subscriptions (an account on a plan)."""

from datetime import date, datetime

from sqlalchemy import Boolean, CheckConstraint, Date, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, created_column, enum_check, id_column, org_column
from models.enums import PlanInterval, PlanStatus


class PlanTemplate(Base):
    __tablename__ = "plan_templates"
    __table_args__ = (
        enum_check("interval", PlanInterval),
        CheckConstraint("price >= 0 AND setup_fee >= 0 AND deposit >= 0", name="amounts"),
        CheckConstraint("tax_rate_ppm IS NULL OR tax_rate_ppm BETWEEN 0 AND 1000000", name="tax"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    price: Mapped[int] = mapped_column(BigId, nullable=False)
    interval: Mapped[str] = mapped_column(String(24), nullable=False)
    setup_fee: Mapped[int] = mapped_column(BigId, nullable=False, default=0)
    deposit: Mapped[int] = mapped_column(BigId, nullable=False, default=0)
    tax_rate_ppm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = created_column()


class PlanSubscription(Base):
    """An account on a plan. Periods are billed in advance up to ``billed_through``."""

    __tablename__ = "plan_subscriptions"
    __table_args__ = (
        enum_check("interval", PlanInterval),
        enum_check("status", PlanStatus),
        CheckConstraint("end_date IS NULL OR end_date >= start_date", name="dates"),
        CheckConstraint("price >= 0", name="price"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    account_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    template_id: Mapped[int] = mapped_column(BigId, ForeignKey("plan_templates.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    price: Mapped[int] = mapped_column(BigId, nullable=False)
    interval: Mapped[str] = mapped_column(String(24), nullable=False)
    tax_rate_ppm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start_date: Mapped[date] = mapped_column(Date, nullable=False)
    # Inclusive last day of service; NULL runs until cancelled.
    end_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    # Exclusive end of the last period put on an invoice (NULL: nothing billed yet).
    billed_through: Mapped[date | None] = mapped_column(Date, nullable=True)
    status: Mapped[str] = mapped_column(String(24), nullable=False, default=PlanStatus.ACTIVE)
    created_at: Mapped[datetime] = created_column()
