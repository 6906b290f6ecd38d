"""Setting up a space from nothing: an organization with its default invoice policy
and its first admin, found again by slug or id, and its people found by e-mail.

The command line provisions through these functions; each runs inside the caller's
one transaction, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Organization, Role, User
from services import accounts, policy
from services.clock import organization_now
from services.errors import ConflictError, NotFoundError, ValidationError


def slug_for(name: str) -> str:
    """``"Harbour Works, Leith"`` → ``"harbour-works-leith"``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:80].strip("-")
    if not slug:
        raise ValidationError(
            f"“{name}” gives no usable slug; pass --slug with lowercase letters and digits."
        )
    return slug


async def provision_organization(
    session: AsyncSession,
    *,
    name: str,
    currency: str,
    admin_email: str,
    admin_name: str,
    now: datetime,
    slug: str | None = None,
    timezone: str | None = None,
    billing_day: int | None = None,
    sandbox: bool = False,
    clock_start: datetime | None = None,
    admin_subject: str | None = None,
) -> tuple[Organization, User]:
    """A new organization (default policy, optionally its timezone and billing day)
    and its first ADMIN; a sandbox's test clock starts at ``clock_start`` or ``now``.
    An e-mail that already signs in to any space is refused, so
    a person never has to say which space they mean."""
    email = admin_email.strip().lower()
    existing = await session.scalar(
        select(Organization.name)
        .join(User, User.organization_id == Organization.id)
        .where(func.lower(User.email) == email)
        .limit(1)
    )
    if existing is not None:
        raise ConflictError(f"{email} is already a user of “{existing}”; use another e-mail.")
    settings: dict[str, Any] = {}
    if timezone is not None:
        settings["timezone"] = timezone
    if billing_day is not None:
        settings["billing_day"] = billing_day
    org = await policy.create_organization(
        session, name, slug or slug_for(name), currency, now, sandbox=sandbox,
        clock_start=clock_start, **settings,
    )  # fmt: skip
    admin = await accounts.create_user(
        session,
        org,
        email=admin_email,
        name=admin_name,
        role=Role.ADMIN,
        now=organization_now(now, org),
        external_subject=admin_subject,
    )
    return org, admin


async def find_organization(session: AsyncSession, slug_or_id: str) -> Organization:
    """An organization by slug, or by id when given digits."""
    key = slug_or_id.strip()
    org: Organization | None
    if key.isdigit():
        org = await session.get(Organization, int(key))
    else:
        org = await session.scalar(select(Organization).where(Organization.slug == key.lower()))
    if org is None:
        raise NotFoundError(f"No organization “{key}”; `deskbill org list` shows slugs and ids.")
    return org


async def list_organizations(session: AsyncSession) -> list[tuple[Organization, int]]:
    """Every organization with its number of active users, oldest first."""
    counts = (
        select(User.organization_id, func.count(User.id).label("users"))
        .where(User.active.is_(True))
        .group_by(User.organization_id)
        .subquery()
    )
    rows = await session.execute(
        select(Organization, func.coalesce(counts.c.users, 0))
        .outerjoin(counts, counts.c.organization_id == Organization.id)
        .order_by(Organization.id)
    )
    return [(org, int(users)) for org, users in rows]


async def active_user(session: AsyncSession, org: Organization, email: str) -> User:
    """The active user of ``org`` with this e-mail, or why there is none."""
    clean = email.strip().lower()
    user = await session.scalar(
        select(User).where(User.organization_id == org.id, func.lower(User.email) == clean)
    )
    if user is None:
        raise NotFoundError(f"“{org.slug}” has no user with e-mail {clean}.")
    if not user.active:
        raise NotFoundError(f"{clean} is deactivated in “{org.slug}”; reactivate them first.")
    return user
