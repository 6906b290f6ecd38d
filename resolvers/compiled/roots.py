"""The root fields the compiled path answers, each as one statement: the row (or the
keyset page) chosen exactly as the Strawberry resolver chooses it, with its filters
and the viewer's tenant and account scope, and the selection built as JSON on top.

A list's ``totalCount`` is a subselect of the same statement, outer-joined so an
empty page still carries it; cursors are the only Python work per row, and only when
asked for (``encode_cursor``, the very function the Strawberry path uses).

With ``confirm``, the statement also asks whether the viewer still holds
(``resolvers.viewer.still_holds``): a one-row subquery every other part is joined to,
so the check and the answer are one snapshot; a viewer that no longer holds gets no
answer (None), and a single row is not even read for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Select,
    String,
    Table,
    bindparam,
    case,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from models import DocumentType, Invoice, Payment
from resolvers.compiled.plan import Node
from resolvers.compiled.sql import Dialect
from resolvers.pagination import Ordering, encode_cursor, page_size, page_statement
from resolvers.permissions import pk_of
from resolvers.query import (
    credit_notes_statement,
    invoice_sort_key,
    invoices_statement,
    payments_statement,
)
from resolvers.viewer import Viewer, holds_params, one_of, still_holds
from schema import filters as f
from schema.enums import SortDirection

if TYPE_CHECKING:
    from asyncpg import Connection as AsyncpgConnection

Args = dict[str, Any]


# -- which rows -------------------------------------------------------------------------


def _descending(sort: Any) -> bool:
    return bool(sort.direction == SortDirection.DESC)


def _invoices(who: Viewer, args: Args) -> tuple[Select[Any], Ordering]:
    sort = args.get("sort") or f.InvoiceSort()
    keys = (invoice_sort_key(sort.field.value), Invoice.id)
    return invoices_statement(who, args.get("filter")), Ordering(keys, _descending(sort))


def _credit_notes(who: Viewer, args: Args) -> tuple[Select[Any], Ordering]:
    sort = args.get("sort") or f.CreditNoteSort()
    keys = (invoice_sort_key(sort.field.value), Invoice.id)
    return credit_notes_statement(who, args.get("filter")), Ordering(keys, _descending(sort))


def _payments(who: Viewer, args: Args) -> tuple[Select[Any], Ordering]:
    sort = args.get("sort") or f.PaymentSort()
    keys = (getattr(Payment, sort.field.value), Payment.id)
    return payments_statement(who, args.get("filter")), Ordering(keys, _descending(sort))


@dataclass(frozen=True)
class SingleRoot:
    """One row by global id, as the resolver's loader finds it: in the viewer's
    organization, among the accounts they may see, of a document type if given."""

    type_name: str
    table: Table
    id_types: tuple[str, ...]
    document_type: str | None = None

    def statement(self, sql: str, member: bool, arrays: bool = False) -> Select[Any]:
        """The row's JSON by id; with ``arrays`` (PostgreSQL) a member's accounts bind
        as one array, so the statement compiles once for any number of them."""
        t = self.table
        where = [t.c.id == bindparam("pk"), t.c.organization_id == bindparam("org")]
        if self.document_type is not None:
            where.append(t.c.document_type == self.document_type)
        if member:
            where.append(one_of(t.c.account_id, "accounts", arrays))
        return select(literal_column(sql, String)).select_from(t).where(*where)


@dataclass(frozen=True)
class ListRoot:
    type_name: str
    table: Table
    page: Callable[[Viewer, Args], tuple[Select[Any], Ordering]]


_INVOICES: Table = Invoice.__table__  # type: ignore[assignment]
_PAYMENTS: Table = Payment.__table__  # type: ignore[assignment]

ROOTS: dict[str, SingleRoot | ListRoot] = {
    "invoice": SingleRoot("Invoice", _INVOICES, ("Invoice", "CreditNote")),
    "creditNote": SingleRoot(
        "CreditNote", _INVOICES, ("CreditNote", "Invoice"), DocumentType.CREDIT_NOTE
    ),
    "invoices": ListRoot("Invoice", _INVOICES, _invoices),
    "creditNotes": ListRoot("CreditNote", _INVOICES, _credit_notes),
    "payments": ListRoot("Payment", _PAYMENTS, _payments),
}


# -- the shapes of a connection's selection ---------------------------------------------

# A connection's response, in selection order: ("totalCount",), ("typename", name),
# ("pageInfo", ((key, field), ...)), ("nodes", node index),
# ("edges", ((key, "cursor" | "__typename:<name>" | "node:<index>"), ...)).
ConnectionPart = tuple[str, Any]


@dataclass
class SingleAnswer:
    node: Node
    statements: dict[tuple[str, bool, bool], Select[Any]] = field(default_factory=dict)
    # PostgreSQL: each statement compiled once, its SQL and its parameters' order.
    compiled: dict[tuple[str, bool, bool], tuple[str, tuple[str, ...]]] = field(
        default_factory=dict
    )

    async def run(
        self,
        root: SingleRoot,
        conn: AsyncConnection,
        who: Viewer,
        args: Args,
        sql: list[str],
        confirm: bool = False,
    ) -> str | None:
        # Built once per plan, dialect, currency, scope kind and check, with the id,
        # the organization and a member's accounts as parameters.
        member = who.account_ids is not None
        pg = conn.dialect.name == "postgresql"
        key = (sql[0], member, confirm)
        stmt: Select[Any] | None = self.statements.get(key)
        if stmt is None:
            stmt = root.statement(sql[0], member, arrays=pg)
            if confirm:
                viewer = _viewer_row(who, arrays=pg)
                guarded: Select[Any] = select(
                    viewer.c.holds, case((viewer.c.holds, stmt.scalar_subquery()))
                )
                stmt = guarded.select_from(viewer)
            self.statements[key] = stmt
        params: dict[str, Any] = {
            "pk": pk_of(args["id"], *root.id_types),
            "org": who.organization_id,
        }
        if who.account_ids is not None:
            params["accounts"] = sorted(who.account_ids)
        if confirm:
            params.update(holds_params(who))
        if pg:
            # The SQL as compiled once, its values in order: no compilation per request.
            compiled = self.compiled.get(key)
            if compiled is None:
                done = stmt.compile(dialect=conn.dialect)
                compiled = self.compiled[key] = (done.string, tuple(done.positiontup or ()))
            text, names = compiled
            (row,) = await _fetch(conn, text, tuple(params[n] for n in names))
        else:
            row = (await conn.execute(stmt, params)).one()
        if confirm:
            holds, value = row
            if not holds:
                return None
        else:
            value = row[0]
        return "null" if value is None else str(value)

    def nodes(self) -> list[Node]:
        return [self.node]


async def _fetch(conn: AsyncConnection, text: str, values: tuple[Any, ...]) -> list[Any]:
    """The rows of compiled SQL on PostgreSQL: straight to asyncpg (its own
    prepared-statement cache), past SQLAlchemy's cursor and result machinery, for the
    hottest statements there are; whoever listens for statements (the tests counting
    them) gets the very same one through SQLAlchemy instead."""
    sync = conn.sync_connection
    if sync is not None and not sync.dispatch.before_cursor_execute:
        driver: AsyncpgConnection = sync.connection.driver_connection
        return list(await driver.fetch(text, *values))
    return list((await conn.exec_driver_sql(text, values)).all())


def _viewer_row(who: Viewer, arrays: bool = False) -> Any:
    """One row, one column: whether ``who`` still holds."""
    holds = still_holds(who.account_ids is not None, arrays)
    return select(holds.label("holds")).subquery("viewer")


# PostgreSQL: pages' statements as compiled for one viewer and one set of arguments
# (no cursor), at most this many in the process (a few kilobytes each). Building a
# page's statement costs more Python than the rest of the answer; the same viewer
# asking for the same first page again (a dashboard, a list refreshed) reuses it. The
# key holds everything a statement is built from: the root, the selection's SQL,
# whether it counts, the viewer check, the whole viewer and the arguments.
MEMO_SIZE = 512
_memo: dict[tuple[object, ...], _Compiled] = {}


@dataclass(frozen=True)
class _Compiled:
    """A page's statement as SQL and its parameters' values in order, for the driver,
    and how many sort keys end each row."""

    text: str
    values: tuple[Any, ...]
    width: int


@dataclass
class ListAnswer:
    parts: list[tuple[str, ConnectionPart]]
    node_shapes: list[Node]
    wants_total: bool
    wants_cursors: bool

    def nodes(self) -> list[Node]:
        return self.node_shapes

    async def run(
        self,
        root: ListRoot,
        conn: AsyncConnection,
        who: Viewer,
        args: Args,
        sql: list[str],
        confirm: bool = False,
    ) -> str | None:
        limit = page_size(args.get("first"))
        after = args.get("after")
        memo_key: tuple[object, ...] | None = None
        compiled: _Compiled | None = None
        if conn.dialect.name == "postgresql" and after is None:
            args_text = repr(sorted(args.items()))
            memo_key = (root.type_name, tuple(sql), self.wants_total, confirm, who, args_text)
            compiled = _memo.get(memo_key)
        rows: list[Any]
        if compiled is None:
            params = holds_params(who) if confirm else {}
            stmt, ordering = self._statement(root, who, args, sql, confirm, limit, after)
            width = len(ordering.keys)
            if memo_key is None:
                rows = list((await conn.execute(stmt, params)).all())
            else:
                compiled = self._remember(memo_key, stmt, params, width, conn)
        if compiled is not None:
            width = compiled.width
            rows = await _fetch(conn, compiled.text, compiled.values)
        if confirm:
            if not rows or not rows[0][-1]:
                return None
            rows = [r[:-1] for r in rows]
        total = int(rows[0][0]) if rows else 0
        pk_at = 1 + len(sql)
        # The page's id is NULL only on the outer join's row of an empty page.
        rows = [r for r in rows if r[pk_at] is not None]
        has_next = len(rows) > limit
        rows = rows[:limit]
        cursors = [encode_cursor(list(r[-width:])) for r in rows] if self.wants_cursors else []
        return self._render(rows, cursors, total, has_next, after is not None)

    def _statement(
        self,
        root: ListRoot,
        who: Viewer,
        args: Args,
        sql: list[str],
        confirm: bool,
        limit: int,
        after: str | None,
    ) -> tuple[Select[Any], Ordering]:
        base, ordering = root.page(who, args)
        # The page is chosen on ids and sort keys only (a narrow subquery, read from
        # the sort's index); the rows are joined back by primary key for the JSON.
        pk = root.table.c.id
        narrow = base.with_only_columns(pk.label("pk"))
        page = page_statement(narrow, ordering, limit=limit, after=after).subquery("p")
        width = len(ordering.keys)
        keys = list(page.c)[-width:]
        rows_from = page.join(root.table, root.table.c.id == page.c.pk)
        nodes = [literal_column(text, String).label(f"n{i}") for i, text in enumerate(sql)]
        viewer = _viewer_row(who) if confirm else None
        if self.wants_total:
            counted = select(func.count().label("total")).select_from(
                base.order_by(None).subquery()
            )
            count = counted.subquery("c")
            first: Any = count if viewer is None else viewer.join(count, true())
            stmt = select(count.c.total, *nodes, page.c.pk, *keys).select_from(
                first.outerjoin(rows_from, true())
            )
        else:
            stmt = select(literal_column("0").label("total"), *nodes, page.c.pk, *keys)
            stmt = stmt.select_from(
                rows_from if viewer is None else viewer.outerjoin(rows_from, true())
            )
        if viewer is not None:
            # Last, so every other column keeps its place; read and dropped by ``run``.
            stmt = stmt.add_columns(viewer.c.holds)
        direction = [k.desc() if ordering.descending else k.asc() for k in keys]
        return stmt.order_by(*direction), ordering

    def _remember(
        self,
        key: tuple[object, ...],
        stmt: Select[Any],
        params: dict[str, Any],
        width: int,
        conn: AsyncConnection,
    ) -> _Compiled:
        state = stmt.compile(dialect=conn.dialect).construct_expanded_state(params)
        processors = state.processors
        values = [
            # As SQLAlchemy would send them: through each type's bind processor.
            processors[name](value) if name in processors else value
            for name, value in zip(
                state.positiontup or (), state.positional_parameters, strict=True
            )
        ]
        compiled = _Compiled(state.statement, tuple(values), width)
        if len(_memo) >= MEMO_SIZE:
            _memo.clear()
        _memo[key] = compiled
        return compiled

    def _render(
        self, rows: list[Any], cursors: list[str], total: int, has_next: bool, has_previous: bool
    ) -> str:
        out: list[str] = []
        for key, (kind, detail) in self.parts:
            if kind == "totalCount":
                value = str(total)
            elif kind == "typename":
                value = json.dumps(detail)
            elif kind == "nodes":
                value = "[" + ",".join(str(r[1 + detail]) for r in rows) + "]"
            elif kind == "pageInfo":
                value = _page_info(detail, cursors, has_next, has_previous)
            else:
                value = "[" + ",".join(_edge(detail, r, c) for r, c in _pairs(rows, cursors)) + "]"
            out.append(json.dumps(key) + ":" + value)
        return "{" + ",".join(out) + "}"


def _pairs(rows: list[Any], cursors: list[str]) -> list[tuple[Any, str]]:
    return list(zip(rows, cursors or [""] * len(rows), strict=True))


def _edge(detail: tuple[tuple[str, str], ...], row: Any, cursor: str) -> str:
    out = []
    for key, name in detail:
        if name == "cursor":
            value = json.dumps(cursor)
        elif name.startswith("__typename:"):
            value = json.dumps(name.partition(":")[2])
        else:
            value = str(row[1 + int(name.partition(":")[2])])
        out.append(json.dumps(key) + ":" + value)
    return "{" + ",".join(out) + "}"


def _page_info(
    detail: tuple[tuple[str, str], ...], cursors: list[str], has_next: bool, has_previous: bool
) -> str:
    out = []
    for key, name in detail:
        value: object
        if name == "hasNextPage":
            value = has_next
        elif name == "hasPreviousPage":
            value = has_previous
        elif name == "startCursor":
            value = cursors[0] if cursors else None
        elif name == "endCursor":
            value = cursors[-1] if cursors else None
        else:
            value = "PageInfo"
        out.append(json.dumps(key) + ":" + json.dumps(value))
    return "{" + ",".join(out) + "}"


def node_sql(
    answer: SingleAnswer | ListAnswer, table: Table, dialect: Dialect, currency: str
) -> list[str]:
    """The selection's SQL over the root table's row (named by the table itself)."""
    return [dialect.text(node.sql(dialect, table.name, currency)) for node in answer.nodes()]
