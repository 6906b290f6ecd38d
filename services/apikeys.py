"""API keys of an organization, for BI tools and integrations.

A key reads ``dbk_<prefix>_<secret>``. The prefix is public (it names the key in
lists and finds its row); the secret is 256 random bits, of which only a SHA-256
hash is stored — a fast hash is enough for a secret nobody can guess, unlike a
password. A key has a role of its own (ANALYST reads, ADMIN administers), works
until it is revoked, and records when it was last used at most once a minute.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from models import ApiKey, Organization, Role
from services import events
from services.errors import ConflictError, NotFoundError, ValidationError
from services.events import EventType

KEY_SCHEME = "dbk"
KEY_ROLES = (Role.ANALYST, Role.ADMIN)
# lastUsedAt is for people ("is this key still in use?"); a write per request would
# put every key-authenticated read behind a row update.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """``(prefix, secret)`` of something shaped like one of our keys, else None."""
    scheme, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != KEY_SCHEME or not prefix or not secret:
        return None
    return prefix, secret


def key_role(value: str) -> Role:
    try:
        role = Role(str(value).strip().upper())
    except ValueError:
        role = None
    if role not in KEY_ROLES:
        raise ValidationError(f"An API key's role is ANALYST or ADMIN, not “{value}”.")
    return role


def _name(value: str) -> str:
    name = value.strip()
    if not name:
        raise ValidationError("An API key needs a name that says who uses it, e.g. “Metabase”.")
    if len(name) > 200:
        raise ValidationError("An API key name is at most 200 characters.")
    return name


async def create_api_key(
    session: AsyncSession,
    org: Organization,
    *,
    name: str,
    role: str,
    now: datetime,
    actor_user_id: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its full secret text, which is never available again."""
    clean = _name(name)
    key_role_ = key_role(role)
    taken = await session.scalar(
        select(ApiKey.id).where(
            ApiKey.organization_id == org.id, ApiKey.name == clean, ApiKey.revoked_at.is_(None)
        )
    )
    if taken is not None:
        raise ConflictError(
            f"A live API key named “{clean}” exists; revoke it or pick another name."
        )
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        organization_id=org.id,
        name=clean,
        prefix=prefix,
        secret_hash=hash_secret(secret),
        role=key_role_,
        created_by_user_id=actor_user_id,
        created_at=now,
    )
    session.add(key)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.API_KEY_CREATED,
        at=now,
        actor_user_id=actor_user_id,
        api_key_id=key.id,
        name=clean,
        prefix=prefix,
        role=str(key_role_),
    )
    return key, f"{KEY_SCHEME}_{prefix}_{secret}"


async def list_api_keys(session: AsyncSession, organization_id: int) -> list[ApiKey]:
    return list(
        await session.scalars(
            select(ApiKey).where(ApiKey.organization_id == organization_id).order_by(ApiKey.id)
        )
    )


async def find_api_key(
    session: AsyncSession,
    org: Organization,
    *,
    key_id: int | None = None,
    prefix: str | None = None,
    name: str | None = None,
) -> ApiKey:
    """One key of ``org`` by id, prefix or (live keys only) name, locked for a change."""
    stmt = select(ApiKey).where(ApiKey.organization_id == org.id)
    if key_id is not None:
        stmt, what = stmt.where(ApiKey.id == key_id), f"id {key_id}"
    elif prefix is not None:
        stmt, what = stmt.where(ApiKey.prefix == prefix.strip()), f"prefix {prefix.strip()}"
    elif name is not None:
        stmt = stmt.where(ApiKey.name == name.strip(), ApiKey.revoked_at.is_(None))
        what = f"name “{name.strip()}”"
    else:
        raise ValidationError("Name the API key by its prefix or its name.")
    key = await session.scalar(stmt.with_for_update())
    if key is None:
        raise NotFoundError(f"This organization has no live API key with {what}.")
    return key


async def revoke_api_key(
    session: AsyncSession,
    org: Organization,
    key: ApiKey,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> ApiKey:
    """Revoke ``key``; revoking a revoked key changes nothing and is not an error."""
    if key.revoked_at is None:
        key.revoked_at = now
        events.record(
            session,
            organization_id=org.id,
            type=EventType.API_KEY_REVOKED,
            at=now,
            actor_user_id=actor_user_id,
            api_key_id=key.id,
            name=key.name,
            prefix=key.prefix,
        )
        await session.flush()
    return key


async def verify_api_key(session: AsyncSession, token: str) -> ApiKey | None:
    """The key that ``token`` is (revoked or not), or None (unknown, wrong secret)."""
    parts = split_key(token)
    if parts is None:
        return None
    prefix, secret = parts
    key = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    # Compare even when no row matched, so timing says nothing about which prefixes exist.
    stored = key.secret_hash if key is not None else "0" * 64
    if not hmac.compare_digest(hash_secret(secret), stored) or key is None:
        return None
    return key


async def note_use(session: AsyncSession, key: ApiKey, now: datetime) -> bool:
    """Record that ``key`` was used, unless that was recorded less than a minute ago.
    Returns whether a row was written (the caller then commits)."""
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return False
    result = await session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
