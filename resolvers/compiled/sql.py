"""The JSON-building SQL of the two databases: PostgreSQL's ``json_build_object`` /
``json_agg`` and SQLite's ``json_object`` / ``json_group_array``.

Every leaf is rendered so the text equals what the Strawberry path writes for the
same row: global ids (url-safe base64 of ``Type:pk`` without padding), ISO dates,
``datetime.isoformat()`` of aware UTC instants, Money amounts with the currency's
decimal places and ``services.money.format_amount``'s rendering. On SQLite the ids
and the money texts come from the very Python functions the mappers call, registered
on the connection; on PostgreSQL they are SQL expressions (a differential test holds
them to the Python output).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from resolvers.compiled.catalog import Leaf
from schema.ids import encode
from services import money

# ISO 4217 exponents other than 2, grouped as services.money knows them.
_ZERO = sorted(c for c in money.EXPONENTS if money.EXPONENTS[c] == 0)
_THREE = sorted(c for c in money.EXPONENTS if money.EXPONENTS[c] == 3)


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Dialect(ABC):
    """What each database must render; ``Postgres`` and ``Sqlite`` below."""

    name = ""

    @abstractmethod
    def leaf(self, leaf: Leaf, sql: str, type_name: str) -> str: ...

    @abstractmethod
    def obj(self, pairs: Sequence[tuple[str, str]]) -> str: ...

    @abstractmethod
    def one(self, obj: str, table: str, alias: str, where: str) -> str: ...

    @abstractmethod
    def many(self, obj: str, table: str, alias: str, where: str, order: str) -> str: ...

    @abstractmethod
    def amount(self, minor: str, currency: str | None, viewer_currency: str) -> str: ...

    @abstractmethod
    def formatted(self, minor: str, currency: str | None, viewer_currency: str) -> str: ...

    @abstractmethod
    def text(self, obj: str) -> str:
        """The top-level object as a text column."""
        ...


class Postgres(Dialect):
    name = "postgresql"

    def leaf(self, leaf: Leaf, sql: str, type_name: str) -> str:
        if leaf is Leaf.GID:
            return (
                f"rtrim(translate(encode(convert_to({quote(type_name + ':')} || {sql}, 'UTF8'),"
                " 'base64'), '+/', '-_'), '=')"
            )
        if leaf is Leaf.INSTANT:
            # isoformat() leaves out the fraction when it is zero and writes all six
            # digits otherwise; to_json would trim trailing zeros.
            utc = f"({sql} AT TIME ZONE 'UTC')"
            return (
                f"(to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN"
                f" extract(microseconds FROM {sql})::bigint % 1000000 = 0 THEN ''"
                f" ELSE to_char({utc}, '.US') END || '+00:00')"
            )
        return sql

    def obj(self, pairs: Sequence[tuple[str, str]]) -> str:
        return "json_build_object(" + ", ".join(f"'{k}', {v}" for k, v in pairs) + ")"

    def one(self, obj: str, table: str, alias: str, where: str) -> str:
        return f"(SELECT {obj} FROM {table} {alias} WHERE {where})"

    def many(self, obj: str, table: str, alias: str, where: str, order: str) -> str:
        return (
            f"(SELECT coalesce(json_agg({obj} ORDER BY {order}), '[]'::json)"
            f" FROM {table} {alias} WHERE {where})"
        )

    @staticmethod
    def _by_exponent(currency: str | None, viewer_currency: str, render: dict[int, str]) -> str:
        if currency is None:
            return render[money.exponent(viewer_currency)]
        zero = ", ".join(quote(c) for c in _ZERO)
        three = ", ".join(quote(c) for c in _THREE)
        return (
            f"(CASE WHEN upper({currency}) IN ({zero}) THEN {render[0]}"
            f" WHEN upper({currency}) IN ({three}) THEN {render[3]} ELSE {render[2]} END)"
        )

    def amount(self, minor: str, currency: str | None, viewer_currency: str) -> str:
        render = {
            0: f"({minor})::text",
            2: f"round(({minor})::numeric / 100, 2)::text",
            3: f"round(({minor})::numeric / 1000, 3)::text",
        }
        return self._by_exponent(currency, viewer_currency, render)

    def formatted(self, minor: str, currency: str | None, viewer_currency: str) -> str:
        digits = "FM999,999,999,999,999,999,990"
        render = {
            0: f"to_char(abs({minor})::numeric, '{digits}')",
            2: f"to_char(abs({minor})::numeric / 100, '{digits}.00')",
            3: f"to_char(abs({minor})::numeric / 1000, '{digits}.000')",
        }
        number = self._by_exponent(currency, viewer_currency, render)
        if currency is None:
            code = viewer_currency.upper()
            symbol = quote(money.SYMBOLS.get(code, code + " "))
        else:
            cases = " ".join(
                f"WHEN {quote(code)} THEN {quote(sign)}" for code, sign in money.SYMBOLS.items()
            )
            symbol = f"(CASE upper({currency}) {cases} ELSE upper({currency}) || ' ' END)"
        return f"(CASE WHEN ({minor}) < 0 THEN '-' ELSE '' END || {symbol} || {number})"

    def text(self, obj: str) -> str:
        return f"({obj})::text"


class Sqlite(Dialect):
    name = "sqlite"

    def leaf(self, leaf: Leaf, sql: str, type_name: str) -> str:
        if leaf is Leaf.GID:
            return f"deskbill_gid({quote(type_name)}, {sql})"
        if leaf is Leaf.BOOL:
            return (
                f"(CASE WHEN {sql} IS NULL THEN NULL WHEN {sql} THEN json('true')"
                " ELSE json('false') END)"
            )
        if leaf is Leaf.INSTANT:
            # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
            return (
                f"(replace(CASE WHEN substr({sql}, 21, 6) IN ('', '000000')"
                f" THEN substr({sql}, 1, 19) ELSE substr({sql}, 1, 26) END, ' ', 'T')"
                " || '+00:00')"
            )
        return sql

    def obj(self, pairs: Sequence[tuple[str, str]]) -> str:
        return "json_object(" + ", ".join(f"'{k}', {v}" for k, v in pairs) + ")"

    def one(self, obj: str, table: str, alias: str, where: str) -> str:
        return f"json((SELECT {obj} FROM {table} {alias} WHERE {where}))"

    def many(self, obj: str, table: str, alias: str, where: str, order: str) -> str:
        return (
            f"json((SELECT json_group_array(json(o)) FROM (SELECT {obj} AS o"
            f" FROM {table} {alias} WHERE {where} ORDER BY {order})))"
        )

    def amount(self, minor: str, currency: str | None, viewer_currency: str) -> str:
        return f"deskbill_amount({minor}, {currency or quote(viewer_currency)})"

    def formatted(self, minor: str, currency: str | None, viewer_currency: str) -> str:
        return f"deskbill_formatted({minor}, {currency or quote(viewer_currency)})"

    def text(self, obj: str) -> str:
        return obj


def sqlite_functions() -> list[tuple[str, int, object]]:
    """The Python functions the SQLite SQL calls: the mappers' own formatting."""

    def gid(type_name: str, pk: int | None) -> str | None:
        return None if pk is None else encode(type_name, int(pk))

    # Both are NULL on the outer join's row of an empty page (a CASE may still give 0).
    def amount(minor: int | None, currency: str | None) -> str | None:
        if minor is None or currency is None:
            return None
        return str(money.to_decimal(int(minor), currency))

    def formatted(minor: int | None, currency: str | None) -> str | None:
        if minor is None or currency is None:
            return None
        return money.format_amount(int(minor), currency)

    return [("deskbill_gid", 2, gid), ("deskbill_amount", 2, amount),
            ("deskbill_formatted", 2, formatted)]  # fmt: skip


DIALECTS: dict[str, Dialect] = {"postgresql": Postgres(), "sqlite": Sqlite()}
