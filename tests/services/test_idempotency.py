"""Idempotency keys (rules §12.3): the first result is returned to every retry with
the same input, other input under the same key is a conflict, and twenty concurrent
retries produce exactly one effect."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Event, IdempotencyRecord, Organization
from services import events
from services.errors import ConflictError, InvalidStateError, ValidationError
from services.idempotency import run_idempotent
from services.locks import lock_organization
from tests.services.payments_builder import World, make_world


@pytest.fixture
async def world(db, clock) -> World:
    return await make_world(db, clock)


def _effect(world: World, org_id: int | None = None):
    """A unit of work with a visible effect: one event row, and a counter."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        # Taking a row lock makes concurrent attempts overlap for real on PostgreSQL.
        await lock_organization(session, org_id or world.org.id)
        event = events.record(
            session, organization_id=org_id or world.org.id, type="test.effect", at=world.now
        )
        await session.flush()
        return {"event_id": event.id, "amount": "12.50"}

    return work


async def _effects(world: World) -> int:
    async with world.db() as session:
        return int(
            await session.scalar(select(func.count(Event.id)).where(Event.type == "test.effect"))
            or 0
        )


async def test_a_retry_returns_the_first_result_without_a_second_effect(world: World) -> None:
    request = {"invoice_id": 7, "amount": 1250}
    first = await run_idempotent(
        world.db, world.org.id, "key-1", "recordPayment", request, _effect(world), now=world.now
    )
    again = await run_idempotent(
        world.db, world.org.id, "key-1", "recordPayment", dict(request), _effect(world)
    )
    assert first == again == {"event_id": first["event_id"], "amount": "12.50"}
    assert await _effects(world) == 1
    assert await world.count(IdempotencyRecord) == 1


@pytest.mark.parametrize(
    ("operation", "request_"),
    [("recordPayment", {"invoice_id": 7, "amount": 1251}), ("refundPayment", {"invoice_id": 7})],
)
async def test_the_same_key_with_other_input_is_a_conflict(
    world: World, operation: str, request_: dict[str, int]
) -> None:
    await run_idempotent(
        world.db, world.org.id, "key-2", "recordPayment", {"invoice_id": 7}, _effect(world)
    )
    with pytest.raises(ConflictError) as caught:
        await run_idempotent(world.db, world.org.id, "key-2", operation, request_, _effect(world))
    assert caught.value.code == "CONFLICT"
    assert await _effects(world) == 1


async def test_twenty_concurrent_retries_make_one_effect(world: World) -> None:
    request = {"invoice_id": 1, "amount": 500}
    results = await asyncio.gather(
        *(
            run_idempotent(
                world.db, world.org.id, "burst", "chargeInvoice", request, _effect(world)
            )
            for _ in range(20)
        )
    )
    assert await _effects(world) == 1
    assert all(result == results[0] for result in results)
    assert await world.count(IdempotencyRecord) == 1


async def test_keys_are_scoped_per_organization(world: World) -> None:
    async with world.db() as session, session.begin():
        other = Organization(name="Other", slug="other", currency="EUR", created_at=world.now)
        session.add(other)
    ours = await run_idempotent(
        world.db, world.org.id, "shared", "recordPayment", {}, _effect(world)
    )
    theirs = await run_idempotent(
        world.db, other.id, "shared", "recordPayment", {}, _effect(world, other.id)
    )
    assert ours["event_id"] != theirs["event_id"]
    assert await _effects(world) == 2


async def test_a_failed_attempt_does_not_keep_the_key(world: World) -> None:
    async def refuse(session: AsyncSession) -> dict[str, Any]:
        await _effect(world)(session)
        raise InvalidStateError("Not now.")

    with pytest.raises(InvalidStateError):
        await run_idempotent(world.db, world.org.id, "retry-me", "op", {}, refuse)
    assert await _effects(world) == 0
    assert await world.count(IdempotencyRecord) == 0
    done = await run_idempotent(world.db, world.org.id, "retry-me", "op", {}, _effect(world))
    assert done["amount"] == "12.50"
    assert await _effects(world) == 1
    with pytest.raises(ValidationError):
        await run_idempotent(world.db, world.org.id, "", "op", {}, _effect(world))
