"""The query cost, computed from the document alone (no server, no database)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from graphql import parse, print_ast

from app.cost import ASSUMED_LIST_SIZE, QueryTooComplexError, check_cost, cost_limit, query_cost
from app.graphql import build_schema
from app.settings import Settings
from schema.pagination import DEFAULT_PAGE_SIZE

SCHEMA = build_schema()
SETTINGS = Settings()
L = ASSUMED_LIST_SIZE

# The issue's first attack: five aliases of a payments/invoice cycle on one invoice.
CYCLE = (
    'invoice(id: "Invoice:1") { payments { invoice { payments { invoice { payments '
    "{ id amount { amount } } } } } } }"
)
ATTACK_CYCLE = "{ " + " ".join(f"a{i}: {CYCLE}" for i in range(5)) + " }"
# The second: thirty aliases of a full page of invoices with every nested list.
FULL_PAGE = """invoices(first: 100) { totalCount pageInfo { hasNextPage endCursor }
  nodes { number status account { name }
    lines { description unitPrice { amount } total { formatted } }
    payments { status amount { amount } } allocations { amount { amount } }
    refunds { amount { amount } } history { type } } }"""
ATTACK_PAGES = "{ " + " ".join(f"a{i}: {FULL_PAGE}" for i in range(30)) + " }"


def test_nested_lists_multiply() -> None:
    # invoice 1, payments L, invoice L, payments L², invoice L², payments L³, amount L³
    one = 1 + L + L + L**2 + L**2 + L**3 + L**3
    assert query_cost(SCHEMA, "{ " + CYCLE + " }") == one
    assert query_cost(SCHEMA, ATTACK_CYCLE) == 5 * one  # aliases each count


def test_the_issues_attacks_are_over_every_budget() -> None:
    for attack in (ATTACK_CYCLE, ATTACK_PAGES):
        cost = query_cost(SCHEMA, attack)
        assert cost > SETTINGS.cost_limit_admin >= SETTINGS.cost_limit_analyst
        with pytest.raises(QueryTooComplexError) as refused:
            check_cost(SCHEMA, attack, None, None, cost_limit(SETTINGS, "ANALYST"))
        assert refused.value.extensions == {
            "code": "QUERY_TOO_COMPLEX",
            "cost": cost,
            "limit": SETTINGS.cost_limit_analyst,
        }
        assert f"{cost:,}" in refused.value.message
        assert f"{SETTINGS.cost_limit_analyst:,}" in refused.value.message


def test_one_full_page_is_allowed_to_admins_and_analysts() -> None:
    cost = query_cost(SCHEMA, "{ " + FULL_PAGE + " }")
    assert cost <= SETTINGS.cost_limit_analyst
    assert check_cost(SCHEMA, "{ " + FULL_PAGE + " }", None, None, cost) == cost


def test_the_readme_examples_fit_a_members_budget() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = re.findall(r"```graphql\n(.*?)```", readme, re.S)
    assert examples
    for example in examples:
        assert 0 < query_cost(SCHEMA, example) <= SETTINGS.cost_limit_member, example


def test_page_size_comes_from_first_a_variable_or_the_default() -> None:
    doc = "query($n: Int) { invoices(first: $n) { nodes { account { id } } } }"
    assert query_cost(SCHEMA, doc, {"n": 10}) == 1 + 10 * 2
    assert query_cost(SCHEMA, doc, {}) == 1 + DEFAULT_PAGE_SIZE * 2
    with_default = "query($n: Int = 7) { invoices(first: $n) { nodes { id } } }"
    assert query_cost(SCHEMA, with_default) == 1 + 7
    # A page over the largest the API serves counts as the largest (the resolver
    # refuses it with its own message).
    assert query_cost(SCHEMA, "{ invoices(first: 5000) { nodes { id } } }") == 1 + 100


def test_the_page_size_is_not_inherited_by_deeper_lists() -> None:
    doc = "{ invoices(first: 10) { edges { node { lines { id } } } } }"
    assert query_cost(SCHEMA, doc) == 1 + 10 * (1 + (1 + L))  # edges, node, lines


def test_fragments_are_expanded_like_inline_selections() -> None:
    inline = "{ invoices(first: 3) { nodes { lines { id } payments { id } } } }"
    spread = (
        "{ invoices(first: 3) { nodes { ...Parts } } } "
        "fragment Parts on Invoice { lines { id } ...Pay } "
        "fragment Pay on Invoice { payments { id } }"
    )
    assert query_cost(SCHEMA, spread) == query_cost(SCHEMA, inline) == 1 + 3 * (1 + 2 * L)


def test_skip_and_include_are_honoured() -> None:
    doc = (
        "query($on: Boolean!) { invoices(first: 2) { nodes { "
        "lines @include(if: $on) { id } payments @skip(if: true) { id } } } }"
    )
    assert query_cost(SCHEMA, doc, {"on": False}) == 1 + 2
    assert query_cost(SCHEMA, doc, {"on": True}) == 1 + 2 * (1 + L)


def test_an_abstract_field_costs_its_most_expensive_type() -> None:
    doc = '{ node(id: "x") { ... on Invoice { payments { id } } ... on Account { id } } }'
    assert query_cost(SCHEMA, doc) == 1 + L


def test_a_fragment_bomb_is_costed_without_expanding_it() -> None:
    # Each fragment spreads the next twice: 2^40 copies if expanded naively.
    fragments = " ".join(
        f"fragment F{i} on Invoice {{ ...F{i + 1} sourceInvoice {{ ...F{i + 1} }} }}"
        for i in range(40)
    )
    doc = f'{{ invoice(id: "x") {{ ...F0 }} }} {fragments} fragment F40 on Invoice {{ id }}'
    assert query_cost(SCHEMA, doc) == 2**40  # invoice + Σ sourceInvoice copies


def test_an_operation_is_picked_by_name() -> None:
    doc = "query A { viewer { role } } query B { invoices(first: 4) { nodes { id } } }"
    assert query_cost(SCHEMA, doc, operation_name="B") == 5
    assert query_cost(SCHEMA, doc, operation_name="A") == 1
    assert query_cost(SCHEMA, doc, operation_name="C") == 0  # execution refuses it


def test_a_kept_answer_is_given_only_when_the_variables_it_read_agree() -> None:
    """One parsed document, asked again and again as a server asks it: every answer
    equals a fresh walk of the document's text, whatever the order of the calls."""
    document = parse(
        "query($on: Boolean!, $n: Int, $id: ID!) { invoice(id: $id) { id } "
        "invoices(first: $n) @include(if: $on) { nodes { lines { id } } } }"
    )
    text = print_ast(document)
    cases = [
        {"on": True, "n": 5, "id": "a"},
        {"on": False, "n": 5, "id": "b"},
        {"on": False, "n": 50, "id": "c"},  # $n is not read when $on is false
        {"on": True, "n": 50, "id": "d"},
        {"on": True, "id": "e"},  # $n missing: the default page
        {"on": True, "n": True, "id": "f"},  # True == 1, but not a page size
        {"on": True, "n": 1, "id": "g"},
        {"on": True, "n": 5, "id": "h"},
    ]
    for variables in cases * 2:
        assert query_cost(SCHEMA, document, variables) == query_cost(SCHEMA, text, variables)
    assert query_cost(SCHEMA, document, cases[0]) == 1 + 1 + 5 * (1 + L)
    assert query_cost(SCHEMA, document, cases[1]) == 1
    assert query_cost(SCHEMA, document, cases[5]) == 1 + 1 + DEFAULT_PAGE_SIZE * (1 + L)
    assert query_cost(SCHEMA, document, cases[6]) == 1 + 1 + 1 * (1 + L)
