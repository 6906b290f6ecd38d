"""The billing clock outside the server: ``deskbill worker`` as a process of its own
finalizes a pending invoice whose time has come, and a websocket subscriber of a
separate server process hears it through the Redis broadcast; ``deskbill bill
--as-of`` does one run and exits, ``--json`` answering one JSON object, and on a
terminal it draws a progress bar before its summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.database import create_engine, create_sessionmaker
from models import Event, Invoice, LineItem
from resolvers.subscription import INVOICE_STATUS_EVENTS
from schema.ids import encode
from tests.conftest import PG_DATABASE
from tests.e2e import (
    GraphQLWS,
    Process,
    Seeded,
    Server,
    deskbill,
    environment,
    migrated_database,
    running,
    seed,
    shared_redis,
)

WATCH = """
subscription ($invoiceId: ID!, $after: String) {
  invoiceStatusChanged(invoiceId: $invoiceId, after: $after) {
    cursor type status invoice { number status }
  }
}"""


@pytest.fixture(scope="module")
async def seeded() -> Seeded:
    return await seed(await migrated_database(f"{PG_DATABASE}_worker"))


@pytest.fixture(scope="module")
async def env(seeded: Seeded) -> dict[str, str]:
    return environment(seeded.database_url, await shared_redis(), DESKBILL_WORKER_INTERVAL="0.2")


@pytest.fixture(scope="module")
async def server(env: dict[str, str]) -> AsyncIterator[Server]:
    server = Server("server", env)
    async with running(server):
        yield server


async def pending_invoice(seeded: Seeded, account: str, *, finalize_at: datetime, due: date) -> int:
    """A pending invoice with one line, to be finalized at ``finalize_at``."""
    engine = create_engine(seeded.database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            invoice = Invoice(
                organization_id=seeded.id("org"), account_id=seeded.id(account),
                currency="USD", status="PENDING", document_type="DRAFT", due_date=due,
                finalize_at=finalize_at, created_at=finalize_at, updated_at=finalize_at,
            )  # fmt: skip
            session.add(invoice)
            await session.flush()
            session.add(LineItem(
                organization_id=seeded.id("org"), invoice_id=invoice.id, kind="CHARGE",
                description="Meeting room", quantity=1, unit_price=4200, amount=4200,
                tax_rate_ppm=0, tax=0, total=4200, created_at=finalize_at,
            ))  # fmt: skip
            return invoice.id
    finally:
        await engine.dispose()


async def invoice_log(seeded: Seeded, invoice_id: int) -> list[str]:
    engine = create_engine(seeded.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            ids = await session.scalars(
                select(Event.id)
                .where(Event.invoice_id == invoice_id, Event.type.in_(INVOICE_STATUS_EVENTS))
                .order_by(Event.id)
            )
            return [str(i) for i in ids]
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def watching(
    server: Server, seeded: Seeded, member: str, invoice_id: int
) -> AsyncIterator[tuple[GraphQLWS, str]]:
    async with GraphQLWS.connect(server.url, seeded.tokens[member]) as client:
        variables = {"invoiceId": encode("Invoice", invoice_id), "after": "0"}
        yield client, await client.subscribe(WATCH, variables)


async def until_finalized(client: GraphQLWS, operation: str) -> list[dict[str, Any]]:
    """Messages up to the status change that follows finalization."""
    heard: list[dict[str, Any]] = []
    # A guard only: the worker process starts on a possibly busy machine.
    async with asyncio.timeout(90):
        while not heard or heard[-1]["type"] != "invoice.status_changed":
            (result,) = await client.results(operation, 1, within=90)
            heard.append(result["invoiceStatusChanged"])
    return heard


async def test_the_worker_process_finalizes_and_a_subscriber_elsewhere_hears_it(
    seeded: Seeded, env: dict[str, str], server: Server
) -> None:
    now = datetime.now(UTC)
    due = now.date() + timedelta(days=10)
    invoice_id = await pending_invoice(seeded, "alice_account", finalize_at=now, due=due)
    worker = Process("worker", deskbill("worker"), env)
    async with watching(server, seeded, "alice", invoice_id) as (alice, operation):
        async with running(worker):
            heard = await until_finalized(alice, operation)
    assert [m["type"] for m in heard] == ["invoice.finalized", "invoice.status_changed"]
    assert heard[-1]["status"] == "UPCOMING"
    assert heard[-1]["invoice"]["status"] == "UPCOMING"
    assert heard[-1]["invoice"]["number"].startswith("INV-")
    assert [m["cursor"] for m in heard] == await invoice_log(seeded, invoice_id)


async def test_bill_as_of_runs_the_billing_clock_once(
    seeded: Seeded, env: dict[str, str], server: Server
) -> None:
    invoice_id = await pending_invoice(
        seeded, "team",
        finalize_at=datetime(2026, 8, 20, tzinfo=UTC), due=date(2026, 8, 25),
    )  # fmt: skip
    async with watching(server, seeded, "alice", invoice_id) as (alice, operation):
        done = await asyncio.to_thread(
            subprocess.run, deskbill("bill", "--as-of", "2026-08-21T00:00:00+00:00", "--json"),
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)  # one object, nothing else on stdout
        assert report["asOf"] == "2026-08-21T00:00:00+00:00"
        assert report["invoicesFinalized"] == 1, report
        assert report["accountsProcessed"] >= 1, report
        assert report["failedAccounts"] == [] and report["failedOrganizations"] == []
        heard = await until_finalized(alice, operation)
    assert [(m["type"], m["status"]) for m in heard] == [
        ("invoice.finalized", None),
        ("invoice.status_changed", "UPCOMING"),
    ]
    assert [m["cursor"] for m in heard] == await invoice_log(seeded, invoice_id)


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; its exit status and
    everything it wrote there."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            args, env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
            stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
        )  # fmt: skip
    finally:
        os.close(terminal)
    written = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal's last end
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(controller)
    return process.wait(timeout=120), written.decode(errors="replace")


async def test_bill_on_a_terminal_shows_progress_then_a_summary(
    seeded: Seeded, env: dict[str, str]
) -> None:
    for account in ("team", "alice_account"):
        await pending_invoice(
            seeded, account,
            finalize_at=datetime(2026, 8, 22, tzinfo=UTC), due=date(2026, 8, 26),
        )  # fmt: skip
    status, output = await asyncio.to_thread(
        on_a_terminal, deskbill("bill", "--as-of", "2026-08-23T00:00:00+00:00"), env
    )
    assert status == 0, output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)  # without the terminal's escapes
    # The bar: accounts done of the run's accounts, the rate and the time left.
    bars = re.findall(r"billing .*?(\d+)/(\d+) +[\d,]+ accounts/s", text)
    assert bars, text
    done, total = bars[-1]
    assert done == total and int(total) >= 2, text
    # Then the summary, a person's sentence and aligned counts, not a Python repr.
    assert "Billing run as of 2026-08-23T00:00:00+00:00: " in text, text
    finalized = re.search(r"invoices finalized +(\d+)", text)
    assert finalized and int(finalized.group(1)) >= 2, text
    assert "BillingRunResult(" not in text


async def test_export_command_writes_what_the_http_export_serves(
    seeded: Seeded, env: dict[str, str], server: Server, tmp_path: Path
) -> None:
    """``deskbill export`` as the organization's analyst: the same rows as the
    admin's download (both see the whole organization); a bad filter is refused."""
    import httpx

    target = tmp_path / "items.csv"
    org = str(seeded.id("org"))
    done = await asyncio.to_thread(
        subprocess.run, deskbill("export", "invoice-items", "--org", org, "-o", str(target)),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        served = await client.get(
            "/exports/invoice-items.csv",
            headers={"Authorization": f"Bearer {seeded.tokens['admin']}"},
        )
    assert served.status_code == 200
    written = list(csv.reader(io.StringIO(target.read_text())))
    assert written == list(csv.reader(io.StringIO(served.text)))
    assert len(written) > 1 and written[0][0] == "line_id"
    refused = await asyncio.to_thread(
        subprocess.run,
        deskbill("export", "invoices", "--org", org, "--filter", '{"status": ["LATE"]}'),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "filter.status[0]" in refused.stderr, refused.stderr
    assert refused.stdout == ""
