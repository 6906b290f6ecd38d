"""Errors leave coded and masked, also inside a subscription's stream of messages."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from app.graphql import INTERNAL_MESSAGE, CodedErrors
from services.errors import InvalidStateError


@strawberry.type
class Thing:
    @strawberry.field
    def boom(self) -> int | None:
        raise RuntimeError("secret internals at /srv/deskbill")

    @strawberry.field
    def refused(self) -> int | None:
        raise InvalidStateError("This invoice is PAID; refund it instead.")


@strawberry.type
class Q:
    ok: int = 1


@strawberry.type
class S:
    @strawberry.subscription
    async def things(self) -> AsyncGenerator[Thing, None]:
        yield Thing()
        yield Thing()


SCHEMA = strawberry.Schema(query=Q, subscription=S, extensions=[CodedErrors])


async def test_every_streamed_message_is_masked_and_coded() -> None:
    stream = await SCHEMA.subscribe("subscription { things { boom refused } }")
    messages = [result async for result in stream]  # type: ignore[union-attr]
    assert len(messages) == 2
    for result in messages:
        coded = {e.path[-1]: (e.message, e.extensions) for e in result.errors or []}
        assert coded["boom"] == (
            INTERNAL_MESSAGE,
            {"code": "INTERNAL_ERROR", "requestId": "-"},  # outside a request: no id
        )
        assert coded["refused"] == (
            "This invoice is PAID; refund it instead.",
            {"code": "INVALID_STATE"},
        )
