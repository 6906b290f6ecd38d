"""Bounds on every argument of the root fields, checked once where arguments arrive.

Scalars (schema/scalars.py) settle what one value may look like; this module settles
the rest: the window of supported dates, how long each kind of text may be, how many
items a list may hold (a list filter becomes one SQL parameter per item, and the
drivers stop at 32,767), and that a range never ends before it starts. ``InputLimits`` is a field
extension attached to every root field that takes arguments (``guard``), so no
resolver needs its own checks and none can forget them. A refusal is ``VALIDATION``
naming the field; it happens before the resolver runs, so nothing is written.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime
from typing import Any

from graphql import (
    BREAK,
    ArgumentNode,
    DocumentNode,
    GraphQLError,
    Node,
    ObjectFieldNode,
    Visitor,
    visit,
)
from strawberry.extensions import FieldExtension
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

from schema.scalars import refused

# Outside this window a date is a typo or an attack, never a billing date: no plan,
# booking, filter or billing run reaches a year the engine cannot reason about.
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2099, 12, 31)
MAX_LIST_ITEMS = 1000
# Free text by field name (the Python name of an argument or input field).
MAX_TEXT = {
    "email": 254,
    "email_from": 254,
    "email_reply_to": 254,
    "recipient": 254,
    "name": 200,
    "resource_name": 200,
    "description": 500,
    "note": 2000,
    "reason": 2000,
    "search": 200,
    "number": 64,
    "timezone": 64,
    "idempotency_key": 255,
    "types": 64,
    "event_types": 64,
    "url": 2048,
    "legal_name": 200,
    "address": 1000,
    "tax_id": 64,
    # Base64 of the largest logo accepted (200 KiB), with room for line breaks.
    "logo_base64": 280_000,
}
# Any other text (ids, cursors, enum-like strings) is short; this bounds what slips by.
DEFAULT_MAX_TEXT = 1000
# (start, end) pairs of one input: the end may not come before the start.
RANGES = (("from_", "to"), ("start_date", "end_date"), ("starts_at", "ends_at"))


_NAMES: dict[type, dict[str, str]] = {}


def _graphql_names(cls: type) -> dict[str, str]:
    """Python name → GraphQL name of an input type's fields, worked out once per type."""
    names = _NAMES.get(cls)
    if names is None:
        definition = get_object_definition(cls)
        fields = definition.fields if definition is not None else ()
        names = {f.python_name: f.graphql_name or to_camel_case(f.python_name) for f in fields}
        _NAMES[cls] = names
    return names


def _graphql_name(owner: object, python_name: str) -> str:
    return _graphql_names(type(owner)).get(python_name) or to_camel_case(python_name)


def _day(value: date) -> date:
    """The calendar day of a date, or of an instant in UTC (naive ones are UTC)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    return value


def _comparable(value: date) -> tuple[int, int, int]:
    # A date against an instant compares by calendar day; aware or naive alike.
    return (value.year, value.month, value.day)


def _check_range(owner: object, path: str) -> None:
    for start_name, end_name in RANGES:
        start = getattr(owner, start_name, None)
        end = getattr(owner, end_name, None)
        if start is None or end is None:
            continue
        if isinstance(start, datetime) and isinstance(end, datetime):
            before = (
                end < start
                if (start.tzinfo is None) == (end.tzinfo is None)
                else _comparable(end) < _comparable(start)
            )
        elif isinstance(start, date) and isinstance(end, date):
            before = _comparable(end) < _comparable(start)
        else:
            continue
        if before:
            end_field = f"{path}.{_graphql_name(owner, end_name)}"
            start_field = f"{path}.{_graphql_name(owner, start_name)}"
            raise refused(f"`{end_field}` comes before `{start_field}`.", end_field)


def check_value(value: object, name: str, path: str) -> None:
    """Refuse ``value`` (the argument or input field ``name`` at ``path``) if it is
    too long, too many, or an input whose range runs backwards."""
    if isinstance(value, date):
        if not EARLIEST_DATE <= _day(value) <= LATEST_DATE:
            raise refused(
                f"`{path}` must lie between {EARLIEST_DATE.isoformat()} and "
                f"{LATEST_DATE.isoformat()}; got {value.isoformat()}.",
                path,
            )
    elif isinstance(value, str):
        cap = MAX_TEXT.get(name, DEFAULT_MAX_TEXT)
        if len(value) > cap:
            raise refused(f"`{path}` is at most {cap} characters; got {len(value)}.", path)
        if "\x00" in value:
            raise refused(f"`{path}` contains a NUL character, which no text may.", path)
    elif isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise refused(f"`{path}` takes at most {MAX_LIST_ITEMS} items; got {len(value)}.", path)
        cap = MAX_TEXT.get(name, DEFAULT_MAX_TEXT)
        for index, item in enumerate(value):
            # Lists of ids are the long ones: check their text here, naming the item
            # only when it is refused.
            if not isinstance(item, str) or len(item) > cap or "\x00" in item:
                check_value(item, name, f"{path}[{index}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            inner = getattr(value, field.name)
            if inner is not None:
                check_value(inner, field.name, f"{path}.{_graphql_name(value, field.name)}")
        _check_range(value, path)


class InputLimits(FieldExtension):
    """Checks a field's converted arguments before its resolver runs."""

    def map_arguments(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        for name, value in kwargs.items():
            if value is not None:
                check_value(value, name, to_camel_case(name))
        return kwargs


def guard(*roots: type) -> None:
    """Attach ``InputLimits`` to every field of ``roots`` that takes arguments."""
    for root in roots:
        definition = get_object_definition(root, strict=True)
        for field in definition.fields:
            if field.arguments and not any(isinstance(e, InputLimits) for e in field.extensions):
                field.extensions.append(InputLimits())


# "Variable '$input' has invalid value at .lines[0].amount: …" (graphql-core's words).
_VARIABLE_ERROR = re.compile(r"Variable '\$(\w+)' has invalid value(?: at ([^:]+))?: ")


class _FieldPath(Visitor):
    """The argument and input-field names down to one literal of the document."""

    def __init__(self, target: Node) -> None:
        super().__init__()
        self.target = target
        self.names: list[str] = []
        self.found: str | None = None

    def enter_argument(self, node: ArgumentNode, *_: object) -> None:
        self.names.append(node.name.value)

    def leave_argument(self, node: ArgumentNode, *_: object) -> None:
        self.names.pop()

    def enter_object_field(self, node: ObjectFieldNode, *_: object) -> None:
        self.names.append(node.name.value)

    def leave_object_field(self, node: ObjectFieldNode, *_: object) -> None:
        self.names.pop()

    def enter(self, node: Node, *_: object) -> object:
        if node is self.target:
            self.found = ".".join(self.names)
            return BREAK
        return None


def name_refused_field(error: GraphQLError, document: DocumentNode | None) -> None:
    """Give a scalar's refusal the field it concerns, in ``extensions.field`` (and, for
    a literal in the document, at the head of the message, which otherwise only points
    at a line and column)."""
    extensions = error.extensions or {}
    if extensions.get("code") != "VALIDATION" or "field" in extensions:
        return
    variable = _VARIABLE_ERROR.match(error.message)
    if variable is not None:
        field = variable.group(1) + (variable.group(2) or "")
        error.extensions = {**extensions, "field": field}
        return
    if document is None or not error.nodes:
        return
    finder = _FieldPath(error.nodes[0])
    visit(document, finder)
    if finder.found:
        error.extensions = {**extensions, "field": finder.found}
        error.message = f"`{finder.found}`: {error.message}"
        error.args = (error.message,)
