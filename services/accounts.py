"""Users (who log in) and accounts (who pay): a user's own account or a team's.

Team membership decides what a MEMBER may see and pay (``account_ids_for_user``).
New accounts start with the organization's auto-pay default (rules §3).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, AccountKind, Organization, Role, TeamMembership, User
from services import events
from services.errors import ConflictError, InvalidStateError, NotFoundError, ValidationError
from services.events import EventType
from services.locks import lock_account


def _email(value: str | None, *, required: bool) -> str | None:
    if value is None or not value.strip():
        if required:
            raise ValidationError("An email address is required.")
        return None
    email = value.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or len(email) > 254:
        raise ValidationError(f"“{value}” is not an email address.")
    return email


def _name(value: str, what: str) -> str:
    name = value.strip()
    if not name:
        raise ValidationError(f"A {what} needs a name.")
    if len(name) > 200:
        raise ValidationError(f"A {what} name is at most 200 characters.")
    return name


async def get_user(session: AsyncSession, org: Organization, user_id: int) -> User:
    user = await session.scalar(
        select(User).where(User.id == user_id, User.organization_id == org.id)
    )
    if user is None:
        raise NotFoundError(f"No user {user_id} in this organization.")
    return user


async def get_account(session: AsyncSession, org: Organization, account_id: int) -> Account:
    account = await session.scalar(
        select(Account).where(Account.id == account_id, Account.organization_id == org.id)
    )
    if account is None:
        raise NotFoundError(f"No account {account_id} in this organization.")
    return account


async def account_ids_for_user(session: AsyncSession, org: Organization, user_id: int) -> list[int]:
    """The accounts a member may act for: its own and those of the teams it is in."""
    own = await session.scalars(
        select(Account.id).where(Account.organization_id == org.id, Account.user_id == user_id)
    )
    teams = await session.scalars(
        select(TeamMembership.team_account_id).where(
            TeamMembership.organization_id == org.id, TeamMembership.user_id == user_id
        )
    )
    return sorted({*own, *teams})


async def create_user(
    session: AsyncSession,
    org: Organization,
    *,
    email: str,
    name: str,
    role: Role = Role.MEMBER,
    now: datetime,
    actor_user_id: int | None = None,
    external_subject: str | None = None,
) -> User:
    """A user of ``org``. ``external_subject`` is the identity provider's ``sub`` for
    them, when sign-in matches on it."""
    clean_email = _email(email, required=True)
    try:
        role = Role(role)
    except ValueError:
        raise ValidationError("role must be ADMIN, MEMBER or ANALYST.") from None
    taken = await session.scalar(
        select(User.id).where(User.organization_id == org.id, User.email == clean_email)
    )
    if taken is not None:
        raise ConflictError(f"A user with email {clean_email} already exists here.")
    subject = (external_subject or "").strip() or None
    if subject is not None:
        if len(subject) > 255:
            raise ValidationError("An external subject is at most 255 characters.")
        holder = await session.scalar(
            select(User.email).where(
                User.organization_id == org.id, User.external_subject == subject
            )
        )
        if holder is not None:
            raise ConflictError(f"The external subject {subject!r} already belongs to {holder}.")
    user = User(
        organization_id=org.id,
        email=clean_email,
        name=_name(name, "user"),
        role=role,
        active=True,
        external_subject=subject,
        created_at=now,
    )
    session.add(user)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.ACCOUNT_UPDATED,
        at=now,
        actor_user_id=actor_user_id,
        user_id=user.id,
        change="user_created",
        role=str(role),
    )
    return user


async def create_account(
    session: AsyncSession,
    org: Organization,
    *,
    kind: AccountKind,
    name: str | None = None,
    email: str | None = None,
    user: User | None = None,
    autopay: bool | None = None,
    now: datetime,
    actor_user_id: int | None = None,
) -> Account:
    """A USER account for ``user`` (named and addressed after it unless told), or a
    TEAM account. Auto-pay starts at the organization's default unless given."""
    kind = AccountKind(kind)
    if kind == AccountKind.USER:
        if user is None:
            raise ValidationError("A USER account needs the user it belongs to.")
        if user.organization_id != org.id:
            raise NotFoundError(f"No user {user.id} in this organization.")
        existing = await session.scalar(select(Account.id).where(Account.user_id == user.id))
        if existing is not None:
            raise ConflictError(f"User {user.email} already has an account ({existing}).")
        account_name = _name(name or user.name, "account")
        account_email: str | None = _email(email, required=False) or user.email
    else:
        if user is not None:
            raise ValidationError("A TEAM account belongs to no single user; add members.")
        account_name = _name(name or "", "team account")
        account_email = _email(email, required=False)
    account = Account(
        organization_id=org.id,
        kind=kind,
        name=account_name,
        email=account_email,
        user_id=user.id if user is not None else None,
        active=True,
        autopay=org.autopay_default if autopay is None else autopay,
        created_at=now,
    )
    session.add(account)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.ACCOUNT_CREATED,
        at=now,
        account_id=account.id,
        actor_user_id=actor_user_id,
        kind=str(kind),
        autopay=account.autopay,
    )
    return account


async def add_team_member(
    session: AsyncSession,
    org: Organization,
    team: Account,
    user: User,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> TeamMembership:
    team = await lock_account(session, org.id, team.id)
    if team.kind != AccountKind.TEAM:
        raise ValidationError(f"Account “{team.name}” is not a team; only teams have members.")
    if user.organization_id != org.id:
        raise NotFoundError(f"No user {user.id} in this organization.")
    existing = await session.scalar(
        select(TeamMembership).where(
            TeamMembership.team_account_id == team.id, TeamMembership.user_id == user.id
        )
    )
    if existing is not None:
        return existing
    membership = TeamMembership(
        organization_id=org.id, team_account_id=team.id, user_id=user.id, created_at=now
    )
    session.add(membership)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.ACCOUNT_UPDATED,
        at=now,
        account_id=team.id,
        actor_user_id=actor_user_id,
        change="member_added",
        user_id=user.id,
    )
    return membership


async def remove_team_member(
    session: AsyncSession,
    org: Organization,
    team: Account,
    user: User,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> None:
    team = await lock_account(session, org.id, team.id)
    membership = await session.scalar(
        select(TeamMembership).where(
            TeamMembership.team_account_id == team.id, TeamMembership.user_id == user.id
        )
    )
    if membership is None:
        raise NotFoundError(f"{user.email} is not a member of “{team.name}”.")
    await session.delete(membership)
    events.record(
        session,
        organization_id=org.id,
        type=EventType.ACCOUNT_UPDATED,
        at=now,
        account_id=team.id,
        actor_user_id=actor_user_id,
        change="member_removed",
        user_id=user.id,
    )
    await session.flush()


async def set_autopay(
    session: AsyncSession,
    org: Organization,
    account: Account,
    enabled: bool,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> Account:
    account = await lock_account(session, org.id, account.id)
    if account.autopay != enabled:
        account.autopay = enabled
        events.record(
            session,
            organization_id=org.id,
            type=EventType.ACCOUNT_UPDATED,
            at=now,
            account_id=account.id,
            actor_user_id=actor_user_id,
            change="autopay",
            autopay=enabled,
        )
        await session.flush()
    return account


async def update_account(
    session: AsyncSession,
    org: Organization,
    account: Account,
    now: datetime,
    *,
    name: str | None = None,
    email: str | None = None,
    active: bool | None = None,
    actor_user_id: int | None = None,
) -> Account:
    """Rename, re-address, deactivate or reactivate an account (``None`` keeps a value).
    An inactive account keeps its invoices and credit but takes no new bookings, plans
    or manual invoices."""
    account = await lock_account(session, org.id, account.id)
    changes: dict[str, object] = {}
    if name is not None and _name(name, "account") != account.name:
        account.name = changes["name"] = _name(name, "account")
    if email is not None:
        clean = _email(email, required=False)
        if clean != account.email:
            account.email = clean
            changes["email"] = clean
    if active is not None and active != account.active:
        account.active = changes["active"] = active
    if changes:
        events.record(
            session,
            organization_id=org.id,
            type=EventType.ACCOUNT_UPDATED,
            at=now,
            account_id=account.id,
            actor_user_id=actor_user_id,
            change="details",
            changes=changes,
        )
        await session.flush()
    return account


def require_active(account: Account) -> None:
    if not account.active:
        raise InvalidStateError(
            f"Account “{account.name}” is inactive; reactivate it first.", account_id=account.id
        )
