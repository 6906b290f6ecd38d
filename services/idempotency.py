"""Idempotency keys for money-moving mutations (rules §12.3).

``run_idempotent`` runs a unit of work at most once per (organization, key): the
record is inserted *first* in the work's own transaction, so the UNIQUE
(organization_id, key) constraint makes concurrent retries wait for the first one and
then fail their insert; they re-read the stored response instead of doing the work
again. The stored response is what every retry returns, byte for byte the same JSON.

Only successful results are stored: when the work raises, its transaction (and the
record with it) rolls back, and the same key may be tried again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import IdempotencyRecord
from services.clock import SystemClock
from services.errors import ConflictError, ValidationError

MAX_KEY_LENGTH = 255


class _KeyTaken(Exception):
    """Another transaction holds (or held) this key."""


def request_hash(operation: str, request: dict[str, Any]) -> str:
    """A stable digest of what was asked: same operation and input → same hash."""
    canonical = json.dumps(
        {"operation": operation, "request": request},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def run_idempotent(
    sessionmaker: async_sessionmaker[AsyncSession],
    org_id: int,
    key: str,
    operation: str,
    request: dict[str, Any],
    work: Callable[[AsyncSession], Awaitable[dict[str, Any]]],
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run ``work`` in one transaction unless ``key`` was already used in ``org_id``.

    Same key and same (operation, request) → the first response, without a second
    effect; same key and anything else → ``ConflictError``. ``work`` must return a
    JSON-serializable dict and must not commit (this function owns the transaction).
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"idempotencyKey must be 1 to {MAX_KEY_LENGTH} characters.")
    digest = request_hash(operation, request)

    stored = await _find(sessionmaker, org_id, key)
    if stored is not None:
        return _replay(stored, operation, digest)

    try:
        async with sessionmaker() as session, session.begin():
            record = IdempotencyRecord(
                organization_id=org_id,
                key=key,
                operation=operation,
                request_hash=digest,
                response={},
                created_at=now or SystemClock().now(),
            )
            session.add(record)
            try:
                # Inserting first makes a concurrent retry block here until we finish.
                await session.flush()
            except IntegrityError:
                raise _KeyTaken from None
            result = json.loads(json.dumps(await work(session), default=str))
            record.response = result
        return result  # type: ignore[no-any-return]
    except _KeyTaken:
        pass

    stored = await _find(sessionmaker, org_id, key)
    if stored is None:  # the holder rolled back between our insert and this read
        return await run_idempotent(sessionmaker, org_id, key, operation, request, work, now=now)
    return _replay(stored, operation, digest)


async def _find(
    sessionmaker: async_sessionmaker[AsyncSession], org_id: int, key: str
) -> IdempotencyRecord | None:
    async with sessionmaker() as session:
        return await session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.organization_id == org_id, IdempotencyRecord.key == key
            )
        )


def _replay(record: IdempotencyRecord, operation: str, digest: str) -> dict[str, Any]:
    if record.operation != operation or record.request_hash != digest:
        raise ConflictError(
            "This idempotency key was already used with a different request; "
            "use a new key for a new request.",
            idempotency_key=record.key,
        )
    return dict(record.response)
