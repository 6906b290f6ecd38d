"""Who is calling: the one credential check behind HTTP, CSV exports and websockets.

``authenticate`` accepts three kinds of bearer credential:

* Deskbill's own tokens: HS256 JWTs naming a user and an organization, signed with
  ``DESKBILL_TOKEN_SECRET`` (``issue_token``);
* access tokens of the space's identity provider (``app.oidc``), matched on one claim
  (``sub`` or ``email``) to an active user of the configured organization;
* API keys (``dbk_<prefix>_<secret>``, ``services.apikeys``), with a role of their own.

The role of a person is read from the user row on every call, never trusted from the
token, so demoting or deactivating a user takes effect at once; a revoked key is
refused on its next use.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import jwt
from sqlalchemy import ColumnElement, Select, Table, and_, bindparam, select, union_all
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.oidc import OidcRefusal, verify_oidc_token
from app.settings import Settings
from models import Account, Organization, Role, TeamMembership, User
from resolvers.viewer import Viewer
from services import apikeys

NOT_VALID = "The bearer token is not valid for this server."
log = logging.getLogger("deskbill.auth")


class TokenError(Exception):
    """Why a credential was refused, in words for the caller."""


class NoLongerAllowed(TokenError):
    """The credential is genuine, but its user may no longer act (deactivated or gone,
    or the API key revoked).

    Open websockets close with 4403 for this and with 4401 for any other TokenError.
    """


def issue_token(settings: Settings, user: User, now: datetime, ttl_hours: int | None = None) -> str:
    if settings.token_secret is None:
        raise TokenError("This server has no DESKBILL_TOKEN_SECRET, so it issues no tokens.")
    hours = settings.token_ttl_hours if ttl_hours is None else ttl_hours
    claims = {
        "sub": str(user.id),
        "org": user.organization_id,
        "iss": settings.token_issuer,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=hours)).timestamp()),
    }
    return jwt.encode(claims, settings.token_secret, algorithm="HS256")


def decode_token(settings: Settings, token: str, now: datetime) -> dict[str, Any]:
    """Verify signature, issuer and expiry; expiry against the app's clock, so tests
    that move time see tokens expire as a user would."""
    if settings.token_secret is None:
        raise TokenError(
            "This server does not accept its own tokens; sign in through your identity provider."
        )
    claims = _verified_claims(token, settings.token_secret, settings.token_issuer)
    if not isinstance(claims["exp"], int) or claims["exp"] <= now.timestamp():
        raise TokenError("Your token has expired; sign in again for a new one.")
    return dict(claims)


# A signature is checked once per token and secret: the same bytes under the same key
# verify the same way every time, so the answer can be kept (bounded). Expiry is not
# kept: it is compared with the clock on every call, and the user row is read anew.
@functools.lru_cache(maxsize=4096)
def _verified_claims(token: str, secret: str, issuer: str) -> Mapping[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=issuer,
            options={
                "require": ["sub", "org", "exp", "iss"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidTokenError:
        raise TokenError(NOT_VALID) from None
    return MappingProxyType(claims)


@functools.lru_cache(maxsize=4096)
def _claimed_issuer(token: str) -> object:
    """The ``iss`` a JWT claims before anything is verified (it says who should check
    it), or TokenError when ``token`` is no JWT at all."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        raise TokenError(
            "The bearer token is not valid for this server: it is neither a Deskbill "
            "token, an API key nor a JWT."
        ) from None


def is_own_token(settings: Settings, token: str) -> bool:
    """Whether ``token`` is meant as one of Deskbill's own (not an API key, nor the
    identity provider's); it is verified only by ``decode_token``."""
    if apikeys.split_key(token) is not None:
        return False
    try:
        return bool(_claimed_issuer(token) == settings.token_issuer)
    except TokenError:
        return False


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("Send the token as `Authorization: Bearer <token>`.")
    return token.strip()


async def authenticate(
    session: AsyncSession, settings: Settings, token: str, now: datetime
) -> Viewer:
    """The caller that ``token`` stands for, or TokenError with the reason.

    Reads through ``session``; at most once a minute per API key it also records the
    key's last use and commits ``session``."""
    if apikeys.split_key(token) is not None:
        return await _key_viewer(session, token, now)
    issuer = _claimed_issuer(token)
    if issuer == settings.token_issuer:
        claims = decode_token(settings, token, now)
        try:
            user_id, org_id = int(claims["sub"]), int(claims["org"])
        except (KeyError, TypeError, ValueError):
            raise TokenError(NOT_VALID) from None
        expires = datetime.fromtimestamp(claims["exp"], UTC)
        gone = "The user of this token no longer has access."
        return await _person(session, "id", user_id, org_id, expires, gone)
    if settings.oidc_configured and isinstance(issuer, str) and issuer == settings.oidc_issuer:
        try:
            claims = await verify_oidc_token(settings, token, now.timestamp())
        except OidcRefusal as refused:
            raise TokenError(str(refused)) from None
        oidc_org = await session.scalar(
            select(Organization.id).where(Organization.slug == settings.oidc_organization)
        )
        if oidc_org is None:
            raise TokenError("Sign-in is set up for an organization that does not exist here.")
        value = str(claims[settings.oidc_claim])
        # Stored e-mails are lower-cased (services.accounts), so the index serves this.
        by, match = (
            ("email", value.strip().lower())
            if settings.oidc_claim == "email"
            else ("subject", value)
        )
        expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
        unknown = (
            f"No active user of this organization has the {settings.oidc_claim} {value!r}; "
            "ask an admin to add you."
        )
        return await _person(session, by, match, oidc_org, expires, unknown)
    raise TokenError(f"Tokens from issuer {issuer!r} are not accepted by this server.")


def _person_statement(match: ColumnElement[bool]) -> Select[Any]:
    # One statement, members included: the user, the organization and, joined on,
    # every account the user may see (their own and their teams'), one row each.
    visible = union_all(
        select(Account.user_id.label("user_id"), Account.id.label("account_id")),
        select(TeamMembership.user_id, TeamMembership.team_account_id),
    ).subquery()
    users: Table = User.__table__  # type: ignore[assignment]
    orgs: Table = Organization.__table__  # type: ignore[assignment]
    return (
        select(
            users.c.id,
            users.c.active,
            users.c.role,
            orgs.c.id,
            orgs.c.currency,
            orgs.c.timezone,
            orgs.c.test_clock_at,
            visible.c.account_id,
        )
        .join_from(users, orgs, orgs.c.id == users.c.organization_id)
        .outerjoin(
            visible, and_(visible.c.user_id == users.c.id, users.c.role == Role.MEMBER.value)
        )
        .where(match, users.c.organization_id == bindparam("org"))
    )


# Built once per process (each request only binds its values): building the union and
# its joins took as long as running the statement.
_PERSON_BY = {
    "id": _person_statement(User.__table__.c.id == bindparam("match")),
    "email": _person_statement(User.__table__.c.email == bindparam("match")),
    "subject": _person_statement(User.__table__.c.external_subject == bindparam("match")),
}


async def _person(
    session: AsyncSession,
    by: str,
    value: object,
    organization_id: int,
    expires_at: datetime,
    refusal: str,
) -> Viewer:
    connection = await session.connection()
    rows = (
        await connection.execute(_PERSON_BY[by], {"match": value, "org": organization_id})
    ).all()
    if not rows or not rows[0][1]:
        raise NoLongerAllowed(refusal)
    user_id, _, role_name, org_id, currency, timezone, test_clock_at, _ = rows[0]
    role = Role(role_name)
    account_ids: frozenset[int] | None = None
    if role == Role.MEMBER:
        account_ids = frozenset(r[7] for r in rows if r[7] is not None)
    return Viewer(
        user_id=user_id,
        organization_id=org_id,
        role=role,
        currency=currency,
        timezone=timezone,
        account_ids=account_ids,
        expires_at=expires_at,
        test_clock_at=test_clock_at,
    )


async def _key_viewer(session: AsyncSession, token: str, now: datetime) -> Viewer:
    key = await apikeys.verify_api_key(session, token)
    if key is None:
        raise TokenError("This API key is not valid for this server; check that it is complete.")
    org = await session.get(Organization, key.organization_id)
    if key.revoked_at is not None or org is None:
        raise NoLongerAllowed("This API key was revoked; ask an admin for a new one.")
    viewer = Viewer(
        user_id=None,
        organization_id=org.id,
        role=Role(key.role),
        currency=org.currency,
        timezone=org.timezone,
        account_ids=None,
        api_key_id=key.id,
        test_clock_at=org.test_clock_at,
    )
    try:
        if await apikeys.note_use(session, key, now):
            await session.commit()
    except DBAPIError:
        # Last use is a note for people; a busy database must not refuse the request.
        log.warning("could not record the last use of API key %s", key.prefix)
        await session.rollback()
    return viewer
