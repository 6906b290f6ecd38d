"""A local fake of the Stripe API that the real ``stripe`` library talks to over HTTP.

``FakeStripe`` keeps customers, setup intents, payment intents and refunds as state
machines, honours ``Idempotency-Key`` the way Stripe does, injects 500s and timeouts
before or after an object is created, and signs webhook events with the endpoint
secret exactly as Stripe does, for delivery (duplicated, reordered) to a URL or
straight into a handler.
"""

from tests.fakestripe.server import CARDS, FakeStripe, FaultPlan

__all__ = ["CARDS", "FakeStripe", "FaultPlan"]
