"""End-to-end tests: real servers (in the test's loop or as separate processes), a real
websocket client speaking graphql-transport-ws, and the CLI.

``GraphQLWS`` is the client every test here uses: the smallest honest implementation
of the protocol (connection_init with the token, subscribe, next/error/complete,
ping/pong), so what passes here passes for any conforming client library.

For the multi-process tests: ``Process`` runs one ``deskbill`` command (``serve``,
``worker``) and stops it by its pid; ``PrivateRedis`` is a redis-server of the test's
own, so it can be killed and restarted without touching a shared one;
``migrated_database`` makes a fresh PostgreSQL database with ``deskbill migrate``;
``seed`` fills it with ``tests.world`` and tokens valid now for the servers' secret.
PostgreSQL or Redis out of reach skips those tests with the reason (fails under
``CI=true``), as in ``tests/conftest.py``.

Timeouts in these tests only guard against hanging; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

import httpx
import pytest
import websockets
from redis import asyncio as aioredis
from sqlalchemy import select, text
from websockets.asyncio.client import ClientConnection

from app.auth import issue_token
from app.database import create_engine, create_sessionmaker
from app.settings import Settings
from models import User
from tests.conftest import IN_CI, PG_SERVER, clean
from tests.world import World, build_world

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


# -- processes ---------------------------------------------------------------------------

# Made per run, shared by the test and the servers it starts.
TOKEN_SECRET = secrets.token_urlsafe(32)
SHARED_REDIS = os.environ.get("DESKBILL_TEST_REDIS", "redis://127.0.0.1:6379/0")
BIN = Path(sys.executable).parent


def unreachable(what: str, exc: BaseException | str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but unreachable: {exc!r}")
    pytest.skip(f"{what} not reachable: {exc!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deskbill(*args: str) -> list[str]:
    """The installed console script, as an operator would run it."""
    script = BIN / "deskbill"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "app.cli", *args]


def environment(database_url: str, broadcast_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESKBILL_", "STRIPE_"))}
    env.update(
        DATABASE_URL=database_url,
        DESKBILL_BROADCAST_URL=broadcast_url,
        DESKBILL_TOKEN_SECRET=TOKEN_SECRET,
        DESKBILL_WORKER="false",
        **extra,
    )
    return env


class Process:
    """One ``deskbill`` command in a process of its own, its output kept in a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log: IO[bytes] = tempfile.NamedTemporaryFile(prefix=f"deskbill-{name}-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    async def stop(self) -> None:
        """Stop our own process by its pid: SIGTERM, then SIGKILL if it lingers."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
        self.process = None

    def close(self) -> None:
        self.log.close()


class Server(Process):
    """The app under uvicorn on a free port, as ``deskbill serve --no-worker`` runs it
    minus the migration on start (the test migrated once with ``deskbill migrate``)."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            *(sys.executable, "-m", "uvicorn", "app.asgi:create_app", "--factory"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
        ]
        super().__init__(name, command, {**env, "DESKBILL_WORKER": "false"})

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            async with asyncio.timeout(180):
                while True:
                    assert self.process is not None
                    if self.process.poll() is not None:
                        raise AssertionError(f"{self.name} exited:\n{self.output()}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get("/healthz")).status_code == 200:
                            return
                    await asyncio.sleep(0.1)

    async def gql(self, query: str, variables: dict[str, Any], token: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            response = await client.post(
                "/graphql",
                json={"query": query, "variables": variables},
                headers={"Authorization": f"Bearer {token}"},
            )
        body: dict[str, Any] = response.json()
        assert "errors" not in body, body
        return body


@contextlib.asynccontextmanager
async def running(*processes: Process) -> AsyncIterator[None]:
    """Start the processes (servers until they answer), stop every one by pid after."""
    try:
        for process in processes:
            process.start()
        await asyncio.gather(*(p.ready() for p in processes if isinstance(p, Server)))
        yield
    except BaseException:
        for process in processes:
            sys.stderr.write(f"--- {process.name} ---\n{process.output()[-4000:]}\n")
        raise
    finally:
        for process in processes:
            await process.stop()
            process.close()


class PrivateRedis:
    """A redis-server of the test's own on a free port, killed and restarted by pid."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def start(self) -> None:
        self.process = self._spawn()
        client = aioredis.Redis(port=self.port)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(Exception):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 10)
        self.process = None


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        unreachable("redis-server (to run a private one)", "not installed")
    server = PrivateRedis()
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


async def shared_redis() -> str:
    client = aioredis.Redis.from_url(SHARED_REDIS)
    try:
        async with asyncio.timeout(3):
            await client.ping()
    except Exception as exc:
        unreachable(f"Redis at {SHARED_REDIS}", exc)
    finally:
        await client.aclose()
    return SHARED_REDIS


def pg_broadcast_url(database_url: str) -> str:
    """The same database as a LISTEN/NOTIFY broadcast URL (``postgres://…``)."""
    _, _, rest = database_url.partition("://")
    return f"postgres://{rest}"


async def migrated_database(name: str) -> str:
    """A fresh PostgreSQL database ``name`` brought to head by ``deskbill migrate``."""
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        try:
            async with asyncio.timeout(10):
                conn = await admin.connect()
        except Exception as exc:
            unreachable(f"PostgreSQL at {PG_SERVER}", exc)
        try:
            # Fresh every run, so a revision edited in place cannot leave a stale schema.
            # Generous: DROP and CREATE DATABASE checkpoint, slow on a busy machine.
            async with asyncio.timeout(120):
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await conn.close()
    finally:
        await admin.dispose()
    url = f"{PG_SERVER}/{name}"
    done = await asyncio.to_thread(
        subprocess.run, deskbill("migrate"), env=environment(url, "memory://"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return url


@dataclass
class Seeded:
    """``tests.world`` in the servers' database, with tokens valid now (the servers run
    on the real clock) and signed with the servers' secret."""

    world: World
    tokens: dict[str, str]
    database_url: str

    def id(self, key: str) -> int:
        return self.world.ids[key]


async def seed(database_url: str) -> Seeded:
    settings = Settings(database_url=database_url, token_secret=TOKEN_SECRET)
    engine = create_engine(database_url)
    try:
        await clean(engine)
        sessions = create_sessionmaker(engine)
        world = await build_world(sessions, settings)
        async with sessions() as session:
            users = await session.scalars(
                select(User).where(User.organization_id == world.ids["org"])
            )
            now = datetime.now(UTC)
            tokens = {u.email.split("@")[0]: issue_token(settings, u, now) for u in users}
    finally:
        await engine.dispose()
    return Seeded(world=world, tokens=tokens, database_url=database_url)
