"""Secrets this installation generates once and keeps in its own database.

The demo database keeps a token signing secret here, so `deskbill serve --demo`
works with nothing configured and yet signs with a value nobody else knows.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import InstanceSecret


async def instance_secret(
    sessionmaker: async_sessionmaker[AsyncSession], name: str, now: datetime
) -> str:
    """The secret called ``name``, generated (384 random bits) the first time."""
    async with sessionmaker() as session:
        found = await session.get(InstanceSecret, name)
        if found is not None:
            return found.value
    try:
        async with sessionmaker.begin() as session:
            session.add(InstanceSecret(name=name, value=secrets.token_urlsafe(48), created_at=now))
    except IntegrityError:
        pass  # another process made it first; theirs is the one
    async with sessionmaker() as session:
        made = await session.get(InstanceSecret, name)
        assert made is not None
        return made.value
