"""Strict input scalars: what a client may send as a decimal, a date or an instant.

The GraphQL names stay ``Decimal``, ``Date`` and ``DateTime``; only what they accept
narrows. A decimal (money, tax rates) is a string of ASCII digits with an optional
leading minus and one decimal point — no spaces, plus signs, underscores, exponents,
other scripts' digits or JSON numbers, which Python's ``Decimal`` would all take.
Dates and instants are ISO 8601 in ASCII digits; the window of supported dates is
checked with the field's name in schema/limits.py.

A refusal is a ``GraphQLError`` coded ``VALIDATION``; graphql-core wraps it in a
message that names the variable and the field inside it (``$input … at .amount``),
or points at the literal in the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import dateutil.parser
import strawberry
from graphql import GraphQLError, ValueNode, value_from_ast_untyped
from strawberry.types.scalar import ScalarDefinition

# 10^12 major units with three decimals fits in 17 characters; room for a few zeros.
MAX_DECIMAL_CHARS = 32
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# ISO 8601 as this API writes it: date, "T", time with optional fraction, optional offset.
_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?"
)


def refused(message: str, field: str | None = None) -> GraphQLError:
    """A ``VALIDATION`` error of the API's edge (``schema`` raises no domain errors)."""
    extensions: dict[str, object] = {"code": "VALIDATION"}
    if field is not None:
        extensions["field"] = field
    return GraphQLError(message, extensions=extensions)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def parse_decimal(value: object) -> Decimal:
    if not isinstance(value, str):
        raise refused(f'A decimal is sent as a string such as "12.50", not as {_shown(value)}.')
    if len(value) > MAX_DECIMAL_CHARS or not _DECIMAL.fullmatch(value):
        raise refused(
            "A decimal is ASCII digits with an optional leading minus and decimal point, "
            f'such as "12.50" or "-3" (no spaces, signs, separators or exponents); '
            f"got {_shown(value)}."
        )
    return Decimal(value)


def serialize_decimal(value: Decimal) -> str:
    # Fixed-point always: str() would print 20 stored as 2E+1.
    return format(value, "f")


def parse_date(value: object) -> date:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise refused(f'A date is written YYYY-MM-DD, such as "2026-08-15"; got {_shown(value)}.')
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise refused(f"{value} is not a date of the calendar.") from None
    return day


def parse_instant(value: object) -> datetime:
    if not isinstance(value, str) or not _INSTANT.fullmatch(value):
        raise refused(
            'An instant is written in ISO 8601, such as "2026-08-15T09:00:00Z"; '
            f"got {_shown(value)}."
        )
    try:
        instant = dateutil.parser.isoparse(value)
    except (ValueError, OverflowError):
        raise refused(f"{value} is not an instant of the calendar.") from None
    return instant


def _isoformat(value: date) -> str:
    return value.isoformat()


def _literal(parse: Callable[[object], object]) -> Callable[..., object]:
    """The same rules for a value written in the document, pointing at where it is."""

    def inner(node: ValueNode, variables: dict[str, Any] | None = None) -> object:
        try:
            return parse(value_from_ast_untyped(node, variables))
        except GraphQLError as error:
            raise GraphQLError(error.message, node, extensions=error.extensions) from None

    return inner


StrictDecimal = strawberry.scalar(
    name="Decimal",
    description="Decimal (fixed-point)",
    serialize=serialize_decimal,
    parse_value=parse_decimal,
    parse_literal=_literal(parse_decimal),
)
StrictDate = strawberry.scalar(
    name="Date",
    description="Date (isoformat)",
    serialize=_isoformat,
    parse_value=parse_date,
    parse_literal=_literal(parse_date),
)
StrictDateTime = strawberry.scalar(
    name="DateTime",
    description="Date with time (isoformat)",
    serialize=_isoformat,
    parse_value=parse_instant,
    parse_literal=_literal(parse_instant),
)

# For ``strawberry.Schema(scalar_overrides=...)``: the Python types keep their names.
SCALAR_OVERRIDES: dict[object, ScalarDefinition] = {
    Decimal: StrictDecimal,
    date: StrictDate,
    datetime: StrictDateTime,
}
