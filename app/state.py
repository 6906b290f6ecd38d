"""What lives as long as the process: settings, engines, session factories, the clock
and the long-lived services (gateway, event hub). ``app.asgi`` builds it once; the
routes, exports and lifecycle take it from here, so none of them imports ``app.asgi``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.database import create_engine, create_sessionmaker
from app.settings import Settings
from services.clock import Clock, SystemClock


@dataclass
class AppState:
    """What lives as long as the process: engines, sessions, clock, channels."""

    settings: Settings
    engine: AsyncEngine
    read_engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]
    clock: Clock
    services: dict[str, Any] = field(default_factory=dict)

    async def announce(self, organization_id: int, event_id: int) -> None:
        hub = self.services.get("hub")
        if hub is not None:
            await hub.announce(organization_id, event_id)


def build_state(
    settings: Settings, *, engine: AsyncEngine | None = None, clock: Clock | None = None
) -> AppState:
    engine = engine or create_engine(settings.database_url, limits=settings.database_limits)
    # SQLite takes its write lock at BEGIN; reads get their own engine with ordinary
    # deferred transactions so they never queue behind writers.
    if engine.dialect.name == "sqlite":
        read_engine = create_engine(
            str(engine.url), immediate=False, limits=settings.database_limits
        )
    else:
        read_engine = engine
    return AppState(
        settings=settings,
        engine=engine,
        read_engine=read_engine,
        sessionmaker=create_sessionmaker(engine),
        read_sessionmaker=create_sessionmaker(read_engine),
        clock=clock or SystemClock(),
    )
