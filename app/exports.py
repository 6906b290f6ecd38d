"""CSV exports for BI tools (SPEC §11.3): invoices, invoice items and payments.

``GET /exports/invoices.csv?filter={"status": ["DUE"]}`` takes the same filter as
the GraphQL list (as JSON, GraphQL field names), the same bearer token and the same
scoping, and streams rows straight from a server-side cursor, so an export of a
million lines holds one batch in memory at a time.
"""

from __future__ import annotations

import csv
import io
import json
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import Select, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from strawberry.types.base import get_object_definition

from app.auth import TokenError, authenticate, bearer_token
from app.state import AppState
from models import Account, Invoice, LineItem, Payment
from resolvers import query
from resolvers.context import Viewer
from schema import filters as f
from services import money
from services.errors import DomainError, ValidationError

BATCH = 1000


def to_input(cls: type, raw: Any, path: str = "filter") -> Any:
    """Build a Strawberry input object from JSON shaped like its GraphQL input."""
    if raw is None:
        return None
    definition = get_object_definition(cls, strict=True)
    if not isinstance(raw, dict):
        raise ValidationError(f"{path} must be a JSON object.")
    by_name = {field.graphql_name or field.python_name: field for field in definition.fields}
    unknown = set(raw) - set(by_name)
    if unknown:
        raise ValidationError(f"{path} has no field {sorted(unknown)[0]!r}.")
    hints = typing.get_type_hints(cls, globalns=vars(f))
    values = {
        by_name[name].python_name: _convert(
            hints[by_name[name].python_name], value, f"{path}.{name}"
        )
        for name, value in raw.items()
    }
    return cls(**values)


def _convert(hint: Any, value: Any, path: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(inner, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ValidationError(f"{path} must be a list.")
        (inner,) = typing.get_args(hint)
        return [_convert(inner, item, path) for item in value]
    try:
        if isinstance(hint, type) and issubclass(hint, Enum):
            return hint(value)
        if hint is date:
            return date.fromisoformat(value)
        if hint is datetime:
            return datetime.fromisoformat(value)
        if hint is Decimal:
            return Decimal(str(value))
        if hint in (bool, int, str):
            if not isinstance(value, hint):
                raise TypeError
            return value
    except (TypeError, ValueError, ArithmeticError):
        raise ValidationError(f"{path} has an invalid value {value!r}.") from None
    return to_input(hint, value, path)


def _cells(values: Iterable[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def _invoice_row(row: Any, c: str) -> list[object]:
    inv, name = row
    return [
        inv.number, inv.status, inv.document_type, inv.account_id, name, inv.issue_date,
        inv.due_date, inv.paid_at, c, money.to_decimal(inv.subtotal, c),
        money.to_decimal(inv.tax, c), money.to_decimal(inv.total, c),
        money.to_decimal(inv.amount_paid, c), money.to_decimal(inv.credit_applied, c),
        money.to_decimal(inv.balance_due, c),
    ]  # fmt: skip


def _item_row(row: Any, c: str) -> list[object]:
    line, number, account_id = row
    return [
        line.id, number, account_id, line.kind, line.description, line.quantity,
        money.to_decimal(line.unit_price, c), money.to_decimal(line.amount, c),
        money.tax_rate_percent(line.tax_rate_ppm), money.to_decimal(line.tax, c),
        money.to_decimal(line.total, c), line.period_start, line.period_end, line.created_at,
    ]  # fmt: skip


def _payment_row(row: Any, c: str) -> list[object]:
    pay, number = row
    return [
        pay.id, number, pay.account_id, pay.status, pay.type, pay.method,
        money.to_decimal(pay.amount, c), money.to_decimal(pay.applied_amount, c),
        money.to_decimal(pay.refunded_amount, c), pay.received_on, pay.created_at,
        pay.succeeded_at, pay.error_code,
    ]  # fmt: skip


EXPORTS: dict[str, tuple[type, Callable[[Viewer, Any], Select[Any]], list[str], Any]] = {
    "invoices": (
        f.InvoiceFilter,
        lambda who, flt: query.invoices_statement(who, flt)
        .add_columns(Account.name)
        .join(Account, Account.id == Invoice.account_id)
        .order_by(Invoice.id),
        ["number", "status", "document_type", "account_id", "account_name", "issue_date",
         "due_date", "paid_at", "currency", "subtotal", "tax", "total", "amount_paid",
         "credit_applied", "balance_due"],
        _invoice_row,
    ),
    "invoice-items": (
        f.InvoiceItemFilter,
        lambda who, flt: query.invoice_items_statement(who, flt)
        .add_columns(Invoice.number, Invoice.account_id)
        .order_by(LineItem.id),
        ["line_id", "invoice_number", "account_id", "kind", "description", "quantity",
         "unit_price", "amount", "tax_rate", "tax", "total", "period_start", "period_end",
         "created_at"],
        _item_row,
    ),
    "payments": (
        f.PaymentFilter,
        lambda who, flt: query.payments_statement(who, flt)
        .add_columns(select(Invoice.number).where(Invoice.id == Payment.invoice_id)
                     .scalar_subquery())
        .order_by(Payment.id),
        ["payment_id", "invoice_number", "account_id", "status", "type", "method", "amount",
         "applied_amount", "refunded_amount", "received_on", "created_at", "succeeded_at",
         "error_code"],
        _payment_row,
    ),
}  # fmt: skip


def export_routes(state: AppState) -> list[BaseRoute]:
    async def export(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in EXPORTS:
            return JSONResponse({"error": f"No export named {kind}."}, status_code=404)
        filter_cls, statement, header, to_row = EXPORTS[kind]
        try:
            token = bearer_token(request.headers.get("authorization"))
            if token is None:
                raise TokenError("Send `Authorization: Bearer <token>` to export.")
            async with state.read_sessionmaker() as session:
                who = await authenticate(session, state.settings, token, state.clock.now())
        except TokenError as refused:
            return JSONResponse({"error": str(refused), "code": "UNAUTHENTICATED"}, status_code=401)
        try:
            raw = json.loads(request.query_params.get("filter") or "null")
            stmt = statement(who, to_input(filter_cls, raw))
        except json.JSONDecodeError:
            return JSONResponse(
                {"error": "filter must be JSON, e.g. {\"status\": [\"DUE\"]}.",
                 "code": "VALIDATION"}, status_code=400,
            )  # fmt: skip
        except DomainError as bad:
            return JSONResponse({"error": bad.message, "code": bad.code}, status_code=400)

        async def rows() -> AsyncIterator[str]:
            yield _cells(header)
            async with state.read_sessionmaker() as session:
                result = await session.stream(stmt.execution_options(yield_per=BATCH))
                async for row in result:
                    yield _cells(to_row(row, who.currency))

        return StreamingResponse(
            rows(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{kind}.csv"'},
        )

    return [Route("/exports/{kind}.csv", export, methods=["GET"])]
