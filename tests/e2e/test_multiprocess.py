"""Several server processes sharing one PostgreSQL database and a broadcast channel:
a mutation served by one process reaches a subscriber of another, over Redis and over
PostgreSQL LISTEN/NOTIFY; and a Redis restart under live subscriptions loses nothing,
because every hub resyncs from the event table.

The servers are real uvicorn processes of the app on free ports, over a database
migrated with ``deskbill migrate``. Each pair serves the whole module (starting
processes is the slow part); the tests keep apart by watching different objects, and
each checks what its subscriber received against the event log itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from app.database import create_engine, create_sessionmaker
from models import Event
from resolvers.subscription import INVOICE_STATUS_EVENTS
from schema.ids import encode
from tests.conftest import PG_DATABASE
from tests.e2e import (
    GraphQLWS,
    PrivateRedis,
    Seeded,
    Server,
    environment,
    migrated_database,
    pg_broadcast_url,
    private_redis,
    running,
    seed,
)

WATCH_INVOICE = """
subscription ($invoiceId: ID!, $after: String) {
  invoiceStatusChanged(invoiceId: $invoiceId, after: $after) { cursor type status }
}"""
WATCH_ACCOUNT = """
subscription ($accountId: ID!, $after: String) {
  events(after: $after, filter: {accountId: $accountId, types: ["account.updated"]}) {
    cursor type
  }
}"""
VOID = "mutation ($id: ID!) { voidInvoice(invoiceId: $id) { status } }"
UNVOID = "mutation ($id: ID!) { unvoidInvoice(invoiceId: $id) { status } }"
RENAME = """
mutation ($id: ID!, $name: String!) { updateAccount(accountId: $id, input: {name: $name}) { name } }
"""


@pytest.fixture(scope="module")
async def seeded() -> Seeded:
    return await seed(await migrated_database(f"{PG_DATABASE}_multiprocess"))


@pytest.fixture(scope="module")
async def redis() -> AsyncIterator[PrivateRedis]:
    # Our own redis-server, never the shared one: the test kills and restarts it.
    async with private_redis() as server:
        yield server


@pytest.fixture(scope="module")
async def over_redis(seeded: Seeded, redis: PrivateRedis) -> AsyncIterator[tuple[Server, Server]]:
    env = environment(seeded.database_url, redis.url)
    one, other = Server("redis-one", env), Server("redis-other", env)
    async with running(one, other):
        yield one, other


@pytest.fixture(scope="module")
async def over_postgres(seeded: Seeded) -> AsyncIterator[tuple[Server, Server]]:
    env = environment(seeded.database_url, pg_broadcast_url(seeded.database_url))
    one, other = Server("postgres-one", env), Server("postgres-other", env)
    async with running(one, other):
        yield one, other


async def logged(seeded: Seeded, *where: Any) -> list[str]:
    """The cursors the event log holds for ``where``: the truth to compare with."""
    engine = create_engine(seeded.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            ids = await session.scalars(select(Event.id).where(*where).order_by(Event.id))
            return [str(i) for i in ids]
    finally:
        await engine.dispose()


def invoice_log(seeded: Seeded, invoice: str) -> Any:
    return logged(
        seeded, Event.invoice_id == seeded.id(invoice), Event.type.in_(INVOICE_STATUS_EVENTS)
    )


class Watcher:
    """A member's app on one server, keeping every message of one subscription."""

    def __init__(self, client: GraphQLWS, operation: str, field: str) -> None:
        self.client = client
        self.operation = operation
        self.field = field
        self.messages: list[dict[str, Any]] = []

    @property
    def cursors(self) -> list[str]:
        return [m["cursor"] for m in self.messages]

    async def until(self, count: int, within: float = 60.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                (result,) = await self.client.results(self.operation, 1, within)
                self.messages.append(result[self.field])
        return self.messages


@contextlib.asynccontextmanager
async def watch(
    server: Server, token: str, query: str, field: str, **variables: str
) -> AsyncIterator[Watcher]:
    async with GraphQLWS.connect(server.url, token) as client:
        # From the start of the log (the seeded world has no events), so nothing depends
        # on the subscription being live before the first mutation.
        operation = await client.subscribe(query, {**variables, "after": "0"})
        yield Watcher(client, operation, field)


async def admin(server: Server, seeded: Seeded, query: str, **variables: str) -> None:
    await server.gql(query, variables, seeded.tokens["admin"])


async def void_then_unvoid(
    one: Server, other: Server, seeded: Seeded, member: str, invoice: str
) -> None:
    invoice_id = encode("Invoice", seeded.id(invoice))
    async with watch(
        other, seeded.tokens[member], WATCH_INVOICE, "invoiceStatusChanged", invoiceId=invoice_id
    ) as watcher:
        await admin(one, seeded, VOID, id=invoice_id)
        voided = await watcher.until(2)
        assert [(m["type"], m["status"]) for m in voided] == [
            ("invoice.status_changed", "VOID"),
            ("invoice.voided", "VOID"),
        ]
        # And the other way round, through the same channel.
        await admin(other, seeded, UNVOID, id=invoice_id)
        truth = await invoice_log(seeded, invoice)
        await watcher.until(len(truth))
        assert watcher.cursors == truth
        assert watcher.messages[-1]["type"] == "invoice.unvoided"


async def test_a_mutation_on_one_server_reaches_a_subscriber_on_the_other_over_redis(
    seeded: Seeded, over_redis: tuple[Server, Server]
) -> None:
    await void_then_unvoid(*over_redis, seeded, member="alice", invoice="team_invoice")


async def test_a_mutation_on_one_server_reaches_a_subscriber_on_the_other_over_postgres(
    seeded: Seeded, over_postgres: tuple[Server, Server]
) -> None:
    await void_then_unvoid(*over_postgres, seeded, member="bob", invoice="bob_invoice")


async def test_redis_restarted_under_live_subscriptions_loses_nothing(
    seeded: Seeded, over_redis: tuple[Server, Server], redis: PrivateRedis
) -> None:
    one, other = over_redis
    account = seeded.id("bob_account")
    account_id = encode("Account", account)
    names = iter(f"Bob, take {n}" for n in range(100))

    async def rename(server: Server) -> None:
        await admin(server, seeded, RENAME, id=account_id, name=next(names))

    async with watch(
        other, seeded.tokens["bob"], WATCH_ACCOUNT, "events", accountId=account_id
    ) as bob:
        await rename(one)
        await bob.until(1)

        await redis.kill()
        # Committed on the other process while the channel is down: the announcements
        # are lost, the rows are not, and bob's hub finds them in the table.
        await rename(one)
        await rename(one)
        await bob.until(3)

        await redis.start()
        await rename(one)
        await rename(one)
        truth = await logged(seeded, Event.account_id == account, Event.type == "account.updated")
        assert len(truth) == 5
        await bob.until(5)

        assert bob.cursors == truth  # everything, once, in order
        assert await bob.client.quiet(bob.operation) == []
