"""Who is asking: the authenticated caller and what they may see."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from models import Role


@dataclass(frozen=True)
class Viewer:
    """The authenticated caller. ``account_ids`` is None for roles that see the whole
    organization (ADMIN, ANALYST) and the visible accounts for a MEMBER.

    A caller with an API key is no person: ``user_id`` is None and ``api_key_id``
    names the key. ``expires_at`` is when the credential stops being valid (None for
    keys, which last until revoked); long-lived connections check again by then.

    ``test_clock_at`` is the organization's test clock when it is a sandbox (None for a
    live organization), read with the organization at authentication, so reads know
    the organization's now without another statement (``services.clock``)."""

    user_id: int | None
    organization_id: int
    role: Role
    currency: str
    timezone: str
    account_ids: frozenset[int] | None
    api_key_id: int | None = None
    expires_at: datetime | None = None
    test_clock_at: datetime | None = None

    def can_see_account(self, account_id: int) -> bool:
        return self.account_ids is None or account_id in self.account_ids
