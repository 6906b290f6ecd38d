"""The event log: one row per state change, written in the changing transaction.

It is the outbox for real-time delivery and the public audit trail: subscribers and
pollers read it by its monotonically increasing ``id`` (the cursor).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, created_column, id_column, org_column

Json = JSON().with_variant(JSONB(), "postgresql")


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_org_id", "organization_id", "id"),
        Index("ix_events_account_id", "account_id", "id"),
        Index("ix_events_invoice_id", "invoice_id", "id"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    # Plain ids, not foreign keys: the log outlives what it speaks of.
    account_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    invoice_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    payment_id: Mapped[int | None] = mapped_column(BigId, nullable=True, index=True)
    credit_note_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    refund_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    actor_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(Json, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_column()
