"""Who is asking: the authenticated caller and what they may see."""

from __future__ import annotations

from dataclasses import dataclass

from models import Role


@dataclass(frozen=True)
class Viewer:
    """The authenticated caller. ``account_ids`` is None for roles that see the whole
    organization (ADMIN, ANALYST) and the visible accounts for a MEMBER."""

    user_id: int
    organization_id: int
    role: Role
    currency: str
    timezone: str
    account_ids: frozenset[int] | None

    def can_see_account(self, account_id: int) -> bool:
        return self.account_ids is None or account_id in self.account_ids
