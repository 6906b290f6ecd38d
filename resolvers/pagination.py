"""Keyset pagination for the list fields: ``WHERE (sort key, id) > cursor``.

A cursor is the sort-key values of the last row it stands for, so a page costs an
index range scan however deep the client pages, and rows inserted meanwhile never
shift a page the way OFFSET does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import Integer, Select, func, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schema.ids import pk_within_range
from schema.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Connection, Edge, PageInfo
from services.errors import ValidationError

T = TypeVar("T")


@dataclass(frozen=True)
class Ordering:
    """Sort keys, the last of which must be unique (the primary key)."""

    keys: Sequence[Any]
    descending: bool


def _encode_value(value: object) -> object:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, date):
        return {"d": value.isoformat()}
    return value


# A sort key that is text (a name, a number) is far shorter; longer is not ours.
MAX_CURSOR_TEXT = 1000
MAX_CURSOR_CHARS = 4000
_INT64 = range(-(2**63), 2**63)


def _decode_value(value: object) -> object:
    """One sort-key value of a cursor, or ``ValueError`` when it is not one we write."""
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        if isinstance(text, str) and len(text) <= 64:
            if tag == "t":
                return datetime.fromisoformat(text)
            if tag == "d":
                return date.fromisoformat(text)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int) and value in _INT64:
        return value
    elif isinstance(value, str) and len(value) <= MAX_CURSOR_TEXT and "\x00" not in value:
        return value
    elif value is None:
        return None
    raise ValueError("not a sort-key value")


def _expected_type(key: Any) -> type | None:
    try:
        python_type: type = key.type.python_type
    except (AttributeError, NotImplementedError):
        # SQLAlchemy's TypeEngine.python_type raises NotImplementedError for a type
        # without a Python counterpart (an expression's NullType): no check to make.
        return None
    return python_type


def _fits(value: object, key: Any) -> bool:
    """Does a decoded value have the type of its sort key (when the key says)?"""
    expected = _expected_type(key)
    if value is None or expected is None:
        return True
    if expected is datetime:
        return isinstance(value, datetime)
    if expected is date:
        return isinstance(value, date) and not isinstance(value, datetime)
    return isinstance(value, expected)


def encode_cursor(values: Sequence[object]) -> str:
    raw = json.dumps([_encode_value(v) for v in values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, keys: Sequence[Any] | int) -> list[object]:
    """The sort-key values inside ``cursor``, checked against ``keys`` (their number,
    types and ranges; given only a width, their number and ranges), so a forged cursor
    is VALIDATION and never reaches SQL."""
    width = keys if isinstance(keys, int) else len(keys)
    forged = ValidationError("The `after` cursor is not one this API gave out.")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise forged
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii"))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeError, RecursionError):
        raise forged from None
    if not isinstance(values, list) or len(values) != width:
        raise ValidationError("The `after` cursor does not fit this list and sort order.")
    try:
        decoded = [_decode_value(v) for v in values]
    except (ValueError, OverflowError):
        raise forged from None
    if not isinstance(keys, int) and not all(
        _fits(value, key) for value, key in zip(decoded, keys, strict=True)
    ):
        raise ValidationError("The `after` cursor does not fit this list and sort order.")
    return decoded


def parse_sequence_cursor(after: str) -> int:
    """An event cursor: the event's sequence number, ASCII digits within int64."""
    sequence = pk_within_range(after) if len(after) <= 20 else None
    if sequence is None:
        raise ValidationError("`after` must be an event cursor (the `cursor` of an event).")
    return sequence


def page_size(first: int | None) -> int:
    if first is None:
        return DEFAULT_PAGE_SIZE
    if first < 1 or first > MAX_PAGE_SIZE:
        raise ValidationError(f"`first` must be between 1 and {MAX_PAGE_SIZE}.")
    return first


def page_statement(
    stmt: Select[Any], ordering: Ordering, *, limit: int, after: str | None
) -> Select[Any]:
    """``stmt`` after the cursor, in ``ordering``, one row more than ``limit`` (to tell
    whether a next page exists), with the sort keys added as trailing columns."""
    keys = list(ordering.keys)
    filtered = stmt
    if after is not None:
        values = decode_cursor(after, keys)
        row_key = tuple_(*keys)
        bound = tuple_(*values)
        filtered = stmt.where(row_key < bound if ordering.descending else row_key > bound)
    direction = [k.desc() if ordering.descending else k.asc() for k in keys]
    # The bound is written into the SQL, not sent as a parameter: with ``LIMIT $n``
    # PostgreSQL's generic plan has to assume a large page and sorts the whole table
    # (50 ms for a page of invoices), so it plans every execution afresh (1-2 ms,
    # a third of the statement's time); with the number in the text the generic plan
    # reads the sort's index and is reused. The page size is a bounded int.
    return (
        filtered.add_columns(*keys)
        .order_by(*direction)
        .limit(literal_column(str(int(limit) + 1), Integer))
    )


async def paginate(
    sessionmaker: async_sessionmaker[AsyncSession],
    stmt: Select[Any],
    ordering: Ordering,
    *,
    first: int | None,
    after: str | None,
    to_node: Callable[[Any], T],
) -> Connection[T]:
    """One page of ``stmt`` (which selects one entity) in ``ordering``."""
    limit = page_size(first)
    page_stmt = page_statement(stmt, ordering, limit=limit, after=after)

    async with sessionmaker() as session:
        rows = (await session.execute(page_stmt)).all()

    has_next = len(rows) > limit
    edges = [
        Edge(cursor=encode_cursor(list(row[1:])), node=to_node(row[0])) for row in rows[:limit]
    ]

    async def count_total() -> int:
        count_stmt = select(func.count()).select_from(stmt.order_by(None).subquery())
        async with sessionmaker() as session:
            return int(await session.scalar(count_stmt) or 0)

    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=has_next,
            has_previous_page=after is not None,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None,
        ),
        count_total=count_total,
    )
