"""What an operator watches, over real HTTP: ``/metrics`` in Prometheus' text format,
``/healthz`` (alive) and ``/readyz`` (database and broadcast reachable)."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client.parser import text_string_to_metric_families

from app.database import create_engine, create_sessionmaker
from app.metrics import Metrics
from app.worker import billing_loop
from tests.api.conftest import Api
from tests.world import World


async def _samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_operations_by_name_and_code(api: Api, world: World) -> None:
    before = await _samples(api)
    for _ in range(3):
        body = await api.gql("query Dashboard { viewer { role } }", token=world.tokens["admin"])
        assert body["data"]["viewer"]["role"] == "ADMIN"
    refused = await api.gql("query Dashboard { viewer { role } }", token="not-a-token")
    assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    await api.gql("query { nope }", token=world.tokens["admin"])
    after = await _samples(api)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    ops = "deskbill_graphql_operations_total"
    assert grew(ops, operation="Dashboard", type="query", code="OK") == 3
    assert grew(ops, operation="Dashboard", type="query", code="UNAUTHENTICATED") == 1
    assert grew(ops, operation="anonymous", type="query", code="GRAPHQL_VALIDATION") == 1
    http = "deskbill_http_requests_total"
    assert grew(http, route="/graphql", method="POST", status="200") >= 4
    assert grew("deskbill_http_request_seconds_count", route="/graphql") >= 5
    # The pool is read at scrape time.
    assert ("deskbill_db_pool_size", ()) in after
    assert ("deskbill_open_subscriptions", ()) in after


async def test_operation_names_cannot_grow_the_registry_without_bound(
    api: Api, world: World
) -> None:
    metrics = api.state.services["metrics"]
    assert metrics.operation_label("x" * 65) == "other"
    assert metrics.operation_label("drop table") == "other"
    for n in range(300):
        metrics.operation_label(f"Op{n}")
    assert metrics.operation_label("Op299") == "other"
    assert metrics.operation_label("Op0") == "Op0"


async def test_refused_stripe_webhooks_are_counted(api: Api) -> None:
    before = await _samples(api)
    response = await api.client.post(
        "/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=bad"}
    )
    assert response.status_code == 400
    after = await _samples(api)
    name = "deskbill_stripe_webhooks_total"
    assert _value(after, name, outcome="refused") - _value(before, name, outcome="refused") == 1


async def test_healthz_and_readyz(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broadcast": "ok"}}


async def test_readyz_fails_while_the_database_is_unreachable_but_healthz_does_not(
    api: Api,
) -> None:
    state = api.state
    unreachable = create_engine("postgresql://postgres@127.0.0.1:1/nothing")
    reachable = state.read_sessionmaker
    state.read_sessionmaker = create_sessionmaker(unreachable)
    try:
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "not ready"
        assert body["checks"]["database"].startswith("unreachable")
        assert (await api.client.get("/healthz")).status_code == 200
    finally:
        state.read_sessionmaker = reachable
        await unreachable.dispose()
    assert (await api.client.get("/readyz")).status_code == 200


async def test_billing_runs_of_the_worker_loop_are_counted(api: Api, world: World) -> None:
    metrics = api.state.services["metrics"]
    seen = asyncio.Event()

    def observe(result: object, seconds: float) -> None:
        metrics.record_billing_run(result, seconds)
        seen.set()

    loop = asyncio.create_task(
        billing_loop(
            api.state.sessionmaker, api.state.clock, 60.0, api.state.announce, observe=observe
        )
    )
    try:
        await asyncio.wait_for(seen.wait(), timeout=60)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    after = await _samples(api)
    assert _value(after, "deskbill_billing_runs_total", outcome="ok") == 1
    assert _value(after, "deskbill_billing_run_seconds_count") == 1
    assert _value(after, "deskbill_billing_accounts_total", outcome="billed") >= 1


def test_made_up_http_methods_cannot_grow_the_registry() -> None:
    metrics = Metrics()
    for n in range(50):
        metrics.count_http("/graphql", f"BREW{n}", 405, 0.001)
    metrics.count_http("/graphql", "POST", 200, 0.002)
    counted = {
        (sample.labels["method"], sample.labels["status"]): sample.value
        for family in metrics.registry.collect()
        if family.name == "deskbill_http_requests"
        for sample in family.samples
        if sample.name == "deskbill_http_requests_total"
    }
    assert counted == {("OTHER", "405"): 50, ("POST", "200"): 1}
