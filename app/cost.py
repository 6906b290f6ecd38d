"""What a GraphQL document may cost, computed from the document before it runs.

The cost of an operation is the number of objects its response can hold at most:
every selected field whose type is an object (or interface/union) counts once per
parent it can appear under, and a list multiplies what is selected inside it by its
size. Scalar leaves are free; the response-size bound covers their bytes.

List sizes:

* a field with a ``first`` argument (the keyset-paginated connections) makes the
  lists directly inside it (``edges``, ``nodes``) as long as ``first`` — the value
  given (a literal or a variable), else the argument's default, else the API's
  default page size, and never more than the largest page the API serves;
* every other list (``Invoice.payments``, ``lines``, ``history``, ``Viewer.accounts``,
  …) has no page argument and is counted as ``ASSUMED_LIST_SIZE`` long, a documented
  guess larger than what ordinary accounts hold.

Aliases count as separate fields, fragments are expanded where they are spread (each
fragment's cost per type is computed once, so a fragment "bomb" cannot make this
function slow), ``@skip``/``@include`` are honoured, and for an abstract type the most
expensive of its possible object types is counted.

``query_cost`` is a pure function over graphql-core's schema and document: any path
that answers GraphQL (strawberry's execution or a compiled read path) calls it, or
``check_cost``, with the same arguments and gets the same answer. Its answer is kept
per parsed document (the same object for a document the view has seen) together with
the variables the walk read and their values: a later call whose variables agree on
exactly those gets the kept answer, since the walk would take the same path. A
document whose variables steer nothing (``invoice(id: $id)``) is walked once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from graphql import (
    BooleanValueNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
    VariableNode,
    get_named_type,
    is_abstract_type,
    is_composite_type,
    parse,
)
from strawberry import Schema as StrawberrySchema

from app.settings import Settings
from models.enums import Role
from schema.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

ASSUMED_LIST_SIZE = 20
"""How long a list without a page argument is taken to be."""

PAGE_ARGUMENT = "first"
CODE = "QUERY_TOO_COMPLEX"


@dataclass
class _Walk:
    schema: GraphQLSchema
    variables: Mapping[str, object]
    defaults: Mapping[str, ValueNode]
    fragments: Mapping[str, FragmentDefinitionNode]
    memo: dict[tuple[int, str, int | None], int] = field(default_factory=dict)
    open_fragments: set[str] = field(default_factory=set)
    # Each variable the walk looked at: (name, given?, type, value given).
    reads: dict[str, _Read] = field(default_factory=dict)

    def value(self, node: ValueNode) -> object:
        if isinstance(node, VariableNode):
            name = node.name.value
            given = self.variables.get(name)
            self.reads[name] = (name, name in self.variables, type(given), given)
            if name in self.variables:
                return self.variables[name]
            default = self.defaults.get(name)
            return None if default is None else self.value(default)
        if isinstance(node, IntValueNode):
            return int(node.value)
        if isinstance(node, BooleanValueNode):
            return node.value
        return None

    def included(self, node: FieldNode | FragmentSpreadNode | InlineFragmentNode) -> bool:
        for directive in node.directives or ():
            name = directive.name.value
            if name not in ("skip", "include"):
                continue
            condition = next(
                (
                    self.value(arg.value)
                    for arg in directive.arguments or ()
                    if arg.name.value == "if"
                ),
                None,
            )
            # An unreadable condition counts the selection: the cost errs high.
            if name == "skip" and condition is True:
                return False
            if name == "include" and condition is False:
                return False
        return True

    def page_size(self, node: FieldNode, default: object) -> int:
        given: object = default
        for arg in node.arguments or ():
            if arg.name.value == PAGE_ARGUMENT:
                given = self.value(arg.value)
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            return DEFAULT_PAGE_SIZE
        return min(given, MAX_PAGE_SIZE)

    def applies(self, type_condition: str | None, concrete: GraphQLObjectType) -> bool:
        if type_condition is None or type_condition == concrete.name:
            return True
        condition = self.schema.get_type(type_condition)
        return is_abstract_type(condition) and self.schema.is_sub_type(condition, concrete)  # type: ignore[arg-type]

    def selection(
        self, selection_set: SelectionSetNode, concrete: GraphQLObjectType, page: int | None
    ) -> int:
        """Objects built under one ``concrete`` object for ``selection_set``."""
        key = (id(selection_set), concrete.name, page)
        if key in self.memo:
            return self.memo[key]
        total = 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                if self.included(node):
                    total += self.field(node, concrete, page)
            elif isinstance(node, InlineFragmentNode):
                condition = node.type_condition.name.value if node.type_condition else None
                if self.included(node) and self.applies(condition, concrete):
                    total += self.selection(node.selection_set, concrete, page)
            elif isinstance(node, FragmentSpreadNode):
                name = node.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in self.open_fragments or not self.included(node):
                    continue  # unknown or cyclic: validation refuses the document anyway
                if self.applies(fragment.type_condition.name.value, concrete):
                    self.open_fragments.add(name)
                    try:
                        total += self.selection(fragment.selection_set, concrete, page)
                    finally:
                        self.open_fragments.discard(name)
        self.memo[key] = total
        return total

    def field(self, node: FieldNode, parent: GraphQLObjectType, page: int | None) -> int:
        definition = parent.fields.get(node.name.value)
        if definition is None or node.selection_set is None:
            return 0  # a leaf, __typename, or a field validation will refuse
        named = get_named_type(definition.type)
        if not is_composite_type(named):
            return 0
        count = 1
        output: GraphQLOutputType = definition.type
        while isinstance(output, (GraphQLNonNull, GraphQLList)):
            if isinstance(output, GraphQLList):
                count *= page if page is not None else ASSUMED_LIST_SIZE
            output = output.of_type
        inner_page: int | None = None
        argument = definition.args.get(PAGE_ARGUMENT)
        if argument is not None:
            inner_page = self.page_size(node, argument.default_value)
        if is_abstract_type(named):
            candidates = list(self.schema.get_possible_types(named))  # type: ignore[arg-type]
        else:
            candidates = [named]  # type: ignore[list-item]
        inner = max(
            (self.selection(node.selection_set, kind, inner_page) for kind in candidates),
            default=0,
        )
        return count * (1 + inner)


_Read = tuple[str, bool, type, object]
_Reads = tuple[_Read, ...]


def _agrees(variables: Mapping[str, object], read: _Read) -> bool:
    name, given, kind, value = read
    if name not in variables:
        return not given
    now = variables[name]
    # Compared with the type as well: True == 1, but they cost differently.
    return given and type(now) is kind and now == value


# (schema, document, operation name) -> the two objects (held, so their ids stay
# theirs) and up to _VARIANTS answers, each with the variable reads it depended on.
_KEPT_DOCUMENTS = 512
_VARIANTS = 16
_kept: dict[tuple[int, int, str | None], tuple[object, object, list[tuple[_Reads, int]]]] = {}


def _graphql_schema(schema: GraphQLSchema | StrawberrySchema) -> GraphQLSchema:
    return schema if isinstance(schema, GraphQLSchema) else schema._schema


def _operation(
    document: DocumentNode, operation_name: str | None
) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name and o.name.value == operation_name), None)


def query_cost(
    schema: GraphQLSchema | StrawberrySchema,
    document: DocumentNode | str,
    variables: Mapping[str, object] | None = None,
    operation_name: str | None = None,
) -> int:
    """The most objects the operation's response can hold (see the module docstring).

    An operation that cannot be picked (unknown ``operation_name``, several operations
    and no name) costs 0: execution refuses it with its own error.
    """
    gql_schema = _graphql_schema(schema)
    if isinstance(document, str):
        document = parse(document)
    given = variables or {}
    key = (id(gql_schema), id(document), operation_name)
    held = _kept.get(key)
    if held is not None:
        for reads, cost in held[2]:
            if all(_agrees(given, read) for read in reads):
                return cost
    cost, reads = _walked_cost(gql_schema, document, given, operation_name)
    if held is None:
        if len(_kept) >= _KEPT_DOCUMENTS:
            _kept.clear()
        held = _kept[key] = (gql_schema, document, [])
    if len(held[2]) < _VARIANTS:
        held[2].append((reads, cost))
    return cost


def _walked_cost(
    gql_schema: GraphQLSchema,
    document: DocumentNode,
    variables: Mapping[str, object],
    operation_name: str | None,
) -> tuple[int, _Reads]:
    operation = _operation(document, operation_name)
    if operation is None:
        return 0, ()
    root = gql_schema.get_root_type(operation.operation)
    if root is None:
        return 0, ()
    walk = _Walk(
        schema=gql_schema,
        variables=variables,
        defaults={
            d.variable.name.value: d.default_value
            for d in operation.variable_definitions or ()
            if d.default_value is not None
        },
        fragments={
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        },
    )
    cost = walk.selection(operation.selection_set, root, None)
    return cost, tuple(walk.reads.values())


def cost_limit(settings: Settings, role: Role | str | None) -> int:
    """The budget of one operation for a viewer of ``role`` (anonymous: the member's)."""
    if role == Role.ADMIN:
        return settings.cost_limit_admin
    if role == Role.ANALYST:
        return settings.cost_limit_analyst
    return settings.cost_limit_member


class QueryTooComplexError(GraphQLError):
    """The refusal of an operation over its budget, already coded for the client."""

    def __init__(self, cost: int, limit: int) -> None:
        super().__init__(
            f"This query could return up to {cost:,} objects, over this account's limit "
            f"of {limit:,}. Ask for smaller pages (`first`), fewer nested lists or fewer "
            "aliases, and page through the rest.",
            extensions={"code": CODE, "cost": cost, "limit": limit},
        )


def check_cost(
    schema: GraphQLSchema | StrawberrySchema,
    document: DocumentNode | str,
    variables: Mapping[str, object] | None,
    operation_name: str | None,
    limit: int,
) -> int:
    """``query_cost`` of the operation, or ``QueryTooComplexError`` when over ``limit``."""
    cost = query_cost(schema, document, variables, operation_name)
    if cost > limit:
        raise QueryTooComplexError(cost, limit)
    return cost
