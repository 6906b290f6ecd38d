"""Read-graph throughput: the nested invoice list over real HTTP, with the parser and
validation caches on and off.

A fresh database (a SQLite file, or PostgreSQL database ``deskbill_bench`` that is
created and dropped) gets the test world plus N finalized invoices spread over ~50
accounts, each with lines, a payment, and every other one a credit allocation. The
real app then runs under uvicorn in a subprocess (so the load generator does not share
its event loop or core), and K concurrent httpx clients post ``QUERY`` for S seconds.
Reported: requests/s, p50/p95/p99 latency, and SQL statements per request (counted
once in-process, on every engine of the app, with the same query and token).

    .venv/bin/python bench/read_graph.py                              # SQLite, both variants
    .venv/bin/python bench/read_graph.py --db postgresql --invoices 1000 \
        --concurrency 16 --seconds 10
    .venv/bin/python bench/read_graph.py --caches on,off,hoisted --profile 200

Every run stops by itself: the load loop is bounded by ``--seconds``, the server gets
SIGTERM (then SIGKILL) by pid in a ``finally``, and the PostgreSQL database is dropped.

The subprocess imports this module as ``bench.read_graph:server_app`` (a uvicorn
factory): it reads the usual ``DATABASE_URL``/``DESKBILL_*`` environment, plus
``DESKBILL_BENCH_CACHES=off`` to serve a schema built here without ``ParserCache`` and
``ValidationCache`` (``app/graphql.py``'s defaults are untouched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # ``tests`` is not part of the installed distribution

import httpx  # noqa: E402
import strawberry  # noqa: E402
from sqlalchemy import event as sa_event  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from strawberry.extensions import (  # noqa: E402
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema import schema as strawberry_schema  # noqa: E402

import models  # noqa: E402
from app.asgi import DeskbillGraphQL, create_app  # noqa: E402
from app.auth import issue_token  # noqa: E402
from app.database import create_engine, create_sessionmaker  # noqa: E402
from app.graphql import CodedErrors  # noqa: E402
from app.settings import Settings  # noqa: E402
from models import Account, CreditAllocation, Organization, Payment, User  # noqa: E402
from tests.world import NOW, World, _finalized, _invoice, _line, build_world  # noqa: E402

QUERY = """
query Invoices {
  invoices(first: 50) {
    nodes {
      number status
      account { name }
      lines { description total { amount } }
      payments { amount { amount } status }
      allocations { amount { amount } }
      balanceDue { amount }
    }
  }
}"""

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
BENCH_DATABASE = "deskbill_bench"
TOKEN_SECRET = secrets.token_urlsafe(32)  # per run; the server subprocess gets it in its env
VARIANT_ENV = "DESKBILL_BENCH_CACHES"
ACCOUNTS = 50
Sessions = async_sessionmaker[AsyncSession]


# -- the server side (runs in the uvicorn subprocess) -----------------------------------


VARIANTS = {
    "on": "app.graphql.build_schema as is (compiled reads on)",
    "plain": "as is, but compiled reads off: every field through the Strawberry resolvers",
    "off": "without ParserCache and ValidationCache",
    "hoisted": "as is, but the limiters' validation rules built once (cache hits)",
}


def variant_schema(settings: Settings, variant: str) -> strawberry.Schema:
    """``app.graphql.build_schema`` minus the two caches (``off``), or with the depth
    and alias rules created once per schema instead of once per request (``hoisted``):
    a new rule class per request is a new ``ValidationCache`` key, so ``on`` re-validates
    every request."""
    from resolvers.mutation import Mutation
    from resolvers.query import Query
    from resolvers.subscription import Subscription

    limits: list[Any] = [
        lambda: QueryDepthLimiter(max_depth=settings.max_query_depth),
        lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
        lambda: MaxAliasesLimiter(max_alias_count=settings.max_aliases),
    ]
    caches: list[Any] = [lambda: ParserCache(maxsize=256), lambda: ValidationCache(maxsize=256)]
    if variant == "off":
        caches = []
    elif variant == "hoisted":
        rules = [
            *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
            *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
        ]
        limits = [
            lambda: AddValidationRules(rules),
            lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
        ]
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[CodedErrors, *limits, *caches],
    )


def bench_app(settings: Settings, *, variant: str, engine: AsyncEngine | None = None) -> Starlette:
    if variant == "plain":
        settings = dataclasses.replace(settings, compiled_reads=False)
    app = create_app(settings, engine=engine, start_worker=False)
    if variant not in ("on", "plain"):
        schema = variant_schema(settings, variant)
        for route in app.routes:
            endpoint = getattr(route, "endpoint", None)
            if isinstance(endpoint, DeskbillGraphQL):
                endpoint.schema = schema  # HTTP and websocket routes share one view
    return app


def server_app() -> Starlette:
    """The uvicorn factory for the subprocess (``--factory``)."""
    settings = Settings.from_env(worker_enabled=False, graphiql=False)
    return bench_app(settings, variant=os.environ.get(VARIANT_ENV, "on"))


# -- the database ----------------------------------------------------------------------


@dataclass
class Database:
    url: str  # plain URL for the server's DATABASE_URL
    engine: AsyncEngine
    cleanup: Any = None


async def fresh_database(kind: str) -> Database:
    if kind == "sqlite":
        path = Path(tempfile.mkdtemp(prefix="deskbill-bench-")) / "bench.db"
        url = f"sqlite:///{path}"

        async def remove() -> None:
            await asyncio.to_thread(shutil.rmtree, path.parent, True)

        engine = create_engine(url)
        cleanup = remove
    else:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        await _pg_admin(f'CREATE DATABASE "{BENCH_DATABASE}"')
        url = f"{PG_SERVER}/{BENCH_DATABASE}"
        engine = create_engine(url)

        async def drop() -> None:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')

        cleanup = drop
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.create_all)
    return Database(url=url, engine=engine, cleanup=cleanup)


async def _pg_admin(statement: str) -> None:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


async def seed(db: Sessions, settings: Settings, invoices: int) -> tuple[World, str]:
    """The test world, then ``invoices`` more over ~50 accounts: two or three lines,
    a cash payment each, and every other one 3.00 of credit from its account's credit
    note. Returns the world and a fresh admin token (the world's are dated 2026-08-15)."""
    world = await build_world(db, settings)
    async with db.begin() as s:
        org = await s.get(Organization, world.ids["org"])
        assert org is not None
        accounts = [
            await s.get(Account, world.ids[k]) for k in ("alice_account", "bob_account", "team")
        ]
        for i in range(ACCOUNTS - len(accounts)):
            team = Account(organization_id=org.id, kind="TEAM", name=f"Studio {i + 1:02d}",
                           created_at=NOW)  # fmt: skip
            s.add(team)
            accounts.append(team)
        await s.flush()
        notes = []
        for i, acc in enumerate(accounts):
            assert acc is not None
            note = _invoice(
                org, acc, number=f"CN-B{i + 1:05d}", status="PAID", document_type="CREDIT_NOTE",
                credit_note_status="AVAILABLE", issue_date=date(2026, 8, 2), finalized_at=NOW,
                origin="REFUND", subtotal=-1_000_000, total=-1_000_000,
            )  # fmt: skip
            s.add(note)
            notes.append(note)
        await s.flush()
        s.add_all(_line(org, n, "Goodwill credit", -1_000_000, kind="CREDIT") for n in notes)
        allocated = [0] * len(accounts)
        for i in range(invoices):
            k = i % len(accounts)
            acc = accounts[k]
            assert acc is not None
            lines = [("Desk", 10_000 + i), ("Locker", 500)] + ([("Printing", 250)] if i % 3 else [])
            credit = 300 if i % 2 == 0 else 0
            inv = await _finalized(s, org, acc, f"INV-B{i + 1:06d}", lines, status="DUE",
                                   paid=500, credit=credit)  # fmt: skip
            s.add(Payment(
                organization_id=org.id, account_id=acc.id, invoice_id=inv.id, amount=500,
                applied_amount=500, currency="USD", status="SUCCEEDED", type="MANUAL",
                method="CASH", created_at=NOW, updated_at=NOW, succeeded_at=NOW,
            ))  # fmt: skip
            if credit:
                s.add(CreditAllocation(
                    organization_id=org.id, account_id=acc.id, credit_note_id=notes[k].id,
                    invoice_id=inv.id, amount=credit, kind="MANUAL", created_at=NOW,
                ))  # fmt: skip
                allocated[k] += credit
        for note, amount in zip(notes, allocated, strict=True):
            note.credit_allocated = amount
        admin = await s.get(User, world.ids["admin"])
        assert admin is not None
        token = issue_token(settings, admin, datetime.now(UTC))
    return world, token


# -- measurements ----------------------------------------------------------------------


def _payload() -> bytes:
    return json.dumps({"query": QUERY, "variables": {}}).encode()


def _check(response: httpx.Response) -> None:
    if response.status_code != 200 or b'"errors"' in response.content:
        raise RuntimeError(f"bad response {response.status_code}: {response.text[:500]}")


class StatementCounter:
    """Every statement sent on the app's engines (SELECTs and, on SQLite, BEGINs)."""

    def __init__(self, engines: set[AsyncEngine]) -> None:
        self.statements: list[str] = []
        self.engines = engines
        for engine in engines:
            sa_event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(statement.lstrip().split(None, 1)[0].upper())

    def close(self) -> None:
        for engine in self.engines:
            sa_event.remove(engine.sync_engine, "before_cursor_execute", self._record)


class ValidationCounter:
    """Counts graphql-core ``validate`` runs, i.e. ``ValidationCache`` misses."""

    def __init__(self) -> None:
        self.count = 0
        self.original = strawberry_schema.validate

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self.original(*args, **kwargs)

        strawberry_schema.validate = counting  # type: ignore[assignment]

    def close(self) -> None:
        strawberry_schema.validate = self.original  # type: ignore[assignment]


@dataclass
class Census:
    selects: float
    statements: float
    validations: float
    nodes: int
    profile: str = ""


async def in_process(
    settings: Settings, engine: AsyncEngine, token: str, *, variant: str, profile: int
) -> Census:
    """Statements per request (the 2nd of 3 identical requests, counted on every engine
    of the app), and optionally a cProfile of ``profile`` sequential requests."""
    app = bench_app(settings, variant=variant, engine=engine)
    state = app.state.deskbill
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        first = await client.post("/graphql", content=_payload(), headers=headers)
        _check(first)
        nodes = len(first.json()["data"]["invoices"]["nodes"])
        counter = StatementCounter({state.engine, state.read_engine})
        validations = ValidationCounter()
        try:
            _check(await client.post("/graphql", content=_payload(), headers=headers))
        finally:
            counter.close()
            validations.close()
        text_out = ""
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(profile):
                _check(await client.post("/graphql", content=_payload(), headers=headers))
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime")
            stats.print_stats(25)
            text_out = out.getvalue()
    return Census(
        selects=sum(1 for s in counter.statements if s == "SELECT"),
        statements=len(counter.statements),
        validations=validations.count,
        nodes=nodes,
        profile=text_out,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def server(database_url: str, *, variant: str) -> Any:
    """uvicorn in a subprocess; yields its base URL and pid; always stopped by pid."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "DESKBILL_TOKEN_SECRET": TOKEN_SECRET,
        "DESKBILL_WORKER": "0",
        "DESKBILL_GRAPHIQL": "0",
        VARIANT_ENV: variant,
    }
    command = [
        sys.executable, "-m", "uvicorn", "bench.read_graph:server_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as probe:
            deadline = time.monotonic() + 60
            while True:
                if proc.returncode is not None:
                    log.seek(0)
                    raise RuntimeError(f"server exited: {log.read().decode()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start within 60 s")
                await asyncio.sleep(0.1)
        yield url, proc.pid
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        log.close()


@dataclass
class Load:
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


async def drive(url: str, token: str, concurrency: int, seconds: float) -> Load:
    """``concurrency`` clients, one connection each, posting back to back until the
    deadline; a request in flight at the deadline still counts (its latency is real)."""
    body = _payload()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def client() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                response = await http.post("/graphql", content=body, headers=headers)
                latencies.append(time.perf_counter() - sent)
                _check(response)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Load(seconds=time.perf_counter() - start, latencies=latencies)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``; NaN elsewhere): unlike
    requests/s it does not depend on how much of the machine others are using."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_average() -> str:
    with contextlib.suppress(OSError):
        return f"{os.getloadavg()[0]:.1f}"
    return "?"


# -- main ------------------------------------------------------------------------------


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--invoices", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, not measured")
    parser.add_argument(
        "--caches", default="on,off", help=f"comma list of variants: {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="also cProfile N sequential in-process requests per variant (top 25 by tottime)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    variants = args.caches.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown --caches {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")

    print(
        f"# {platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; db {args.db}; {args.invoices} invoices over "
        f"{ACCOUNTS} accounts; {args.concurrency} clients x {args.seconds:g} s "
        f"(+{args.warmup:g} s warm-up)",
        flush=True,
    )
    database = await fresh_database(args.db)
    try:
        settings = Settings(
            database_url=database.url, token_secret=TOKEN_SECRET, worker_enabled=False,
            graphiql=False,
        )  # fmt: skip
        seeding = time.perf_counter()
        _, token = await seed(create_sessionmaker(database.engine), settings, args.invoices)
        print(f"# seeded in {time.perf_counter() - seeding:.1f} s", flush=True)
        rows = []
        for variant in variants:
            census = await in_process(
                settings, database.engine, token, variant=variant, profile=args.profile
            )
            if census.profile:
                print(f"# cProfile, caches {variant}:\n{census.profile}")
            async with server(database.url, variant=variant) as (url, pid):
                await drive(url, token, args.concurrency, args.warmup)
                before, cpu = _load_average(), cpu_seconds(pid)
                load = await drive(url, token, args.concurrency, args.seconds)
                cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / len(load.latencies)
            ms = [f"{_quantile(load.latencies, q) * 1000:.1f}" for q in (0.50, 0.95, 0.99)]
            rows.append(
                f"| {args.db} | {variant} | {load.rate:.0f} | {' | '.join(ms)} | {cpu_ms:.1f} | "
                f"{census.selects:g} ({census.statements:g}) | {census.validations:g} | "
                f"{census.nodes} | {before}→{_load_average()} |"
            )
        print(
            "| db | caches | req/s | p50 ms | p95 ms | p99 ms | server CPU ms/req "
            "| SELECTs/req (all stmts) "
            "| validations/req | nodes | load avg |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(row)
    finally:
        await database.engine.dispose()
        await database.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
