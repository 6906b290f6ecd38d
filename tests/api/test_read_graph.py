"""The read graph over real HTTP: lists, filters, keyset pages, nested fields."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.world import World

INVOICES = """
query($first: Int, $after: String, $filter: InvoiceFilter, $sort: InvoiceSort) {
  invoices(first: $first, after: $after, filter: $filter, sort: $sort) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      id number status
      account { name kind }
      lines { description amount { amount } tax { amount } }
      subtotal { amount } tax { amount } total { amount currency formatted }
      amountPaid { amount } creditApplied { amount } balanceDue { amount }
      payments { method status amount { amount } }
      allocations { amount { amount } kind creditNote { number } }
    }
  }
}"""


async def test_admin_lists_invoices_with_lines_payments_and_credit(api: Api, world: World) -> None:
    body = await api.gql(INVOICES, {"sort": {"field": "NUMBER", "direction": "ASC"}},
                         token=world.tokens["admin"])  # fmt: skip
    assert "errors" not in body, body
    page = body["data"]["invoices"]
    numbers = [n["number"] for n in page["nodes"]]
    # Pending drafts have no number and sort first; credit notes are not invoices.
    assert numbers == [None, "INV-000001", "INV-000002", "INV-000003", "INV-000004"]
    assert page["totalCount"] == 5
    due = page["nodes"][2]
    assert due["status"] == "DUE"
    assert [line["description"] for line in due["lines"]] == ["Meeting room", "Coffee"]
    # 8.25 % per line, half-up: 50.00 → 4.125 → 4.13; 12.34 → 1.01805 → 1.02.
    assert [line["tax"]["amount"] for line in due["lines"]] == ["4.13", "1.02"]
    assert due["subtotal"]["amount"] == "62.34"
    assert due["tax"]["amount"] == "5.15"
    assert due["total"] == {"amount": "67.49", "currency": "USD", "formatted": "$67.49"}
    assert due["amountPaid"]["amount"] == "10.00"
    assert due["creditApplied"]["amount"] == "15.00"
    assert due["balanceDue"]["amount"] == "42.49"
    assert due["payments"] == [
        {"method": "CASH", "status": "SUCCEEDED", "amount": {"amount": "10.00"}}
    ]
    assert due["allocations"] == [
        {"amount": {"amount": "15.00"}, "kind": "MANUAL", "creditNote": {"number": "CN-000001"}}
    ]


async def test_credit_notes_show_original_allocated_refunded_and_remaining(
    api: Api, world: World
) -> None:
    body = await api.gql(
        """{ creditNotes { nodes { number status originalCredit { amount }
             allocatedCredit { amount } refundedCredit { amount } remainingCredit { amount }
             refunds { amount { amount } payment { method } } account { name } } } }""",
        token=world.tokens["admin"],
    )
    assert body["data"]["creditNotes"]["nodes"] == [
        {
            "number": "CN-000001",
            "status": "AVAILABLE",
            "originalCredit": {"amount": "50.00"},
            "allocatedCredit": {"amount": "15.00"},
            "refundedCredit": {"amount": "25.00"},
            "remainingCredit": {"amount": "10.00"},
            "refunds": [{"amount": {"amount": "25.00"}, "payment": {"method": "CARD"}}],
            "account": {"name": "Alice"},
        }
    ]


async def test_filters_narrow_the_list(api: Api, world: World) -> None:
    token = world.tokens["admin"]

    async def numbers(flt: dict[str, object]) -> list[str | None]:
        body = await api.gql(
            "query($f: InvoiceFilter) { invoices(filter: $f, sort: {field: NUMBER, direction: ASC})"
            " { nodes { number } } }",
            {"f": flt},
            token=token,
        )
        assert "errors" not in body, body
        return [n["number"] for n in body["data"]["invoices"]["nodes"]]

    assert await numbers({"status": ["OVERDUE", "UPCOMING"]}) == ["INV-000003", "INV-000004"]
    assert await numbers({"accountKind": "TEAM"}) == ["INV-000003"]
    assert await numbers({"hasBalance": True}) == ["INV-000002", "INV-000003", "INV-000004"]
    assert await numbers({"total": {"min": "60", "max": "200.00"}}) == ["INV-000001", "INV-000002"]
    assert await numbers({"dueDate": {"from": "2026-08-01"}, "status": ["DUE", "UPCOMING"]}) == [
        "INV-000002",
        "INV-000004",
    ]
    assert await numbers({"number": "INV-00000"}) == [f"INV-00000{i}" for i in range(1, 5)]


async def test_keyset_pages_walk_every_row_once(api: Api, world: World) -> None:
    seen: list[str] = []
    after = None
    while True:
        body = await api.gql(INVOICES, {"first": 2, "after": after}, token=world.tokens["admin"])
        page = body["data"]["invoices"]
        seen += [n["id"] for n in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(seen) == len(set(seen)) == 5


async def test_other_lists_answer(api: Api, world: World) -> None:
    body = await api.gql(
        """{ payments(filter: {method: [CARD]}) { nodes { method refundedAmount { amount }
               refundableAmount { amount } invoice { number } } }
             refunds { nodes { status amount { amount } creditNote { number } } }
             invoiceItems(filter: {kind: [CREDIT]}) { nodes { description invoice { number } } }
             accounts(sort: {field: NAME}) { nodes { name kind availableCredit { amount }
               balanceDue { amount } members { name } } }
             organization { name currency invoicePolicy { billingDay billingDayLocked
               additionalCharges overdueAfterDays defaultTaxRate } }
             viewer { role user { email } } }""",
        token=world.tokens["admin"],
    )
    assert "errors" not in body, body
    data = body["data"]
    assert data["payments"]["nodes"] == [
        {"method": "CARD", "refundedAmount": {"amount": "25.00"},
         "refundableAmount": {"amount": "175.00"}, "invoice": {"number": "INV-000001"}}
    ]  # fmt: skip
    assert data["refunds"]["nodes"][0]["creditNote"]["number"] == "CN-000001"
    assert data["invoiceItems"]["nodes"] == [
        {"description": "Refund of payment", "invoice": {"number": "CN-000001"}}
    ]
    accounts = {a["name"]: a for a in data["accounts"]["nodes"]}
    assert list(accounts) == ["Acme Studio", "Alice", "Bob"]
    assert accounts["Alice"]["availableCredit"]["amount"] == "10.00"
    assert accounts["Alice"]["balanceDue"]["amount"] == "42.49"
    assert accounts["Acme Studio"]["members"] == [{"name": "Alice"}]
    assert data["organization"]["invoicePolicy"] == {
        "billingDay": 1, "billingDayLocked": True, "additionalCharges": "NEXT_PENDING_INVOICE",
        "overdueAfterDays": 7, "defaultTaxRate": "0",
    }  # fmt: skip
    assert data["viewer"] == {"role": "ADMIN", "user": {"email": "admin@harbour.test"}}


async def test_node_resolves_every_kind_of_id(api: Api, world: World) -> None:
    body = await api.gql(
        """{ invoices(first: 1, filter: {status: [DUE]}) { nodes { id lines { id }
               payments { id } allocations { id } } }
             creditNotes { nodes { id } } }""",
        token=world.tokens["admin"],
    )
    inv = body["data"]["invoices"]["nodes"][0]
    ids = [inv["id"], inv["lines"][0]["id"], inv["payments"][0]["id"], inv["allocations"][0]["id"],
           body["data"]["creditNotes"]["nodes"][0]["id"]]  # fmt: skip
    for gid in ids:
        found = await api.gql(
            "query($id: ID!) { node(id: $id) { __typename id } }", {"id": gid},
            token=world.tokens["admin"],
        )  # fmt: skip
        assert found["data"]["node"]["id"] == gid, found


async def test_a_page_costs_the_same_statements_whatever_its_size(api: Api, world: World) -> None:
    from tests.world import add_many_invoices

    await add_many_invoices(api.state.sessionmaker, world, count=60)
    counts = []
    for size in (5, 5, 50):
        seen = api.count_selects()
        body = await api.gql(INVOICES.replace("totalCount", ""), {"first": size},
                             token=world.tokens["admin"])  # fmt: skip
        api.stop_counting()
        assert "errors" not in body, body
        assert len(body["data"]["invoices"]["nodes"]) == size
        counts.append(len(seen))
    # The token's user, then one compiled statement: the page with its accounts, lines,
    # payments and allocations (tests/api/test_compiled_reads.py pins the DataLoader
    # path's own count). Once the read is known, that statement alone, confirming the
    # viewer kept from the first request (app/known_reads.py), for 5 rows as for 50.
    assert counts == [2, 1, 1], counts
