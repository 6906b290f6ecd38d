"""A transaction stuck holding an account's row lock (issue 10, finding 1) costs that
account, not the service: the billing run skips it and bills the other tenant, a
request that needs the lock gives up after the lock timeout with SERVICE_BUSY and
changes nothing, and another organization's requests keep being answered.

PostgreSQL only: row locks and lock_timeout are PostgreSQL's (SQLite has one writer
and a busy timeout, tested in tests/app/test_database.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from app.database import create_engine, create_sessionmaker
from app.settings import DatabaseLimits
from models import Account, Invoice, LineItem, Organization
from schema.ids import encode
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.world import World, build_world

LIMITS = DatabaseLimits(lock_timeout_ms=500)
AS_OF = datetime(2026, 9, 1, 6, tzinfo=UTC)
RENAME = """
mutation ($id: ID!, $name: String!) { updateAccount(accountId: $id, input: {name: $name}) { name } }
"""
RUN = (
    "mutation ($asOf: DateTime!) { runBilling(asOf: $asOf) { accountsSkipped invoicesFinalized } }"
)


@pytest.fixture
async def tight(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Api]:
    """The API over its own engine with a short lock timeout, on the test's database."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks and lock_timeout are PostgreSQL's")
    own = create_engine(engine.url.render_as_string(hide_password=False), limits=LIMITS)
    app = create_app(SETTINGS, engine=own, clock=clock, start_worker=False)
    try:
        async for url in serve(app):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield Api(url=url, app=app, client=client)
    finally:
        await own.dispose()


async def due_charge(engine: AsyncEngine, world: World, org: str, account: str) -> int:
    """A pending invoice with one line whose finalization time has come."""
    at = datetime(2026, 8, 31, tzinfo=UTC)
    async with create_sessionmaker(engine).begin() as session:
        invoice = Invoice(
            organization_id=world.ids[org], account_id=world.ids[account], currency="USD",
            status="PENDING", document_type="DRAFT", due_date=date(2026, 9, 2),
            finalize_at=at, created_at=at, updated_at=at,
        )  # fmt: skip
        session.add(invoice)
        await session.flush()
        session.add(LineItem(
            organization_id=world.ids[org], invoice_id=invoice.id, kind="CHARGE",
            description="Meeting room", quantity=1, unit_price=4200, amount=4200,
            tax_rate_ppm=0, tax=0, total=4200, created_at=at,
        ))  # fmt: skip
        return invoice.id


async def status_of(engine: AsyncEngine, invoice_id: int) -> tuple[str, str | None]:
    async with create_sessionmaker(engine)() as session:
        invoice = await session.get(Invoice, invoice_id)
        assert invoice is not None
        return invoice.status, invoice.number


async def test_a_stuck_transaction_costs_its_account_not_the_service(
    tight: Api, engine: AsyncEngine, clock: FixedClock
) -> None:
    world = await build_world(tight.state.sessionmaker, SETTINGS)
    clock.set(AS_OF)  # a live organization's billing runs for now, not a future instant
    stuck_invoice = await due_charge(engine, world, "org", "bob_account")
    rival_invoice = await due_charge(engine, world, "rival", "mallory_account")
    async with create_sessionmaker(engine).begin() as session:
        rival_org = await session.get(Organization, world.ids["rival"])
        assert rival_org is not None
        rival_org.next_invoice_number = 2  # the world gave the rival INV-000001 already
    bob = encode("Account", world.ids["bob_account"])

    async with engine.connect() as stuck:
        await stuck.execute(
            text("SELECT id FROM accounts WHERE id = :id FOR UPDATE"),
            {"id": world.ids["bob_account"]},
        )

        # (a) The billing clock skips the held account and bills the other tenant.
        skipped = await tight.gql(RUN, {"asOf": AS_OF.isoformat()}, token=world.tokens["admin"])
        assert skipped["data"]["runBilling"]["accountsSkipped"] == 1, skipped
        rival = await tight.gql(RUN, {"asOf": AS_OF.isoformat()}, token=world.tokens["rival_admin"])
        assert rival["data"]["runBilling"]["invoicesFinalized"] == 1, rival
        assert (await status_of(engine, rival_invoice))[1] == "INV-000002"

        # (b) Requests that need the lock give up with a coded error — several at
        # once, each holding a connection meanwhile — while (c) another
        # organization's requests keep being answered.
        async def rename(n: int) -> dict[str, Any]:
            return await tight.gql(
                RENAME, {"id": bob, "name": f"Bob {n}"}, token=world.tokens["admin"]
            )

        async def viewer() -> dict[str, Any]:
            return await tight.gql("{ viewer { role } }", token=world.tokens["rival_admin"])

        answers = await asyncio.gather(*(rename(n) for n in range(8)), viewer(), viewer())
        for refused in answers[:8]:
            (error,) = refused["errors"]
            assert error["extensions"]["code"] == "SERVICE_BUSY", refused
            assert "holding this record" in error["message"]
        assert all(a == {"data": {"viewer": {"role": "ADMIN"}}} for a in answers[8:]), answers[8:]
        await stuck.rollback()

    async with create_sessionmaker(engine)() as session:
        name = await session.scalar(
            select(Account.name).where(Account.id == world.ids["bob_account"])
        )
    assert name == "Bob"  # nothing the refused requests tried was written
    assert await status_of(engine, stuck_invoice) == ("PENDING", None)

    # Once the lock is gone, everything works again by itself.
    renamed = await tight.gql(RENAME, {"id": bob, "name": "Bob B."}, token=world.tokens["admin"])
    assert renamed == {"data": {"updateAccount": {"name": "Bob B."}}}
    again = await tight.gql(RUN, {"asOf": AS_OF.isoformat()}, token=world.tokens["admin"])
    assert again["data"]["runBilling"] == {"accountsSkipped": 0, "invoicesFinalized": 1}
    assert (await status_of(engine, stuck_invoice))[0] != "PENDING"
