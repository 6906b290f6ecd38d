"""test clocks: a sandbox organization's own "now" (rules §9.4)

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RULE = "(sandbox AND test_clock_at IS NOT NULL) OR (NOT sandbox AND test_clock_at IS NULL)"


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(
            sa.Column("test_clock_at", models.base.UtcDateTime(timezone=True), nullable=True)
        )
    # Sandboxes made before test clocks existed start theirs where they were created.
    op.execute("UPDATE organizations SET test_clock_at = created_at WHERE sandbox")
    with op.batch_alter_table("organizations") as batch:
        batch.create_check_constraint(op.f("ck_organizations_sandbox_has_test_clock"), _RULE)


def downgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.drop_constraint(op.f("ck_organizations_sandbox_has_test_clock"), type_="check")
        batch.drop_column("test_clock_at")
