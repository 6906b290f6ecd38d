"""figure rollups: per-day revenue, collections and payments, open balances by due
date and by account, kept by PostgreSQL triggers (models/figures.py) and filled from
the ledger once here

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from models import figures

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KEYS = {
    "revenue_days": [sa.Column("day", sa.Date(), nullable=False)],
    "collection_days": [
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
    ],
    "payment_days": [
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("method", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
    ],
    "open_dues": [sa.Column("due_date", sa.Date(), nullable=False)],
    "open_accounts": [sa.Column("account_id", BigId, nullable=False)],
}
_MEASURES = {
    "revenue_days": figures.REVENUE_MEASURES,
    "collection_days": figures.COLLECTION_MEASURES,
    "payment_days": figures.PAYMENT_MEASURES,
    "open_dues": figures.OPEN_MEASURES,
    "open_accounts": figures.OPEN_MEASURES,
}


def upgrade() -> None:
    for name, keys in _KEYS.items():
        op.create_table(
            name,
            sa.Column("organization_id", BigId, nullable=False),
            *keys,
            *(sa.Column(m, sa.BigInteger(), nullable=False) for m in _MEASURES[name]),
            sa.Column("fresh", sa.Boolean(), nullable=False),
        )
        op.create_index(f"ix_{name}_key", name, ["organization_id", *(k.name for k in keys)])
        op.create_index(
            f"ix_{name}_fresh",
            name,
            ["organization_id"],
            postgresql_where=sa.text("fresh"),
            sqlite_where=sa.text("fresh"),
        )
    if op.get_bind().dialect.name == "postgresql":
        for statement in figures.install_statements():
            op.execute(statement)
        op.execute("SELECT deskbill_rebuild_figures(ARRAY(SELECT id FROM organizations))")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in figures.uninstall_statements():
            op.execute(statement)
    for name in reversed(list(_KEYS)):
        op.drop_table(name)
