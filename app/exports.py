"""CSV exports for BI tools (rules §11.3): invoices, invoice items, payments, credit
notes, refunds and the event log.

``GET /exports/invoices.csv?filter={"status": ["DUE"]}`` takes the same filter as
the GraphQL list (as JSON, GraphQL field names such as ``accountId``, the same strict
scalars and limits), the same bearer token and the same scoping, and streams rows
straight from a server-side cursor, so an export of a million lines holds one batch
in memory at a time. A bad filter is a coded JSON 400 before the first byte; an error
after the first rows aborts the connection, so the download fails visibly.

On PostgreSQL the kinds in ``COPY_COLUMNS`` skip Python row by row: the same scoped,
filtered statement, its columns rendered as text in SQL exactly as the Python rows
print them, goes through ``COPY (…) TO STDOUT`` (asyncpg's ``copy_from_query``) and
the database's CSV chunks are passed on as they come, a few in flight at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import types
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import strawberry
from graphql import GraphQLError
from sqlalchemy import (
    ColumnElement,
    Numeric,
    Select,
    Text,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

from app.auth import TokenError, authenticate, bearer_token
from app.state import AppState
from models import (
    Account,
    CreditAllocation,
    Event,
    Invoice,
    InvoiceStatus,
    LineItem,
    Payment,
    Refund,
)
from resolvers import query
from resolvers.context import Viewer
from schema import filters as f
from schema import limits, scalars
from services import money
from services.errors import DomainError, ValidationError

BATCH = 1000
log = logging.getLogger("deskbill.exports")


def to_input(cls: type, raw: Any, path: str = "filter") -> Any:
    """Build a Strawberry input object from JSON shaped like its GraphQL input: the
    graph's field names (``accountId``), its scalars' strict rules and its limits."""
    built = _to_input(cls, raw, path)
    try:
        limits.check_value(built, path, path)
    except GraphQLError as refused:
        raise ValidationError(refused.message) from None
    return built


def _to_input(cls: type, raw: Any, path: str) -> Any:
    if raw is None:
        return None
    definition = get_object_definition(cls, strict=True)
    if not isinstance(raw, dict):
        raise ValidationError(f"`{path}` must be a JSON object.")
    by_name = {
        field.graphql_name or to_camel_case(field.python_name): field for field in definition.fields
    }
    unknown = set(raw) - set(by_name)
    if unknown:
        known = ", ".join(sorted(by_name))
        raise ValidationError(
            f"`{path}` has no field {sorted(unknown)[0]!r}; its fields are {known}."
        )
    hints = typing.get_type_hints(cls, globalns=vars(f))
    values = {
        by_name[name].python_name: _convert(
            hints[by_name[name].python_name], value, f"{path}.{name}"
        )
        for name, value in raw.items()
    }
    return cls(**values)


# The GraphQL scalars' own parsers, so an export accepts exactly what the graph does.
_SCALARS: dict[object, Callable[[object], object]] = {
    Decimal: scalars.parse_decimal,
    date: scalars.parse_date,
    datetime: scalars.parse_instant,
}
_INT32 = range(-(2**31), 2**31)


def _convert(hint: Any, value: Any, path: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(inner, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ValidationError(f"`{path}` must be a list.")
        (inner,) = typing.get_args(hint)
        return [_convert(inner, item, f"{path}[{i}]") for i, item in enumerate(value)]
    invalid = ValidationError(f"`{path}` has an invalid value {_shown(value)}.")
    if isinstance(hint, type) and issubclass(hint, Enum):
        if not isinstance(value, str) or value not in hint.__members__:
            raise invalid
        return hint[value]
    if hint in _SCALARS:
        try:
            return _SCALARS[hint](value)
        except GraphQLError as refused:
            raise ValidationError(f"`{path}`: {refused.message}") from None
    if hint in (str, strawberry.ID):
        if not isinstance(value, str):
            raise invalid
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise invalid
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in _INT32:
            raise invalid
        return value
    if get_object_definition(hint) is None:
        raise invalid
    return _to_input(hint, value, path)


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "…"


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


def _credit_note_row(row: Any, c: str) -> list[object]:
    note, name = row
    return [
        note.number, note.credit_note_status, note.status, note.account_id, name,
        note.issue_date, c, money.to_decimal(-note.total, c),
        money.to_decimal(note.credit_allocated, c), money.to_decimal(note.credit_refunded, c),
        money.to_decimal(note.credit_remaining, c), note.created_at,
    ]  # fmt: skip


def _refund_row(row: Any, c: str) -> list[object]:
    refund, note_number = row
    return [
        refund.id, note_number, refund.account_id, refund.payment_id, refund.status,
        refund.method, money.to_decimal(refund.amount, refund.currency), refund.currency,
        refund.reason, refund.error_code, refund.created_at,
    ]  # fmt: skip


def _allocation_row(row: Any, c: str) -> list[object]:
    allocation, note_number, invoice_number = row
    return [
        allocation.id, note_number, invoice_number, allocation.account_id,
        money.to_decimal(allocation.amount, c), allocation.kind,
        "true" if allocation.removed_at is None else "false", allocation.created_at,
        allocation.removed_at,
    ]  # fmt: skip


def _event_row(row: Any, c: str) -> list[object]:
    (event,) = row
    return [
        event.id, event.type, event.created_at, event.account_id, event.invoice_id,
        event.credit_note_id, event.payment_id, event.refund_id, event.actor_user_id,
        json.dumps(event.payload, sort_keys=True, separators=(",", ":")),
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
        .add_columns(Invoice.number)
        .join(Invoice, Invoice.id == Payment.invoice_id)
        .order_by(Payment.id),
        ["payment_id", "invoice_number", "account_id", "status", "type", "method", "amount",
         "applied_amount", "refunded_amount", "received_on", "created_at", "succeeded_at",
         "error_code"],
        _payment_row,
    ),
    "credit-notes": (
        f.CreditNoteFilter,
        lambda who, flt: query.credit_notes_statement(who, flt)
        .add_columns(Account.name)
        .join(Account, Account.id == Invoice.account_id)
        .order_by(Invoice.id),
        ["number", "credit_status", "status", "account_id", "account_name", "issue_date",
         "currency", "credit", "credit_allocated", "credit_refunded", "credit_remaining",
         "created_at"],
        _credit_note_row,
    ),
    "refunds": (
        f.RefundFilter,
        lambda who, flt: query.refunds_statement(who, flt)
        .add_columns(select(Invoice.number).where(Invoice.id == Refund.credit_note_id)
                     .scalar_subquery())
        .order_by(Refund.id),
        ["refund_id", "credit_note_number", "account_id", "payment_id", "status", "method",
         "amount", "currency", "reason", "error_code", "created_at"],
        _refund_row,
    ),
    # Where credit went: each allocation of a credit note onto an invoice, live or removed.
    "credit-allocations": (
        f.CreditAllocationFilter,
        lambda who, flt: query.credit_allocations_statement(who, flt)
        .add_columns(
            select(Invoice.number).where(Invoice.id == CreditAllocation.credit_note_id)
            .scalar_subquery(),
            select(Invoice.number).where(Invoice.id == CreditAllocation.invoice_id)
            .scalar_subquery(),
        )
        .order_by(CreditAllocation.id),
        ["allocation_id", "credit_note_number", "invoice_number", "account_id", "amount",
         "kind", "active", "created_at", "removed_at"],
        _allocation_row,
    ),
    # The event log, oldest first; ``payload`` is the event's JSON object.
    "events": (
        f.EventFilter,
        lambda who, flt: query.events_statement(who, flt).order_by(Event.id),
        ["sequence", "type", "created_at", "account_id", "invoice_id", "credit_note_id",
         "payment_id", "refund_id", "actor_user_id", "payload"],
        _event_row,
    ),
}  # fmt: skip


CopyColumn = ColumnElement[Any] | InstrumentedAttribute[Any]


def _major_text(minor: Any, currency: str) -> ColumnElement[Any]:
    """Minor units as major units with the currency's places, like ``to_decimal``:
    a numeric times ``0.01`` is exact and keeps two places (``-42.00``, ``0.00``)."""
    places = money.exponent(currency)
    number: ColumnElement[Any] = cast(minor, Numeric)
    if places:
        number = number * literal_column(f"0.{'0' * (places - 1)}1", Numeric)
    return cast(number, Text)


def _percent_text(ppm: Any) -> ColumnElement[Any]:
    """Parts per million as the exact percent ``tax_rate_percent`` prints: 20, 0.5."""
    return cast(func.trim_scale(cast(ppm, Numeric) / literal_column("10000", Numeric)), Text)


def _instant_text(instant: Any) -> ColumnElement[Any]:
    """A UTC instant as Python prints an aware datetime: microseconds only when set;
    empty when there is none (``concat`` alone would print a lone ``+00:00``)."""
    utc = func.timezone("UTC", instant)
    fraction = case(
        (func.to_char(utc, "US") == "000000", ""),
        else_=func.to_char(utc, ".US"),
    )
    text = func.concat(func.to_char(utc, "YYYY-MM-DD HH24:MI:SS"), fraction, "+00:00")
    return case((instant.is_(None), None), else_=text)


def _invoice_text_columns(c: str) -> list[CopyColumn]:
    # Invoice.balance_due as the model computes it: nothing owed on a credit note or
    # a void invoice.
    balance = case(
        (or_(Invoice.total <= 0, Invoice.status == InvoiceStatus.VOID), 0),
        else_=Invoice.total - Invoice.amount_paid - Invoice.credit_applied,
    )
    return [
        Invoice.number, Invoice.status, Invoice.document_type, Invoice.account_id,
        Account.name, Invoice.issue_date, Invoice.due_date, _instant_text(Invoice.paid_at),
        literal(c), _major_text(Invoice.subtotal, c), _major_text(Invoice.tax, c),
        _major_text(Invoice.total, c), _major_text(Invoice.amount_paid, c),
        _major_text(Invoice.credit_applied, c), _major_text(balance, c),
    ]  # fmt: skip


def _payment_text_columns(c: str) -> list[CopyColumn]:
    return [
        Payment.id, Invoice.number, Payment.account_id, Payment.status, Payment.type,
        Payment.method,
        _major_text(Payment.amount, c), _major_text(Payment.applied_amount, c),
        _major_text(Payment.refunded_amount, c), Payment.received_on,
        _instant_text(Payment.created_at), _instant_text(Payment.succeeded_at),
        Payment.error_code,
    ]  # fmt: skip


def _item_text_columns(c: str) -> list[CopyColumn]:
    return [
        LineItem.id, Invoice.number, Invoice.account_id, LineItem.kind, LineItem.description,
        LineItem.quantity, _major_text(LineItem.unit_price, c), _major_text(LineItem.amount, c),
        _percent_text(LineItem.tax_rate_ppm), _major_text(LineItem.tax, c),
        _major_text(LineItem.total, c), LineItem.period_start, LineItem.period_end,
        _instant_text(LineItem.created_at),
    ]  # fmt: skip


# Kinds PostgreSQL writes itself (COPY), as text columns in the order of their header.
COPY_COLUMNS: dict[str, Callable[[str], list[CopyColumn]]] = {
    "invoices": _invoice_text_columns,
    "invoice-items": _item_text_columns,
    "payments": _payment_text_columns,
}
# COPY chunks (about 64 KiB each) waiting for the client; when the client reads slowly
# the COPY waits too, so memory stays flat whatever the export's size.
COPY_CHUNKS_IN_FLIGHT = 8


async def copy_csv(engine: AsyncEngine, stmt: Select[Any]) -> AsyncGenerator[bytes, None]:
    """The rows of ``stmt`` as CSV written by PostgreSQL's ``COPY … TO STDOUT``,
    chunk by chunk as they come (no header). Raises what the COPY raised."""
    compiled = stmt.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    args = [compiled.params[name] for name in compiled.positiontup or ()]
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(COPY_CHUNKS_IN_FLIGHT)
    failures: list[Exception] = []
    async with engine.connect() as conn:
        # One statement for the whole export: the per-request statement deadline would
        # cut a large one short; the client's pace bounds it instead. LOCAL: the
        # transaction (rolled back when the connection goes back) takes it away again.
        await conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None

        async def copy() -> None:
            try:
                await driver.copy_from_query(
                    compiled.string, *args, output=chunks.put, format="csv"
                )
            except Exception as failure:
                failures.append(failure)
            await chunks.put(None)

        task = asyncio.create_task(copy())
        try:
            while (chunk := await chunks.get()) is not None:
                yield bytes(chunk)  # asyncpg hands over its buffer, Starlette wants bytes
            if failures:
                raise failures[0]
        finally:
            if not task.done():  # the client went away: stop the COPY
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def export_text(
    sessionmaker: async_sessionmaker[AsyncSession], kind: str, who: Viewer, stmt: Select[Any]
) -> AsyncGenerator[str | bytes, None]:
    """The CSV of export ``kind`` for ``stmt`` (its validated, scoped statement): the
    header, then the rows, by COPY where PostgreSQL can write them."""
    _, _, header, to_row = EXPORTS[kind]
    yield _cells(header)
    engine = sessionmaker.kw["bind"]
    if kind in COPY_COLUMNS and engine.dialect.name == "postgresql":
        text_stmt = stmt.with_only_columns(*COPY_COLUMNS[kind](who.currency))
        # Closed here, in this task, even when the client goes away mid-way.
        async with contextlib.aclosing(copy_csv(engine, text_stmt)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    async with sessionmaker() as session:
        result = await session.stream(stmt.execution_options(yield_per=BATCH))
        async for row in result:
            yield _cells(to_row(row, who.currency))


def export_routes(state: AppState) -> list[BaseRoute]:
    async def export(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in EXPORTS:
            return JSONResponse({"error": f"No export named {kind}."}, status_code=404)
        filter_cls, statement, _, _ = EXPORTS[kind]
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

        async def rows() -> AsyncIterator[str | bytes]:
            try:
                async with contextlib.aclosing(
                    export_text(state.read_sessionmaker, kind, who, stmt)
                ) as chunks:
                    async for chunk in chunks:
                        yield chunk
            except Exception:
                # The status line is long gone: the only honest signal left is to cut
                # the connection before the terminating chunk, so the client's read
                # fails instead of ending on a file that looks complete.
                log.exception("export %s failed after its first rows; aborting it", kind)
                raise

        return StreamingResponse(
            rows(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{kind}.csv"'},
        )

    return [Route("/exports/{kind}.csv", export, methods=["GET"])]
