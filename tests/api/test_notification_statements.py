"""SQL statement counts of the notification paths, pinned (SQLite and PostgreSQL):

- the admin's ``notifications`` list costs the same statements for one row and for
  many (the viewer, the page and its total: no query per row);
- the worker's round derives and mails each finalized invoice for a fixed number of
  statements on top of a fixed number per round, so a month with twice the invoices
  costs twice the per-invoice part and nothing more;
- a pay page (``GET /pay/{token}``) is a fixed number of statements.

A change that adds a query per row or per event makes one of these fail; a change
that saves statements re-pins them (lower) on purpose.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clock import FixedClock
from tests.api.test_notifications_api import NOTIFICATIONS, PAY_LINK, Worker
from tests.api.test_payments_api import Desk, _desk
from tests.fakestripe import FakeStripe
from tests.smtp import Inbox, smtp_server

__all__ = ["smtp_server"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)

# The worker's round: the cursor row, the batch of events and the schedule's reads
# are paid once; each finalized invoice's e-mail costs the rest.
ROUND_FIXED = 13
PER_INVOICE = 7
DATA_VERBS = {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}
LIST_STATEMENTS = 3  # the viewer, the page, its total
PAY_PAGE_STATEMENTS = 6


@pytest.fixture
async def desk(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Desk]:
    with FakeStripe(clock=lambda: clock.now().timestamp()) as fake:
        async for desk in _desk(engine, clock, fake):
            yield desk


@contextmanager
def counting(desk: Desk) -> Iterator[list[str]]:
    """The queries and writes the app's engines run meanwhile (not the transaction
    control, which SQLite's driver sends as statements and asyncpg does not)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in DATA_VERBS:
            seen.append(statement)

    engines = {desk.api.state.engine, desk.api.state.read_engine}
    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _round_with(desk: Desk, worker: Worker, invoices: int, account: str) -> int:
    for _ in range(invoices):
        await desk.invoice(account, "42.00")
    with counting(desk) as seen:
        await worker.round()
    return len(seen)


async def test_a_round_costs_a_fixed_part_and_the_same_for_each_invoice(
    desk: Desk, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    worker = Worker(desk, url)
    _, ada = await desk.member("Ada")
    await worker.round()  # the cursor row and the pay-link secret exist from here on
    one = await _round_with(desk, worker, 1, ada)
    three = await _round_with(desk, worker, 3, ada)
    assert len(inbox.to("ada@harbour.test")) == 4
    assert (three - one) / 2 == PER_INVOICE
    assert one - PER_INVOICE == ROUND_FIXED
    idle = await _round_with(desk, worker, 0, ada)
    assert idle < ROUND_FIXED  # nothing to derive or send: fewer still


async def test_the_notifications_list_is_one_statement_whatever_its_length(
    desk: Desk, smtp_server: tuple[str, Inbox]
) -> None:
    url, _inbox = smtp_server
    worker = Worker(desk, url)
    _, ada = await desk.member("Ada")
    counts = []
    for invoices in (1, 6):
        for _ in range(invoices):
            await desk.invoice(ada, "42.00")
        await worker.round()
        with counting(desk) as seen:
            listed = await desk.ok(NOTIFICATIONS)
        counts.append(len(seen))
        assert len(listed["notifications"]["nodes"]) in (1, 7)
    assert counts == [LIST_STATEMENTS, LIST_STATEMENTS]


async def test_a_pay_page_is_a_fixed_number_of_statements(
    desk: Desk, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    worker = Worker(desk, url)
    _, ada = await desk.member("Ada")
    await desk.invoice(ada, "42.00")
    await worker.round()
    [link] = PAY_LINK.findall(Inbox.text(inbox.to("ada@harbour.test")[0]))
    counts = []
    for _ in range(2):
        with counting(desk) as seen:
            page = await desk.api.client.get(link)
        assert page.status_code == 200 and "$42.00" in page.text
        counts.append(len(seen))
    assert counts == [PAY_PAGE_STATEMENTS, PAY_PAGE_STATEMENTS], [
        re.sub(r"\s+", " ", s)[:80] for s in seen
    ]
