"""Invoice and credit-note documents (rules §18): the issuer's legal details, and
everything one document shows, read from the rows in one place.

``update_issuer`` adds a new version of the organization's legal details (legal name,
address, tax id, optional logo) under the organization row lock; versions are never
edited, so a document finalized earlier keeps the details it was issued with.
``load_document`` reads one invoice or credit note with its lines, settlement and
issuer into a ``Document`` of plain values; ``services.document_rendering`` turns that
into HTML and PDF. Nothing here reads a clock: a document is a function of its rows.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from PIL import Image, UnidentifiedImageError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from models import (
    Account,
    CreditAllocation,
    DocumentIssuer,
    DocumentType,
    Invoice,
    InvoiceStatus,
    LineItem,
    Organization,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
)
from models.document import LOGO_MEDIA_TYPES, MAX_LOGO_BYTES
from services import events
from services.clock import local_date
from services.errors import InvalidStateError, ValidationError
from services.locks import lock_organization

ISSUER_UPDATED = "organization.document_issuer_updated"
MAX_LEGAL_NAME = 200
MAX_ADDRESS = 1000
MAX_TAX_ID = 64
# A logo is drawn a few centimetres wide; more pixels than this is a photo by mistake
# (and a decompression bomb is refused long before).
MAX_LOGO_PIXELS = 2000
# A document is for people; an invoice with more lines than this is read as the
# invoice-items export instead (rules §18.4).
MAX_DOCUMENT_LINES = 500
_PIL_MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}


class DocumentTooLargeError(InvalidStateError):
    """A document beyond the bounds of rules §18.4; the export serves its lines."""


# -- the issuer ------------------------------------------------------------------------


def check_logo(data: bytes) -> str:
    """The media type of a logo that may be drawn: a PNG or JPEG of at most
    ``MAX_LOGO_BYTES`` and ``MAX_LOGO_PIXELS`` on each side; VALIDATION otherwise."""
    if not data:
        raise ValidationError("The logo is empty; send a PNG or JPEG image.")
    if len(data) > MAX_LOGO_BYTES:
        raise ValidationError(
            f"The logo is {len(data):,} bytes; it may be at most {MAX_LOGO_BYTES:,} bytes."
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            width, height = image.size
            image.verify()  # a truncated or corrupt file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ValidationError("The logo is not a readable PNG or JPEG image.") from None
    media_type = _PIL_MEDIA_TYPES.get(kind or "")
    if media_type is None or media_type not in LOGO_MEDIA_TYPES:
        raise ValidationError(f"The logo is a {kind} image; send a PNG or JPEG.")
    if width > MAX_LOGO_PIXELS or height > MAX_LOGO_PIXELS:
        raise ValidationError(
            f"The logo is {width}×{height} pixels; it may be at most "
            f"{MAX_LOGO_PIXELS}×{MAX_LOGO_PIXELS}."
        )
    return media_type


def _text(value: str, field: str, cap: int, *, required: bool = False) -> str:
    clean = value.strip()
    if required and not clean:
        raise ValidationError(f"{field} may not be empty.")
    if len(clean) > cap:
        raise ValidationError(f"{field} is at most {cap} characters; got {len(clean)}.")
    if "\x00" in clean:
        raise ValidationError(f"{field} contains a NUL character, which no text may.")
    return clean


async def current_issuer(
    session: AsyncSession, organization_id: int, *, at: datetime | None = None
) -> DocumentIssuer | None:
    """The version of the legal details in force at ``at`` (the newest when None),
    without its logo bytes."""
    stmt = select(DocumentIssuer).where(DocumentIssuer.organization_id == organization_id)
    if at is not None:
        stmt = stmt.where(DocumentIssuer.valid_from <= at)
    stmt = stmt.order_by(DocumentIssuer.valid_from.desc(), DocumentIssuer.id.desc()).limit(1)
    found: DocumentIssuer | None = await session.scalar(stmt)
    return found


async def update_issuer(
    session: AsyncSession,
    org: Organization,
    now: datetime,
    *,
    actor_user_id: int | None = None,
    legal_name: str | None = None,
    address: str | None = None,
    tax_id: str | None = None,
    logo: bytes | None = None,
    remove_logo: bool = False,
) -> DocumentIssuer:
    """A new version of the legal details, with ``None`` meaning "as before"; the
    first version starts from the organization's name. Returns the version now in
    force (the previous one when nothing changed)."""
    if logo is not None and remove_logo:
        raise ValidationError("Send either a new logo or removeLogo, not both.")
    media_type = check_logo(logo) if logo is not None else None
    # The same row lock as policy changes and numbering: versions of one organization
    # are written one after the other.
    org = await lock_organization(session, org.id)
    previous = await session.scalar(
        select(DocumentIssuer)
        .where(DocumentIssuer.organization_id == org.id)
        .order_by(DocumentIssuer.valid_from.desc(), DocumentIssuer.id.desc())
        .limit(1)
        .options(undefer(DocumentIssuer.logo))
    )
    values: dict[str, Any] = {
        "legal_name": previous.legal_name if previous else org.name,
        "address": previous.address if previous else "",
        "tax_id": previous.tax_id if previous else "",
        "logo": previous.logo if previous else None,
        "logo_media_type": previous.logo_media_type if previous else None,
    }
    before = dict(values)
    if legal_name is not None:
        values["legal_name"] = _text(legal_name, "legalName", MAX_LEGAL_NAME, required=True)
    if address is not None:
        values["address"] = _text(address, "address", MAX_ADDRESS)
    if tax_id is not None:
        values["tax_id"] = _text(tax_id, "taxId", MAX_TAX_ID)
    if logo is not None:
        values["logo"], values["logo_media_type"] = logo, media_type
    if remove_logo:
        values["logo"], values["logo_media_type"] = None, None
    if previous is not None and values == before:
        return previous
    issuer = DocumentIssuer(
        organization_id=org.id, valid_from=now, created_by_user_id=actor_user_id, **values
    )
    session.add(issuer)
    await session.flush()
    changed = sorted(k for k in values if k != "logo_media_type" and values[k] != before[k])
    events.record(
        session,
        organization_id=org.id,
        type=ISSUER_UPDATED,
        at=now,
        actor_user_id=actor_user_id,
        # The logo itself stays out of the log: its digest says which one it was.
        changes={k: (_logo_digest(values[k]) if k == "logo" else values[k]) for k in changed},
        previous={k: (_logo_digest(before[k]) if k == "logo" else before[k]) for k in changed},
    )
    return issuer


def _logo_digest(data: bytes | None) -> str | None:
    return None if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


# -- one document ----------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    legal_name: str
    address: str
    tax_id: str
    logo: bytes | None
    logo_media_type: str | None


@dataclass(frozen=True)
class Line:
    description: str
    quantity: int
    unit_price: int
    tax_rate_ppm: int
    tax: int
    total: int
    period_start: date | None
    period_end: date | None


@dataclass(frozen=True)
class Settlement:
    """One payment into an invoice, credit applied to it, or (on a credit note) where
    its credit went: an allocation onto an invoice or a refund."""

    kind: str  # PAYMENT, CREDIT_APPLIED, ALLOCATED, REFUNDED
    on: date
    reference: str  # the method, the credit note's number, the invoice's number
    amount: int
    status: str | None = None


@dataclass(frozen=True)
class Document:
    invoice_id: int
    organization_id: int
    account_id: int
    document_type: str  # DRAFT, INVOICE, CREDIT_NOTE
    status: str
    credit_note_status: str | None
    number: str | None
    currency: str
    issue_date: date | None
    due_date: date
    period_start: date | None
    period_end: date | None
    subtotal: int
    tax: int
    total: int
    amount_paid: int
    credit_applied: int
    balance_due: int
    credit_allocated: int
    credit_refunded: int
    credit_remaining: int
    origin: str | None
    source_invoice_number: str | None
    created_at: datetime
    updated_at: datetime
    finalized_at: datetime | None
    voided_at: datetime | None
    bill_to_name: str
    bill_to_email: str | None
    issuer: Issuer
    lines: tuple[Line, ...]
    settlements: tuple[Settlement, ...]

    @property
    def is_credit_note(self) -> bool:
        return self.document_type == DocumentType.CREDIT_NOTE

    @property
    def is_draft(self) -> bool:
        return self.document_type == DocumentType.DRAFT

    @property
    def is_void(self) -> bool:
        return self.status == InvoiceStatus.VOID

    @property
    def taxes_by_rate(self) -> list[tuple[int, int, int]]:
        """(rate in ppm, taxable amount, tax) per rate, lowest rate first."""
        groups: dict[int, tuple[int, int]] = {}
        for line in self.lines:
            amount, tax = groups.get(line.tax_rate_ppm, (0, 0))
            groups[line.tax_rate_ppm] = (amount + line.total - line.tax, tax + line.tax)
        return [(rate, amount, tax) for rate, (amount, tax) in sorted(groups.items())]


async def load_document(
    session: AsyncSession, organization_id: int, invoice_id: int
) -> Document | None:
    """The document of invoice ``invoice_id`` of the organization, or None when the
    organization has no such invoice. DocumentTooLargeError past the line cap."""
    found = (
        await session.execute(
            select(Invoice, Account.name, Account.email, Organization.name, Organization.timezone)
            .join(Account, Account.id == Invoice.account_id)
            .join(Organization, Organization.id == Invoice.organization_id)
            .where(Invoice.id == invoice_id, Invoice.organization_id == organization_id)
        )
    ).one_or_none()
    if found is None:
        return None
    inv, account_name, account_email, org_name, timezone = found
    count = await session.scalar(
        select(func.count()).select_from(LineItem).where(LineItem.invoice_id == inv.id)
    )
    if (count or 0) > MAX_DOCUMENT_LINES:
        raise DocumentTooLargeError(
            f"This invoice has {count:,} lines; a document shows at most "
            f"{MAX_DOCUMENT_LINES:,}. Export them instead: /exports/invoice-items.csv."
        )
    lines = (
        await session.scalars(
            select(LineItem).where(LineItem.invoice_id == inv.id).order_by(LineItem.id)
        )
    ).all()
    # A finalized document is drawn with the details in force when it was issued; a
    # draft, with today's.
    in_force = select(DocumentIssuer).where(DocumentIssuer.organization_id == organization_id)
    if inv.finalized_at is not None:
        in_force = in_force.where(DocumentIssuer.valid_from <= inv.finalized_at)
    version = await session.scalar(
        in_force.order_by(DocumentIssuer.valid_from.desc(), DocumentIssuer.id.desc())
        .limit(1)
        .options(undefer(DocumentIssuer.logo))
    )
    issuer = (
        Issuer(version.legal_name, version.address, version.tax_id, version.logo,
               version.logo_media_type)
        if version is not None
        else Issuer(org_name, "", "", None, None)
    )  # fmt: skip
    source_number = None
    if inv.source_invoice_id is not None:
        source_number = await session.scalar(
            select(Invoice.number).where(Invoice.id == inv.source_invoice_id)
        )
    settlements = (
        await _credit_note_settlements(session, inv, timezone)
        if inv.is_credit_note
        else await _invoice_settlements(session, inv, timezone)
    )
    return Document(
        invoice_id=inv.id, organization_id=inv.organization_id, account_id=inv.account_id,
        document_type=inv.document_type, status=inv.status,
        credit_note_status=inv.credit_note_status, number=inv.number, currency=inv.currency,
        issue_date=inv.issue_date, due_date=inv.due_date, period_start=inv.period_start,
        period_end=inv.period_end, subtotal=inv.subtotal, tax=inv.tax, total=inv.total,
        amount_paid=inv.amount_paid, credit_applied=inv.credit_applied,
        balance_due=inv.balance_due, credit_allocated=inv.credit_allocated,
        credit_refunded=inv.credit_refunded, credit_remaining=inv.credit_remaining,
        origin=inv.origin, source_invoice_number=source_number, created_at=inv.created_at,
        updated_at=inv.updated_at, finalized_at=inv.finalized_at, voided_at=inv.voided_at,
        bill_to_name=account_name, bill_to_email=account_email, issuer=issuer,
        lines=tuple(
            Line(li.description, li.quantity, li.unit_price, li.tax_rate_ppm, li.tax, li.total,
                 li.period_start, li.period_end)
            for li in lines
        ),
        settlements=tuple(settlements),
    )  # fmt: skip


async def _invoice_settlements(
    session: AsyncSession, inv: Invoice, timezone: str
) -> list[Settlement]:
    payments = await session.scalars(
        select(Payment)
        .where(Payment.invoice_id == inv.id, Payment.status == PaymentStatus.SUCCEEDED)
        .order_by(Payment.id)
    )
    found = [
        Settlement(
            "PAYMENT",
            pay.received_on or local_date(pay.succeeded_at or pay.created_at, timezone),
            pay.method,
            pay.applied_amount,
        )
        for pay in payments
    ]
    credit = await session.execute(
        select(CreditAllocation, Invoice.number)
        .join(Invoice, Invoice.id == CreditAllocation.credit_note_id)
        .where(CreditAllocation.invoice_id == inv.id, CreditAllocation.removed_at.is_(None))
        .order_by(CreditAllocation.id)
    )
    found += [
        Settlement("CREDIT_APPLIED", local_date(a.created_at, timezone), number or "", a.amount)
        for a, number in credit
    ]
    return found


async def _credit_note_settlements(
    session: AsyncSession, note: Invoice, timezone: str
) -> list[Settlement]:
    allocations = await session.execute(
        select(CreditAllocation, Invoice.number)
        .join(Invoice, Invoice.id == CreditAllocation.invoice_id)
        .where(CreditAllocation.credit_note_id == note.id, CreditAllocation.removed_at.is_(None))
        .order_by(CreditAllocation.id)
    )
    found = [
        Settlement("ALLOCATED", local_date(a.created_at, timezone), number or "", a.amount)
        for a, number in allocations
    ]
    refunds = await session.scalars(
        select(Refund)
        .where(
            Refund.credit_note_id == note.id,
            Refund.status.in_((RefundStatus.PENDING, RefundStatus.SUCCEEDED)),
        )
        .order_by(Refund.id)
    )
    found += [
        Settlement(
            "REFUNDED", local_date(r.created_at, timezone), r.method, r.amount, status=r.status
        )
        for r in refunds
    ]
    return found
