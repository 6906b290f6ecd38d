"""The analytics queries over HTTP for an analyst, an admin and a refused member,
and the same figures as CSV, on the small world of tests/world.py (UTC, USD):

- INV-000001 Alice 200.00 PAID (card 200.00, 25.00 refunded), issued Aug 1;
- INV-000002 Alice 67.49 (5.15 tax) DUE Aug 1, 10.00 cash + 15.00 credit → 42.49 owed;
- CN-000001 Alice 50.00 of credit, 15.00 allocated, 25.00 refunded → 10.00 left;
- INV-000003 Acme Studio 900.00 OVERDUE, due Jul 1;
- INV-000004 Bob 25.00 UPCOMING, due Sep 1; the other organization's rows never count.
Payments, the refund and the allocation happened on Aug 15 ("now").
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from typing import Any

from models import PlanSubscription, PlanTemplate
from schema.ids import encode
from tests.api.conftest import Api
from tests.world import NOW, World

MONEY = "{ amount }"
REVENUE = f"""
query($from: Date!, $to: Date!, $groupBy: PeriodGrouping, $filter: AnalyticsFilter) {{
  revenue(from: $from, to: $to, groupBy: $groupBy, filter: $filter) {{
    groupBy
    periods {{ start end invoiced {MONEY} tax {MONEY} creditIssued {MONEY} received {MONEY}
               refunded {MONEY} collected {MONEY} creditApplied {MONEY} }}
    total {{ start end invoiced {MONEY} collected {MONEY} }}
  }}
}}"""
AGING = """
query($asOf: Date, $first: Int, $after: String, $filter: AnalyticsFilter) {
  receivablesAging(asOf: $asOf, first: $first, after: $after, filter: $filter) {
    asOf balance { amount currency } count accountCount
    buckets { bucket balance { amount } count }
    accounts { totalCount pageInfo { hasNextPage endCursor }
               nodes { accountId accountName balance { amount } count
                       buckets { bucket count } } }
  }
}"""


def _data(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def _code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


def _amounts(row: dict[str, Any]) -> dict[str, str]:
    return {k: v["amount"] for k, v in row.items() if isinstance(v, dict)}


async def test_an_analyst_reads_revenue_by_month(api: Api, world: World) -> None:
    body = await api.gql(
        REVENUE, {"from": "2026-07-01", "to": "2026-09-30"}, token=world.tokens["analyst"]
    )
    revenue = _data(body)["revenue"]
    assert revenue["groupBy"] == "MONTH"
    assert [(p["start"], p["end"]) for p in revenue["periods"]] == [
        ("2026-07-01", "2026-07-31"), ("2026-08-01", "2026-08-31"), ("2026-09-01", "2026-09-30"),
    ]  # fmt: skip
    july, august, september = (_amounts(p) for p in revenue["periods"])
    assert july["invoiced"] == "900.00" and july["collected"] == "0.00"
    # 200.00 + 67.49 − 50.00 of credit note; 210.00 received, 25.00 refunded.
    assert august == {
        "invoiced": "217.49", "tax": "5.15", "creditIssued": "50.00", "received": "210.00",
        "refunded": "25.00", "collected": "185.00", "creditApplied": "15.00",
    }  # fmt: skip
    assert september["invoiced"] == "25.00"
    assert _amounts(revenue["total"]) == {"invoiced": "1142.49", "collected": "185.00"}
    assert (revenue["total"]["start"], revenue["total"]["end"]) == ("2026-07-01", "2026-09-30")


async def test_revenue_by_day_and_for_one_kind_of_account(api: Api, world: World) -> None:
    body = await api.gql(
        REVENUE,
        {"from": "2026-08-14", "to": "2026-08-16", "groupBy": "DAY",
         "filter": {"accountKind": "USER"}},
        token=world.tokens["admin"],
    )  # fmt: skip
    days = {p["start"]: _amounts(p)["collected"] for p in _data(body)["revenue"]["periods"]}
    assert days == {"2026-08-14": "0.00", "2026-08-15": "185.00", "2026-08-16": "0.00"}
    team = encode("Account", world.ids["team"])
    body = await api.gql(
        REVENUE, {"from": "2026-07-01", "to": "2026-08-31", "filter": {"accountId": [team]}},
        token=world.tokens["admin"],
    )  # fmt: skip
    assert _amounts(_data(body)["revenue"]["total"]) == {"invoiced": "900.00", "collected": "0.00"}


async def test_receivables_aging_overall_and_paged_per_account(api: Api, world: World) -> None:
    body = await api.gql(AGING, {"asOf": "2026-08-15", "first": 2}, token=world.tokens["analyst"])
    aging = _data(body)["receivablesAging"]
    assert (aging["balance"], aging["count"], aging["accountCount"]) == (
        {"amount": "967.49", "currency": "USD"}, 3, 3,
    )  # fmt: skip
    assert [(b["bucket"], b["balance"]["amount"], b["count"]) for b in aging["buckets"]] == [
        ("CURRENT", "25.00", 1), ("DAYS_1_30", "42.49", 1), ("DAYS_31_60", "900.00", 1),
        ("DAYS_61_90", "0.00", 0), ("OVER_90", "0.00", 0),
    ]  # fmt: skip
    page = aging["accounts"]
    assert page["totalCount"] == 3 and page["pageInfo"]["hasNextPage"] is True
    assert [(n["accountName"], n["balance"]["amount"]) for n in page["nodes"]] == [
        ("Acme Studio", "900.00"), ("Alice", "42.49"),
    ]  # fmt: skip
    rest = await api.gql(
        AGING, {"asOf": "2026-08-15", "first": 2, "after": page["pageInfo"]["endCursor"]},
        token=world.tokens["analyst"],
    )  # fmt: skip
    nodes = _data(rest)["receivablesAging"]["accounts"]["nodes"]
    assert [(n["accountName"], n["balance"]["amount"]) for n in nodes] == [("Bob", "25.00")]
    assert [b["count"] for b in nodes[0]["buckets"]] == [1, 0, 0, 0, 0]
    # On Sep 30 the same balances are 29, 60 and 91 days past due.
    later = _data(await api.gql(AGING, {"asOf": "2026-09-30"}, token=world.tokens["admin"]))
    assert [b["count"] for b in later["receivablesAging"]["buckets"]] == [0, 1, 1, 0, 1]


async def test_collections_credit_recurring_and_payments(api: Api, world: World) -> None:
    async with api.state.sessionmaker.begin() as s:
        template = PlanTemplate(organization_id=world.ids["org"], name="Hot desk", price=31000,
                                interval="MONTHLY", created_at=NOW)  # fmt: skip
        s.add(template)
        await s.flush()
        for account, price, interval in (("alice_account", 31000, "MONTHLY"),
                                         ("team", 90000, "QUARTERLY")):  # fmt: skip
            s.add(PlanSubscription(
                organization_id=world.ids["org"], account_id=world.ids[account],
                template_id=template.id, name="Hot desk", price=price, interval=interval,
                start_date=date(2026, 8, 1), created_at=NOW,
            ))  # fmt: skip
    query = """
    query {
      invoiceCollections(from: "2026-08-01", to: "2026-08-31") {
        periods { start statuses { status count total { amount } balanceDue { amount } } }
      }
      creditOutstanding { remaining { amount } creditNoteCount accountCount oldestIssueDate
        accounts { nodes { accountName remaining { amount } creditNoteCount } } }
      recurringRevenue(asOf: "2026-08-15") {
        total { subscriptions mrr { amount } arr { amount } }
        templates { name figures { subscriptions mrr { amount } } }
      }
      paymentsSummary(from: "2026-08-01", to: "2026-08-31") {
        groups { method status count amount { amount } refunded { amount }
                 averageDaysAfterDue }
      }
    }"""
    data = _data(await api.gql(query, token=world.tokens["analyst"]))
    (august,) = data["invoiceCollections"]["periods"]
    statuses = {s["status"]: s for s in august["statuses"]}
    assert list(statuses) == ["UPCOMING", "DUE", "OVERDUE", "PROCESSING", "PAID", "VOID"]
    assert (statuses["PAID"]["count"], statuses["PAID"]["total"]["amount"]) == (1, "200.00")
    assert statuses["DUE"]["balanceDue"]["amount"] == "42.49"
    assert statuses["OVERDUE"]["count"] == 0  # issued in July
    credit = data["creditOutstanding"]
    assert (credit["remaining"]["amount"], credit["creditNoteCount"], credit["accountCount"],
            credit["oldestIssueDate"]) == ("10.00", 1, 1, "2026-08-02")  # fmt: skip
    assert credit["accounts"]["nodes"] == [
        {"accountName": "Alice", "remaining": {"amount": "10.00"}, "creditNoteCount": 1}
    ]
    # 310.00 × 12 + 900.00 × 4 = 7320.00 a year, 610.00 a month.
    assert data["recurringRevenue"]["total"] == {
        "subscriptions": 2, "mrr": {"amount": "610.00"}, "arr": {"amount": "7320.00"},
    }  # fmt: skip
    assert data["recurringRevenue"]["templates"] == [
        {"name": "Hot desk", "figures": {"subscriptions": 2, "mrr": {"amount": "610.00"}}}
    ]
    assert data["paymentsSummary"]["groups"] == [
        {"method": "CARD", "status": "SUCCEEDED", "count": 1, "amount": {"amount": "200.00"},
         "refunded": {"amount": "25.00"}, "averageDaysAfterDue": "14.00"},
        {"method": "CASH", "status": "SUCCEEDED", "count": 1, "amount": {"amount": "10.00"},
         "refunded": {"amount": "0.00"}, "averageDaysAfterDue": "14.00"},
    ]  # fmt: skip


async def test_members_are_refused_and_bad_arguments_are_explained(api: Api, world: World) -> None:
    for field in ("revenue(from: \"2026-01-01\", to: \"2026-01-31\") { groupBy }",
                  "creditOutstanding { creditNoteCount }",
                  "receivablesAging { count }", "recurringRevenue { asOf }",
                  "invoiceCollections(from: \"2026-01-01\", to: \"2026-01-31\") { groupBy }",
                  "paymentsSummary(from: \"2026-01-01\", to: \"2026-01-31\") { groups { count }}"
                  ):  # fmt: skip
        body = await api.gql(f"{{ {field} }}", token=world.tokens["alice"])
        assert _code(body) == "FORBIDDEN" and body["data"] is None
        assert "ADMIN or ANALYST" in body["errors"][0]["message"]
    assert _code(await api.gql("{ recurringRevenue { asOf } }")) == "UNAUTHENTICATED"

    async def refusal(variables: dict[str, Any], query: str = REVENUE) -> tuple[str, str]:
        body = await api.gql(query, variables, token=world.tokens["analyst"])
        return _code(body), body["errors"][0]["message"]

    code, message = await refusal({"from": "2026-02-01", "to": "2026-01-01"})
    assert code == "VALIDATION" and "on or after" in message
    code, message = await refusal({"from": "2020-01-01", "to": "2026-01-01"})
    assert code == "VALIDATION" and "five years" in message
    code, message = await refusal({"from": "0001-01-01", "to": "0001-01-02"})
    assert code == "VALIDATION" and "between" in message
    code, _ = await refusal({"from": "2026-01-01", "to": "2026-01-31", "groupBy": "YEAR"})
    assert code == "GRAPHQL_VALIDATION"
    code, message = await refusal(
        {"from": "2026-01-01", "to": "2026-01-31", "filter": {"accountId": ["nope"]}}
    )
    assert code == "VALIDATION" and "filter.accountId" in message
    code, message = await refusal({"first": 0}, AGING)
    assert code == "VALIDATION" and "first" in message
    code, message = await refusal({"first": 101}, AGING)
    assert code == "VALIDATION"
    code, message = await refusal({"after": "bogus"}, AGING)
    assert code == "VALIDATION" and "cursor" in message
    code, message = await refusal({"asOf": "9999-12-31"}, AGING)
    assert code == "VALIDATION" and "asOf" in message


# --------------------------------------------------------------------------- CSV


async def _csv(
    api: Api, figure: str, token: str | None, **params: str
) -> tuple[int, list[dict[str, str]] | dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await api.client.get(f"/exports/analytics/{figure}.csv", params=params,
                                    headers=headers)  # fmt: skip
    if response.status_code != 200:
        return response.status_code, response.json()
    assert response.headers["content-type"].startswith("text/csv")
    return 200, list(csv.DictReader(io.StringIO(response.text)))


async def test_csv_exports_carry_the_same_figures(api: Api, world: World) -> None:
    token = world.tokens["analyst"]
    status, rows = await _csv(api, "revenue", token, **{"from": "2026-08-01", "to": "2026-09-30"})
    assert status == 200 and isinstance(rows, list)
    assert [(r["period_start"], r["invoiced"], r["collected"], r["currency"]) for r in rows] == [
        ("2026-08-01", "217.49", "185.00", "USD"), ("2026-09-01", "25.00", "0.00", "USD"),
    ]  # fmt: skip
    _, rows = await _csv(api, "receivables-aging", token, asOf="2026-08-15")
    assert isinstance(rows, list)
    assert [(r["account_name"], r["balance"], r["days_31_60_balance"]) for r in rows] == [
        ("Acme Studio", "900.00", "900.00"), ("Alice", "42.49", "0.00"), ("Bob", "25.00", "0.00"),
    ]  # fmt: skip
    _, rows = await _csv(api, "receivables-aging", token, asOf="2026-08-15",
                         filter=json.dumps({"accountKind": "TEAM"}))  # fmt: skip
    assert isinstance(rows, list) and [r["account_name"] for r in rows] == ["Acme Studio"]
    _, rows = await _csv(api, "credit-outstanding", token)
    assert isinstance(rows, list)
    assert [(r["account_name"], r["remaining"], r["oldest_issue_date"]) for r in rows] == [
        ("Alice", "10.00", "2026-08-02")
    ]
    _, rows = await _csv(api, "invoice-collections", token, **{"from": "2026-07-01",
                                                               "to": "2026-07-31"})  # fmt: skip
    assert isinstance(rows, list)
    assert [(r["status"], r["count"], r["total"]) for r in rows if r["count"] != "0"] == [
        ("OVERDUE", "1", "900.00")
    ]
    _, rows = await _csv(api, "payments-summary", token, **{"from": "2026-08-15",
                                                            "to": "2026-08-15"})  # fmt: skip
    assert isinstance(rows, list)
    assert [(r["method"], r["amount"], r["average_days_after_due"]) for r in rows] == [
        ("CARD", "200.00", "14.00"), ("CASH", "10.00", "14.00"),
    ]  # fmt: skip
    status, rows = await _csv(api, "recurring-revenue", world.tokens["admin"])
    assert status == 200 and rows == []


async def test_csv_exports_refuse_members_and_bad_parameters(api: Api, world: World) -> None:
    august = {"from": "2026-08-01", "to": "2026-08-31"}
    status, body = await _csv(api, "revenue", world.tokens["bob"], **august)
    assert status == 403 and isinstance(body, dict) and body["code"] == "FORBIDDEN"
    status, body = await _csv(api, "revenue", None)
    assert status == 401
    token = world.tokens["analyst"]
    for params, words in (
        ({}, "from"),
        ({"from": "2026-08-01", "to": "2026-08-31", "groupBy": "YEAR"}, "groupBy"),
        ({"from": "2026-13-01", "to": "2026-08-31"}, "from"),
        ({"from": "2019-01-01", "to": "2026-08-31"}, "five years"),
        ({"from": "2026-08-01", "to": "2026-08-31", "filter": "{"}, "JSON"),
        ({"from": "2026-08-01", "to": "2026-08-31", "filter": '{"colour": 1}'}, "colour"),
        ({"from": "2026-08-01", "to": "2026-08-31", "filter": '{"accountKind": "X"}'},
         "accountKind"),
    ):  # fmt: skip
        status, body = await _csv(api, "revenue", token, **params)
        assert status == 400 and isinstance(body, dict), (params, body)
        assert body["code"] == "VALIDATION" and words in body["error"], (params, body)
    status, body = await _csv(api, "nothing", token)
    assert status == 404 and isinstance(body, dict) and "revenue" in body["error"]


async def test_an_analyst_api_key_reads_figures_and_csv(api: Api, world: World) -> None:
    created = await api.gql(
        'mutation { createApiKey(name: "Warehouse", role: ANALYST) { key } }',
        token=world.tokens["admin"],
    )
    key = _data(created)["createApiKey"]["key"]
    body = await api.gql(REVENUE, {"from": "2026-08-01", "to": "2026-08-31"}, token=key)
    assert _amounts(_data(body)["revenue"]["total"]) == {
        "invoiced": "217.49",
        "collected": "185.00",
    }
    status, rows = await _csv(api, "credit-outstanding", key)
    assert status == 200 and isinstance(rows, list)
    assert [r["remaining"] for r in rows] == ["10.00"]
