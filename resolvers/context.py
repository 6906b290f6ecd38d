"""The per-request context: who is asking, how to reach the database, the clock,
fresh DataLoaders, and the hook that announces committed events.

``app`` builds one of these for every HTTP request and websocket connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from graphql import DocumentNode
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from models import Event, Organization
from resolvers.loaders import Loaders
from resolvers.viewer import Viewer
from services.clock import Clock, organization_now

__all__ = ["Announce", "RequestContext", "Viewer"]


Announce = Callable[[int, int], Awaitable[None]]


async def _no_announce(organization_id: int, event_id: int) -> None:
    return None


@dataclass
class RequestContext:
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]
    clock: Clock
    viewer: Viewer | None = None
    auth_error: str | None = None
    announce: Announce = _no_announce
    services: dict[str, Any] = field(default_factory=dict)
    request: Any = None
    response: Any = None
    connection_params: dict[str, Any] | None = None
    # The bearer token of an HTTP request, until app/asgi.py has read its user on
    # the request's connection and set ``viewer``.
    token: str | None = None
    # The request's one read connection: authentication and a compiled read share
    # it; released as soon as the ordinary resolvers take over.
    connection: AsyncConnection | None = None
    # Set by the compiled path when it answered: the document it answered, which
    # the HTTP view then answers directly the next times (app/known_reads.py).
    compiled_document: DocumentNode | None = None
    # What the known-read path already admitted and charged (app.guards.Admission),
    # so that falling back to the ordinary path does not charge the buckets twice.
    admission: object | None = None
    # ``viewer`` was kept from an earlier request with the same token and is not yet
    # read again: only a known read may use it, and its statement confirms it
    # (``resolvers.viewer.still_holds``); anything else authenticates first.
    viewer_unconfirmed: bool = False
    # The HTTP view's known-read lane already tried this request (and may have charged
    # its cost): the ordinary path must not try it again.
    known_read_tried: bool = False
    _loaders: Loaders | None = None

    def now(self, org: Organization | None = None) -> datetime:
        """The organization's now (``services.clock.organization_now``): a sandbox's test
        clock, a live organization's wall clock. Mutations pass the organization row
        they loaded in their transaction (the freshest test clock); reads go by the
        viewer's copy, loaded with the caller at no extra statement."""
        return organization_now(self.clock, org if org is not None else self.viewer)

    async def release_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            if self.viewer is None:
                raise RuntimeError("loaders need an authenticated viewer")
            self._loaders = Loaders(self.read_sessionmaker, self.viewer)
        return self._loaders

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One mutation, one transaction; committed events are announced afterwards."""
        async with self.sessionmaker.begin() as session:
            yield session
            await session.flush()
            written = [obj for obj in session.info.get("events", ()) if isinstance(obj, Event)]
        # Only after commit: a subscriber woken now will find the rows.
        if written:
            newest = max(event.id for event in written)
            await self.announce(written[0].organization_id, newest)
        self.reset_loaders()

    async def announce_latest(self, organization_id: int) -> None:
        """Wake subscribers after work that committed in transactions of its own
        (the billing run): they read the log from their cursors anyway."""
        from sqlalchemy import func, select

        async with self.read_sessionmaker() as session:
            newest = await session.scalar(
                select(func.max(Event.id)).where(Event.organization_id == organization_id)
            )
        if newest is not None:
            await self.announce(organization_id, int(newest))

    def reset_loaders(self) -> None:
        """Later reads in this request must see what a mutation changed."""
        self._loaders = None
