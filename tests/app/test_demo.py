"""The demo space (``app.demo.load_demo``) and ``deskbill serve --demo``.

The demo is built once for the module into a migrated SQLite file; the tests then read
it the way an auditor would (every invoice status, credit applied in part, card and
cash payments, a refund, teams with members), load it a second time to see nothing is
duplicated, and start the real server on a copy to use the printed tokens over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import models
from app.auth import decode_token
from app.cli import migrate
from app.database import create_engine, create_sessionmaker
from app.demo import demo_settings, load_demo
from app.settings import Settings
from models import (
    Account,
    Booking,
    CreditAllocation,
    DocumentType,
    Invoice,
    LineItem,
    Payment,
    PlanSubscription,
    PlanTemplate,
    Refund,
    TeamMembership,
    User,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = "http://demo.example:8123"
TOKEN = re.compile(r"^(ADMIN|MEMBER) token for (.+?) \(.*\):\n\s+(\S+)$", re.MULTILINE)


@dataclass
class Demo:
    url: str
    path: Path
    settings: Settings
    output: str


def tokens_in(output: str) -> dict[str, tuple[str, str]]:
    """``{"ADMIN": (name, token), "MEMBER": (name, token)}`` from the printed welcome."""
    return {role: (name, token) for role, name, token in TOKEN.findall(output)}


async def _load(settings: Settings, **options: Any) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        await load_demo(settings, host=HOST, **options)
    return printed.getvalue()


def _scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the demo file goes: in memory when the machine has a tmpfs, because the
    demo commits a couple of hundred transactions and each one waits for a disk sync."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="deskbill-demo-", dir=shm))
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Demo]:
    scratch = _scratch_dir(tmp_path_factory)
    path = scratch / "deskbill.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(migrate, url)
    settings = Settings(database_url=url, worker_enabled=False)
    yield Demo(url=url, path=path, settings=settings, output=await _load(settings))
    shutil.rmtree(scratch, ignore_errors=True)


@contextlib.asynccontextmanager
async def sessions(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def row_counts(url: str) -> dict[str, int]:
    async with sessions(url) as db, db() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in models.Base.metadata.sorted_tables
        }


async def test_the_demo_holds_a_realistic_space(demo: Demo) -> None:
    async with sessions(demo.url) as db, db() as session:
        invoices = list(await session.scalars(select(Invoice)))
        statuses = {i.status for i in invoices if i.document_type != DocumentType.CREDIT_NOTE}
        assert {"PENDING", "UPCOMING", "DUE", "OVERDUE", "PAID", "VOID"} <= statuses

        numbers = sorted(i.number for i in invoices if i.number and i.number.startswith("INV-"))
        assert numbers == [f"INV-{n:06d}" for n in range(1, len(numbers) + 1)]
        assert len(numbers) > 40  # four months of a busy space

        notes = [i for i in invoices if i.document_type == DocumentType.CREDIT_NOTE]
        partly_used = [n for n in notes if 0 < n.credit_allocated < -n.total]
        assert partly_used, "a credit note with part of its credit applied"
        live = await session.scalars(
            select(CreditAllocation).where(
                CreditAllocation.credit_note_id.in_([n.id for n in partly_used]),
                CreditAllocation.removed_at.is_(None),
            )
        )
        assert {a.credit_note_id for a in live} == {n.id for n in partly_used}
        assert {"REFUND", "OVERPAYMENT"} <= {n.origin for n in notes}

        payments = list(await session.scalars(select(Payment)))
        methods = {(p.method, p.status) for p in payments}
        assert {("CARD", "SUCCEEDED"), ("CASH", "SUCCEEDED")} <= methods
        assert all(p.gateway_payment_intent_id for p in payments if p.method == "CARD")
        (part,) = [p for p in payments if p.note and p.note.startswith("Part payment")]
        part_of = await session.get(Invoice, part.invoice_id)
        assert part_of is not None and 0 < part.amount < part_of.total
        assert part_of.status in ("DUE", "OVERDUE")  # a partial payment is not a status

        (refund,) = await session.scalars(select(Refund))
        assert (refund.status, refund.method, refund.amount) == ("SUCCEEDED", "CARD", 5000)
        refunded = await session.get(Payment, refund.payment_id)
        assert refunded is not None and refunded.refunded_amount == 5000

        users = list(await session.scalars(select(User)))
        assert sorted({u.role for u in users}) == ["ADMIN", "ANALYST", "MEMBER"]
        assert len([u for u in users if u.role == "MEMBER"]) == 12
        accounts = list(await session.scalars(select(Account)))
        assert len([a for a in accounts if a.kind == "USER"]) == 12
        teams = {a.id: a.name for a in accounts if a.kind == "TEAM"}
        members = list(await session.scalars(select(TeamMembership)))
        per_team = {name: sum(m.team_account_id == i for m in members) for i, name in teams.items()}
        assert per_team == {"Acme Studio": 4, "Northwind Labs": 3}

        templates = list(await session.scalars(select(PlanTemplate)))
        assert sorted(t.interval for t in templates) == ["MONTHLY", "MONTHLY", "QUARTERLY"]
        assert any(t.setup_fee and t.deposit for t in templates)
        assert await session.scalar(select(func.count(PlanSubscription.id))) >= 10
        bookings = list(await session.scalars(select(Booking)))
        assert {"CONFIRMED", "CANCELLED"} <= {b.status for b in bookings}
        kinds = set(await session.scalars(select(LineItem.kind)))
        assert {"PLAN", "SETUP_FEE", "DEPOSIT", "BOOKING", "DAY_PASS", "CREDIT"} <= kinds

    assert f"{HOST}/graphql" in demo.output
    found = tokens_in(demo.output)
    assert found["ADMIN"][0] == "Harriet Hale" and found["MEMBER"][0] == "Maya Patel"
    # Signed with the demo database's own secret: nothing was configured.
    assert demo.settings.token_secret is None
    signed = await demo_settings(demo.settings)
    assert signed.token_secret is not None and len(signed.token_secret) >= 32
    claims = decode_token(signed, found["MEMBER"][1], datetime.now(UTC))
    assert claims["org"] == 1
    assert "invoices(" in demo.output  # the sample query


async def test_loading_again_adds_nothing_and_prints_the_tokens_again(demo: Demo) -> None:
    before = await row_counts(demo.url)
    output = await _load(demo.settings)
    assert await row_counts(demo.url) == before
    assert "no demo data was added" in output
    again = tokens_in(output)
    first = tokens_in(demo.output)
    assert {role: name for role, (name, _) in again.items()} == {
        role: name for role, (name, _) in first.items()
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _read_welcome(stream: asyncio.StreamReader) -> str:
    seen = ""
    while len(tokens_in(seen)) < 2 or "─" * 10 not in seen.split("MEMBER token", 1)[-1]:
        line = await stream.readline()
        if not line:
            raise AssertionError(f"the server exited before printing its tokens:\n{seen}")
        seen += line.decode()
    return seen


INVOICES = """{ viewer { accounts { id } }
  invoices(first: 100) { totalCount nodes { number status account { id }
    lines { description amount { amount } } payments { method status amount { amount } } } }
  creditNotes(first: 100) { nodes { number status remainingCredit { amount } } } }"""


async def test_serve_demo_serves_graphql_with_the_printed_tokens(
    demo: Demo, tmp_path: Path
) -> None:
    """``deskbill serve --demo`` on a copy of the demo file (so it reuses the space and
    prints its tokens, as a second start would), queried over real HTTP."""
    copy = demo.path.with_name("served.db")
    shutil.copy(demo.path, copy)
    port = _free_port()
    # Nothing of ours configured (no DESKBILL_TOKEN_SECRET), as after a fresh checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBILL_")}
    env.update(DATABASE_URL=f"sqlite:///{copy}", DESKBILL_WORKER="false", PYTHONUNBUFFERED="1")
    log = (tmp_path / "server.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        welcome = await asyncio.wait_for(_read_welcome(process.stdout), timeout=60)
        assert f"http://127.0.0.1:{port}/graphql" in welcome
        found = tokens_in(welcome)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)

            async def query(token: str) -> dict[str, Any]:
                response = await client.post(
                    "/graphql", json={"query": INVOICES},
                    headers={"Authorization": f"Bearer {token}"},
                )  # fmt: skip
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                assert "errors" not in body, body
                data: dict[str, Any] = body["data"]
                return data

            admin = await query(found["ADMIN"][1])
            member = await query(found["MEMBER"][1])
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                os.kill(process.pid, signal.SIGKILL)
                await process.wait()
        log.close()

    nodes = admin["invoices"]["nodes"]
    assert admin["invoices"]["totalCount"] > 40
    assert all(n["lines"] for n in nodes if n["status"] != "PENDING")
    assert any(p["method"] == "CARD" for n in nodes for p in n["payments"])
    assert any(p["method"] == "CASH" for n in nodes for p in n["payments"])
    assert {n["status"] for n in admin["creditNotes"]["nodes"]} >= {"AVAILABLE", "CONSUMED"}

    own = {a["id"] for a in member["viewer"]["accounts"]}
    assert len(own) == 2  # Maya's own account and her team's
    seen = {n["account"]["id"] for n in member["invoices"]["nodes"]}
    assert seen and seen <= own
    assert member["invoices"]["totalCount"] < admin["invoices"]["totalCount"]
    assert {n["account"]["id"] for n in nodes} > own


async def test_each_demo_database_signs_with_a_secret_of_its_own(
    demo: Demo, tmp_path: Path
) -> None:
    """The demo's secret is generated once per database, kept in it, and is no value
    from the source: a second database gets another one."""
    first = await demo_settings(demo.settings)
    assert (await demo_settings(demo.settings)).token_secret == first.token_secret
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    await asyncio.to_thread(migrate, other)
    second = await demo_settings(Settings(database_url=other))
    assert second.token_secret != first.token_secret
    # A configured secret wins over the stored one.
    configured = Settings(database_url=demo.url, token_secret="x" * 40)
    assert (await demo_settings(configured)).token_secret == "x" * 40
