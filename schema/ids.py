"""Global object ids: ``base64("Invoice:42")``, opaque to clients, typed for ``node``."""

from __future__ import annotations

import base64
import binascii

TYPE_NAMES = frozenset(
    {
        "Organization",
        "User",
        "Account",
        "Invoice",
        "CreditNote",
        "LineItem",
        "CreditAllocation",
        "Payment",
        "Refund",
        "Booking",
        "PlanTemplate",
        "PlanSubscription",
        "Event",
        "ApiKey",
    }
)


def encode(type_name: str, pk: int) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{pk}".encode()).decode().rstrip("=")


def decode(global_id: str) -> tuple[str, int] | None:
    """``(type, pk)`` for a well-formed id of a known type, else ``None``."""
    try:
        padded = global_id + "=" * (-len(global_id) % 4)
        raw = base64.urlsafe_b64decode(padded.encode()).decode()
        type_name, _, pk = raw.partition(":")
        if type_name in TYPE_NAMES and pk.isdigit():
            return type_name, int(pk)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return None
