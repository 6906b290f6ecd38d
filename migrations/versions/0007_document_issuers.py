"""document issuers: an organization's legal details for invoice documents, one row per
version (legal name, address, tax id, optional logo)

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "document_issuers",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("organization_id", BigId, nullable=False),
        sa.Column("legal_name", sa.String(length=200), nullable=False),
        sa.Column("address", sa.String(length=1000), nullable=False),
        sa.Column("tax_id", sa.String(length=64), nullable=False),
        sa.Column("logo", sa.LargeBinary(), nullable=True),
        sa.Column("logo_media_type", sa.String(length=32), nullable=True),
        sa.Column("valid_from", models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("created_by_user_id", BigId, nullable=True),
        sa.CheckConstraint(
            "(logo IS NULL) = (logo_media_type IS NULL)",
            name=op.f("ck_document_issuers_logo_has_media_type"),
        ),
        sa.CheckConstraint(
            "logo_media_type IS NULL OR logo_media_type IN ('image/png', 'image/jpeg')",
            name=op.f("ck_document_issuers_logo_media_type_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_document_issuers_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_document_issuers")),
    )
    op.create_index(
        "ix_document_issuers_org_valid_from",
        "document_issuers",
        ["organization_id", "valid_from", "id"],
    )
    op.create_index(
        op.f("ix_document_issuers_organization_id"), "document_issuers", ["organization_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_document_issuers_organization_id"), table_name="document_issuers")
    op.drop_index("ix_document_issuers_org_valid_from", table_name="document_issuers")
    op.drop_table("document_issuers")
