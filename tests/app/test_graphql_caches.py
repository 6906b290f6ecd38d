"""The validation cache can hit: its key includes the validation rule classes, so the
limiters' rules must be the same classes on every request (the read-graph bench found
per-request limiter instances minting new classes, and the cache never hitting)."""

from __future__ import annotations

from strawberry.extensions import AddValidationRules, ValidationCache

from app.graphql import build_schema


def _rule_classes(schema: object) -> list[type]:
    extensions = schema.get_extensions()  # type: ignore[attr-defined]
    return [
        rule
        for extension in extensions
        if isinstance(extension, AddValidationRules)
        for rule in extension.validation_rules
    ]


def test_limiter_rules_are_the_same_classes_on_every_request() -> None:
    schema = build_schema()
    first, second = _rule_classes(schema), _rule_classes(schema)
    assert len(first) == 2  # depth and aliases
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert any(isinstance(e, ValidationCache) for e in schema.get_extensions())


async def test_limits_still_apply_with_cached_rules() -> None:
    schema = build_schema()
    query = "{ " + " ".join(f"a{i}: __typename" for i in range(40)) + " }"
    for _ in range(2):
        result = await schema.execute(query)
        assert result.errors and "aliases" in result.errors[0].message
