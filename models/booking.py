"""Bookings of rooms and desks: only what billing needs to know of them."""

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, UtcDateTime, created_column, enum_check, id_column, org_column
from models.enums import BookingStatus


class Booking(Base):
    __tablename__ = "bookings"
    __table_args__ = (
        enum_check("status", BookingStatus),
        CheckConstraint("ends_at > starts_at", name="positive_duration"),
        CheckConstraint("price >= 0", name="price"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    account_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    booked_by_user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    resource_name: Mapped[str] = mapped_column(String(200), nullable=False)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    price: Mapped[int] = mapped_column(BigId, nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False, default=BookingStatus.CONFIRMED)
    created_at: Mapped[datetime] = created_column()
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
