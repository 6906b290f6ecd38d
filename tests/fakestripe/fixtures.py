"""Pytest fixtures for the fake Stripe; test modules import the ones they use.

The client timeout is short (0.25 s) and the fake's timeouts are longer than it, so
fault-injection tests spend fractions of a second per lost answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from services.gateway import StripeGateway
from tests.fakestripe.server import FakeStripe

CLIENT_TIMEOUT = 0.25
FAULT_DELAY = 0.5


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


def make_gateway(fake: FakeStripe, **options: float) -> StripeGateway:
    settings = {"timeout": CLIENT_TIMEOUT, "backoff": 0.01, "max_attempts": 4, **options}
    return StripeGateway(
        fake.api_key,
        fake.webhook_secret,
        api_base=fake.url,
        timeout=float(settings["timeout"]),
        backoff=float(settings["backoff"]),
        max_attempts=int(settings["max_attempts"]),
    )


@pytest.fixture
async def stripe_gateway(fake_stripe: FakeStripe) -> AsyncIterator[StripeGateway]:
    gateway = make_gateway(fake_stripe)
    yield gateway
    await gateway.aclose()
