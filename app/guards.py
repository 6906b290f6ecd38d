"""Checks every GraphQL operation passes after validation and before anything runs:
no NUL character in any string of the request, a cost within the viewer's budget, and
that cost taken from the caller's and the organization's buckets (``app.ratelimit``:
``RATE_LIMITED``, HTTP 429, when they cannot pay for it yet).

A request with the header ``X-Query-Cost: include`` gets the cost and its buckets'
state in the response's ``extensions.cost`` (Shopify's ``requestedQueryCost`` and
``throttleStatus``); it is opt-in so that ordinary answers stay byte-for-byte what
they were (they are compared and cached by clients).

They run in one schema extension (``RequestGuards.on_execute``), so queries,
mutations and subscriptions, over HTTP and websockets, are all checked, and a refused
operation touches no resolver and no database.

Heavy operations (cost over ``heavy_query_cost``) also take a place in the process's
``HeavyLane`` (``heavy_query_concurrency`` places) for their execution: clients
looping the heaviest allowed query then take turns instead of sharing the event loop
among themselves and everybody else, so ordinary requests keep most of it. Waiting
for a place counts against the request's deadline (``app.edge``), which answers
``SERVICE_BUSY`` when it runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
)
from strawberry import Schema as StrawberrySchema
from strawberry.extensions import SchemaExtension

from app.cost import check_cost, cost_limit
from app.ratelimit import CostBuckets, Grant
from app.settings import Settings
from services.errors import ValidationError

NUL = "\x00"
COST_HEADER = "x-query-cost"


def nul_refusal(where: str) -> GraphQLError:
    return GraphQLError(
        f"{where} contains a NUL character (U+0000), which no text in this API may "
        "contain; remove it and send the request again.",
        extensions={"code": ValidationError.code, "field": where},
    )


def _value_nul(node: ValueNode, path: str) -> str | None:
    if isinstance(node, StringValueNode):
        return path if NUL in node.value else None
    if isinstance(node, ListValueNode):
        for index, item in enumerate(node.values):
            if found := _value_nul(item, f"{path}[{index}]"):
                return found
    if isinstance(node, ObjectValueNode):
        for entry in node.fields:
            if found := _value_nul(entry.value, f"{path}.{entry.name.value}"):
                return found
    return None


def _selection_nul(selection_set: SelectionSetNode | None, path: str) -> str | None:
    for node in selection_set.selections if selection_set else ():
        here = path
        if isinstance(node, FieldNode):
            name = (node.alias or node.name).value
            here = f"{path}.{name}" if path else name
            for argument in node.arguments or ():
                if found := _value_nul(argument.value, f"{here}({argument.name.value})"):
                    return found
        for directive in getattr(node, "directives", None) or ():
            for argument in directive.arguments or ():
                if found := _value_nul(argument.value, f"{here}@{directive.name.value}"):
                    return found
        if found := _selection_nul(getattr(node, "selection_set", None), here):
            return found
    return None


def document_nul(document: DocumentNode) -> str | None:
    """Where a string literal of ``document`` holds a NUL (``invoices(filter).number``)."""
    for definition in document.definitions:
        prefix = ""
        if isinstance(definition, FragmentDefinitionNode):
            prefix = f"fragment {definition.name.value}: "
        if isinstance(definition, OperationDefinitionNode):
            for variable in definition.variable_definitions or ():
                if variable.default_value is not None and (
                    found := _value_nul(variable.default_value, f"${variable.variable.name.value}")
                ):
                    return f"the default of {found}"
        if isinstance(definition, (OperationDefinitionNode, FragmentDefinitionNode)):
            if found := _selection_nul(definition.selection_set, ""):
                return prefix + found
    return None


def variables_nul(value: object, path: str) -> str | None:
    """Where a JSON value (the request's variables) holds a NUL, in a string or a key."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and NUL in key:
                return f"a key of {path}"
            if found := variables_nul(item, f"{path}.{key}"):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := variables_nul(item, f"{path}[{index}]"):
                return found
    return None


def request_nul(
    query: str | None, document: DocumentNode, variables: Mapping[str, object] | None
) -> str | None:
    """Where a NUL hides in an operation: its variables, or its document's literals.

    A raw NUL cannot get past the GraphQL lexer, so the document is only walked when
    its text has a unicode escape (``\\u0000``, ``\\u{0}``).
    """
    for name, value in (variables or {}).items():
        if found := variables_nul(value, f"${name}"):
            return f"the variable {found}"
    if query is None or "\\u" in query:
        return document_nul(document)
    return None


class HeavyLane:
    """The places heavy operations of one process take turns for."""

    def __init__(self, settings: Settings) -> None:
        self.threshold = settings.heavy_query_cost
        self.places = asyncio.Semaphore(max(1, settings.heavy_query_concurrency))


def _caller(viewer: object) -> tuple[str, int] | None:
    """The key of a caller's bucket: its API key, else its user."""
    api_key_id = getattr(viewer, "api_key_id", None)
    if isinstance(api_key_id, int):
        return ("api_key", api_key_id)
    user_id = getattr(viewer, "user_id", None)
    if isinstance(user_id, int):
        return ("user", user_id)
    return None


def _asks_for_cost(request: object) -> bool:
    headers = getattr(request, "headers", None)
    value = headers.get(COST_HEADER) if headers is not None else None
    return isinstance(value, str) and value.strip().lower() in {"include", "1", "true"}


@dataclass(frozen=True)
class Admission:
    """An operation let through: its cost, and what its buckets gave (when asked for)."""

    cost: int
    grant: Grant | None


def admit(
    settings: Settings,
    buckets: CostBuckets | None,
    schema: GraphQLSchema | StrawberrySchema,
    document: DocumentNode,
    query: str | None,
    variables: Mapping[str, object] | None,
    operation_name: str | None,
    viewer: object,
    request: object,
) -> Admission:
    """No NUL, a cost within the viewer's budget, and that cost taken from the caller's
    and the organization's buckets; each refusal raised as an already coded
    ``GraphQLError`` having taken nothing."""
    if where := request_nul(query, document, variables):
        raise nul_refusal(where)
    role = getattr(viewer, "role", None)
    limit = cost_limit(settings, role)
    if buckets is not None:
        # A bucket smaller than the budget is the budget: nothing larger fits.
        limit = min(limit, buckets.largest_cost(role))
    cost = check_cost(schema, document, variables, operation_name, limit)
    caller = _caller(viewer)
    organization_id = getattr(viewer, "organization_id", None)
    grant = None
    if buckets is not None and caller is not None and organization_id is not None:
        # RateLimitedError, coded, when the buckets cannot pay yet.
        grant = buckets.take(organization_id=organization_id, caller=caller, role=role, cost=cost)
    return Admission(cost, grant if _asks_for_cost(request) else None)


class RequestGuards(SchemaExtension):
    """No NUL anywhere in the request, a cost within the viewer's budget and its
    buckets, and heavy operations one lane of their own."""

    def __init__(
        self, *, settings: Settings, lane: HeavyLane, buckets: CostBuckets | None = None
    ) -> None:
        self.settings = settings
        self.lane = lane
        self.buckets = buckets
        self.grant: Grant | None = None

    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context
        document = context.graphql_document
        cost = 0
        if document is not None:
            # Raised as already coded GraphQLErrors: strawberry answers with them and
            # runs nothing (no resolver, no SQL).
            admitted = getattr(context.context, "admission", None)
            if not isinstance(admitted, Admission):
                admitted = admit(
                    self.settings,
                    self.buckets,
                    context.schema,
                    document,
                    context.query,
                    context.variables,
                    context.operation_name,
                    getattr(context.context, "viewer", None),
                    getattr(context.context, "request", None),
                )
            cost, self.grant = admitted.cost, admitted.grant
        if cost > self.lane.threshold:
            async with self.lane.places:
                yield
        else:
            yield

    def get_results(self) -> dict[str, object]:
        return {"cost": self.grant.extension()} if self.grant is not None else {}
