"""Cost rate limits: leaky buckets of query-cost points per organization and per caller.

Every GraphQL operation's cost (``app.cost``) is taken, before it runs, from two
buckets: its organization's (every caller of one tenant shares it) and its caller's
(one per user, one per API key, sized by role). A bucket holds at most its capacity
and refills continuously at its restore rate (points per second); an operation runs
only when both buckets hold its whole cost, and is otherwise refused with
``RATE_LIMITED`` (HTTP 429, ``Retry-After``) having taken nothing. This is the model
of Shopify's GraphQL Admin API: the cost is the response's upper bound and is taken
as requested (no refund of what the answer turned out not to need).

So a tenant looping the heaviest query its budget allows runs it once per
``cost / restore rate`` seconds and is refused, cheaply and before any SQL, in
between: its share of the process's time is bounded, other tenants keep theirs. Its
own small queries keep working: an operation over ``heavy_query_cost`` may not take
the organization's last ``ORGANIZATION_RESERVE`` share of capacity, which only
operations under that cost may use — a caller draining the organization's bucket
with heavy queries leaves its colleagues the reserve, refilling as ever.

The buckets live in the process (a bounded LRU: the least recently used bucket is
dropped first, and comes back full). With ``deskbill serve --workers N`` each worker
process has its own buckets, so a caller's effective rate is up to N times the
configured one; sharing them through Redis would cost a round trip on every request
for a bound that N already makes explicit.

The buckets measure seconds on a monotonic clock of their own (injectable for
tests), not the billing clock, which tests and catch-up runs move by months.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from graphql import GraphQLError

from app.settings import Settings
from models.enums import Role

CODE = "RATE_LIMITED"
ORGANIZATION_RESERVE = 0.1
"""The share of an organization's bucket only operations up to ``heavy_query_cost`` use."""


@dataclass
class Bucket:
    """Points available now, refilled at ``restore_rate`` per second up to ``capacity``."""

    capacity: int
    restore_rate: float
    available: float
    updated: float

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.available = min(float(self.capacity), self.available + elapsed * self.restore_rate)
        self.updated = now

    def seconds_until(self, points: float) -> float:
        """How long until the bucket holds ``points`` (0 when it already does)."""
        missing = points - self.available
        if missing <= 0:
            return 0.0
        if self.restore_rate <= 0:
            return math.inf
        return missing / self.restore_rate

    def status(self) -> dict[str, float | int]:
        """The bucket as Shopify's ``throttleStatus`` reports one."""
        return {
            "maximumAvailable": self.capacity,
            "currentlyAvailable": int(self.available),
            "restoreRate": self.restore_rate,
        }


@dataclass(frozen=True)
class Grant:
    """What an operation took, and what its buckets hold afterwards."""

    cost: int
    caller: Bucket
    organization: Bucket

    def extension(self) -> dict[str, object]:
        """The response's ``extensions.cost`` (Shopify's names)."""
        return {
            "requestedQueryCost": self.cost,
            "throttleStatus": self.caller.status(),
            "organizationThrottleStatus": self.organization.status(),
        }


class RateLimitedError(GraphQLError):
    """The refusal of an operation its buckets cannot pay for yet, coded for the client."""

    def __init__(self, cost: int, available: int, retry_after: int, bucket: str) -> None:
        super().__init__(
            f"This query costs {cost:,} points and {bucket} has {available:,} available "
            f"right now; nothing was run. Try again in {retry_after} seconds, or ask for "
            "less (smaller pages, fewer nested lists) to spend fewer points.",
            extensions={
                "code": CODE,
                "cost": cost,
                "available": available,
                "bucket": bucket,
                "retryAfter": retry_after,
            },
        )
        self.retry_after = retry_after


def caller_capacity(settings: Settings, role: Role | str | None) -> tuple[int, float]:
    """The capacity and restore rate of a caller's bucket of ``role``."""
    if role == Role.ADMIN:
        return settings.cost_bucket_admin, settings.cost_restore_admin
    if role == Role.ANALYST:
        return settings.cost_bucket_analyst, settings.cost_restore_analyst
    return settings.cost_bucket_member, settings.cost_restore_member


class CostBuckets:
    """The process's buckets, at most ``cost_buckets_max`` of them (LRU)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.max_buckets = max(2, settings.cost_buckets_max)
        self._buckets: OrderedDict[tuple[str, int], Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: tuple[str, int], capacity: int, rate: float, now: float) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = Bucket(capacity, rate, float(capacity), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            # A caller whose role changed gets the new role's size from now on.
            bucket.capacity, bucket.restore_rate = capacity, rate
            bucket.refill(now)
        return bucket

    def largest_cost(self, role: Role | str | None) -> int:
        """The most one operation may cost and still fit both buckets at all."""
        capacity, _ = caller_capacity(self.settings, role)
        organization = self.settings.cost_bucket_organization
        return min(capacity, int(organization * (1 - ORGANIZATION_RESERVE)))

    def take(
        self,
        *,
        organization_id: int,
        caller: tuple[str, int],
        role: Role | str | None,
        cost: int,
    ) -> Grant:
        """Take ``cost`` from the organization's and the caller's buckets, or raise
        ``RateLimitedError`` having taken nothing."""
        now = self.clock()
        settings = self.settings
        capacity, rate = caller_capacity(settings, role)
        own = self._bucket(caller, capacity, rate, now)
        organization = self._bucket(
            ("organization", organization_id),
            settings.cost_bucket_organization,
            settings.cost_restore_organization,
            now,
        )
        # Heavy operations leave the organization's reserve to the small ones.
        reserve = (
            ORGANIZATION_RESERVE * organization.capacity
            if cost > settings.heavy_query_cost
            else 0.0
        )
        shortfalls = [
            (own.seconds_until(cost), own, "your own bucket"),
            (organization.seconds_until(cost + reserve), organization, "your organization"),
        ]
        wait, short, name = max(shortfalls, key=lambda entry: entry[0])
        if wait > 0:
            retry_after = max(1, math.ceil(min(wait, 86_400.0)))
            raise RateLimitedError(cost, int(short.available), retry_after, name)
        own.available -= cost
        organization.available -= cost
        return Grant(cost, own, organization)
