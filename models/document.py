"""The issuer of invoice documents: an organization's legal details, one version per
change.

Rows are only ever added. A finalized invoice or credit note is drawn with the
version in force when it was finalized, so changing the legal name, address, tax id
or logo later never changes a document already issued (rules §18.1).
"""

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, deferred, mapped_column

from models.base import Base, BigId, UtcDateTime, id_column, org_column

# The image types a logo may be; anything else could not be drawn safely.
LOGO_MEDIA_TYPES = ("image/png", "image/jpeg")
MAX_LOGO_BYTES = 200 * 1024


class DocumentIssuer(Base):
    __tablename__ = "document_issuers"
    __table_args__ = (
        CheckConstraint("(logo IS NULL) = (logo_media_type IS NULL)", name="logo_has_media_type"),
        CheckConstraint(
            "logo_media_type IS NULL OR logo_media_type IN ('image/png', 'image/jpeg')",
            name="logo_media_type_valid",
        ),
        # The version in force at an instant: the newest one from before it.
        Index("ix_document_issuers_org_valid_from", "organization_id", "valid_from", "id"),
    )

    id: Mapped[int] = id_column()
    organization_id: Mapped[int] = org_column()
    legal_name: Mapped[str] = mapped_column(String(200), nullable=False)
    address: Mapped[str] = mapped_column(String(1000), nullable=False, default="")
    tax_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    # Deferred and raising: a version's logo bytes are read only by code that asks
    # for them by name (a document, or whether there is one), never by accident.
    logo: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True), raiseload=True)
    logo_media_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    created_by_user_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
