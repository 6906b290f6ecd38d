"""Indexes for the read lists: every sort the invoice list offers, the account filter
and the payments list's default order become index range scans (no sort of the
whole table per page).

Revision ID: 0003
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES: list[tuple[str, str, list[str | sa.TextClause]]] = [
    ("ix_invoices_org_due_id", "invoices", ["organization_id", "due_date", "id"]),
    ("ix_invoices_org_created_id", "invoices", ["organization_id", "created_at", "id"]),
    ("ix_invoices_org_total_id", "invoices", ["organization_id", "total", "id"]),
    (
        "ix_invoices_org_number_id",
        "invoices",
        ["organization_id", sa.text("coalesce(number, '')"), "id"],
    ),
    (
        "ix_invoices_org_issue_id",
        "invoices",
        ["organization_id", sa.text("coalesce(issue_date, '1970-01-01')"), "id"],
    ),
    ("ix_invoices_account_due_id", "invoices", ["account_id", "due_date", "id"]),
    ("ix_payments_org_created_id", "payments", ["organization_id", "created_at", "id"]),
]


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns, unique=False)
    op.create_index(
        "ix_invoices_org_number_prefix",
        "invoices",
        ["organization_id", "number"],
        unique=False,
        postgresql_ops={"number": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_invoices_org_number_prefix", table_name="invoices")
    for name, table, _columns in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
