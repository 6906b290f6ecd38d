"""From a validated query operation to a plan: which root field, which fields of
which rows, in which response order, under which keys (aliases, fragments, @skip and
@include resolved by graphql-core's own field collection, so merging follows the
spec exactly as execution would).

A plan depends on the document, the operation and the values of the variables
that steer @skip/@include; the cache keys it on those. It never depends on who asks:
scoping is applied when the root statement is built for a request.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    VariableNode,
)
from graphql.execution.collect_fields import (
    FieldDetails,
    FragmentDetails,
    collect_fields,
    collect_subfields,
)
from graphql.execution.values import VariableValues
from graphql.language import DirectiveNode, Visitor, visit

from resolvers.compiled.catalog import MONEY_FIELDS, TYPES, Amount, Column, Many, One
from resolvers.compiled.sql import Dialect, quote


class Unsupported(Exception):
    """The operation asks for something the compiler does not know."""


@dataclass(frozen=True)
class Typename:
    name: str


@dataclass(frozen=True)
class MoneyPart:
    amount: Amount
    keys: tuple[tuple[str, str], ...]  # (response key, Money field)


@dataclass(frozen=True)
class Relation:
    spec: One | Many
    node: Node


Part = Column | Typename | MoneyPart | Relation


@dataclass(frozen=True)
class Node:
    """The selection on one row of ``type_name``."""

    type_name: str
    parts: tuple[tuple[str, Part], ...]

    def sql(self, dialect: Dialect, alias: str, currency: str) -> str:
        """This selection as one JSON-building expression over the row ``alias``."""
        return _emit(self, dialect, alias, currency, itertools.count(1))


def _emit(node: Node, d: Dialect, alias: str, currency: str, aliases: Iterator[int]) -> str:
    pairs: list[tuple[str, str]] = []
    for key, part in node.parts:
        if isinstance(part, Column):
            id_type = part.id_type or node.type_name
            value = d.leaf(part.leaf, part.sql.format(t=alias), id_type)
            if part.affix is not None:
                value = f"({quote(part.affix[0])} || {value} || {quote(part.affix[1])})"
            pairs.append((key, value))
        elif isinstance(part, Typename):
            pairs.append((key, quote(part.name)))
        elif isinstance(part, MoneyPart):
            minor = part.amount.minor.format(t=alias)
            cur = None if part.amount.currency is None else part.amount.currency.format(t=alias)
            inner: list[tuple[str, str]] = []
            for sub_key, name in part.keys:
                if name == "amount":
                    inner.append((sub_key, d.amount(minor, cur, currency)))
                elif name == "currency":
                    inner.append((sub_key, cur or quote(currency)))
                elif name == "formatted":
                    inner.append((sub_key, d.formatted(minor, cur, currency)))
                else:
                    inner.append((sub_key, quote("Money")))
            pairs.append((key, d.obj(inner)))
        else:
            child = f"s{next(aliases)}"
            obj = _emit(part.node, d, child, currency, aliases)
            spec = part.spec
            where = spec.where.format(t=alias, s=child)
            if isinstance(spec, One):
                pairs.append((key, d.one(obj, spec.table, child, where)))
            else:
                order = spec.order.format(s=child)
                pairs.append((key, d.many(obj, spec.table, child, where, order)))
    if len(pairs) > 50:  # PostgreSQL functions take at most 100 arguments
        raise Unsupported("too many fields on one object")
    return d.obj(pairs)


@dataclass
class Collector:
    """graphql-core's field collection bound to one request's document and variables."""

    schema: GraphQLSchema
    document: DocumentNode
    operation: OperationDefinitionNode
    variables: VariableValues
    fragments: dict[str, FragmentDetails] = field(init=False)

    def __post_init__(self) -> None:
        self.fragments = {
            d.name.value: FragmentDetails(d)
            for d in self.document.definitions
            if isinstance(d, FragmentDefinitionNode)
        }

    def root(self) -> dict[str, list[FieldDetails]]:
        query = self.schema.query_type
        assert query is not None
        collected = collect_fields(
            self.schema, self.fragments, self.variables, query, self.operation
        )
        if collected.new_defer_usages:
            raise Unsupported("@defer")
        return _plain(collected.grouped_field_set)

    def sub(
        self, gql_type: GraphQLObjectType, details: list[FieldDetails]
    ) -> dict[str, list[FieldDetails]]:
        collected = collect_subfields(
            self.schema, self.fragments, self.variables, self.operation, gql_type, details
        )
        if collected.new_defer_usages:
            raise Unsupported("@defer")
        return _plain(collected.grouped_field_set)

    def object_type(self, name: str) -> GraphQLObjectType:
        found = self.schema.get_type(name)
        if not isinstance(found, GraphQLObjectType):
            raise Unsupported(name)
        return found

    def node(self, type_name: str, details: list[FieldDetails]) -> Node:
        known = TYPES.get(type_name)
        if known is None:
            raise Unsupported(type_name)
        parts: list[tuple[str, Part]] = []
        for key, group in self.sub(self.object_type(type_name), details).items():
            name = group[0].node.name.value
            if name == "__typename":
                parts.append((key, Typename(type_name)))
                continue
            spec = known.fields.get(name)
            if spec is None:
                raise Unsupported(f"{type_name}.{name}")
            if isinstance(spec, Column):
                parts.append((key, spec))
            elif isinstance(spec, Amount):
                keys = []
                for sub_key, sub_group in self.sub(self.object_type("Money"), group).items():
                    money_field = sub_group[0].node.name.value
                    if money_field not in MONEY_FIELDS:
                        raise Unsupported(f"Money.{money_field}")
                    keys.append((sub_key, money_field))
                parts.append((key, MoneyPart(spec, tuple(keys))))
            else:
                parts.append((key, Relation(spec, self.node(spec.target, group))))
        return Node(type_name, tuple(parts))


def _plain(grouped: dict[str, list[FieldDetails]]) -> dict[str, list[FieldDetails]]:
    for group in grouped.values():
        for details in group:
            if details.fragment_variable_values is not None or details.defer_usage is not None:
                raise Unsupported("fragment variables or @defer")
    return grouped


def named_type(gql_field: GraphQLField) -> GraphQLObjectType:
    """The object type a field returns, through non-null and list wrappers."""
    of = gql_field.type
    while isinstance(of, (GraphQLNonNull, GraphQLList)):
        of = of.of_type
    if not isinstance(of, GraphQLObjectType):
        raise Unsupported("abstract return type")
    return of


class _DirectiveVariables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_directive(self, node: DirectiveNode, *_: object) -> None:
        for argument in node.arguments or ():
            if isinstance(argument.value, VariableNode):
                self.names.add(argument.value.name.value)


def directive_variables(document: DocumentNode) -> tuple[str, ...]:
    """Variables that steer directives: their values are part of a plan's key."""
    found = _DirectiveVariables()
    visit(document, found)
    return tuple(sorted(found.names))
