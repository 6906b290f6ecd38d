"""``app.auth.authenticate`` on both databases: what the Viewer tells its callers about
the credential (its expiry, its key), which the websocket re-checks rely on."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import NoLongerAllowed, TokenError, authenticate
from app.settings import Settings
from models import Role
from services import apikeys
from services.policy import get_organization
from tests.world import NOW, build_world

SETTINGS = Settings(token_secret="k" * 8 + os.urandom(16).hex())


async def test_a_token_viewer_carries_its_expiry_and_a_key_viewer_its_key(
    db: async_sessionmaker[AsyncSession],
) -> None:
    world = await build_world(db, SETTINGS)
    token = world.tokens["alice"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with db() as session:
        who = await authenticate(session, SETTINGS, token, NOW)
    assert who.user_id == world.ids["alice"] and who.api_key_id is None
    assert who.expires_at == datetime.fromtimestamp(exp, UTC)
    assert who.role == Role.MEMBER and who.account_ids

    async with db.begin() as session:
        org = await get_organization(session, world.ids["org"])
        key, secret = await apikeys.create_api_key(session, org, name="BI", role="ANALYST", now=NOW)
    async with db() as session:
        by_key = await authenticate(session, SETTINGS, secret, NOW)
    assert (by_key.user_id, by_key.api_key_id, by_key.expires_at) == (None, key.id, None)
    assert by_key.role == Role.ANALYST and by_key.account_ids is None

    async with db.begin() as session:
        org = await get_organization(session, world.ids["org"])
        found = await apikeys.find_api_key(session, org, key_id=key.id)
        await apikeys.revoke_api_key(session, org, found, NOW)
    async with db() as session:
        with pytest.raises(NoLongerAllowed, match="revoked"):
            await authenticate(session, SETTINGS, secret, NOW + timedelta(seconds=1))
        with pytest.raises(TokenError, match="expired"):
            await authenticate(session, SETTINGS, token, datetime.fromtimestamp(exp, UTC))
