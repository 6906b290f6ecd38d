"""Invoice and credit-note documents over real HTTP, on SQLite and PostgreSQL: the
PDF's text read back with pypdf, one page drawn to PNG with Debian's pdftoppm, the
same bytes on every download, the graph's access rules, and the issuer's details."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader

from app.auth import issue_token
from models import Account, Invoice, LineItem, Organization, User
from schema.ids import encode
from services import money
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api
from tests.conftest import IN_CI
from tests.world import NOW, World

ISSUER = """mutation($input: DocumentIssuerInput!) { updateDocumentIssuer(input: $input) {
  legalName address taxId hasLogo logoMediaType validFrom } }"""


def _png(width: int = 120, height: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _get(api: Api, path: str, token: str | None) -> tuple[int, bytes, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await api.client.get(path, headers=headers)
    return response.status_code, response.content, response.headers.get("content-type", "")


def _text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def _in_order(text: str, expected: list[str]) -> None:
    """Each expected piece appears, in this order (the reading order of the page)."""
    at = 0
    for piece in expected:
        found = text.find(piece, at)
        assert found >= 0, f"{piece!r} not found after position {at} in:\n{text}"
        at = found + len(piece)


async def _set_issuer(api: Api, world: World, **fields: object) -> dict[str, object]:
    body = await api.gql(ISSUER, {"input": fields}, token=world.tokens["admin"])
    assert "errors" not in body, body
    issuer: dict[str, object] = body["data"]["updateDocumentIssuer"]
    return issuer


async def test_a_member_downloads_a_correct_invoice_pdf(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = await _set_issuer(
        api, world, legalName="Harbour Works Ltd", address="1 Quay Street\nBristol BS1",
        taxId="GB123456789", logoBase64=base64.b64encode(_png()).decode(),
    )  # fmt: skip
    assert issuer["hasLogo"] is True and issuer["logoMediaType"] == "image/png"
    due = encode("Invoice", world.ids["due"])
    body = await api.gql(
        "query($id: ID!) { invoice(id: $id) { documentUrl } }", {"id": due},
        token=world.tokens["alice"],
    )  # fmt: skip
    url = body["data"]["invoice"]["documentUrl"]
    assert url == f"/documents/invoices/{due}.pdf"

    status, pdf, media = await _get(api, url, world.tokens["alice"])
    assert status == 200, pdf
    assert media == "application/pdf"
    # Meeting room 50.00 + Coffee 12.34 at 8.25 %: tax 4.13 + 1.02 (half-up per line).
    _in_order(_text(pdf), [
        "Harbour Works Ltd", "1 Quay Street", "Bristol BS1", "Tax id: GB123456789",
        "Invoice INV-000002", "Number", "INV-000002", "Issue date", "2026-08-01",
        "Due date", "2026-08-01", "Status", "DUE",
        "Billed to", "Alice",
        "Meeting room", "1", "$50.00", "8.25%", "$4.13", "$54.13",
        "Coffee", "1", "$12.34", "8.25%", "$1.02", "$13.36",
        "Subtotal", "$62.34", "Tax 8.25% on $62.34", "$5.15", "Total", "$67.49",
        "Payments", "$10.00", "Credit applied", "$15.00", "Balance due", "$42.49",
        "Payments and credit", "2026-08-15", "Payment CASH", "$10.00",
        "2026-08-15", "Credit applied from CN-000001", "$15.00",
    ])  # fmt: skip
    reader = PdfReader(io.BytesIO(pdf))
    assert reader.metadata is not None
    assert reader.metadata.title == "Invoice INV-000002"
    # The document's own instants, never the time of the download.
    assert reader.metadata.creation_date == NOW
    assert reader.metadata.modification_date == NOW
    assert len(reader.pages[0].images) == 1  # the logo

    again = await _get(api, url, world.tokens["admin"])
    assert again[1] == pdf  # the same rows, the same bytes
    # An hour later too: nothing in the file (fontTools' font subsets stamp the time
    # unless told otherwise) depends on when it was drawn.
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    assert (await _get(api, url, world.tokens["admin"]))[1] == pdf

    status, html, media = await _get(api, url.replace(".pdf", ".html"), world.tokens["alice"])
    assert status == 200 and media.startswith("text/html")
    page = html.decode()
    for piece in ("Invoice INV-000002", "Harbour Works Ltd", "$42.49", "data:image/png;base64,"):
        assert piece in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch


async def test_a_credit_note_shows_what_it_credited_and_where_its_credit_went(
    api: Api, world: World
) -> None:
    note = encode("Invoice", world.ids["credit_note"])
    body = await api.gql(
        "query($id: ID!) { creditNote(id: $id) { documentUrl } }", {"id": note},
        token=world.tokens["alice"],
    )  # fmt: skip
    url = body["data"]["creditNote"]["documentUrl"]
    assert url == f"/documents/credit-notes/{note}.pdf"
    status, pdf, _ = await _get(api, url, world.tokens["alice"])
    assert status == 200, pdf
    # Credit 50.00: 15.00 applied to INV-000002, 25.00 refunded to the card, 10.00 left.
    _in_order(_text(pdf), [
        "Harbour Works", "Credit note CN-000001", "CN-000001", "Issue date", "2026-08-02",
        "credit AVAILABLE", "Credited to", "Alice",
        "What this credit note credits", "Refund of a payment",
        "Refund of payment", "-$50.00",
        "Total", "-$50.00", "Credit", "$50.00", "Credit applied to invoices", "$15.00",
        "Credit refunded", "$25.00", "Credit remaining", "$10.00",
        "Where the credit went", "Applied to invoice INV-000002", "$15.00",
        "Refunded CARD", "$25.00",
    ])  # fmt: skip
    # Its id also reaches it under /documents/invoices/ (one id for life); an invoice
    # is no credit note.
    assert (await _get(api, f"/documents/invoices/{note}.pdf", world.tokens["alice"]))[0] == 200
    due = encode("Invoice", world.ids["due"])
    status, answer, _ = await _get(api, f"/documents/credit-notes/{due}.pdf",
                                   world.tokens["alice"])  # fmt: skip
    assert status == 404 and b"not a credit note" in answer


async def test_access_follows_the_graph(api: Api, world: World) -> None:
    alice_invoice = f"/documents/invoices/{encode('Invoice', world.ids['due'])}.pdf"
    team_invoice = f"/documents/invoices/{encode('Invoice', world.ids['team_invoice'])}.html"
    for who, path, expected in [
        ("alice", alice_invoice, 200),
        ("alice", team_invoice, 200),  # her team's
        ("admin", alice_invoice, 200),
        ("analyst", team_invoice, 200),  # reads the whole organization, as in the graph
        ("bob", alice_invoice, 404),  # another member's account: as if it did not exist
        ("bob", team_invoice, 404),
        ("mallory", alice_invoice, 404),  # another tenant
        ("rival_admin", alice_invoice, 404),
    ]:
        status, body, _ = await _get(api, path, world.tokens[who])
        assert status == expected, (who, path, body[:200])
        if expected == 404:
            assert b'"code":"NOT_FOUND"' in body
    assert (await _get(api, alice_invoice, None))[0] == 401
    assert (await _get(api, alice_invoice, "not-a-token"))[0] == 401
    for bad in ("nope", encode("Account", world.ids["alice_account"]), "A" * 500):
        assert (await _get(api, f"/documents/invoices/{bad}.pdf", world.tokens["admin"]))[0] == 404


def _png_of_first_page(pdf: bytes, tmp: Path) -> Image.Image:
    source = tmp / "document.pdf"
    source.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", "-singlefile", str(source),
         str(tmp / "page")],
        check=True, timeout=60,
    )  # fmt: skip
    return Image.open(tmp / "page.png").convert("RGB")


def _count(image: Image.Image, test: Callable[[int, int, int], bool]) -> int:
    data = image.tobytes()
    return sum(1 for i in range(0, len(data), 3) if test(data[i], data[i + 1], data[i + 2]))


async def test_a_void_invoice_says_so_across_the_page(
    api: Api, world: World, tmp_path: Path
) -> None:
    if shutil.which("pdftoppm") is None:
        if IN_CI:
            pytest.fail("pdftoppm is required under CI=true (apt-get install poppler-utils)")
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    bob_invoice = encode("Invoice", world.ids["bob_invoice"])
    voided = await api.gql(
        "mutation($id: ID!) { voidInvoice(invoiceId: $id) { status documentUrl } }",
        {"id": bob_invoice}, token=world.tokens["admin"],
    )  # fmt: skip
    assert voided["data"]["voidInvoice"]["status"] == "VOID", voided
    status, pdf, _ = await _get(api, voided["data"]["voidInvoice"]["documentUrl"],
                                world.tokens["bob"])  # fmt: skip
    assert status == 200
    text = _text(pdf)
    assert "VOID" in text and "This invoice is void" in text
    assert "Invoice INV-000004" in text and "Day pass" in text

    page = _png_of_first_page(pdf, tmp_path)
    ink = _count(page, lambda r, g, b: r + g + b < 600)
    assert ink > page.width * page.height // 200, "the page is blank"
    # The stamp is red and crosses the page's middle: reddish pixels in the centre band.
    middle = page.crop((0, page.height // 3, page.width, 2 * page.height // 3))
    red = _count(middle, lambda r, g, b: r > g + 20 and r > b + 20)
    assert red > 100, "no VOID stamp across the page"

    # Un-voided, the stamp is gone again (the document follows the invoice's rows).
    await api.gql("mutation($id: ID!) { unvoidInvoice(invoiceId: $id) { status } }",
                  {"id": bob_invoice}, token=world.tokens["admin"])  # fmt: skip
    _, pdf, _ = await _get(api, f"/documents/invoices/{bob_invoice}.pdf", world.tokens["bob"])
    assert "VOID" not in _text(pdf)


async def test_a_draft_is_marked_draft(api: Api, world: World) -> None:
    pending = encode("Invoice", world.ids["pending"])
    status, pdf, _ = await _get(api, f"/documents/invoices/{pending}.pdf", world.tokens["bob"])
    assert status == 200
    text = _text(pdf)
    assert "Draft invoice" in text and "DRAFT" in text and "not issued yet" in text
    assert "has no number yet" in text


async def _foreign_org(api: Api, currency: str, lines: list[tuple[str, int, int, int]]) -> tuple[
    str, str
]:  # fmt: skip
    """An organization in ``currency`` with one finalized invoice of ``lines``
    (description, quantity, unit price, tax ppm); its admin's token and the invoice id."""
    async with api.state.sessionmaker.begin() as s:
        org = Organization(name=f"{currency} Space", slug=f"space-{currency.lower()}",
                           currency=currency, created_at=NOW)  # fmt: skip
        s.add(org)
        await s.flush()
        admin = User(organization_id=org.id, email=f"admin@{currency.lower()}.test", name="Ad",
                     role="ADMIN", created_at=NOW)  # fmt: skip
        s.add(admin)
        account = Account(organization_id=org.id, kind="TEAM", name="Kenji", created_at=NOW)
        s.add(account)
        await s.flush()
        inv = Invoice(
            organization_id=org.id, account_id=account.id, currency=currency, number="INV-000001",
            status="DUE", document_type="INVOICE", issue_date=date(2026, 8, 1),
            due_date=date(2026, 8, 1), period_start=date(2026, 8, 1), period_end=date(2026, 8, 31),
            created_at=NOW, updated_at=NOW, finalized_at=NOW,
        )  # fmt: skip
        s.add(inv)
        await s.flush()
        for description, qty, unit, ppm in lines:
            amount = qty * unit
            tax = money.tax(amount, ppm)
            s.add(LineItem(
                organization_id=org.id, invoice_id=inv.id, kind="CHARGE", description=description,
                quantity=qty, unit_price=unit, amount=amount, tax_rate_ppm=ppm, tax=tax,
                total=amount + tax, created_at=NOW,
            ))  # fmt: skip
            inv.subtotal += amount
            inv.tax += tax
        inv.total = inv.subtotal + inv.tax
        await s.flush()
        return issue_token(SETTINGS, admin, NOW), encode("Invoice", inv.id)


async def test_amounts_keep_the_currencys_places(api: Api, world: World) -> None:
    token, jpy = await _foreign_org(api, "JPY", [("Hot desk", 3, 1500, 100_000),
                                                 ("Locker", 1, 801, 80_000)])  # fmt: skip
    _, pdf, _ = await _get(api, f"/documents/invoices/{jpy}.pdf", token)
    # 4,500 at 10 % = 450; 801 at 8 % = 64.08 → 64: yen have no minor unit.
    _in_order(_text(pdf), [
        "JPY Space", "Period", "2026-08-01 – 2026-08-31", "Kenji",
        "Hot desk", "3", "¥1,500", "10%", "¥450", "¥4,950",
        "Locker", "1", "¥801", "8%", "¥64", "¥865",
        "Subtotal", "¥5,301", "Tax 8% on ¥801", "¥64", "Tax 10% on ¥4,500", "¥450",
        "Total", "¥5,815", "Balance due", "¥5,815",
    ])  # fmt: skip

    token, kwd = await _foreign_org(api, "KWD", [("Meeting room", 2, 1250, 50_000)])
    _, pdf, _ = await _get(api, f"/documents/invoices/{kwd}.pdf", token)
    # 2.500 KWD at 5 % = 0.125: fils, three places.
    _in_order(_text(pdf), [
        "Meeting room", "2", "KWD 1.250", "5%", "KWD 0.125", "KWD 2.625",
        "Subtotal", "KWD 2.500", "Total", "KWD 2.625",
    ])  # fmt: skip
    # A member of Harbour Works reaches neither.
    assert (await _get(api, f"/documents/invoices/{kwd}.pdf", world.tokens["admin"]))[0] == 404


async def test_issued_documents_keep_the_issuer_they_were_issued_with(
    api: Api, world: World, clock: FixedClock
) -> None:
    await _set_issuer(api, world, legalName="Harbour Works Ltd", taxId="GB1")
    paid = f"/documents/invoices/{encode('Invoice', world.ids['paid'])}.pdf"
    pending = f"/documents/invoices/{encode('Invoice', world.ids['pending'])}.pdf"
    first = (await _get(api, paid, world.tokens["admin"]))[1]
    assert "Harbour Works Ltd" in _text(first)
    # Later details (the clock moves on): drafts take them, issued documents do not.
    clock.advance(timedelta(hours=1))
    renamed = await _set_issuer(api, world, legalName="Harbour Group plc", removeLogo=True)
    assert renamed["taxId"] == "GB1" and renamed["hasLogo"] is False
    assert (await _get(api, paid, world.tokens["admin"]))[1] == first
    assert "Harbour Group plc" in _text((await _get(api, pending, world.tokens["admin"]))[1])
    body = await api.gql("{ viewer { organization { documentIssuer { legalName taxId } } } }",
                         token=world.tokens["alice"])  # fmt: skip
    assert body["data"]["viewer"]["organization"]["documentIssuer"] == {
        "legalName": "Harbour Group plc", "taxId": "GB1",
    }  # fmt: skip
    events = await api.gql(
        '{ events(first: 50, filter: {types: ["organization.document_issuer_updated"]}) '
        "{ nodes { payload } } }",
        token=world.tokens["admin"],
    )
    payloads = [n["payload"] for n in events["data"]["events"]["nodes"]]
    assert [sorted(p["changes"]) for p in payloads] == [["legal_name", "tax_id"], ["legal_name"]]


async def test_bad_issuer_input_is_refused_and_changes_nothing(api: Api, world: World) -> None:
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, format="GIF")
    cases = [
        ({"logoBase64": "not base64!"}, "base64"),
        ({"logoBase64": base64.b64encode(b"plain text").decode()}, "PNG or JPEG"),
        ({"logoBase64": base64.b64encode(gif.getvalue()).decode()}, "GIF"),
        ({"logoBase64": base64.b64encode(_png(2500, 10)).decode()}, "2000"),
        ({"logoBase64": base64.b64encode(_png()[:60]).decode()}, "PNG or JPEG"),
        ({"logoBase64": "A" * 280_004}, "at most 280000 characters"),
        ({"legalName": "   "}, "may not be empty"),
        ({"legalName": "N" * 201}, "at most 200"),
        ({"taxId": "T\u0000"}, "NUL"),
        ({"logoBase64": base64.b64encode(_png()).decode(), "removeLogo": True}, "either"),
    ]
    for fields, words in cases:
        body = await api.gql(ISSUER, {"input": fields}, token=world.tokens["admin"])
        assert body.get("data") is None or body["data"].get("updateDocumentIssuer") is None
        error = body["errors"][0]
        assert error["extensions"]["code"] == "VALIDATION", (fields, error)
        assert words in error["message"], (fields, error["message"])
    # Base64 short enough to pass the input bound, bytes one past the logo bound.
    oversized = _png() + bytes(200 * 1024 + 1 - len(_png()))
    body = await api.gql(ISSUER, {"input": {"logoBase64": base64.b64encode(oversized).decode()}},
                         token=world.tokens["admin"])  # fmt: skip
    assert "at most 204,800 bytes" in body["errors"][0]["message"]
    member = await api.gql(ISSUER, {"input": {"legalName": "Mine"}}, token=world.tokens["alice"])
    assert member["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    body = await api.gql("{ viewer { organization { documentIssuer { legalName } } } }",
                         token=world.tokens["admin"])  # fmt: skip
    assert body["data"]["viewer"]["organization"]["documentIssuer"] is None


async def test_rendering_is_bounded(api: Api, world: World) -> None:
    from services.documents import MAX_DOCUMENT_LINES

    async with api.state.sessionmaker.begin() as s:
        inv = await s.get(Invoice, world.ids["team_invoice"])
        assert inv is not None
        s.add_all(
            LineItem(
                organization_id=inv.organization_id, invoice_id=inv.id, kind="CHARGE",
                description=f"Locker {n}", quantity=1, unit_price=100, amount=100,
                tax_rate_ppm=0, tax=0, total=100, created_at=datetime(2026, 8, 1, tzinfo=UTC),
            )
            for n in range(MAX_DOCUMENT_LINES)
        )  # fmt: skip
    path = f"/documents/invoices/{encode('Invoice', world.ids['team_invoice'])}.pdf"
    status, body, _ = await _get(api, path, world.tokens["admin"])
    assert status == 409, body
    assert b'"code":"INVALID_STATE"' in body and b"invoice-items.csv" in body
