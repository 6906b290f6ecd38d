"""CSV exports over HTTP: same filters, same scoping, streamed."""

from __future__ import annotations

import csv
import io
import json

from tests.api.conftest import Api
from tests.world import World


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
