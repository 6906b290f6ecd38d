"""Money: integer minor units, per-currency exponents, exact parsing and rounding.

Every amount in the engine is an ``int`` in the currency's minor unit (cents for USD,
yen for JPY, fils for KWD). This module is the one place that turns decimal strings
into minor units and back, rounds half-up, prorates and splits totals exactly.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import pycountry

from services.errors import ValidationError

# ISO 4217 minor-unit exponents that differ from 2; everything else uses 2.
_EXPONENTS = {
    "BHD": 3, "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "IQD": 3, "ISK": 0, "JOD": 3,
    "JPY": 0, "KMF": 0, "KRW": 0, "KWD": 3, "LYD": 3, "OMR": 3, "PYG": 0, "RWF": 0,
    "TND": 3, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
}  # fmt: skip
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "AUD": "A$", "CAD": "CA$"}
# Read-only views for code that renders amounts elsewhere (the compiled read path's
# SQL), so the rules stay written once.
EXPONENTS: dict[str, int] = _EXPONENTS
SYMBOLS: dict[str, str] = _SYMBOLS

# rules §2.2: an amount beyond 10^12 major units is refused.
MAX_MAJOR_UNITS = 10**12
PPM = 1_000_000  # tax rates are parts per million (percent with four decimals)
# A line's quantity: the column is a 32-bit integer, and no desk is sold by the million.
MAX_QUANTITY = 1_000_000


def max_minor(currency: str) -> int:
    """The largest amount accepted, in minor units: 10^12 major units."""
    return MAX_MAJOR_UNITS * 10 ** exponent(currency)


def check_bound(minor: int, currency: str, field: str) -> int:
    """``minor`` when a computed amount (a product, a sum, a prorated price) stays
    within 10^12 major units, so every column and sum stays far inside int64."""
    if abs(minor) > max_minor(currency):
        raise ValidationError(
            f"{field} comes to more than the largest amount accepted (10^12 "
            f"{currency.upper()}); use smaller numbers."
        )
    return minor


# ISO 4217 codes that name no money: "no currency" and the testing code.
_NOT_MONEY = {"XXX", "XTS"}


def validate_currency(code: str) -> str:
    """The upper-cased ISO 4217 code, or VALIDATION for anything ISO does not list
    (pycountry carries the current list, so we do not keep one by hand)."""
    clean = code.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", clean):
        raise ValidationError("currency must be a three-letter ISO 4217 code such as USD.")
    if clean in _NOT_MONEY or pycountry.currencies.get(alpha_3=clean) is None:
        raise ValidationError(f"“{clean}” is not an ISO 4217 currency; use one such as USD or EUR.")
    return clean


# The only text accepted as an amount; schema/scalars.py holds the API to the same.
DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def parse(value: str | int | Decimal, currency: str, *, field: str = "amount") -> int:
    """Turn a decimal string in major units into minor units, or refuse it.

    ``"12.5"`` USD → 1250; ``"12.345"`` USD is refused (too many decimals), as are
    non-finite values and anything beyond 10^12 major units.
    """
    if isinstance(value, str) and not DECIMAL_TEXT.fullmatch(value):
        # Python's Decimal would also take " 5 ", "+3", "1_000", "٣" and "1e-2".
        if value.strip().lower().lstrip("+-") in ("nan", "snan", "inf", "infinity"):
            raise ValidationError(f"{field} must be a finite decimal number.")
        raise ValidationError(
            f"{field} must be a decimal number such as 12.50: ASCII digits, an optional "
            "leading minus and decimal point, nothing else."
        )
    try:
        number = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise ValidationError(f"{field} must be a decimal number such as 12.50.") from None
    if not number.is_finite():
        raise ValidationError(f"{field} must be a finite decimal number.")
    places = exponent(currency)
    scaled = number.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise ValidationError(
            f"{field} has more decimal places than {currency.upper()} allows ({places})."
        )
    if abs(number) > MAX_MAJOR_UNITS:
        raise ValidationError(f"{field} is beyond the largest amount accepted (10^12).")
    return int(scaled)


def to_decimal(minor: int, currency: str) -> Decimal:
    """Minor units as an exact Decimal in major units, with the currency's places."""
    places = exponent(currency)
    return Decimal(minor).scaleb(-places).quantize(Decimal(1).scaleb(-places))


def format_amount(minor: int, currency: str) -> str:
    """A human rendering: ``$1,234.50``, ``-¥300``, ``KWD 1.250``."""
    number = to_decimal(minor, currency)
    places = exponent(currency)
    digits = f"{abs(number):,.{places}f}"
    sign = "-" if minor < 0 else ""
    symbol = _SYMBOLS.get(currency.upper())
    return f"{sign}{symbol}{digits}" if symbol else f"{sign}{currency.upper()} {digits}"


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half away from zero, in integers only."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(abs(numerator), denominator)
    if remainder * 2 >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def parse_tax_rate(value: str | Decimal) -> int:
    """A percent with up to four decimals (``"8.25"``) as parts per million."""
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError("taxRate must be a percent such as 8.25.") from None
    if not number.is_finite() or number < 0 or number > 100:
        raise ValidationError("taxRate must be a percent between 0 and 100.")
    ppm = number.scaleb(4)
    if ppm != ppm.to_integral_value():
        raise ValidationError("taxRate allows at most four decimal places.")
    return int(ppm)


def tax_rate_percent(ppm: int) -> Decimal:
    """The percent as an exact decimal without trailing zeros: 20, 8.25, 0.5."""
    percent = Decimal(ppm).scaleb(-4).normalize() if ppm else Decimal(0)
    # normalize() writes 20 as 2E+1; a whole percent keeps its digits instead.
    return percent.quantize(Decimal(1)) if percent == percent.to_integral_value() else percent


def tax(amount: int, rate_ppm: int) -> int:
    """Exclusive tax on one line, rounded half-up to the minor unit (rules §2.3)."""
    return round_half_up(amount * rate_ppm, PPM)


def prorate(price: int, days_used: int, days_in_period: int) -> int:
    """``price ÷ days_in_period × days_used``, rounded half-up (rules §8.2)."""
    if not 0 <= days_used <= days_in_period:
        raise ValueError("days_used must lie within the period")
    return round_half_up(price * days_used, days_in_period)


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights``; the parts always sum to ``total``.

    Largest-remainder method: each part gets its floor share, and the minor units
    left over go to the parts with the largest remainders (earlier parts first).
    """
    if not weights:
        raise ValueError("at least one weight is needed")
    if any(w < 0 for w in weights) or sum(weights) == 0:
        raise ValueError("weights must be non-negative and not all zero")
    whole = sum(weights)
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    shares = [divmod(magnitude * w, whole) for w in weights]
    parts = [q for q, _ in shares]
    leftover = magnitude - sum(parts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-shares[i][1], i))
    for i in by_remainder[:leftover]:
        parts[i] += 1
    return [sign * p for p in parts]
