"""CSV exports over HTTP: same filters, same scoping, streamed."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import String, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.database import create_engine
from app.settings import DatabaseLimits
from models import LineItem
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.world import World, add_many_invoices, build_world


async def _export(api: Api, kind: str, token: str | None, flt: object = None) -> tuple[int, str]:
    params = {"filter": json.dumps(flt)} if flt is not None else {}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await api.client.get(f"/exports/{kind}.csv", params=params, headers=headers)
    return response.status_code, response.text


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_invoice_export_follows_the_graphql_filter(api: Api, world: World) -> None:
    status, text = await _export(api, "invoices", world.tokens["admin"],
                                 {"status": ["DUE", "OVERDUE"]})  # fmt: skip
    assert status == 200
    rows = _rows(text)
    assert sorted(r["number"] for r in rows) == ["INV-000002", "INV-000003"]
    due = next(r for r in rows if r["number"] == "INV-000002")
    assert (due["total"], due["amount_paid"], due["credit_applied"], due["balance_due"]) == (
        "67.49", "10.00", "15.00", "42.49",
    )  # fmt: skip
    assert due["account_name"] == "Alice"


async def test_member_exports_only_its_own_rows(api: Api, world: World) -> None:
    _, text = await _export(api, "invoice-items", world.tokens["bob"])
    assert [r["description"] for r in _rows(text)] == ["Day pass"]
    _, payments = await _export(api, "payments", world.tokens["alice"], {"method": ["CARD"]})
    assert [(r["invoice_number"], r["amount"], r["refunded_amount"]) for r in _rows(payments)] == [
        ("INV-000001", "200.00", "25.00")
    ]


async def test_exports_refuse_bad_tokens_and_bad_filters(api: Api, world: World) -> None:
    assert (await _export(api, "invoices", None))[0] == 401
    status, text = await _export(api, "invoices", world.tokens["admin"], {"status": ["LATE"]})
    assert status == 400 and "status" in text
    status, text = await _export(api, "invoices", world.tokens["admin"], {"colour": "red"})
    assert status == 400 and "colour" in text
    assert (await _export(api, "nothing", world.tokens["admin"]))[0] == 404


async def test_exports_take_the_graphs_filter_names(api: Api, world: World) -> None:
    from schema.ids import encode

    token = world.tokens["admin"]
    bob = encode("Account", world.ids["bob_account"])
    status, text = await _export(api, "invoices", token, {"accountId": [bob]})
    assert status == 200, text
    assert sorted(r["number"] for r in _rows(text)) == ["", "INV-000004"]
    for kind in ("invoices", "invoice-items", "payments"):
        status, _ = await _export(api, kind, token, {"accountId": [bob]})
        assert status == 200, kind


BAD_FILTERS = [
    ({"account_id": ["x"]}, "account_id"),  # Python names are not the graph's
    ({"accountId": "QWNjb3VudDox"}, "filter.accountId"),  # not a list
    ({"accountId": [1]}, "filter.accountId[0]"),  # a number where an id belongs
    ({"accountId": ["nope"]}, "accountId"),  # not an id at all
    ({"number": "INV\u0000"}, "filter.number"),  # a NUL byte
    ({"number": "N" * 65}, "filter.number"),  # too long
    ({"accountId": ["QWNjb3VudDox"] * 1001}, "filter.accountId"),  # too many items
    ({"issueDate": {"from": "0001-01-01"}}, "filter.issueDate.from"),  # outside the window
    ({"issueDate": {"from": "2026-09-01", "to": "2026-08-01"}}, "filter.issueDate.to"),
    ({"total": {"min": 0.1}}, "filter.total.min"),  # a JSON number as money
    ({"total": {"min": "1e2"}}, "filter.total.min"),  # an exponent
    ({"hasBalance": "yes"}, "filter.hasBalance"),
    ({"status": "DUE"}, "filter.status"),
    (["DUE"], "filter"),
]


async def test_exports_refuse_a_bad_filter_with_a_coded_400_before_the_first_byte(
    api: Api, world: World
) -> None:
    for flt, field in BAD_FILTERS:
        for kind in ("invoices", "invoice-items", "payments"):
            headers = {"Authorization": f"Bearer {world.tokens['admin']}"}
            response = await api.client.get(
                f"/exports/{kind}.csv", params={"filter": json.dumps(flt)}, headers=headers
            )
            assert response.status_code == 400, (kind, flt, response.text)
            assert response.headers["content-type"].startswith("application/json")
            body = response.json()
            assert body["code"] == "VALIDATION", (kind, flt, body)
            # The invoice list has every field used here; the other lists lack some,
            # which they refuse as unknown, by the same name.
            parts = field.split(".")
            named = field if kind == "invoices" or len(parts) == 1 else parts[1].split("[")[0]
            assert named in body["error"], (kind, flt, body)


async def test_an_error_mid_stream_fails_the_download(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first rows the status line is gone: the server must cut the
    connection, so the client's read fails instead of ending on a short file."""
    from app import exports

    filter_cls, statement, header, to_row = exports.EXPORTS["invoices"]
    seen: list[object] = []

    def breaks_on_the_third(row: object, currency: str) -> list[object]:
        seen.append(row)
        if len(seen) == 3:
            raise RuntimeError("the database went away")
        cells: list[object] = to_row(row, currency)
        return cells

    monkeypatch.setitem(
        exports.EXPORTS, "invoices", (filter_cls, statement, header, breaks_on_the_third)
    )
    # Row by row on both databases (a COPY failing mid-stream has a test of its own).
    monkeypatch.delitem(exports.COPY_COLUMNS, "invoices")
    headers = {"Authorization": f"Bearer {world.tokens['admin']}"}
    async with api.client.stream("GET", "/exports/invoices.csv", headers=headers) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):
            async for _ in response.aiter_bytes():
                pass
    # The server itself is fine afterwards.
    monkeypatch.undo()
    status, _ = await _export(api, "invoices", world.tokens["admin"])
    assert status == 200


async def test_tax_rates_print_as_exact_decimals(api: Api, world: World) -> None:
    _, text = await _export(api, "invoice-items", world.tokens["admin"])
    rates = {r["description"]: r["tax_rate"] for r in _rows(text)}
    assert rates["Meeting room"] == "8.25"
    assert rates["Hot desk, August"] == "0"
    assert all("E" not in rate for rate in rates.values())


async def test_invoice_items_export_prints_every_row_as_the_python_rows_do(
    api: Api, world: World
) -> None:
    """On PostgreSQL the database writes this export (COPY); its rows must be the very
    text the row-by-row path prints: money with the currency's places, exact tax rates,
    instants with and without microseconds, quoting of commas, quotes and newlines,
    empty dates, and the same filters and scoping."""
    from datetime import UTC, date, datetime

    from app import exports
    from app.auth import authenticate
    from models import LineItem
    from tests.api.conftest import SETTINGS

    tricky = [
        ('Desk, "corner"\nsecond line', 3, -1250, 5000, datetime(2026, 8, 3, 9, 5, 7, 120, UTC)),
        ("Ünïcode café ☕", 1, 0, 200000, datetime(2026, 8, 4, tzinfo=UTC)),
        ("", 2, 999999, 1, datetime(2026, 8, 5, 23, 59, 59, 999999, UTC)),
    ]
    async with api.state.sessionmaker.begin() as session:
        for description, quantity, price, ppm, created in tricky:
            session.add(LineItem(
                organization_id=world.ids["org"], invoice_id=world.ids["due"], kind="CHARGE",
                description=description, quantity=quantity, unit_price=price,
                amount=price * quantity, tax_rate_ppm=ppm, tax=price // 7,
                total=price * quantity + price // 7,
                period_start=date(2026, 8, 1) if ppm == 5000 else None,
                period_end=date(2026, 8, 31) if ppm == 5000 else None, created_at=created,
            ))  # fmt: skip
    filter_cls, statement, header, to_row = exports.EXPORTS["invoice-items"]
    for user, flt in [
        ("admin", None),
        ("admin", {"kind": ["CHARGE"], "amount": {"max": "5000"}}),
        ("alice", None),
        ("bob", None),
    ]:
        status, text = await _export(api, "invoice-items", world.tokens[user], flt)
        assert status == 200, text
        async with api.state.sessionmaker() as session:
            who = await authenticate(session, SETTINGS, world.tokens[user], api.state.clock.now())
            stmt = statement(who, exports.to_input(filter_cls, flt))
            rows = (await session.execute(stmt)).all()
        expected = [header] + [
            next(csv.reader(io.StringIO(exports._cells(to_row(row, who.currency))))) for row in rows
        ]
        assert list(csv.reader(io.StringIO(text))) == expected, (user, flt)
        if api.state.read_sessionmaker.kw["bind"].dialect.name == "postgresql":
            # PostgreSQL wrote the rows (COPY ends them with \n); only our header has \r\n.
            assert text.count("\r\n") == 1, text
    everything = _rows((await _export(api, "invoice-items", world.tokens["admin"]))[1])
    printed = {r["description"]: (r["tax_rate"], r["unit_price"]) for r in everything}
    assert printed['Desk, "corner"\nsecond line'] == ("0.5", "-12.50")
    assert printed["Ünïcode café ☕"] == ("20", "0.00")
    assert printed[""] == ("0.0001", "9999.99")


async def _python_rows(api: Api, kind: str, token: str, flt: object) -> list[list[str]]:
    """What the row-by-row path prints for ``kind``: the header, then each row."""
    from app import exports
    from app.auth import authenticate

    filter_cls, statement, header, to_row = exports.EXPORTS[kind]
    async with api.state.sessionmaker() as session:
        who = await authenticate(session, SETTINGS, token, api.state.clock.now())
        rows = (await session.execute(statement(who, exports.to_input(filter_cls, flt)))).all()
    cells = [exports._cells(to_row(row, who.currency)) for row in rows]
    return [header] + [next(csv.reader(io.StringIO(c))) for c in cells]


@pytest.mark.parametrize(
    ("kind", "flt"),
    [
        ("invoices", None),
        ("invoices", {"status": ["PAID", "DUE"], "hasBalance": True}),
        ("payments", None),
        ("payments", {"method": ["CARD"]}),
    ],
)
async def test_invoice_and_payment_exports_print_what_the_python_rows_do(
    api: Api, world: World, kind: str, flt: object
) -> None:
    """On PostgreSQL these exports are COPY too: the same text as row by row (paid and
    unpaid invoices, a void one, credit notes with no balance, instants with and
    without microseconds or none at all), scoped and filtered as the graph."""
    from datetime import UTC, datetime

    from models import Invoice, Payment

    await add_many_invoices(api.state.sessionmaker, world, count=4)
    async with api.state.sessionmaker.begin() as session:
        paid = await session.get(Invoice, world.ids["paid"])
        card = await session.get(Payment, world.ids["card"])
        assert paid is not None and card is not None
        paid.paid_at = datetime(2026, 8, 3, 9, 5, 7, 120, UTC)
        card.succeeded_at = datetime(2026, 8, 3, 9, 5, 7, tzinfo=UTC)
    for user in ("admin", "alice", "bob", "rival_admin"):
        status, text = await _export(api, kind, world.tokens[user], flt)
        assert status == 200, text
        expected = await _python_rows(api, kind, world.tokens[user], flt)
        assert list(csv.reader(io.StringIO(text))) == expected, (user, flt)
        if user == "admin" and flt is None:
            assert len(expected) > 5
        if api.state.read_sessionmaker.kw["bind"].dialect.name == "postgresql":
            assert text.count("\r\n") == 1, text  # PostgreSQL wrote the rows


async def test_credit_notes_export_with_its_credit_and_the_graphs_filter(
    api: Api, world: World
) -> None:
    status, text = await _export(api, "credit-notes", world.tokens["admin"])
    assert status == 200, text
    (note,) = _rows(text)
    assert (note["number"], note["credit_status"], note["account_name"]) == (
        "CN-000001", "AVAILABLE", "Alice",
    )  # fmt: skip
    assert (note["credit"], note["credit_allocated"], note["credit_refunded"]) == (
        "50.00", "15.00", "25.00",
    )  # fmt: skip
    assert note["credit_remaining"] == "10.00"
    _, none_left = await _export(
        api, "credit-notes", world.tokens["admin"], {"credit": {"min": "60"}}
    )
    assert _rows(none_left) == []
    _, bobs = await _export(api, "credit-notes", world.tokens["bob"])
    assert _rows(bobs) == []  # Alice's note is not Bob's to see
    status, text = await _export(api, "credit-notes", world.tokens["admin"], {"status": ["NEW"]})
    assert status == 400 and "filter.status" in text


async def test_event_log_export_oldest_first_scoped_and_filtered(api: Api, world: World) -> None:
    from datetime import UTC, datetime

    from models import Event

    async with api.state.sessionmaker.begin() as session:
        for account, kind, payload in [
            ("alice_account", "invoice.finalized", {"number": "INV-9", "note": 'a "b", c'}),
            ("bob_account", "payment.succeeded", {"amount": 1200}),
            ("alice_account", "payment.succeeded", {}),
        ]:
            session.add(Event(
                organization_id=world.ids["org"], type=kind, account_id=world.ids[account],
                payload=payload, created_at=datetime(2026, 8, 20, tzinfo=UTC),
            ))  # fmt: skip
    _, text = await _export(api, "events", world.tokens["admin"])
    rows = _rows(text)
    assert [int(r["sequence"]) for r in rows] == sorted(int(r["sequence"]) for r in rows)
    assert [r["type"] for r in rows][-3:] == [
        "invoice.finalized", "payment.succeeded", "payment.succeeded",
    ]  # fmt: skip
    assert json.loads(rows[-3]["payload"]) == {"number": "INV-9", "note": 'a "b", c'}
    _, bobs = await _export(api, "events", world.tokens["bob"])
    assert {r["account_id"] for r in _rows(bobs)} == {str(world.ids["bob_account"])}
    _, paid = await _export(api, "events", world.tokens["admin"], {"types": ["payment.succeeded"]})
    assert {r["type"] for r in _rows(paid)} == {"payment.succeeded"}
    assert len(_rows(paid)) >= 2


async def test_refunds_export_follows_the_graphs_filter_and_scoping(api: Api, world: World) -> None:
    status, text = await _export(api, "refunds", world.tokens["admin"])
    assert status == 200, text
    (refund,) = _rows(text)
    assert (refund["credit_note_number"], refund["status"], refund["method"]) == (
        "CN-000001", "SUCCEEDED", "CARD",
    )  # fmt: skip
    assert (refund["amount"], refund["currency"], refund["reason"]) == (
        "25.00",
        "USD",
        "Room closed",
    )
    _, failed = await _export(api, "refunds", world.tokens["admin"], {"status": ["FAILED"]})
    assert _rows(failed) == []
    _, bobs = await _export(api, "refunds", world.tokens["bob"])
    assert _rows(bobs) == []
    status, text = await _export(api, "refunds", world.tokens["admin"], {"paymentId": 3})
    assert status == 400 and "filter.paymentId" in text


@contextlib.asynccontextmanager
async def _deadline_server(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Api]:
    """The API on its own engine whose statements may run 300 ms (PostgreSQL)."""
    limits = DatabaseLimits(statement_timeout_ms=300)
    own = create_engine(engine.url.render_as_string(hide_password=False), limits=limits)
    app = create_app(SETTINGS, engine=own, clock=clock, start_worker=False)
    try:
        async for url in serve(app):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield Api(url=url, app=app, client=client)
    finally:
        await own.dispose()


async def _download_fails(api: Api, kind: str, token: str) -> bytes:
    """Stream an export that must start (200, the header row) and then fail."""
    received = b""
    headers = {"Authorization": f"Bearer {token}"}
    async with api.client.stream("GET", f"/exports/{kind}.csv", headers=headers) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):  # no terminating chunk: a failed transfer
            async for chunk in response.aiter_bytes():
                received += chunk
    return received


async def test_a_deadline_mid_stream_fails_the_download(
    engine: AsyncEngine,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL's statement deadline cancels the export's query after the status
    line and the header row went out: the client sees a failed download, the log one
    line with the reason, and the next export works."""
    if engine.dialect.name != "postgresql":
        pytest.skip("statement_timeout is PostgreSQL's")
    from app import exports

    filter_cls, statement, header, to_row = exports.EXPORTS["invoices"]

    def slow(who: Any, flt: Any) -> Any:
        # Every row takes 100 ms to produce: the query outlives its 300 ms deadline.
        return statement(who, flt).where(func.pg_sleep(0.1).is_not(None))

    async with _deadline_server(engine, clock) as api:
        world = await build_world(api.state.sessionmaker, SETTINGS)
        await add_many_invoices(api.state.sessionmaker, world, count=10)
        monkeypatch.setitem(exports.EXPORTS, "invoices", (filter_cls, slow, header, to_row))
        # The row-by-row path's batches keep the deadline; a COPY runs without one
        # (it is paced by the client, see app.exports.copy_csv).
        monkeypatch.delitem(exports.COPY_COLUMNS, "invoices")
        with caplog.at_level(logging.ERROR, logger="deskbill"):
            received = await _download_fails(api, "invoices", world.tokens["admin"])
        assert received.decode().startswith("number,status")
        assert "INV-" not in received.decode()  # not one row: nothing looks complete
        assert any("aborting it" in r.getMessage() for r in caplog.records), caplog.text
        monkeypatch.undo()
        status, text = await _export(api, "invoices", world.tokens["admin"])
        assert status == 200 and len(_rows(text)) >= 10


async def test_a_copy_failing_mid_stream_fails_the_download(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The invoice-items export is PostgreSQL's COPY: a row that fails inside the
    database (here a division by zero on the second line) ends the transfer
    unfinished too, instead of a short file behind a 200."""
    if api.state.engine.dialect.name != "postgresql":
        pytest.skip("only PostgreSQL exports by COPY")
    from app import exports

    columns = exports.COPY_COLUMNS["invoice-items"]
    async with api.state.sessionmaker() as session:
        second = await session.scalar(select(LineItem.id).order_by(LineItem.id).offset(1))
    assert second is not None

    def failing(currency: str) -> list[Any]:
        *first, last = columns(currency)
        broken = func.cast(literal(1) / (LineItem.id - second), String)
        return [*first, func.concat(last, func.left(broken, 0))]

    monkeypatch.setitem(exports.COPY_COLUMNS, "invoice-items", failing)
    received = await _download_fails(api, "invoice-items", world.tokens["admin"])
    assert received.decode().startswith("line_id,")
    monkeypatch.undo()
    status, text = await _export(api, "invoice-items", world.tokens["admin"])
    assert status == 200 and len(_rows(text)) >= 2


async def test_credit_allocations_export_says_where_credit_went(api: Api, world: World) -> None:
    from schema.ids import encode

    status, text = await _export(api, "credit-allocations", world.tokens["admin"])
    assert status == 200, text
    assert text.splitlines()[0] == (
        "allocation_id,credit_note_number,invoice_number,account_id,amount,kind,active,"
        "created_at,removed_at"
    )
    (allocation,) = _rows(text)
    assert (allocation["credit_note_number"], allocation["invoice_number"]) == (
        "CN-000001", "INV-000002",
    )  # fmt: skip
    assert (allocation["amount"], allocation["kind"], allocation["active"]) == (
        "15.00", "MANUAL", "true",
    )  # fmt: skip
    assert allocation["removed_at"] == ""
    assert _rows((await _export(api, "credit-allocations", world.tokens["alice"]))[1]) != []
    assert _rows((await _export(api, "credit-allocations", world.tokens["bob"]))[1]) == []
    rival = (await _export(api, "credit-allocations", world.tokens["rival_admin"]))[1]
    assert _rows(rival) == []
    for flt, count in (
        ({"active": False}, 0),
        ({"active": True}, 1),
        ({"invoiceId": encode("Invoice", world.ids["due"])}, 1),
        ({"invoiceId": encode("Invoice", world.ids["paid"])}, 0),
        ({"creditNoteId": encode("CreditNote", world.ids["credit_note"])}, 1),
        ({"accountId": [encode("Account", world.ids["bob_account"])]}, 0),
    ):
        status, text = await _export(api, "credit-allocations", world.tokens["admin"], flt)
        assert status == 200 and len(_rows(text)) == count, (flt, text)
    for bad in ({"creditNoteId": "x"}, {"active": "yes"}, {"credit_note_id": "x"}):
        status, text = await _export(api, "credit-allocations", world.tokens["admin"], bad)
        assert status == 400 and json.loads(text)["code"] == "VALIDATION", (bad, text)
