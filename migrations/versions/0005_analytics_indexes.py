"""Indexes for the analytics figures: receivables aging reads open invoices by account,
outstanding credit reads credit notes by account; both partial indexes carry the
columns those figures sum (INCLUDE, on PostgreSQL) so they are index-only scans.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "status IN ('UPCOMING', 'DUE', 'OVERDUE', 'PROCESSING')"
_CREDIT_NOTE = "document_type = 'CREDIT_NOTE'"


def upgrade() -> None:
    op.create_index(
        "ix_invoices_open_by_account",
        "invoices",
        ["organization_id", "account_id"],
        postgresql_include=["due_date", "total", "amount_paid", "credit_applied", "document_type"],
        postgresql_where=sa.text(_OPEN),
        sqlite_where=sa.text(_OPEN),
    )
    op.create_index(
        "ix_invoices_credit_notes_by_account",
        "invoices",
        ["organization_id", "account_id"],
        postgresql_include=["total", "credit_allocated", "credit_refunded", "status", "issue_date"],
        postgresql_where=sa.text(_CREDIT_NOTE),
        sqlite_where=sa.text(_CREDIT_NOTE),
    )


def downgrade() -> None:
    op.drop_index("ix_invoices_credit_notes_by_account", table_name="invoices")
    op.drop_index("ix_invoices_open_by_account", table_name="invoices")
