"""Global object ids: ``base64("Invoice:42")``, opaque to clients, typed for ``node``.

Each object has exactly one id: the primary key is ASCII digits without leading
zeros and within int64 (the database's key type), and the base64 text must be the
one ``encode`` writes (trailing ``=`` padding aside). Anything else is not an id,
so ``Invoice:٥٤`` or ``Invoice:054`` never reach a second path to invoice 54 and a
key beyond int64 never reaches the database.
"""

from __future__ import annotations

import base64
import binascii
import re

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
        "WebhookEndpoint",
        "WebhookDelivery",
        "Notification",
    }
)


# Bigint primary keys; 2^63 - 1 has 19 digits.
MAX_PK = 2**63 - 1
# "PlanSubscription:" plus 19 digits is 36 bytes, 48 characters of base64.
MAX_ID_CHARS = 64
_PK = re.compile(r"0|[1-9][0-9]{0,18}")


def pk_within_range(text: str) -> int | None:
    """``text`` as a primary key when it is one: ASCII digits within int64."""
    if not _PK.fullmatch(text):
        return None
    pk = int(text)
    return pk if pk <= MAX_PK else None


def encode(type_name: str, pk: int) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{pk}".encode()).decode().rstrip("=")


def decode(global_id: str) -> tuple[str, int] | None:
    """``(type, pk)`` for a well-formed id of a known type, else ``None``."""
    if not isinstance(global_id, str) or len(global_id) > MAX_ID_CHARS:
        return None
    bare = global_id.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode((bare + "=" * (-len(bare) % 4)).encode("ascii"))
        type_name, _, digits = raw.decode("ascii").partition(":")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    pk = pk_within_range(digits)
    if type_name not in TYPE_NAMES or pk is None or encode(type_name, pk) != bare:
        return None
    return type_name, pk
