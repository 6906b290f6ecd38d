"""GraphiQL as a person uses it, on a machine without internet: a real headless
Chromium (Debian's, driven by playwright; no browser is ever downloaded) opens
/graphql with every request to anything but the test server refused, pastes a token
into the headers editor and a query into the query editor, presses Run and reads the
answer on the page; then a subscription, over graphql-ws, shows a payment as it happens
and, when the user is deactivated, the server's close code and reason.

Without /usr/bin/chromium these tests skip with the reason, except under ``CI=true``
(where ``.ci/run`` installs it), where a missing browser fails the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.asgi import create_app
from services.clock import FixedClock
from tests.api import conftest as api_fixtures
from tests.api.conftest import Api, serve
from tests.conftest import IN_CI
from tests.e2e.test_subscription_access import set_user
from tests.e2e.test_subscriptions import listening, record_payment_as_admin
from tests.world import World

api = api_fixtures.api
world = api_fixtures.world

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container: no sandbox; and nothing the browser might do by itself online.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces beside the request filter: no name resolves but the loopback.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
WAIT_MS = 30_000  # a hang guard only


async def test_the_page_and_its_assets_come_from_deskbill_alone(api: Api) -> None:
    page = await api.client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources, page.text
    for source in sources:
        # Relative to the page: nothing names another host.
        assert not urlsplit(source).netloc, source
        asset = await api.client.get(httpx.URL("/graphql").join(source))
        assert asset.status_code == 200, source
        assert len(asset.content) > 100, source
    # Clients that ask for JSON still get the API, not the page.
    api_answer = await api.client.post("/graphql", json={"query": "{ __typename }"})
    assert api_answer.json() == {"data": {"__typename": "Query"}}


async def test_with_graphiql_off_neither_page_nor_assets_are_served(
    engine: AsyncEngine, clock: FixedClock
) -> None:
    settings = dataclasses.replace(api_fixtures.SETTINGS, graphiql=False)
    app = create_app(settings, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url) as client:
            page = await client.get("/graphql", headers={"Accept": "text/html"})
            asset = await client.get("/static/graphiql/graphiql.min.js")
        assert (page.status_code, asset.status_code) == (404, 404)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.is_file():  # noqa: ASYNC240 (one stat, before any event-loop work)
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is required under CI=true (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="deskbill-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,  # a fresh --user-data-dir
                executable_path=str(CHROMIUM),
                headless=True,
                args=FLAGS,
                env={**os.environ, "HOME": profile},
            )
            try:
                yield context
            finally:
                await context.close()


class Refused:
    """Every request the page made to a host other than the test server."""

    def __init__(self) -> None:
        self.urls: list[str] = []


async def open_graphiql(browser: Any, url: str) -> tuple[Any, Refused]:
    refused = Refused()
    origin = url.rstrip("/") + "/"

    async def only_the_server(route: Any) -> None:
        if route.request.url.startswith(origin):
            await route.continue_()
        else:
            refused.urls.append(route.request.url)
            await route.abort()

    await browser.route("**/*", only_the_server)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{url}/graphql")
    await page.wait_for_selector(".graphiql-query-editor .CodeMirror", timeout=WAIT_MS)
    assert errors == []
    return page, refused


async def paste(page: Any, selector: str, text: str) -> None:
    """Click into an editor, select everything and paste ``text`` over it."""
    await page.click(f"{selector} .CodeMirror-lines", timeout=WAIT_MS)
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(text)


READ_RESULT = (
    "() => document.querySelector('.result-window .CodeMirror')?.CodeMirror.getValue() ?? ''"
)


async def result_containing(page: Any, text: str) -> Any:
    """The JSON of the result pane once it shows ``text``."""
    await page.wait_for_function(f"(t) => ({READ_RESULT})().includes(t)", arg=text, timeout=WAIT_MS)
    return json.loads(await page.evaluate(READ_RESULT))


async def result_text(page: Any, text: str) -> str:
    """The text of the result pane once it shows ``text``."""
    await page.wait_for_function(f"(t) => ({READ_RESULT})().includes(t)", arg=text, timeout=WAIT_MS)
    shown: str = await page.evaluate(READ_RESULT)
    return shown


async def headers_editor(page: Any) -> str:
    """A selector for the headers editor, opened (it is the visible tool by default)."""
    tab = page.get_by_role("button", name="Headers")
    if await tab.count():
        await tab.first.click()
    return ".graphiql-editor-tool .graphiql-editor:not(.hidden)"


async def test_a_query_with_a_pasted_token_shows_its_answer_in_the_page(
    api: Api, world: World, browser: Any
) -> None:
    page, refused = await open_graphiql(browser, api.url)
    headers = await headers_editor(page)
    # The editor comes prefilled with the shape to paste the token into.
    prefilled = await page.evaluate(
        "(s) => document.querySelector(s + ' .CodeMirror').CodeMirror.getValue()", headers
    )
    assert '"Authorization": "Bearer <paste your token here>"' in prefilled

    await paste(page, headers, json.dumps({"Authorization": f"Bearer {world.tokens['alice']}"}))
    await paste(page, ".graphiql-query-editor", "{ viewer { role user { email } } }")
    await page.click(".graphiql-execute-button")

    shown = await result_containing(page, "alice@harbour.test")
    assert shown == {
        "data": {"viewer": {"role": "MEMBER", "user": {"email": "alice@harbour.test"}}}
    }
    assert refused.urls == []


async def test_a_subscription_in_graphiql_shows_payments_and_why_it_closed(
    api: Api, world: World, browser: Any
) -> None:
    page, refused = await open_graphiql(browser, api.url)
    headers = await headers_editor(page)
    await paste(page, headers, json.dumps({"Authorization": f"Bearer {world.tokens['admin']}"}))
    await paste(
        page,
        ".graphiql-query-editor",
        'subscription { events(filter: {types: ["payment.created"]}) { type paymentId } }',
    )
    await page.click(".graphiql-execute-button")
    await listening(api, world, 1)  # over graphql-ws, with the pasted headers

    payment = await record_payment_as_admin(api, world, "due", "1.00")
    shown = await result_containing(page, payment)
    assert shown == {"data": {"events": {"type": "payment.created", "paymentId": payment}}}

    # The server's close code and reason reach the browser's graphql-ws client.
    await set_user(api, "admin@harbour.test", active=False)
    closed = await result_text(page, "4403")
    assert "The user of this token no longer has access." in closed
    assert refused.urls == []
