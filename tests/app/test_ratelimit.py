"""The cost buckets alone (no server): refusal, refill on a clock the test moves,
tenants and callers apart, the organization's reserve for small operations, LRU."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from app.ratelimit import ORGANIZATION_RESERVE, CostBuckets, RateLimitedError
from app.settings import Settings

SETTINGS = replace(
    Settings(),
    cost_bucket_admin=10_000,
    cost_restore_admin=100.0,
    cost_bucket_analyst=10_000,
    cost_restore_analyst=100.0,
    cost_bucket_member=1_000,
    cost_restore_member=10.0,
    cost_bucket_organization=30_000,
    cost_restore_organization=200.0,
    heavy_query_cost=2_000,
)


@dataclass
class Ticker:
    """Seconds on the buckets' monotonic clock, moved by the test."""

    seconds: float = 1_000.0

    def __call__(self) -> float:
        return self.seconds


def take(buckets: CostBuckets, cost: int, *, org: int = 1, user: int = 1, role: str = "ANALYST"):  # type: ignore[no-untyped-def]
    return buckets.take(organization_id=org, caller=("user", user), role=role, cost=cost)


def test_a_bucket_refuses_what_it_cannot_pay_and_takes_nothing() -> None:
    clock = Ticker()
    buckets = CostBuckets(SETTINGS, clock)
    grant = take(buckets, 9_000)
    assert grant.extension() == {
        "requestedQueryCost": 9_000,
        "throttleStatus": {
            "maximumAvailable": 10_000,
            "currentlyAvailable": 1_000,
            "restoreRate": 100.0,
        },
        "organizationThrottleStatus": {
            "maximumAvailable": 30_000,
            "currentlyAvailable": 21_000,
            "restoreRate": 200.0,
        },
    }
    with pytest.raises(RateLimitedError) as refused:
        take(buckets, 3_000)
    assert refused.value.extensions == {
        "code": "RATE_LIMITED",
        "cost": 3_000,
        "available": 1_000,
        "bucket": "your own bucket",
        "retryAfter": 20,  # 2,000 missing at 100 a second
    }
    assert "3,000" in refused.value.message and "20 seconds" in refused.value.message
    # Nothing was taken by the refusal: a small operation still fits.
    assert take(buckets, 1_000).caller.available == 0


def test_the_bucket_refills_at_its_restore_rate_up_to_its_capacity() -> None:
    clock = Ticker()
    buckets = CostBuckets(SETTINGS, clock)
    take(buckets, 10_000)
    with pytest.raises(RateLimitedError):
        take(buckets, 500)
    clock.seconds += 4.9  # 490 points back
    with pytest.raises(RateLimitedError) as refused:
        take(buckets, 500)
    assert refused.value.extensions["retryAfter"] == 1
    clock.seconds += 0.1
    assert take(buckets, 500).caller.available == 0
    clock.seconds += 10_000  # long idle: full, never more
    assert take(buckets, 1).caller.available == 10_000 - 1
    # A clock that goes back (it is monotonic, but say so) refills nothing.
    clock.seconds -= 50
    assert take(buckets, 1).caller.available == 10_000 - 2


def test_another_tenant_and_another_caller_are_unaffected() -> None:
    clock = Ticker()
    buckets = CostBuckets(SETTINGS, clock)
    take(buckets, 10_000, org=1, user=1)
    with pytest.raises(RateLimitedError):
        take(buckets, 10_000, org=1, user=1)
    # A colleague has a full bucket of their own, another tenant both buckets full.
    assert take(buckets, 10_000, org=1, user=2).caller.available == 0
    other = take(buckets, 10_000, org=2, user=3)
    assert other.organization.available == 20_000
    # API keys and users with the same id are different callers.
    key = buckets.take(organization_id=1, caller=("api_key", 1), role="ADMIN", cost=5_000)
    assert key.caller.available == 5_000


def test_the_organizations_bucket_binds_all_its_callers() -> None:
    clock = Ticker()
    buckets = CostBuckets(SETTINGS, clock)
    take(buckets, 10_000, user=1)
    take(buckets, 10_000, user=2)
    with pytest.raises(RateLimitedError) as refused:
        take(buckets, 9_000, user=3)  # 10,000 left, 3,000 of them the reserve
    assert refused.value.extensions["bucket"] == "your organization"
    assert refused.value.extensions["retryAfter"] == 10  # 2,000 missing at 200 a second


def test_heavy_operations_leave_the_organizations_reserve_to_small_ones() -> None:
    clock = Ticker()
    buckets = CostBuckets(SETTINGS, clock)
    reserve = int(ORGANIZATION_RESERVE * SETTINGS.cost_bucket_organization)
    take(buckets, 10_000, user=1)
    take(buckets, 10_000, user=2)
    take(buckets, 10_000 - reserve, user=3)
    organization = take(buckets, 1, user=4).organization
    assert int(organization.available) == reserve - 1
    with pytest.raises(RateLimitedError):
        take(buckets, SETTINGS.heavy_query_cost + 1, user=5)  # heavy: not from the reserve
    # Small operations of every colleague go on, from the reserve.
    for user in range(6, 16):
        take(buckets, SETTINGS.heavy_query_cost // 10, user=user)


def test_a_bucket_smaller_than_the_budget_is_the_budget() -> None:
    buckets = CostBuckets(SETTINGS, Ticker())
    assert buckets.largest_cost("MEMBER") == 1_000
    assert buckets.largest_cost("ADMIN") == 10_000
    small_org = CostBuckets(replace(SETTINGS, cost_bucket_organization=5_000), Ticker())
    assert small_org.largest_cost("ADMIN") == int(5_000 * (1 - ORGANIZATION_RESERVE))


def test_memory_is_bounded_and_the_least_recently_used_bucket_goes_first() -> None:
    clock = Ticker()
    buckets = CostBuckets(replace(SETTINGS, cost_buckets_max=100), clock)
    take(buckets, 10_000, org=1, user=1)
    for user in range(2, 500):
        take(buckets, 1, org=1, user=user)  # org 1 stays recent, user 1 does not
    assert len(buckets) == 100
    # User 1's drained bucket was dropped and comes back full; the organization's
    # bucket was in use all along and still counts everything taken.
    grant = take(buckets, 10_000, org=1, user=1)
    assert grant.caller.available == 0
    assert grant.organization.available == 30_000 - 10_000 - 498 - 10_000
