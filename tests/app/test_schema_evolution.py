"""The public schema only changes compatibly, unless a change is deliberate and recorded.

``docs/schema/released-<version>.graphql`` is the schema of the newest release. Every
breaking change between it and ``schema.graphql`` (a removed field or type, a changed
argument, a narrower input — as graphql-core's ``find_breaking_changes`` finds them) must
be named in CHANGELOG.md under "Unreleased", by its coordinate (``Type.field``), so it
lands on purpose and clients hear of it. A field that is removed must have been deprecated
in the released schema first.
"""

from __future__ import annotations

import re
from pathlib import Path

from graphql import build_schema, find_breaking_changes
from graphql.utilities import BreakingChangeType

ROOT = Path(__file__).resolve().parents[2]
RELEASES = ROOT / "docs" / "schema"


def _version(path: Path) -> tuple[int, ...]:
    found = re.search(r"released-(\d+(?:\.\d+)*)\.graphql$", path.name)
    assert found, f"{path.name} is not named released-<version>.graphql"
    return tuple(int(part) for part in found.group(1).split("."))


def _released() -> Path:
    releases = sorted(RELEASES.glob("released-*.graphql"), key=_version)
    assert releases, "docs/schema/ holds no released schema"
    return releases[-1]


def _unreleased_changelog() -> str:
    text = (ROOT / "CHANGELOG.md").read_text()
    start = text.index("## Unreleased")
    rest = text[start + len("## Unreleased") :]
    end = rest.find("\n## ")
    return rest if end < 0 else rest[:end]


def _coordinate(description: str) -> str:
    """``Invoice.updatedAt`` or ``Invoice`` from graphql-core's sentence."""
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", description)
    dotted = [word for word in words if "." in word]
    return dotted[0] if dotted else words[0]


def test_breaking_changes_are_deliberate_and_recorded() -> None:
    released = build_schema(_released().read_text())
    current = build_schema((ROOT / "schema.graphql").read_text())
    recorded = _unreleased_changelog()
    unrecorded = [
        f"{change.type.name}: {change.description}"
        for change in find_breaking_changes(released, current)
        if f"`{_coordinate(change.description)}`" not in recorded
    ]
    assert unrecorded == [], (
        "breaking schema changes must be named (as `Type.field`) in CHANGELOG.md under "
        "'## Unreleased'"
    )


def test_removed_fields_were_deprecated_first() -> None:
    released = build_schema(_released().read_text())
    current = build_schema((ROOT / "schema.graphql").read_text())
    removed = [
        change.description
        for change in find_breaking_changes(released, current)
        if change.type == BreakingChangeType.FIELD_REMOVED
    ]
    undeprecated = []
    for description in removed:
        type_name, field_name = _coordinate(description).split(".", 1)
        field = released.type_map[type_name].fields[field_name]  # type: ignore[attr-defined]
        if field.deprecation_reason is None:
            undeprecated.append(description)
    assert undeprecated == []


def test_the_check_catches_a_removed_field() -> None:
    """The comparison itself works: removing a field is a breaking change it reports."""
    released = build_schema('type Query { a: Int @deprecated(reason: "use b") b: Int }')
    current = build_schema("type Query { b: Int }")
    changes = find_breaking_changes(released, current)
    assert [(c.type, _coordinate(c.description)) for c in changes] == [
        (BreakingChangeType.FIELD_REMOVED, "Query.a")
    ]
