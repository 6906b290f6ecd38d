"""Websocket connections of the GraphQL subscriptions: which credential a connection
carries, and keeping its access current for as long as it stays open.

A client may send its token in any of the forms client libraries use, looked for in
this order (header names in any case):

* ``connection_init`` payload ``{"authorization": "Bearer <token>"}`` (also
  ``"Authorization"``, or ``{"token": "<token>"}``);
* ``{"headers": {"Authorization": "Bearer <token>"}}`` (Apollo's
  ``connectionParams.headers``);
* the ``Authorization`` header of the HTTP upgrade request (Python ``gql``).

``LiveConnection`` is strawberry's graphql-transport-ws handler with two changes. A
refused token closes with 4403 and the reason in words (strawberry says only
"Forbidden"). And while the connection is open it re-runs the application's own
authentication on the same token every ``ws_recheck_seconds`` and at the token's
expiry, replacing the connection's viewer with what the database says now; so a team
removal or demotion narrows what subscriptions deliver (they check the current viewer
before each message), and an expired or otherwise invalid token (4401), or a user who
may no longer sign in or a revoked API key (4403), closes the socket with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol, cast

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from app.auth import NoLongerAllowed, TokenError, bearer_token
from app.state import AppState
from resolvers.context import RequestContext

log = logging.getLogger("deskbill.connections")

# graphql-transport-ws close codes (the protocol's own, also used by graphql-ws clients).
CREDENTIAL_INVALID = 4401  # expired or no longer valid: get a new token
NOT_ALLOWED = 4403  # refused at connection_init; user deactivated; API key revoked
TRY_AGAIN = 1013  # WebSocket "Try Again Later": the token could not be checked just now
TRY_AGAIN_REASON = "The server could not check your token just now; connect again in a moment."

MISSING = (
    'Send your token in connection_init as {"authorization": "Bearer <token>"} '
    "or in the Authorization header."
)
# A websocket close reason is at most 123 bytes of UTF-8.
_REASON_BYTES = 123


class ConnectionView(Protocol):
    """What a connection needs of ``app.asgi.DeskbillGraphQL`` (no import of it here)."""

    state: AppState

    async def _authenticate(self, context: RequestContext, token: str) -> None: ...


def _named(mapping: Mapping[str, object], name: str) -> object | None:
    """The value of header-like key ``name`` in any case."""
    for key, value in mapping.items():
        if key.lower() == name:
            return value
    return None


def credential(payload: Mapping[str, object], upgrade_headers: Mapping[str, str]) -> str:
    """The token a new connection carries, or TokenError saying how to send it."""
    raw = _named(payload, "authorization")
    if raw is None:
        raw = payload.get("token")
    headers = payload.get("headers")
    if raw is None and isinstance(headers, Mapping):
        raw = _named(headers, "authorization")
    if raw is None:
        raw = upgrade_headers.get("authorization")
    if not isinstance(raw, str | None):
        raise TokenError('The token must be a string: {"authorization": "Bearer <token>"}.')
    if raw is None or not raw.strip():
        raise TokenError(MISSING)
    raw = raw.strip()
    if " " in raw:
        token = bearer_token(raw)  # "Bearer <token>"; refuses any other scheme
        assert token is not None
        return token
    return raw  # a bare token, as {"token": …} carries it


def close_reason(text: str) -> str:
    encoded = text.encode()
    if len(encoded) <= _REASON_BYTES:
        return text
    return encoded[: _REASON_BYTES - 3].decode(errors="ignore") + "…"


class LiveConnection(BaseGraphQLTransportWSHandler[RequestContext, None]):
    """graphql-transport-ws whose access is checked at the door and while it is open."""

    token: str | None = None
    _watch: asyncio.Task[None] | None = None

    @property
    def app_view(self) -> ConnectionView:
        return cast(ConnectionView, self.view)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        # As strawberry's, except for how the token is found and how a refusal closes.
        if self.connection_timed_out:
            return
        if self.connection_init_timeout_task:
            self.connection_init_timeout_task.cancel()
        payload = message.get("payload") or {}
        if not isinstance(payload, dict):
            await self.websocket.close(4400, "The connection_init payload must be an object.")
            return
        if self.connection_init_received:
            await self.websocket.close(4429, "Too many initialisation requests")
            return
        self.connection_init_received = True
        self.context.connection_params = payload
        upgrade = getattr(self.context.request, "headers", None) or {}
        try:
            token = credential(payload, upgrade)
            await self.app_view._authenticate(self.context, token)
        except TokenError as refused:
            await self.websocket.close(NOT_ALLOWED, close_reason(str(refused)))
            return
        except Exception:
            # The database is out of reach or busy: say so, with the standard code that
            # tells clients (graphql-ws among them) to retry, rather than drop the socket.
            log.warning("checking a websocket's token failed", exc_info=True)
            await self.websocket.close(TRY_AGAIN, TRY_AGAIN_REASON)
            return
        self.token = token
        await self.send_message({"type": "connection_ack"})
        self.connection_acknowledged = True
        self._watch = asyncio.create_task(self.keep_access_current())
        self._watch.add_done_callback(self._task_done)

    async def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await super().shutdown()

    def _next_check(self) -> float:
        state = self.app_view.state
        delay = state.settings.ws_recheck_seconds
        # The viewer of the last check says when its credential expires (None: a key).
        viewer = self.context.viewer
        if viewer is not None and viewer.expires_at is not None:
            left = (viewer.expires_at - state.clock.now()).total_seconds()
            if left > 0:
                delay = min(delay, left)
        return delay

    async def keep_access_current(self) -> None:
        """Re-authenticate the connection's token until it is refused, then close."""
        assert self.token is not None
        while True:
            await asyncio.sleep(self._next_check())
            try:
                # On success this replaces the viewer with the user's access as it is now.
                await self.app_view._authenticate(self.context, self.token)
            except TokenError as refused:
                self.context.viewer = None  # nothing more is delivered, whatever follows
                code = NOT_ALLOWED if isinstance(refused, NoLongerAllowed) else CREDENTIAL_INVALID
                await self.close(code, str(refused))
                return
            except Exception:
                # The database is out of reach for a moment: keep the last answer and
                # ask again at the next tick rather than drop every subscriber.
                log.warning("re-checking a websocket's access failed", exc_info=True)

    async def close(self, code: int, reason: str) -> None:
        """End every operation, then close the socket with ``code`` and ``reason``.

        Operations go first, so none of them writes to a socket already closed.
        """
        tasks = [operation.task for operation in self.operations.values() if operation.task]
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        await self.websocket.close(code, close_reason(reason))
