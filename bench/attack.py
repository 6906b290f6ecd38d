"""Ordinary latency alone and under attack: does one heavy client hurt everybody?

A fresh PostgreSQL database (``deskbill_bench_attack_<pid>``, created and dropped) gets
the demo space; ``deskbill serve --no-worker`` runs it in a subprocess with the
default limits (cost rate limits on unless ``--no-rate-limits``). A second demo space
(``deskbill demo --force``) is the other tenant; each space gets an ANALYST API key.
Then:

1. the issue's two attack documents are sent once each and must be refused
   (``QUERY_TOO_COMPLEX``) — this is checked, not timed;
2. **alone**: the home space's admin loops an ordinary query (the first page of 20
   invoices with totals) for ``--seconds`` and its latencies are recorded;
3. **other tenant** / **same tenant**: the same, while two attackers — the other
   (then the home) space's analyst and its API key — loop the heaviest query the
   limits allow an analyst (as many aliases of a page of 100 invoices with lines,
   payments, allocations, refunds and history as fit ``--limit``), starting
   ``--warmup`` seconds earlier and ignoring ``Retry-After``.

Reported: p50/p99 of the ordinary query per phase, the ratio of the p99s (goal ≤ 3),
how many of its requests were refused, and how many heavy queries the attackers got
through or had refused (429).

    .venv/bin/python bench/attack.py --seconds 40 --warmup 10
    .venv/bin/python bench/attack.py --seconds 40 --warmup 10 --no-rate-limits

Every run stops by itself: the loops are bounded by ``--seconds``, the server gets
SIGTERM (then SIGKILL) by pid in a ``finally``, and the database is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import select, text  # noqa: E402

from app.auth import issue_token  # noqa: E402
from app.cost import query_cost  # noqa: E402
from app.database import create_engine  # noqa: E402
from app.graphql import build_schema  # noqa: E402
from app.settings import Settings  # noqa: E402
from models import Invoice, Organization, Payment, User  # noqa: E402
from services.clock import SystemClock  # noqa: E402

ORDINARY = """query Ordinary {
  invoices(first: 20) { nodes { number status dueDate total { formatted } balanceDue { amount } } }
}"""
HEAVY = """query Heavy {
  invoices(first: FIRST) { totalCount pageInfo { hasNextPage endCursor }
    nodes { number status dueDate account { name kind }
      lines { description quantity unitPrice { amount } tax { amount } total { formatted } }
      total { amount currency formatted } amountPaid { amount } balanceDue { formatted }
      payments { method status amount { amount } }
      allocations { amount { amount } creditNote { number } }
      refunds { status amount { amount } }
      history { type createdAt } } }
}"""


def attack_documents(invoice_id: int) -> dict[str, str]:
    cycle = (
        f'invoice(id: "Invoice:{invoice_id}") {{ payments {{ invoice {{ payments {{ invoice '
        "{ payments { id amount { amount } } } } } } }"
    )
    page = heavy(100).split("{", 1)[1].rsplit("}", 1)[0]
    return {
        "five aliases of the payments cycle": "{ "
        + " ".join(f"a{i}: {cycle}" for i in range(5))
        + " }",
        "thirty aliases of a full invoice page": "{ "
        + " ".join(f"a{i}: {page}" for i in range(30))
        + " }",
    }


def heavy(first: int) -> str:
    return HEAVY.replace("FIRST", str(first))


def heaviest_allowed(limit: int) -> tuple[str, str]:
    """The heaviest document the budget allows: as many aliases of a page of 100 as
    fit ``limit``, or one page with the largest ``first`` that fits."""
    schema = build_schema(Settings())
    full = heavy(100)
    page = full.split("{", 1)[1].rsplit("}", 1)[0]
    copies = limit // query_cost(schema, full)
    if copies >= 1:
        document = "query Heavy { " + " ".join(f"p{i}: {page}" for i in range(copies)) + " }"
        return document, f"{copies} × first: 100"
    first = max((n for n in range(1, 101) if query_cost(schema, heavy(n)) <= limit), default=1)
    return heavy(first), f"first: {first}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def admin_statement(server: str, statement: str) -> None:
    engine = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@dataclass
class Tenant:
    """One organization's callers: its admin (the ordinary client), two attackers of
    its own (its analyst and an ANALYST API key: two callers, one organization)."""

    slug: str
    admin: str
    attackers: tuple[str, str]


async def deskbill_command(database_url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url}
    deskbill = str(Path(sys.executable).parent / "deskbill")
    proc = await asyncio.create_subprocess_exec(
        deskbill, *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"deskbill {' '.join(args)} exited with {proc.returncode}")
    return out.decode()


async def tenants_and_target(url: str, settings: Settings) -> tuple[list[Tenant], int]:
    """Two demo spaces' callers, and the invoice with the most payments."""
    # A second demo space next to the first: the "other tenant".
    await deskbill_command(url, "demo", "--force")
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            users = (await conn.execute(select(User).where(User.active.is_(True)))).all()
            orgs = (await conn.execute(select(Organization).order_by(Organization.id))).all()
            target = await conn.scalar(
                select(Invoice.id)
                .join(Payment, Payment.invoice_id == Invoice.id)
                .group_by(Invoice.id)
                .order_by(text("count(*) DESC"))
                .limit(1)
            )
    finally:
        await engine.dispose()
    now = SystemClock().now()
    tenants = []
    for org in orgs[:2]:
        mine = [u for u in users if u.organization_id == org.id]
        admin = next(u for u in mine if u.role == "ADMIN")
        analyst = next(u for u in mine if u.role == "ANALYST")
        created = await deskbill_command(
            url, "apikey", "create", "--org", org.slug, "--name", "bench attacker",
            "--role", "ANALYST", "--json",
        )  # fmt: skip
        tenants.append(
            Tenant(
                slug=org.slug,
                admin=issue_token(settings, admin, now),  # type: ignore[arg-type]
                attackers=(
                    issue_token(settings, analyst, now),  # type: ignore[arg-type]
                    json.loads(created)["key"],
                ),
            )
        )
    return tenants, int(target or 1)


@contextlib.asynccontextmanager
async def running_server(database_url: str, port: int, limit: int, rate_limits: bool):  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DESKBILL_WORKER": "false",
        "DESKBILL_COST_LIMIT_ANALYST": str(limit),
        "DESKBILL_RATE_LIMITS": "true" if rate_limits else "false",
    }
    log = tempfile.TemporaryFile()
    deskbill = str(Path(sys.executable).parent / "deskbill")
    command = [deskbill, "serve", "--demo", "--no-worker", "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as probe:
            deadline = time.monotonic() + 120
            while True:
                if proc.returncode is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError("server did not start:\n" + log.read().decode()[-3000:])
                with contextlib.suppress(httpx.HTTPError):
                    if (await probe.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        yield base, proc.pid
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


@dataclass
class Outcomes:
    """What one client's loop got: latencies of answers, and how many of each kind."""

    latencies: list[float] = field(default_factory=list)
    answered: int = 0
    rate_limited: int = 0
    other_errors: int = 0


async def loop(
    client: httpx.AsyncClient, token: str, query: str, until: float, outcomes: Outcomes
) -> None:
    """Send ``query`` back to back until ``until``; a refusal does not slow the loop
    (an attacker ignores ``Retry-After``)."""
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < until:
        started = time.perf_counter()
        response = await client.post("/graphql", json={"query": query}, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code == 429:
            outcomes.rate_limited += 1
        elif response.status_code != 200 or "errors" in response.json():
            outcomes.other_errors += 1
        else:
            outcomes.answered += 1
            outcomes.latencies.append(elapsed)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def phase(
    base: str,
    ordinary_token: str,
    attacker_tokens: tuple[str, ...],
    seconds: float,
    warmup: float,
    heavy_query: str,
) -> tuple[Outcomes, Outcomes]:
    """The ordinary client's outcomes over ``seconds``, while the attackers loop from
    ``warmup`` seconds before it starts (so it meets their steady state) to its end."""
    ordinary, heavy = Outcomes(), Outcomes()
    limits = httpx.Limits(max_connections=len(attacker_tokens) + 2)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        # Warm the parser and validation caches and the pool outside the measurement.
        await loop(client, ordinary_token, ORDINARY, time.monotonic() + 1, Outcomes())
        until = time.monotonic() + warmup + seconds
        jobs = [loop(client, token, heavy_query, until, heavy) for token in attacker_tokens]

        async def measured() -> None:
            await asyncio.sleep(warmup if attacker_tokens else 0)
            await loop(client, ordinary_token, ORDINARY, time.monotonic() + seconds, ordinary)

        await asyncio.gather(measured(), *jobs)
    return ordinary, heavy


def row(label: str, ordinary: Outcomes, heavy: Outcomes | None) -> str:
    cells = [
        label,
        str(ordinary.answered),
        f"{quantile(ordinary.latencies, 0.5):.1f}",
        f"{quantile(ordinary.latencies, 0.99):.1f}",
        str(ordinary.rate_limited + ordinary.other_errors),
    ]
    if heavy is None:
        cells += ["–", "–", "–", "–"]
    else:
        cells += [
            str(heavy.answered),
            f"{quantile(heavy.latencies, 0.5):.0f}",
            str(heavy.rate_limited),
            str(heavy.other_errors),
        ]
    return "| " + " | ".join(cells) + " |"


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument(
        "--warmup", type=float, default=5, help="seconds the attackers loop before measuring"
    )
    parser.add_argument(
        "--limit", type=int, default=Settings().cost_limit_analyst, help="the analyst's budget"
    )
    parser.add_argument(
        "--no-rate-limits", action="store_true", help="run the server without cost buckets"
    )
    args = parser.parse_args(argv)
    heavy_query, shape = heaviest_allowed(args.limit)

    # The server and this script sign and check tokens with one secret of this run.
    os.environ.setdefault("DESKBILL_TOKEN_SECRET", secrets.token_hex(32))
    name = f"deskbill_bench_attack_{os.getpid()}"
    await admin_statement(args.pg, f'CREATE DATABASE "{name}"')
    database_url = f"{args.pg}/{name}"
    settings = Settings.from_env()
    schema = build_schema(settings)
    print(f"heavy query: {shape}, cost {query_cost(schema, heavy_query):,} "
          f"(analyst budget {args.limit:,}); rate limits "
          f"{'off' if args.no_rate_limits else 'on, default buckets'}")  # fmt: skip
    port = free_port()
    try:
        async with running_server(database_url, port, args.limit, not args.no_rate_limits) as (
            base,
            pid,
        ):
            (home, other), target = await tenants_and_target(database_url, settings)
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                for label, document in attack_documents(target).items():
                    response = await client.post(
                        "/graphql",
                        json={"query": document},
                        headers={"Authorization": f"Bearer {home.attackers[0]}"},
                    )
                    error = response.json()["errors"][0]
                    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX", error
                    print(f"refused: {label} (cost {error['extensions']['cost']:,})")
            cpu_before = process_cpu_seconds(pid)
            results = [
                ("alone", *await phase(base, home.admin, (), args.seconds, 0, heavy_query)),
            ]
            for label, attackers in (
                ("2 attackers, other tenant", other.attackers),
                ("2 attackers, same tenant", home.attackers),
            ):
                # Each variant's attackers are callers of their own, with full buckets
                # at their start (the warm-up lets them spend those first).
                ordinary, heavy = await phase(
                    base, home.admin, attackers, args.seconds, args.warmup, heavy_query
                )
                results.append((label, ordinary, heavy))
            cpu = process_cpu_seconds(pid) - cpu_before
    finally:
        await admin_statement(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f}; "
          f"server CPU {cpu:.1f} s over the phases")  # fmt: skip
    print(
        "| phase | ordinary answered | p50 ms | p99 ms | ordinary refused "
        "| heavy answered | heavy p50 ms | heavy 429 | heavy other errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, ordinary, heavy in results:
        print(row(label, ordinary, None if label == "alone" else heavy))
    alone = quantile(results[0][1].latencies, 0.99)
    for label, ordinary, _ in results[1:]:
        ratio = quantile(ordinary.latencies, 0.99) / alone
        print(f"{label}: p99 / p99 alone = {ratio:.2f} (goal ≤ 3)")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    asyncio.run(main())
