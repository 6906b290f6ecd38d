"""notifications: one row per (event, recipient, kind), the log cursor, and the
organization's and account's notification settings

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KINDS = (
    "INVOICE_UPCOMING", "INVOICE_FINALIZED", "INVOICE_SENT", "PAYMENT_SUCCEEDED",
    "PAYMENT_FAILED", "AUTOPAY_RETRY_SCHEDULED", "CREDIT_NOTE_ISSUED", "REFUND_ISSUED",
    "ADMIN_AUTOPAY_FAILED", "ADMIN_OVERDUE_DIGEST",
)  # fmt: skip
_STATUSES = ("PENDING", "SENDING", "SENT", "FAILED", "NOT_SENT")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("organization_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("recipient", sa.String(length=254), nullable=False),
        sa.Column("recipient_user_id", BigId, nullable=True),
        sa.Column("account_id", BigId, nullable=True),
        sa.Column("invoice_id", BigId, nullable=True),
        sa.Column("payment_id", BigId, nullable=True),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("pay_link_expires_at", models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("pay_link_used_at", models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("pay_link_payment_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", models.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_notifications_attempts_non_negative")),
        sa.CheckConstraint(_in("kind", _KINDS), name=op.f("ck_notifications_kind_valid")),
        sa.CheckConstraint(_in("status", _STATUSES), name=op.f("ck_notifications_status_valid")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_notifications_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint(
            "event_id", "recipient", "kind", name=op.f("uq_notifications_event_id_recipient_kind")
        ),
    )
    op.create_index(op.f("ix_notifications_organization_id"), "notifications", ["organization_id"])
    op.create_index(op.f("ix_notifications_event_id"), "notifications", ["event_id"])
    op.create_index(op.f("ix_notifications_account_id"), "notifications", ["account_id"])
    op.create_index("ix_notifications_org_id", "notifications", ["organization_id", "id"])
    op.create_index("ix_notifications_status_next", "notifications", ["status", "next_attempt_at"])
    op.create_table(
        "notification_cursors",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", models.base.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_notification_cursors")),
    )
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(
            sa.Column("reminder_days", sa.Integer(), nullable=False, server_default="2")
        )
        batch.add_column(
            sa.Column("notifications_off", sa.String(length=500), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("email_from", sa.String(length=254), nullable=True))
        batch.add_column(sa.Column("email_reply_to", sa.String(length=254), nullable=True))
        batch.create_check_constraint(
            op.f("ck_organizations_reminder_days_range"), "reminder_days BETWEEN 0 AND 60"
        )
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("reminders", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("reminders")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_constraint(op.f("ck_organizations_reminder_days_range"), type_="check")
        batch.drop_column("email_reply_to")
        batch.drop_column("email_from")
        batch.drop_column("notifications_off")
        batch.drop_column("reminder_days")
    op.drop_table("notification_cursors")
    op.drop_index("ix_notifications_status_next", table_name="notifications")
    op.drop_index("ix_notifications_org_id", table_name="notifications")
    op.drop_index(op.f("ix_notifications_account_id"), table_name="notifications")
    op.drop_index(op.f("ix_notifications_event_id"), table_name="notifications")
    op.drop_index(op.f("ix_notifications_organization_id"), table_name="notifications")
    op.drop_table("notifications")
