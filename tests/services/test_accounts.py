"""Users and accounts: roles, USER and TEAM accounts, membership, auto-pay."""

from __future__ import annotations

import pytest

from models import AccountKind, Role
from services import accounts
from services.clock import FixedClock
from services.errors import ConflictError, ValidationError
from services.events import EventType
from tests.services.factories import Sessions, event_types, make_org


async def test_user_and_team_accounts(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock, autopay_default=False)
    async with db.begin() as session:
        ada = await accounts.create_user(
            session, org, email=" Ada@Example.com ", name="Ada", role=Role.ADMIN, now=clock.now()
        )
        grace = await accounts.create_user(
            session, org, email="grace@example.com", name="Grace", now=clock.now()
        )
        own = await accounts.create_account(
            session, org, kind=AccountKind.USER, user=ada, now=clock.now()
        )
        team = await accounts.create_account(
            session, org, kind=AccountKind.TEAM, name="Analytical Engines", now=clock.now()
        )
        await accounts.add_team_member(session, org, team, ada, clock.now())
        await accounts.add_team_member(session, org, team, grace, clock.now())
    assert (ada.email, ada.role) == ("ada@example.com", Role.ADMIN)
    assert (own.kind, own.name, own.email, own.user_id) == ("USER", "Ada", ada.email, ada.id)
    # Auto-pay starts at the organization's default.
    assert not own.autopay and not team.autopay
    async with db() as session:
        assert await accounts.account_ids_for_user(session, org, ada.id) == sorted(
            [own.id, team.id]
        )
        assert await accounts.account_ids_for_user(session, org, grace.id) == [team.id]

    async with db.begin() as session:
        await accounts.remove_team_member(session, org, team, grace, clock.now())
    async with db() as session:
        assert await accounts.account_ids_for_user(session, org, grace.id) == []
    assert EventType.ACCOUNT_CREATED in await event_types(db, account_id=team.id)


async def test_account_rules(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    async with db.begin() as session:
        ada = await accounts.create_user(
            session, org, email="ada@example.com", name="Ada", now=clock.now()
        )
        await accounts.create_account(
            session, org, kind=AccountKind.USER, user=ada, now=clock.now()
        )
    async with db.begin() as session:
        with pytest.raises(ConflictError, match="already exists"):
            await accounts.create_user(
                session, org, email="ADA@example.com", name="Ada 2", now=clock.now()
            )
        with pytest.raises(ConflictError, match="already has an account"):
            await accounts.create_account(
                session, org, kind=AccountKind.USER, user=ada, now=clock.now()
            )
        with pytest.raises(ValidationError, match="needs the user"):
            await accounts.create_account(session, org, kind=AccountKind.USER, now=clock.now())
        with pytest.raises(ValidationError, match="not an email"):
            await accounts.create_user(session, org, email="nobody", name="N", now=clock.now())


async def test_autopay_and_account_details(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    async with db.begin() as session:
        team = await accounts.create_account(
            session, org, kind=AccountKind.TEAM, name="Team", now=clock.now()
        )
    assert team.autopay
    async with db.begin() as session:
        off = await accounts.set_autopay(session, org, team, False, clock.now())
        renamed = await accounts.update_account(
            session, org, team, clock.now(), name="Team B", email="b@example.com", active=False
        )
    assert not off.autopay
    assert (renamed.name, renamed.email, renamed.active) == ("Team B", "b@example.com", False)
    assert (await event_types(db, account_id=team.id)).count(EventType.ACCOUNT_UPDATED) == 2
