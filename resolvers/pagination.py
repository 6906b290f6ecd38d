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

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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


def _decode_value(value: object) -> object:
    if isinstance(value, dict):
        if "t" in value:
            return datetime.fromisoformat(value["t"])
        if "d" in value:
            return date.fromisoformat(value["d"])
    return value


def encode_cursor(values: Sequence[object]) -> str:
    raw = json.dumps([_encode_value(v) for v in values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[object]:
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode())
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationError("The `after` cursor is not one this API gave out.") from None
    if not isinstance(values, list) or len(values) != width:
        raise ValidationError("The `after` cursor does not fit this list and sort order.")
    return [_decode_value(v) for v in values]


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
        values = decode_cursor(after, len(keys))
        row_key = tuple_(*keys)
        bound = tuple_(*values)
        filtered = stmt.where(row_key < bound if ordering.descending else row_key > bound)
    direction = [k.desc() if ordering.descending else k.asc() for k in keys]
    return filtered.add_columns(*keys).order_by(*direction).limit(limit + 1)


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
