"""What starts and stops with the server: the event hub and the billing worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.asgi import AppState


@asynccontextmanager
async def running(state: AppState, *, start_worker: bool | None = None) -> AsyncIterator[None]:
    yield
