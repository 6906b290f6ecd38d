"""The HTTP edge over a real server (SQLite and PostgreSQL): cost limits, body and
response bounds, malformed requests, NUL characters, SERVICE_BUSY, request ids, logs.

Each test reproduces a finding of the robustness review and shows it refused with a
code and a sentence, and that nothing ran or changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import websockets
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.asgi import create_app
from app.database import create_engine, create_sessionmaker
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.app.test_cost import ATTACK_CYCLE, ATTACK_PAGES, FULL_PAGE
from tests.world import World

MB = 1024 * 1024


@contextlib.asynccontextmanager
async def server(engine: AsyncEngine, clock: FixedClock, **settings: Any) -> AsyncIterator[Api]:
    app = create_app(
        dataclasses.replace(SETTINGS, **settings), engine=engine, clock=clock, start_worker=False
    )
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Api(url=url, app=app, client=client)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    errors = response.json()["errors"]
    assert len(errors) == 1
    error: dict[str, Any] = errors[0]
    assert error["message"] and error["extensions"]["code"]
    return error


# --- query cost --------------------------------------------------------------------


async def test_the_payment_cycle_attack_is_refused_before_any_sql(api: Api, world: World) -> None:
    doc = ATTACK_CYCLE.replace("Invoice:1", f"Invoice:{world.ids['paid']}")
    seen = api.count_selects()
    body = await api.gql(doc, token=world.tokens["admin"])
    api.stop_counting()
    error = body["errors"][0]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert error["extensions"]["limit"] == SETTINGS.cost_limit_admin
    assert f"{error['extensions']['cost']:,}" in error["message"]
    assert f"{SETTINGS.cost_limit_admin:,}" in error["message"]
    assert body.get("data") is None
    # Only the bearer token's user was read; no invoice or payment was.
    assert seen and not [s for s in seen if "payments" in s or "invoices" in s]


async def test_thirty_full_pages_are_refused_to_the_analyst(api: Api, world: World) -> None:
    body = await api.gql(ATTACK_PAGES, token=world.tokens["analyst"])
    error = body["errors"][0]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert error["extensions"]["limit"] == SETTINGS.cost_limit_analyst
    # One full page is within the budget and answers.
    body = await api.gql("{ " + FULL_PAGE + " }", token=world.tokens["analyst"])
    assert "errors" not in body, body
    assert body["data"]["invoices"]["totalCount"] > 0


async def test_a_members_budget_is_smaller_and_configurable(
    engine: AsyncEngine, clock: FixedClock, world: World
) -> None:
    doc = "{ invoices(first: 30) { nodes { lines { id } } } }"  # 1 + 30 × 21 = 631
    async with server(engine, clock, cost_limit_member=600) as small:
        body = await small.gql(doc, token=world.tokens["alice"])
        assert body["errors"][0]["extensions"] == {
            "code": "QUERY_TOO_COMPLEX",
            "cost": 631,
            "limit": 600,
        }
        body = await small.gql(doc.replace("30", "20"), token=world.tokens["alice"])
        assert "errors" not in body, body


async def test_a_subscription_over_budget_is_refused(api: Api, world: World) -> None:
    from tests.e2e import GraphQLWS

    doc = "subscription { events { cursor } } " + ""
    heavy = (
        "subscription { invoiceStatusChanged { invoice { payments { invoice "
        "{ payments { invoice { payments { invoice { lines { id } } } } } } } } } }"
    )
    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as client:
        operation = await client.subscribe(heavy)
        message = await client.message(operation)
        errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
        assert errors[0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
        assert doc  # an ordinary subscription on the same connection still works
        ok = await client.subscribe(doc)
        assert await client.quiet(ok, within=0.2) == []


async def test_heavy_operations_take_turns_in_their_lane(
    engine: AsyncEngine, clock: FixedClock, world: World
) -> None:
    from app.graphql import DeskbillSchema

    heavy = "{ invoices(first: 10) { nodes { lines { id } } } }"  # 211, over 100
    light = "{ invoices(first: 2) { nodes { number } } }"  # 3
    async with server(engine, clock, heavy_query_cost=100, request_timeout_seconds=0.5) as api:
        view = next(r for r in api.app.routes if getattr(r, "path", "") == "/graphql")
        schema = view.app.schema  # type: ignore[attr-defined]
        assert isinstance(schema, DeskbillSchema)
        # The one place is taken (as by another client's heavy query): a heavy query
        # waits for it — here past its deadline — while a light one goes straight on.
        await schema.heavy_lane.places.acquire()
        try:
            response = await api.client.post(
                "/graphql", json={"query": heavy}, headers=auth(world.tokens["admin"])
            )
            assert response.status_code == 503
            assert error_of(response)["extensions"]["code"] == "SERVICE_BUSY"
            body = await api.gql(light, token=world.tokens["admin"])
            assert "errors" not in body, body
        finally:
            schema.heavy_lane.places.release()
        body = await api.gql(heavy, token=world.tokens["admin"])
        assert "errors" not in body, body


# --- response size -------------------------------------------------------------------


async def test_a_response_over_the_bound_is_a_coded_error_not_a_cut_body(
    engine: AsyncEngine, clock: FixedClock, world: World
) -> None:
    async with server(engine, clock, max_response_bytes=300) as small:
        response = await small.client.post(
            "/graphql",
            json={"query": "{ invoices { nodes { id number status } } }"},
            headers=auth(world.tokens["admin"]),
        )
        error = error_of(response)
        assert error["extensions"]["code"] == "RESPONSE_TOO_LARGE"
        assert "over the limit of 300" in error["message"]
        assert "data" not in response.json()
        small_doc = {"query": "{ viewer { role } }"}
        response = await small.client.post(
            "/graphql", json=small_doc, headers=auth(world.tokens["admin"])
        )
        assert response.json() == {"data": {"viewer": {"role": "ADMIN"}}}


# --- request body --------------------------------------------------------------------


async def test_a_declared_50_mb_body_is_refused_before_it_is_read(api: Api) -> None:
    url = urlparse(api.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {50 * MB}\r\n\r\n".encode()
    )
    await writer.drain()
    # Not one byte of the body was sent: the answer comes from the header alone.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413"), head
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
                 .split(b":")[1])  # fmt: skip
    body = json.loads(await reader.readexactly(length))
    assert body["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "1,048,576 bytes" in body["errors"][0]["message"]
    writer.close()


async def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(api: Api) -> None:
    url = urlparse(api.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < 50 * MB and not answer.done():
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)
    head = await asyncio.wait_for(answer, 10)
    assert head.startswith(b"HTTP/1.1 413"), head
    # The server stopped reading just past its 1 MB limit: the client got the answer
    # long before it could push 50 MB (what it did send sits in socket buffers).
    assert sent < 20 * MB, sent
    writer.close()


async def test_the_body_limit_is_configurable_and_applies_to_webhooks(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    async with server(engine, clock, max_body_bytes=1000) as small:
        response = await small.client.post("/webhooks/stripe", content=b"{" + b" " * 2000 + b"}")
        assert response.status_code == 413
        assert error_of(response)["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


MALFORMED = {
    "invalid UTF-8": (b'{"query": "{ viewer { role } }\xff"}', "UTF-8"),
    "a number": (b"123", "JSON object"),
    "a string": (b'"x"', "JSON object"),
    "null": (b"null", "JSON object"),
    "a list": (b"[]", "JSON object"),
    "empty": (b"", "empty"),
    "not JSON": (b"{query", "not valid JSON"),
    "no query": (b'{"variables": {}}', "`query`"),
    "an empty query": (b'{"query": "  "}', "`query`"),
    "a non-string query": (b'{"query": 5}', "`query`"),
    "list variables": (b'{"query": "{ viewer { role } }", "variables": [1]}', "`variables`"),
    "numeric operationName":
        (b'{"query": "{ viewer { role } }", "operationName": 3}', "operationName"),
    "unknown operationName":
        (b'{"query": "query A { viewer { role } }", "operationName": "B"}', "B"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_request_is_a_coded_400(api: Api, world: World, case: str) -> None:
    body, mentioned = MALFORMED[case]
    response = await api.client.post(
        "/graphql",
        content=body,
        headers={"Content-Type": "application/json", **auth(world.tokens["admin"])},
    )
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["extensions"]["code"] in ("BAD_REQUEST", "GRAPHQL_VALIDATION")
    assert mentioned in error["message"]


async def test_a_wrong_content_type_is_a_coded_400(api: Api, world: World) -> None:
    response = await api.client.post(
        "/graphql",
        content=b"query=%7Bviewer%7Brole%7D%7D",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert error_of(response)["extensions"]["code"] == "BAD_REQUEST"


async def test_a_websocket_message_over_the_limit_closes_with_1009(
    engine: AsyncEngine, clock: FixedClock, world: World
) -> None:
    from tests.e2e import GraphQLWS

    async with server(engine, clock, max_body_bytes=2000) as small:
        async with GraphQLWS.connect(small.url, world.tokens["admin"]) as client:
            await client.subscribe("subscription { events { cursor } }", {"pad": "x" * 5000})
            closed = await client.closed()
            assert closed.code == 1009
            assert "2,000 bytes" in closed.reason


# --- NUL characters ------------------------------------------------------------------

CREATE = "mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }"
COUNT = "{ accounts { totalCount } }"


async def test_a_nul_in_a_variable_is_refused_naming_it(api: Api, world: World) -> None:
    admin = world.tokens["admin"]
    before = (await api.gql(COUNT, token=admin))["data"]["accounts"]["totalCount"]
    body = await api.gql(CREATE, {"input": {"kind": "TEAM", "name": "A\x00B"}}, token=admin)
    error = body["errors"][0]
    assert error["extensions"] == {"code": "VALIDATION", "field": "the variable $input.name"}
    assert "NUL" in error["message"]
    after = (await api.gql(COUNT, token=admin))["data"]["accounts"]["totalCount"]
    assert after == before  # nothing was written


async def test_a_nul_deep_in_a_list_variable_is_named(api: Api, world: World) -> None:
    doc = "mutation($input: ManualInvoiceInput!) { createManualInvoice(input: $input) { id } }"
    lines = [{"description": "ok", "unitPrice": "1"}, {"description": "x\x00", "unitPrice": "1"}]
    variables = {"input": {"accountId": "Account:1", "lines": lines}}
    body = await api.gql(doc, variables, token=world.tokens["admin"])
    assert body["errors"][0]["extensions"]["field"] == "the variable $input.lines[1].description"


async def test_a_nul_escaped_in_a_document_literal_is_refused(api: Api, world: World) -> None:
    doc = '{ invoices(filter: {number: "INV\\u0000"}) { nodes { id } } }'
    body = await api.gql(doc, token=world.tokens["admin"])
    assert body["errors"][0]["extensions"] == {
        "code": "VALIDATION",
        "field": "invoices(filter).number",
    }


async def test_a_raw_nul_in_the_query_text_is_refused(api: Api, world: World) -> None:
    response = await api.client.post(
        "/graphql",
        json={"query": '{ accounts(filter: {search: "a\x00"}) { totalCount } }'},
        headers=auth(world.tokens["admin"]),
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["extensions"]["code"] == "VALIDATION"
    assert "NUL" in error["message"]


# --- SERVICE_BUSY --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tiny_pool(
    engine: AsyncEngine, clock: FixedClock, *, pool_timeout: float, **settings: Any
) -> AsyncIterator[tuple[Api, list[AsyncEngine]]]:
    """A server whose engines have one connection each, waited for ``pool_timeout``."""
    url = engine.url.render_as_string(hide_password=False)
    tiny = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=pool_timeout)
    app = create_app(
        dataclasses.replace(SETTINGS, **settings), engine=tiny, clock=clock, start_worker=False
    )
    state = app.state.deskbill
    engines = [tiny]
    if state.read_engine is not tiny:  # SQLite reads through an engine of their own
        read = create_engine(url, immediate=False, pool_size=1, max_overflow=0,
                             pool_timeout=pool_timeout)  # fmt: skip
        await state.read_engine.dispose()
        state.read_engine, state.read_sessionmaker = read, create_sessionmaker(read)
        engines.append(read)
    try:
        async for base in serve(app):
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                yield Api(url=base, app=app, client=client), engines
    finally:
        for each in engines:
            await each.dispose()


async def hold(engines: list[AsyncEngine]) -> list[AsyncConnection]:
    return [await each.connect() for each in engines]


async def test_an_exhausted_pool_answers_503_at_once(
    engine: AsyncEngine, clock: FixedClock, world: World
) -> None:
    async with tiny_pool(engine, clock, pool_timeout=0.2) as (api, engines):
        held = await hold(engines)
        response = await api.client.post(
            "/graphql", json={"query": "{ viewer { role } }"}, headers=auth(world.tokens["admin"])
        )
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        error = error_of(response)
        assert error["extensions"]["code"] == "SERVICE_BUSY"
        assert "Try again" in error["message"]
        for connection in held:
            await connection.close()
        # It recovers by itself once connections are free again.
        response = await api.client.post(
            "/graphql", json={"query": "{ viewer { role } }"}, headers=auth(world.tokens["admin"])
        )
        assert response.json() == {"data": {"viewer": {"role": "ADMIN"}}}


async def test_a_request_past_its_deadline_answers_503(
    engine: AsyncEngine, clock: FixedClock, world: World
) -> None:
    # The pool would make it wait 30 s; the request's deadline is 0.3 s.
    async with tiny_pool(engine, clock, pool_timeout=30, request_timeout_seconds=0.3) as (
        api,
        engines,
    ):
        held = await hold(engines)
        response = await api.client.post(
            "/graphql", json={"query": "{ viewer { role } }"}, headers=auth(world.tokens["admin"])
        )
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        error = error_of(response)
        assert error["extensions"]["code"] == "SERVICE_BUSY"
        assert "0.3 seconds" in error["message"]
        for connection in held:
            await connection.close()
        response = await api.client.post(
            "/graphql", json={"query": "{ viewer { role } }"}, headers=auth(world.tokens["admin"])
        )
        assert response.status_code == 200


async def test_a_resolver_without_a_connection_is_service_busy_with_503(
    engine: AsyncEngine, clock: FixedClock, world: World
) -> None:
    from starlette.responses import Response

    from app.graphql import build_schema
    from resolvers.context import RequestContext
    from resolvers.viewer import Viewer

    url = engine.url.render_as_string(hide_password=False)
    tiny = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    sessions = create_sessionmaker(tiny)
    response = Response()
    context = RequestContext(
        sessionmaker=sessions, read_sessionmaker=sessions, clock=clock, response=response,
        viewer=Viewer(user_id=world.ids["admin"], organization_id=world.ids["org"],
                      role="ADMIN", currency="EUR", timezone="UTC", account_ids=None),  # type: ignore[arg-type]
    )  # fmt: skip
    held = await tiny.connect()
    try:
        result = await build_schema(SETTINGS).execute(
            "{ invoices { nodes { id } } }", context_value=context
        )
    finally:
        await held.close()
        await tiny.dispose()
    assert result.errors and result.errors[0].extensions == {
        "code": "SERVICE_BUSY",
        "retryAfter": 2,
    }
    assert response.status_code == 503 and response.headers["retry-after"] == "2"


# --- request ids and logs ------------------------------------------------------------


async def test_every_response_carries_a_request_id(api: Api, world: World) -> None:
    first = await api.client.get("/healthz")
    second = await api.client.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    kept = await api.client.get("/healthz", headers={"X-Request-Id": "lb-1234.abc"})
    assert kept.headers["x-request-id"] == "lb-1234.abc"
    insane = await api.client.get("/healthz", headers={"X-Request-Id": "a b\tc" + "x" * 300})
    assert insane.headers["x-request-id"] not in ("", "a b\tc" + "x" * 300)
    refused = await api.client.post("/graphql", content=b"[]",
                                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert refused.headers["x-request-id"]


async def test_client_errors_are_one_info_line_with_the_request_id(
    api: Api, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="deskbill")
    response = await api.client.post(
        "/graphql",
        json={"query": "mutation Grow { runBilling { accountsProcessed } }"},
        headers={**auth(world.tokens["analyst"]), "X-Request-Id": "req-forbidden-1"},
    )
    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    mine = [r for r in caplog.records if "req-forbidden-1" in r.getMessage()]
    assert len(mine) == 1
    assert mine[0].levelno == logging.INFO
    assert "Grow" in mine[0].getMessage() and "FORBIDDEN" in mine[0].getMessage()
    assert mine[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_internal_error_is_logged_once_with_the_id_the_client_sees(
    api: Api, world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resolvers import mapping

    def explode(row: object) -> object:
        raise RuntimeError("SELECT secret")

    monkeypatch.setattr(mapping, "organization", explode)
    caplog.set_level(logging.INFO, logger="deskbill")
    response = await api.client.post(
        "/graphql",
        json={"query": "query Org { organization { name } }"},
        headers=auth(world.tokens["admin"]),
    )
    request_id = response.headers["x-request-id"]
    error = response.json()["errors"][0]
    assert error["extensions"] == {"code": "INTERNAL_ERROR", "requestId": request_id}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert request_id in errors[0].getMessage() and "Org" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "SELECT secret" in str(errors[0].exc_info[1])


async def test_json_log_lines_carry_the_request_id() -> None:
    from app.logs import JsonFormatter, RequestIdFilter, request_id

    record = logging.LogRecord("deskbill", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    token = request_id.set("req-json-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello x"
    assert line["request_id"] == "req-json-1"
    assert line["level"] == "INFO"


async def test_a_websocket_subscription_still_works(api: Api, world: World) -> None:
    url = api.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"authorization": f"Bearer {world.tokens['admin']}"}
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        assert ws.response is not None and ws.response.headers.get("x-request-id")
