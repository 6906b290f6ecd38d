"""Who may do what: the token's role, scoped to its organization and, for members,
to their own account and their teams' accounts (rules §1.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, true

from models import Role
from resolvers.context import RequestContext, Viewer
from schema.ids import decode
from services.errors import ForbiddenError, UnauthenticatedError, ValidationError


def context(info: Any) -> RequestContext:
    ctx: RequestContext = info.context
    return ctx


def viewer(info: Any) -> Viewer:
    """The caller, or UNAUTHENTICATED with the reason the token was refused."""
    ctx = context(info)
    if ctx.viewer is None:
        raise UnauthenticatedError(
            ctx.auth_error or "Sign in: send `Authorization: Bearer <token>` with a valid token."
        )
    return ctx.viewer


def require_role(info: Any, *roles: Role) -> Viewer:
    who = viewer(info)
    if who.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise ForbiddenError(f"Only {allowed} users may do this; you are {who.role.value}.")
    return who


def require_admin(info: Any) -> Viewer:
    return require_role(info, Role.ADMIN)


def require_writer(info: Any) -> Viewer:
    """Admins and members may call mutations; analysts are read-only."""
    return require_role(info, Role.ADMIN, Role.MEMBER)


def account_scope(who: Viewer, column: Any) -> ColumnElement[bool]:
    """A WHERE clause restricting ``column`` (an account id) to what ``who`` may see."""
    if who.account_ids is None:
        return true()
    return column.in_(sorted(who.account_ids))


def ensure_account_visible(who: Viewer, account_id: int) -> None:
    if not who.can_see_account(account_id):
        # Same words as a missing row: do not reveal what exists elsewhere.
        raise ForbiddenError("You may only act on your own account and your teams' accounts.")


def pk_of(global_id: str, *type_names: str, field: str = "id") -> int:
    """The primary key inside a global id of one of ``type_names``, or VALIDATION."""
    decoded = decode(global_id)
    if decoded is None or decoded[0] not in type_names:
        expected = " or ".join(type_names)
        article = "an" if expected[0] in "AEIOU" else "a"
        raise ValidationError(
            f"`{field}` must be the id of {article} {expected} as this API gives it out."
        )
    return decoded[1]


def pks_of(global_ids: Sequence[str], *type_names: str, field: str) -> list[int]:
    return [pk_of(g, *type_names, field=field) for g in global_ids]
