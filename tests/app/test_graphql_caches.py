"""The parser and validation caches really hit: a repeated document is parsed and
validated once (the bench found the validation cache silently missing)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import strawberry.schema.schema as strawberry_schema

from app.graphql import build_schema


async def test_a_repeated_document_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = build_schema()
    calls = 0
    validate = strawberry_schema.validate_document

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return validate(*args, **kwargs)

    monkeypatch.setattr(strawberry_schema, "validate_document", counting)
    # The cache outlives schemas and tests: a document no one has sent before.
    document = f"{{ fresh_{uuid.uuid4().hex}: __typename }}"
    for _ in range(5):
        result = await schema.execute(document)
        assert result.errors is None
    assert calls == 1


async def test_limits_still_apply_with_cached_rules() -> None:
    schema = build_schema()
    query = "{ " + " ".join(f"a{i}: __typename" for i in range(40)) + " }"
    for _ in range(2):
        result = await schema.execute(query)
        assert result.errors and "aliases" in result.errors[0].message
