"""A live organization's one clock, over real HTTP on SQLite and PostgreSQL (issue 11):
``runBilling(asOf)`` and ``deskbill bill --as-of`` refuse an instant in the future
(beyond a few minutes' skew) and change nothing, a past instant is an idempotent
catch-up, and an invoice's status never moves backwards — not even when a run a
few minutes ahead made it due and a payment is then recorded by the wall clock.

The server and the test share a ``FixedClock``: it stands for the wall clock.
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

import models
from app.cli import main
from models import Role
from services import accounts, policy
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api
from tests.api.test_billing_api import Space, at, iso

_slugs = itertools.count(1)

RUN = (
    "mutation($asOf: DateTime) { runBilling(asOf: $asOf) { asOf invoicesFinalized statusChanges } }"
)
PAY = """mutation($input: RecordPaymentInput!) {
  recordPayment(input: $input) { id invoice { status balanceDue { amount } } } }"""
STATUS_EVENTS = """query($after: String) { events(first: 100, after: $after) {
  nodes { type invoiceId payload } pageInfo { hasNextPage endCursor } } }"""

# The order time moves an unpaid invoice in; PAID and VOID are outside it.
RANK = {"UPCOMING": 0, "DUE": 1, "OVERDUE": 2}


@pytest.fixture
async def live(api: Api, clock: FixedClock) -> Space:
    """An empty live organization (USD, billing day 1, UTC) with one admin."""
    clock.set(at(2026, 8, 10, 9))
    async with api.state.sessionmaker.begin() as session:
        org = await policy.create_organization(
            session, "Quay Works", f"quay-{next(_slugs)}", "USD", clock.now()
        )
        admin = await accounts.create_user(
            session, org, email="admin@quay.test", name="Ada Admin", role=Role.ADMIN,
            now=clock.now(),
        )  # fmt: skip
        return Space(api=api, clock=clock, org_id=org.id, admin_id=admin.id)


async def row_counts(api: Api) -> dict[str, int]:
    async with api.state.sessionmaker() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in models.Base.metadata.sorted_tables
        }


async def status_moves(space: Space) -> list[tuple[str, str, str]]:
    """Every (invoice, previous status, status) the event log records, in order."""
    moves: list[tuple[str, str, str]] = []
    after: str | None = None
    while True:
        page = (await space.ok(STATUS_EVENTS, {"after": after}))["events"]
        for node in page["nodes"]:
            if node["type"] == "invoice.status_changed":
                payload = node["payload"]
                moves.append((node["invoiceId"], payload["previous_status"], payload["status"]))
        if not page["pageInfo"]["hasNextPage"]:
            return moves
        after = page["pageInfo"]["endCursor"]


def backwards(moves: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Moves that take an unpaid invoice to an earlier unpaid status."""
    return [m for m in moves if m[1] in RANK and m[2] in RANK and RANK[m[2]] < RANK[m[1]]]


async def test_a_future_as_of_is_refused_and_changes_nothing(live: Space) -> None:
    _, account = await live.person("Bo Member")
    assert account is not None
    await live.subscribe(account, await live.plan("Hot desk", "100.00"), date(2026, 9, 1))
    before = await row_counts(live.api)

    for ahead in ("2036-12-01T00:00:00Z", iso(live.clock.now() + timedelta(minutes=6))):
        error = await live.refused(RUN, {"asOf": ahead})
        assert error["extensions"]["code"] == "VALIDATION", error
        assert "`asOf`" in error["message"] and "future" in error["message"], error
        assert await row_counts(live.api) == before

    # A caller's clock a few minutes fast is within the skew; nothing is due yet.
    soon = live.clock.now() + timedelta(minutes=4)
    ran = (await live.ok(RUN, {"asOf": iso(soon)}))["runBilling"]
    assert (ran["invoicesFinalized"], ran["statusChanges"]) == (0, 0)
    (pending,) = await live.invoices()
    assert (pending["status"], pending["number"]) == ("PENDING", None)


async def test_a_past_as_of_is_an_idempotent_catch_up_that_never_moves_status_back(
    live: Space,
) -> None:
    await live.policy(overdueAfterDays=7)
    _, account = await live.person("Cy Member")
    assert account is not None
    await live.subscribe(account, await live.plan("Hot desk", "100.00"), date(2026, 9, 1))

    # The worker was down for two weeks; an operator catches up to 1 September first.
    live.clock.set(at(2026, 9, 15, 9))
    first = (await live.ok(RUN, {"asOf": "2026-09-01T06:00:00Z"}))["runBilling"]
    assert (first["asOf"], first["invoicesFinalized"]) == ("2026-09-01T06:00:00+00:00", 1)
    (invoice,) = [x for x in await live.invoices() if x["number"]]
    assert (invoice["number"], invoice["status"], invoice["dueDate"]) == (
        "INV-000001", "DUE", "2026-09-01",
    )  # fmt: skip
    snapshot = await live.snapshot()
    again = (await live.ok(RUN, {"asOf": "2026-09-01T06:00:00Z"}))["runBilling"]
    assert (again["invoicesFinalized"], again["statusChanges"]) == (0, 0)
    assert await live.snapshot() == snapshot

    # Then now: eight days past due, OVERDUE; catching up to an earlier instant again
    # changes nothing and a payment by the wall clock keeps it OVERDUE.
    now = (await live.ok(RUN))["runBilling"]
    assert now["statusChanges"] == 1
    assert (await live.invoice(invoice["id"]))["status"] == "OVERDUE"
    late = (await live.ok(RUN, {"asOf": "2026-09-02T00:00:00Z"}))["runBilling"]
    assert (late["invoicesFinalized"], late["statusChanges"]) == (0, 0)
    paid = await live.ok(
        PAY, {"input": {"invoiceId": invoice["id"], "amount": "40.00", "method": "CASH"}}
    )
    assert paid["recordPayment"]["invoice"] == {
        "status": "OVERDUE", "balanceDue": {"amount": "60.00"},
    }  # fmt: skip

    moves = await status_moves(live)
    assert [(m[1], m[2]) for m in moves if m[0] == invoice["id"]] == [
        ("PENDING", "DUE"), ("DUE", "OVERDUE"),
    ]  # fmt: skip
    assert backwards(moves) == []
    types, _ = await live.events_after(None)
    assert (types.count("invoice.became_due"), types.count("invoice.became_overdue")) == (1, 1)


async def test_a_run_within_the_skew_makes_an_invoice_due_and_a_payment_keeps_it_due(
    live: Space,
) -> None:
    """The issue's report: a run ahead of the wall clock made an invoice DUE, then a
    partial payment stamped with the (earlier) wall clock moved it back to UPCOMING."""
    _, account = await live.person("Di Member")
    assert account is not None
    await live.book(account, at(2026, 8, 20, 10), at(2026, 8, 20, 12), "30.00")

    live.clock.set(at(2026, 8, 31, 23, 57))
    ran = (await live.ok(RUN, {"asOf": "2026-09-01T00:01:00Z"}))["runBilling"]
    assert ran["invoicesFinalized"] == 1
    (invoice,) = await live.invoices()
    assert (invoice["number"], invoice["status"], invoice["dueDate"]) == (
        "INV-000001", "DUE", "2026-09-01",
    )  # fmt: skip

    live.clock.set(at(2026, 8, 31, 23, 58))
    paid = await live.ok(
        PAY, {"input": {"invoiceId": invoice["id"], "amount": "10.00", "method": "CASH"}}
    )
    assert paid["recordPayment"]["invoice"] == {
        "status": "DUE", "balanceDue": {"amount": "20.00"},
    }  # fmt: skip
    # A run by the wall clock, a minute before the due date, leaves it DUE too.
    assert (await live.ok(RUN))["runBilling"]["statusChanges"] == 0
    assert (await live.invoice(invoice["id"]))["status"] == "DUE"
    assert backwards(await status_moves(live)) == []
    types, _ = await live.events_after(None)
    assert types.count("invoice.became_due") == 1


async def test_deskbill_bill_refuses_a_future_as_of(
    api: Api, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("DESKBILL_TOKEN_SECRET", str(SETTINGS.token_secret))
    before = await row_counts(api)
    capsys.readouterr()
    assert main(["bill", "--as-of", "2036-12-01T00:00:00+00:00"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "`--as-of` 2036-12-01T00:00:00+00:00 is in the future" in err, err
    assert await row_counts(api) == before


async def test_organization_now_is_the_clock_billing_goes_by(live: Space) -> None:
    live.clock.set(at(2026, 8, 31, 23, 59))
    data = await live.ok("{ organization { sandbox now invoicePolicy { timezone } } }")
    assert data["organization"] == {
        "sandbox": False, "now": "2026-08-31T23:59:00+00:00", "invoicePolicy": {"timezone": "UTC"},
    }  # fmt: skip
