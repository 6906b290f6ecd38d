"""Money in minor units: parsing per currency exponent, rounding, proration, splits."""

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services import money
from services.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.50", "USD", 1250),
        ("12.5", "USD", 1250),
        ("-3", "USD", -300),
        ("300", "JPY", 300),
        ("1.250", "KWD", 1250),
        ("0.001", "KWD", 1),
        ("1000000000000", "USD", 10**14),
    ],
)
def test_parse_respects_the_currency_exponent(text: str, currency: str, minor: int) -> None:
    assert money.parse(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "reason"),
    [
        ("12.345", "USD", "decimal places"),
        ("1.5", "JPY", "decimal places"),
        ("0.0001", "KWD", "decimal places"),
        ("NaN", "USD", "finite"),
        ("Infinity", "USD", "finite"),
        ("1000000000000.01", "USD", "10^12"),
        ("twelve", "USD", "decimal number"),
        ("", "USD", "decimal number"),
    ],
)
def test_parse_refuses_what_the_currency_cannot_hold(text: str, currency: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)):
        money.parse(text, currency)


def test_format_and_decimal_round_trip() -> None:
    assert money.format_amount(123450, "USD") == "$1,234.50"
    assert money.format_amount(-300, "JPY") == "-¥300"
    assert money.format_amount(1250, "KWD") == "KWD 1.250"
    assert money.to_decimal(5, "USD") == Decimal("0.05")
    assert str(money.to_decimal(1250, "KWD")) == "1.250"


def test_round_half_up_goes_away_from_zero_on_ties() -> None:
    assert money.round_half_up(5, 10) == 1
    assert money.round_half_up(4, 10) == 0
    assert money.round_half_up(-5, 10) == -1
    assert money.round_half_up(15, 10) == 2


def test_tax_is_exclusive_and_rounded_half_up_per_line() -> None:
    assert money.parse_tax_rate("8.25") == 82_500
    assert money.tax(1000, 82_500) == 83  # 82.5 → 83
    assert money.tax(-1000, 82_500) == -83
    with pytest.raises(ValidationError):
        money.parse_tax_rate("8.12345")


def test_seed_proration_example() -> None:
    # rules §8.2: $310/month starting Aug 15 → 310/31 × 17 = $170.00.
    assert money.prorate(31_000, 17, 31) == 17_000


@given(
    total=st.integers(min_value=-(10**14), max_value=10**14),
    weights=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=20).filter(
        lambda w: sum(w) > 0
    ),
)
def test_allocate_parts_always_sum_to_the_whole(total: int, weights: list[int]) -> None:
    parts = money.allocate(total, weights)
    assert sum(parts) == total
    assert len(parts) == len(weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = Decimal(total) * weight / sum(weights)
        assert abs(Decimal(part) - exact) < 1


def test_tax_rate_percent_is_exact_decimal_text() -> None:
    # normalize() alone would print 20 % as "2E+1" in exports and the graph.
    assert [str(money.tax_rate_percent(ppm)) for ppm in (200_000, 5_000, 82_500, 0, 1_000_000)] == [
        "20", "0.5", "8.25", "0", "100",
    ]  # fmt: skip
