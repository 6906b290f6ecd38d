"""End-to-end tests: real servers (in the test's loop or as separate processes), a real
websocket client speaking graphql-transport-ws, and the CLI.

``GraphQLWS`` is the client every test here uses: the smallest honest implementation
of the protocol (connection_init with the token, subscribe, next/error/complete,
ping/pong), so what passes here passes for any conforming client library.
Timeouts in these tests only guard against hanging; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

PROTOCOL = "graphql-transport-ws"
GUARD = 20.0  # seconds: only a hang guard, never a speed assertion


class Closed(Exception):
    """The server closed the connection; ``code`` is its close code."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code = code
        self.reason = reason


class GraphQLWS:
    """One graphql-transport-ws connection; messages are sorted by operation id."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self._inbox: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._ids = (str(n) for n in itertools.count(1))

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, http_url: str, token: str | None = None, *, init: bool = True
    ) -> AsyncIterator[GraphQLWS]:
        url = http_url.replace("http://", "ws://", 1).rstrip("/") + "/graphql"
        async with websockets.connect(url, subprotocols=[PROTOCOL]) as connection:  # type: ignore[list-item]
            client = cls(connection)
            if init:
                await client.init({"authorization": f"Bearer {token}"} if token else {})
            yield client

    async def init(self, payload: dict[str, Any]) -> dict[str, Any]:
        await self._send({"type": "connection_init", "payload": payload})
        message = await self._receive_one()
        assert message["type"] == "connection_ack", message
        return message

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        operation = next(self._ids)
        payload = {"query": query, "variables": variables or {}}
        await self._send({"id": operation, "type": "subscribe", "payload": payload})
        return operation

    async def complete(self, operation: str) -> None:
        await self._send({"id": operation, "type": "complete"})

    async def message(self, operation: str, within: float = GUARD) -> dict[str, Any]:
        """The next message (next, error or complete) of ``operation``."""
        async with asyncio.timeout(within):
            while not self._inbox[operation]:
                message = await self._receive_one()
                self._inbox[message.get("id", "")].append(message)
        return self._inbox[operation].pop(0)

    async def results(self, operation: str, count: int, within: float = GUARD) -> list[Any]:
        """The data of the next ``count`` results of ``operation`` (fails on anything else)."""
        found = []
        for _ in range(count):
            message = await self.message(operation, within)
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            found.append(message["payload"]["data"])
        return found

    async def quiet(self, operation: str, within: float = 0.5) -> list[dict[str, Any]]:
        """Whatever ``operation`` receives during ``within`` seconds (to show nothing extra)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while True:
                    message = await self._receive_one()
                    self._inbox[message.get("id", "")].append(message)
        return self._inbox.pop(operation, [])

    async def closed(self, within: float = GUARD) -> Closed:
        """Wait for the server to close the connection; its code and reason."""
        try:
            async with asyncio.timeout(within):
                while True:
                    await self._receive_one()
        except Closed as closed:
            return closed
        raise AssertionError("unreachable")

    async def _send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def _receive_one(self) -> dict[str, Any]:
        while True:
            try:
                raw = await self.connection.recv()
            except websockets.ConnectionClosed as closed:
                rcvd = closed.rcvd
                raise Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from None
            message: dict[str, Any] = json.loads(raw)
            if message["type"] == "ping":
                await self._send({"type": "pong"})
                continue
            if message["type"] == "pong":
                continue
            return message
