"""The analytics figures as CSV for BI tools that prefer files:
``GET /exports/analytics/<figure>.csv`` with the GraphQL field's arguments as query
parameters (``from``, ``to``, ``groupBy``, ``asOf``, and ``filter`` as JSON such as
``{"accountKind": "TEAM"}``), for ADMIN and ANALYST tokens.

The figures come from the same engine calls as the GraphQL fields; the per-account
lists (receivables, credit) are complete here rather than paged. Amounts are decimal
strings in major units of the organization's currency, named in a ``currency`` column.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.auth import TokenError, authenticate, bearer_token
from app.state import AppState
from models import Role
from resolvers.analytics import scope_for
from resolvers.viewer import Viewer
from schema.analytics_types import AnalyticsFilter
from schema.enums import AccountKind
from services import analytics, money
from services.clock import local_date, organization_now
from services.errors import DomainError, ValidationError

Rows = list[list[object]]
Figure = Callable[[AsyncSession, "Ask"], Awaitable[Rows]]


class Ask:
    """The query parameters of one export, checked."""

    def __init__(self, request: Request, who: Viewer, today: date) -> None:
        self.params = request.query_params
        self.who = who
        self.scope = scope_for(who, self._filter())
        self.currency = who.currency
        self.today = today

    def _date(self, name: str) -> date | None:
        raw = self.params.get(name)
        if raw is None:
            return None
        try:
            return analytics.check_date(date.fromisoformat(raw), name)
        except ValueError:
            raise ValidationError(f"`{name}` must be a date such as 2026-01-31.") from None

    def _filter(self) -> AnalyticsFilter | None:
        raw = self.params.get("filter")
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise ValidationError('filter must be JSON, e.g. {"accountKind": "TEAM"}.') from None
        if not isinstance(data, dict):
            raise ValidationError("filter must be a JSON object.")
        unknown = set(data) - {"accountId", "accountKind"}
        if unknown:
            raise ValidationError(f"filter has no field {sorted(unknown)[0]!r}.")
        ids = data.get("accountId")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise ValidationError("filter.accountId must be a list of account ids.")
        kind = data.get("accountKind")
        try:
            account_kind = None if kind is None else AccountKind(kind)
        except ValueError:
            raise ValidationError(f"filter.accountKind has an invalid value {kind!r}.") from None
        return AnalyticsFilter(account_id=ids, account_kind=account_kind)

    def span(self) -> analytics.Span:
        first, last = self._date("from"), self._date("to")
        if first is None or last is None:
            raise ValidationError("Give the range as `from` and `to` dates, e.g. from=2026-01-01.")
        return analytics.Span.of(first, last)

    def grouping(self) -> analytics.Grouping:
        raw = self.params.get("groupBy", "MONTH")
        try:
            return analytics.Grouping(raw)
        except ValueError:
            raise ValidationError("`groupBy` must be DAY, WEEK or MONTH.") from None

    def as_of(self) -> date:
        return self._date("asOf") or self.today

    def amount(self, minor: int) -> object:
        return money.to_decimal(minor, self.currency)


async def _revenue(session: AsyncSession, ask: Ask) -> Rows:
    found = await analytics.revenue(session, ask.scope, ask.span(), ask.grouping())
    return [
        [p.start, p.end, ask.currency]
        + [ask.amount(getattr(p, m)) for m in (*analytics.REVENUE_MEASURES, "collected")]
        for p in found
    ]


async def _collections(session: AsyncSession, ask: Ask) -> Rows:
    found = await analytics.invoice_collections(session, ask.scope, ask.span(), ask.grouping())
    return [
        [p.start, p.end, s.status.value, s.count, ask.currency, ask.amount(s.total),
         ask.amount(s.amount_paid), ask.amount(s.credit_applied), ask.amount(s.balance_due)]
        for p in found
        for s in p.statuses
    ]  # fmt: skip


async def _aging(session: AsyncSession, ask: Ask) -> Rows:
    as_of = ask.as_of()
    page = await analytics.receivables_by_account(session, ask.scope, as_of)
    rows: Rows = []
    for r in page.rows:
        cells: list[object] = [as_of, r.account_id, r.account_name, ask.currency]
        cells += [ask.amount(r.balance), r.count]
        for b in r.buckets:
            cells += [ask.amount(b.balance), b.count]
        rows.append(cells)
    return rows


async def _credit(session: AsyncSession, ask: Ask) -> Rows:
    page = await analytics.credit_by_account(session, ask.scope)
    return [
        [r.account_id, r.account_name, ask.currency, ask.amount(r.remaining),
         r.credit_note_count, r.oldest_issue_date]
        for r in page.rows
    ]  # fmt: skip


async def _recurring(session: AsyncSession, ask: Ask) -> Rows:
    as_of = ask.as_of()
    found = await analytics.recurring_revenue(session, ask.scope, as_of)
    return [
        [as_of, t.template_id, t.name, t.figures.subscriptions, ask.currency,
         ask.amount(t.figures.mrr), ask.amount(t.figures.arr)]
        for t in found.templates
    ]  # fmt: skip


async def _payments(session: AsyncSession, ask: Ask) -> Rows:
    found = await analytics.payments_summary(session, ask.scope, ask.span())
    return [
        [g.method, g.status, g.count, ask.currency, ask.amount(g.amount), ask.amount(g.refunded),
         g.average_days_after_due]
        for g in found
    ]  # fmt: skip


_BUCKET_COLUMNS = [
    f"{b.value.lower()}_{what}" for b in analytics.AGING_BUCKETS for what in ("balance", "count")
]

FIGURES: dict[str, tuple[list[str], Figure]] = {
    "revenue": (
        ["period_start", "period_end", "currency", *analytics.REVENUE_MEASURES, "collected"],
        _revenue,
    ),
    "invoice-collections": (
        ["period_start", "period_end", "status", "count", "currency", "total", "amount_paid",
         "credit_applied", "balance_due"],
        _collections,
    ),
    "receivables-aging": (
        ["as_of", "account_id", "account_name", "currency", "balance", "count",
         *_BUCKET_COLUMNS],
        _aging,
    ),
    "credit-outstanding": (
        ["account_id", "account_name", "currency", "remaining", "credit_notes",
         "oldest_issue_date"],
        _credit,
    ),
    "recurring-revenue": (
        ["as_of", "template_id", "template_name", "subscriptions", "currency", "mrr", "arr"],
        _recurring,
    ),
    "payments-summary": (
        ["method", "status", "count", "currency", "amount", "refunded",
         "average_days_after_due"],
        _payments,
    ),
}  # fmt: skip


def _csv(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def _refusal(message: str, code: str, status: int) -> Response:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def analytics_export_routes(state: AppState) -> list[BaseRoute]:
    async def export(request: Request) -> Response:
        figure = request.path_params["figure"]
        if figure not in FIGURES:
            names = ", ".join(sorted(FIGURES))
            return _refusal(f"No analytics export named {figure}; try {names}.", "NOT_FOUND", 404)
        header, compute = FIGURES[figure]
        try:
            token = bearer_token(request.headers.get("authorization"))
            if token is None:
                raise TokenError("Send `Authorization: Bearer <token>` to export.")
            async with state.read_sessionmaker() as session:
                who = await authenticate(session, state.settings, token, state.clock.now())
        except TokenError as refused:
            return _refusal(str(refused), "UNAUTHENTICATED", 401)
        if who.role not in (Role.ADMIN, Role.ANALYST):
            return _refusal(
                f"Only ADMIN or ANALYST users may export analytics; you are {who.role.value}.",
                "FORBIDDEN",
                403,
            )
        try:
            ask = Ask(request, who, local_date(organization_now(state.clock, who), who.timezone))
            async with state.read_sessionmaker() as session:
                rows = await compute(session, ask)
        except DomainError as bad:
            return _refusal(bad.message, bad.code, 400)
        return Response(
            _csv(header, rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{figure}.csv"'},
        )

    return [Route("/exports/analytics/{figure}.csv", export, methods=["GET"])]
