"""Idempotency records for money-moving mutations, and processed gateway webhooks."""

from datetime import datetime
from typing import Any

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, created_column, id_column, org_column
from models.event import Json


class IdempotencyRecord(Base):
    """The first result of a mutation called with an idempotency key."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("organization_id", "key"),)

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    operation: Mapped[str] = mapped_column(String(64), nullable=False)
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    response: Mapped[dict[str, Any]] = mapped_column(Json, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_column()


class ProcessedWebhook(Base):
    """A gateway event id seen once; its row is written with the event's effect."""

    __tablename__ = "processed_webhooks"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(120), nullable=False)
    received_at: Mapped[datetime] = created_column()
