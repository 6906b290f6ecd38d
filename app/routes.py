"""Plain HTTP routes beside /graphql: the Stripe webhook and CSV exports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from app.asgi import AppState


def extra_routes(state: AppState) -> list[BaseRoute]:
    return []
