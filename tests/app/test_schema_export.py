"""schema.graphql is the SDL the code builds; this fails when it goes stale."""

from pathlib import Path

from app.graphql import build_schema

SDL = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_schema_graphql_matches_the_code() -> None:
    built = build_schema().as_str() + "\n"
    assert SDL.read_text() == built, "schema.graphql is stale: run `make schema` and commit it"
