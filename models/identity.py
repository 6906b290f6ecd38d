"""Credentials that are not a person's password: API keys of an organization, and the
secrets an installation keeps in its own database (the demo's signing secret)."""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, UtcDateTime, created_column, enum_check, id_column, org_column
from models.enums import Role


class ApiKey(Base):
    """A key for a BI tool or an integration. Only a hash of the secret is kept: the
    key itself is shown once, when it is created."""

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("prefix"),
        enum_check("role", Role, name="api_key_role_valid"),
        # A name picks one live key (the CLI revokes by name); revoked names may repeat.
        Index(
            "ix_api_keys_live_name",
            "organization_id",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    prefix: Mapped[str] = mapped_column(String(32), nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    role: Mapped[str] = mapped_column(String(24), nullable=False)
    created_by_user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_column()
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class InstanceSecret(Base):
    """A secret generated once for this database and kept with it (by name)."""

    __tablename__ = "instance_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = created_column()
