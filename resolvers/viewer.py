"""Who is asking: the authenticated caller and what they may see."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    and_,
    any_,
    bindparam,
    exists,
    func,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY

from models import Account, Organization, Role, TeamMembership, User
from models.base import UtcDateTime


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


# --------------------------------------------------------------------------- still so?


def one_of(column: Any, name: str, arrays: bool) -> ColumnElement[bool]:
    """``column IN (:name...)``; with ``arrays`` (PostgreSQL) ``column = ANY(:name)``,
    one array parameter however many values it holds."""
    if arrays:
        return column == any_(bindparam(name, type_=ARRAY(BigInteger())))
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


@lru_cache(maxsize=4)
def still_holds(member: bool, arrays: bool = False) -> ColumnElement[bool]:
    """True while a person's ``Viewer`` read earlier is still exactly who they are: the
    user active with the same role in the same organization, the organization's
    currency, zone and test clock unchanged and, for a member, the same visible
    accounts (their own and their teams'). The same rows ``app.auth`` reads to make a
    viewer; asked in the statement that answers a known read, so the answer and the
    check see one snapshot. Values bind as ``holds_params``; built once per kind."""
    users: Table = User.__table__  # type: ignore[assignment]
    orgs: Table = Organization.__table__  # type: ignore[assignment]
    person = exists().where(
        users.c.id == bindparam("v_user"),
        users.c.organization_id == bindparam("v_org"),
        users.c.active.is_(True),
        users.c.role == bindparam("v_role"),
        orgs.c.id == users.c.organization_id,
        orgs.c.currency == bindparam("v_currency"),
        orgs.c.timezone == bindparam("v_timezone"),
        orgs.c.test_clock_at.is_not_distinct_from(bindparam("v_clock", type_=UtcDateTime())),
    )
    if not member:
        return person
    visible = union_all(
        select(Account.user_id.label("user_id"), Account.id.label("account_id")),
        select(TeamMembership.user_id, TeamMembership.team_account_id),
    ).subquery("visible")
    mine = visible.c.user_id == bindparam("v_user")
    count = select(func.count(func.distinct(visible.c.account_id))).where(mine)
    outside = exists().where(mine, ~one_of(visible.c.account_id, "v_accounts", arrays))
    return and_(person, count.scalar_subquery() == bindparam("v_count"), ~outside)


def holds_params(who: Viewer) -> dict[str, object]:
    """The values ``still_holds`` compares with (a person's viewer)."""
    params: dict[str, object] = {
        "v_user": who.user_id,
        "v_org": who.organization_id,
        "v_role": who.role.value,
        "v_currency": who.currency,
        "v_timezone": who.timezone,
        "v_clock": who.test_clock_at,
    }
    if who.account_ids is not None:
        params["v_accounts"] = sorted(who.account_ids)
        params["v_count"] = len(who.account_ids)
    return params
