"""Bearer tokens: signed JWTs naming a user and an organization.

The role is read from the user row on every request, not trusted from the token, so
demoting or deactivating a user takes effect at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.settings import Settings
from models import Account, Organization, Role, TeamMembership, User
from resolvers.context import Viewer


class TokenError(Exception):
    """Why a token was refused, in words for the caller."""


class NoLongerAllowed(TokenError):
    """The credential is genuine, but its user may no longer act (deactivated or gone).

    Open websockets close with 4403 for this and with 4401 for any other TokenError.
    """


def issue_token(settings: Settings, user: User, now: datetime) -> str:
    claims = {
        "sub": str(user.id),
        "org": user.organization_id,
        "iss": settings.token_issuer,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=settings.token_ttl_hours)).timestamp()),
    }
    return jwt.encode(claims, settings.token_secret, algorithm="HS256")


def decode_token(settings: Settings, token: str, now: datetime) -> dict[str, Any]:
    """Verify signature, issuer and expiry; expiry against the app's clock, so tests
    that move time see tokens expire as a user would."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.token_secret,
            algorithms=["HS256"],
            issuer=settings.token_issuer,
            options={
                "require": ["sub", "org", "exp", "iss"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidTokenError:
        raise TokenError("The bearer token is not valid for this server.") from None
    if not isinstance(claims["exp"], int) or claims["exp"] <= now.timestamp():
        raise TokenError("Your token has expired; sign in again for a new one.")
    return claims


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("Send the token as `Authorization: Bearer <token>`.")
    return token.strip()


async def load_viewer(session: AsyncSession, claims: dict[str, Any]) -> Viewer:
    try:
        user_id = int(claims["sub"])
        org_id = int(claims["org"])
    except (KeyError, TypeError, ValueError):
        raise TokenError("The bearer token is not valid for this server.") from None
    row = (
        await session.execute(
            select(User, Organization)
            .join(Organization, Organization.id == User.organization_id)
            .where(User.id == user_id, User.organization_id == org_id)
        )
    ).first()
    if row is None or not row[0].active:
        raise NoLongerAllowed("The user of this token no longer has access.")
    user, org = row
    role = Role(user.role)
    account_ids: frozenset[int] | None = None
    if role == Role.MEMBER:
        own = select(Account.id).where(Account.user_id == user.id)
        teams = select(TeamMembership.team_account_id).where(TeamMembership.user_id == user.id)
        account_ids = frozenset(await session.scalars(own.union(teams)))
    return Viewer(
        user_id=user.id,
        organization_id=org.id,
        role=role,
        currency=org.currency,
        timezone=org.timezone,
        account_ids=account_ids,
    )
