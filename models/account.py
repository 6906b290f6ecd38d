"""Who logs in (users) and who pays (accounts: a user's own, or a team's)."""

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, created_column, enum_check, id_column, org_column
from models.enums import AccountKind, Role


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("organization_id", "email"),
        UniqueConstraint("organization_id", "external_subject"),
        enum_check("role", Role),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[str] = mapped_column(String(24), nullable=False, default=Role.MEMBER)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    # The identity provider's `sub` for this person, when sign-in matches on it.
    external_subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = created_column()


class Account(Base):
    """The payer. A USER account belongs to one user; a TEAM account has members."""

    __tablename__ = "accounts"
    __table_args__ = (
        enum_check("kind", AccountKind),
        # A user has one personal account; a team account belongs to no single user.
        CheckConstraint(
            "(kind = 'USER' AND user_id IS NOT NULL) OR (kind = 'TEAM' AND user_id IS NULL)",
            name="owner_matches_kind",
        ),
        UniqueConstraint("user_id"),
        # Lets invoices, payments and allocations pin (account, organization) pairs.
        UniqueConstraint("id", "organization_id"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    kind: Mapped[str] = mapped_column(String(24), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    autopay: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    default_payment_method_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The member may turn off upcoming-invoice reminders (never receipts).
    reminders: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    created_at: Mapped[datetime] = created_column()


class TeamMembership(Base):
    __tablename__ = "team_memberships"
    __table_args__ = (UniqueConstraint("team_account_id", "user_id"),)

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    team_account_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = created_column()
