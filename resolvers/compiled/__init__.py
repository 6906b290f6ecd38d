"""The compiled read path: a validated query whose every field is known here is
answered by one SQL statement that returns the response JSON already shaped, on the
request's one connection, without per-field Python work.

``CompiledReads`` is a schema extension: parsing, the parser and validation caches,
the depth, token and alias limits and every other validation rule have run before
``on_execute``; there it either sets the finished result (so Strawberry skips its
execution) or steps aside, and anything it does not know — mutations, unknown
fields, abstract types, @defer, any error while building the statement (a bad id or
page size raises the same coded error again on the Strawberry path) — goes down the
ordinary path unchanged.

Plans are cached for the process per (document, operation, scope kind, values of
the variables that steer @skip/@include); the SQL text of a plan's selection is
cached per database dialect and currency.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from graphql import DocumentNode, GraphQLError, GraphQLSchema, get_operation_ast
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.execution.collect_fields import FieldDetails
from graphql.execution.values import get_argument_values, get_variable_values
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection
from strawberry.extensions import SchemaExtension
from strawberry.types.arguments import convert_arguments
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET

from resolvers.compiled.plan import Collector, Node, Unsupported, directive_variables, named_type
from resolvers.compiled.roots import (
    ROOTS,
    ConnectionPart,
    ListAnswer,
    ListRoot,
    SingleAnswer,
    SingleRoot,
    node_sql,
)
from resolvers.compiled.sql import DIALECTS, sqlite_functions
from resolvers.context import RequestContext
from resolvers.viewer import Viewer
from services.errors import DomainError

__all__ = ["CompiledReads", "EncodedData", "Prepared", "prepare", "run"]

log = logging.getLogger("deskbill.compiled")

_PLAN_CACHE_SIZE = 512


class EncodedData(dict[str, Any]):
    """A result's ``data`` that is already the whole response body, encoded; the view
    sends ``encoded`` as is (the mapping itself stays empty)."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self.encoded = encoded


@dataclass
class Plan:
    key: str
    root: SingleRoot | ListRoot
    answer: SingleAnswer | ListAnswer
    field_details: FieldDetails
    field_name: str
    sql: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def sql_for(self, dialect: str, currency: str) -> list[str]:
        cached = self.sql.get((dialect, currency))
        if cached is None:
            cached = node_sql(self.answer, self.root.table, DIALECTS[dialect], currency)
            self.sql[(dialect, currency)] = cached
        return cached


_plans: dict[tuple[object, ...], Plan | None] = {}
_steering: dict[str, tuple[str, ...]] = {}


def _connection_parts(
    collector: Collector, type_name: str, conn_type: Any, group: list[FieldDetails]
) -> ListAnswer:
    parts: list[tuple[str, ConnectionPart]] = []
    shapes: list[Node] = []
    wants_total = wants_cursors = False
    for key, sub in collector.sub(conn_type, group).items():
        name = sub[0].node.name.value
        if name == "totalCount":
            parts.append((key, ("totalCount", None)))
            wants_total = True
        elif name == "__typename":
            parts.append((key, ("typename", conn_type.name)))
        elif name == "nodes":
            shapes.append(collector.node(type_name, sub))
            parts.append((key, ("nodes", len(shapes) - 1)))
        elif name == "pageInfo":
            info_type = named_type(conn_type.fields["pageInfo"])
            fields = []
            for info_key, info in collector.sub(info_type, sub).items():
                info_name = info[0].node.name.value
                wants_cursors |= info_name in ("startCursor", "endCursor")
                fields.append((info_key, info_name))
            parts.append((key, ("pageInfo", tuple(fields))))
        elif name == "edges":
            edge_type = named_type(conn_type.fields["edges"])
            fields = []
            for edge_key, edge in collector.sub(edge_type, sub).items():
                edge_name = edge[0].node.name.value
                if edge_name == "cursor":
                    wants_cursors = True
                    fields.append((edge_key, "cursor"))
                elif edge_name == "__typename":
                    fields.append((edge_key, f"__typename:{edge_type.name}"))
                else:
                    shapes.append(collector.node(type_name, edge))
                    fields.append((edge_key, f"node:{len(shapes) - 1}"))
            parts.append((key, ("edges", tuple(fields))))
        else:
            raise Unsupported(f"{conn_type.name}.{name}")
    return ListAnswer(parts, shapes, wants_total, wants_cursors)


def build_plan(collector: Collector) -> Plan:
    roots = collector.root()
    if len(roots) != 1:
        raise Unsupported("one root field per operation")
    ((key, group),) = roots.items()
    name = group[0].node.name.value
    root = ROOTS.get(name)
    if root is None:
        raise Unsupported(name)
    query_type = collector.schema.query_type
    assert query_type is not None
    returned = named_type(query_type.fields[name])
    answer: SingleAnswer | ListAnswer
    if isinstance(root, SingleRoot):
        answer = SingleAnswer(collector.node(root.type_name, group))
    else:
        answer = _connection_parts(collector, root.type_name, returned, group)
    return Plan(key=key, root=root, answer=answer, field_details=group[0], field_name=name)


def _arguments(schema: Any, plan: Plan, variables: Any) -> dict[str, Any]:
    gql_schema: GraphQLSchema = schema._schema
    query_type = gql_schema.query_type
    assert query_type is not None
    gql_field = query_type.fields[plan.field_name]
    raw = get_argument_values(gql_field, plan.field_details.node, variables)
    strawberry_field = gql_field.extensions["strawberry-definition"]
    converted = convert_arguments(
        raw,
        strawberry_field.arguments,
        scalar_registry=schema.schema_converter.scalar_registry,
        config=schema.config,
    )
    # The field's extensions see the arguments as on the resolver path: InputLimits
    # (schema/limits.py) refuses oversized lists, text and dates here too.
    for extension in strawberry_field.extensions:
        converted = extension.map_arguments(converted)
    return {k: None if v is UNSET else v for k, v in converted.items()}


async def _install_sqlite_functions(conn: AsyncConnection) -> None:
    raw = await conn.get_raw_connection()
    if raw.info.get("deskbill_compiled"):
        return
    driver: Any = raw.driver_connection
    for name, arity, function in sqlite_functions():
        await driver.create_function(name, arity, function, deterministic=True)
    raw.info["deskbill_compiled"] = True


@dataclass(frozen=True)
class Prepared:
    """A plan with the arguments of one request, ready to run on a connection."""

    plan: Plan
    args: dict[str, Any]


def prepare(
    schema: Any,
    document: DocumentNode | None,
    query: str,
    operation_name: str | None,
    raw_variables: dict[str, Any] | None,
    who: Viewer,
) -> Prepared | None:
    """The plan and arguments of the operation, or None when it is not ours to answer.
    Bad arguments raise their coded error (``DomainError``, ``GraphQLError``)."""
    gql_schema: GraphQLSchema = schema._schema
    operation = get_operation_ast(document, operation_name) if document is not None else None
    if operation is None or document is None:
        return None
    variables = get_variable_values(
        gql_schema, operation.variable_definitions or (), raw_variables or {}
    )
    if isinstance(variables, list):
        return None  # coercion errors: the Strawberry path reports them
    steering = _steering.get(query)
    if steering is None:
        steering = _steering[query] = directive_variables(document)
    key = (
        query,
        operation_name,
        who.account_ids is None,
        tuple(repr(variables.coerced.get(name)) for name in steering),
    )
    if key in _plans:
        plan = _plans[key]
    else:
        try:
            plan = build_plan(Collector(gql_schema, document, operation, variables))
        except Unsupported as why:
            log.debug("not compiled: %s", why)
            plan = None
        if len(_plans) >= _PLAN_CACHE_SIZE:
            _plans.clear()
        _plans[key] = plan
    if plan is None:
        return None
    return Prepared(plan, _arguments(schema, plan, variables))


async def run(
    prepared: Prepared, conn: AsyncConnection, who: Viewer, confirm: bool = False
) -> bytes | None:
    """The encoded response body of a prepared operation, from one statement. With
    ``confirm``, the same statement checks that ``who`` still holds (a viewer kept from
    an earlier request) and there is no body (None) when it does not."""
    plan = prepared.plan
    dialect = conn.dialect.name
    if dialect == "sqlite":
        await _install_sqlite_functions(conn)
    sql = plan.sql_for(dialect, who.currency)
    body = await plan.answer.run(plan.root, conn, who, prepared.args, sql, confirm)  # type: ignore[arg-type]
    if body is None:
        return None
    return ('{"data":{"' + plan.key + '":' + body + "}}").encode()


async def answer(execution_context: Any, conn: AsyncConnection, who: Viewer) -> bytes | None:
    """The encoded response of the operation, or None when it is not ours to answer."""
    prepared = prepare(
        execution_context.schema,
        execution_context.graphql_document,
        execution_context.query or "",
        execution_context.operation_name,
        execution_context.variables,
        who,
    )
    return None if prepared is None else await run(prepared, conn, who)


class CompiledReads(SchemaExtension):
    """Answers known query operations from one statement (see the module docstring)."""

    async def on_execute(self) -> AsyncIterator[None]:
        ec = self.execution_context
        ctx = ec.context
        if isinstance(ctx, RequestContext) and ctx.connection is not None:
            encoded = None
            if ctx.viewer is not None and ec.operation_type == OperationType.QUERY:
                try:
                    encoded = await answer(ec, ctx.connection, ctx.viewer)
                except (DomainError, GraphQLError):
                    # A bad id, page size or input limit: the resolver raises it again,
                    # coded.
                    encoded = None
                except (DBAPIError, PoolTimeout):
                    # The database is unwell or busy: answered as such (SERVICE_BUSY),
                    # not retried down a path that needs more connections.
                    await ctx.release_connection()
                    raise
                except Exception:
                    # Worth a look, but the ordinary path can still answer the read.
                    log.warning("compiled read fell back", exc_info=True)
                    encoded = None
            if encoded is None:
                await ctx.release_connection()
            else:
                ec.result = GraphQLExecutionResult(data=EncodedData(encoded))
                ctx.compiled_document = ec.graphql_document
        yield
