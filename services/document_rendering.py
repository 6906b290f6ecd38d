"""Drawing a ``services.documents.Document``: HTML from the Jinja2 templates in
``services/templates``, PDF from that HTML by WeasyPrint (rules §18).

Both are pure functions of the document: no clock, no random ids. The PDF's
creation and modification dates are the document's own (finalized, last changed) and
its file identifier is derived from the document's id and last change, so the same
rows always give the same bytes. Nothing is fetched while drawing: the stylesheet is
inlined and the logo is a ``data:`` URI, and the URL fetcher refuses every other kind
of address. ``render_pdf`` is CPU work of tens of milliseconds a page; callers on an
event loop run it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import date, datetime
from pathlib import Path

import jinja2
import weasyprint
from weasyprint.urls import URLFetcher

from services import money
from services.documents import Document, DocumentTooLargeError

# WeasyPrint embeds font subsets made by fontTools, which stamps each subset's ``head``
# table with the time of the render unless SOURCE_DATE_EPOCH (the reproducible-builds
# convention) fixes it: without this the same document differs from second to second.
# Set once, before any thread runs; an operator's own value is kept.
os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01T00:00:00Z

TEMPLATES = Path(__file__).with_name("templates")
# Past the line cap of services.documents this can only be reached by very long
# descriptions; it bounds the work of one render either way.
MAX_PAGES = 40

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

_LABELS = {
    "PAYMENT": "Payment",
    "CREDIT_APPLIED": "Credit applied from",
    "ALLOCATED": "Applied to invoice",
    "REFUNDED": "Refunded",
}
_ORIGINS = {
    "REFUND": "Refund of a payment",
    "OVERPAYMENT": "Overpayment",
    "MOVED_LINE": "Credit moved from another invoice",
}


def _title(doc: Document) -> str:
    if doc.is_draft:
        return "Draft invoice"
    kind = "Credit note" if doc.is_credit_note else "Invoice"
    return f"{kind} {doc.number}" if doc.number else kind


def _percent(ppm: int) -> str:
    return f"{money.tax_rate_percent(ppm)}%"


def _day(value: date | None) -> str:
    return value.isoformat() if value is not None else ""


def _logo_uri(doc: Document) -> str | None:
    issuer = doc.issuer
    if issuer.logo is None or issuer.logo_media_type is None:
        return None
    return f"data:{issuer.logo_media_type};base64,{base64.b64encode(issuer.logo).decode()}"


def _w3c(instant: datetime) -> str:
    return instant.replace(microsecond=0).isoformat()


def render_html(doc: Document) -> str:
    """The document as one self-contained HTML page."""
    currency = doc.currency

    def amount(minor: int) -> str:
        return money.format_amount(minor, currency)

    created = doc.finalized_at or doc.created_at
    return _environment.get_template("document.html.j2").render(
        doc=doc,
        title=_title(doc),
        stamp="VOID" if doc.is_void else "DRAFT" if doc.is_draft else None,
        origin=_ORIGINS.get(doc.origin or "", None),
        logo_uri=_logo_uri(doc),
        stylesheet=(TEMPLATES / "document.css").read_text(encoding="utf-8"),
        amount=amount,
        percent=_percent,
        day=_day,
        label=_LABELS,
        credit=-doc.total,
        created=_w3c(created),
        modified=_w3c(doc.updated_at),
    )


def pdf_identifier(doc: Document) -> bytes:
    """The PDF's file identifier: the same for the same document in the same state."""
    seed = f"deskbill:{doc.organization_id}:{doc.invoice_id}:{doc.updated_at.isoformat()}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32].encode()


def render_pdf(doc: Document) -> bytes:
    """The document as PDF; DocumentTooLargeError past ``MAX_PAGES`` pages."""
    fetcher = URLFetcher(allowed_protocols={"data"}, fail_on_errors=True)
    rendered = weasyprint.HTML(string=render_html(doc), url_fetcher=fetcher).render()
    if len(rendered.pages) > MAX_PAGES:
        raise DocumentTooLargeError(
            f"This document would run to {len(rendered.pages)} pages; at most {MAX_PAGES} "
            "are drawn. Export its lines instead: /exports/invoice-items.csv."
        )
    pdf: bytes = rendered.write_pdf(pdf_identifier=pdf_identifier(doc))
    return pdf
