"""Bench (not a test): CSV exports over HTTP on PostgreSQL, rows per second and the
server's peak memory.

1. a fresh database with a unique name (dropped at the end, also on failure), brought
   to the schema by ``deskbill migrate`` and filled by SQL with the dataset of
   ``bench/vs_postgraphile.py`` (10,000 accounts, 100,000 invoices, 500,000 lines,
   100,000 payments; ``--small``: a twentieth);
2. ``deskbill serve --no-worker`` in a process of its own;
3. each export downloaded ``--rounds`` times as the organization's admin, streamed and
   counted by the client; rows/s of the best and the median round, and the server
   process's resident memory after start and its peak (``VmHWM``) after the downloads.

    .venv/bin/python bench/exports.py [--small] [--rounds 3] [--kinds invoice-items]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from vs_postgraphile import FULL, FULL_CREDIT_NOTES, SMALL, SMALL_CREDIT_NOTES, fill  # noqa: E402

DESKBILL = str(ROOT / ".venv" / "bin" / "deskbill")


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def admin_token(database_url: str, secret: str) -> str:
    from app.auth import issue_token
    from app.database import create_engine, create_sessionmaker
    from app.settings import Settings
    from models import User

    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            admin = await session.get(User, 1)
            assert admin is not None
            return issue_token(Settings(token_secret=secret), admin, datetime.now(UTC))
    finally:
        await engine.dispose()


async def download(url: str, token: str) -> tuple[int, int, float]:
    """Rows (lines less the header), bytes and seconds of one streamed download."""
    lines = size = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        headers = {"Authorization": f"Bearer {token}"}
        async with client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes(1 << 16):
                size += len(chunk)
                lines += chunk.count(b"\n")
    return lines - 1, size, time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    dbname = f"deskbill_bench_exports_{os.getpid()}"
    admin = await asyncpg.connect(f"{args.postgres}/postgres")
    database_url = f"{args.postgres}/{dbname}"
    secret = secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBILL_")}
    env.update(DATABASE_URL=database_url, DESKBILL_TOKEN_SECRET=secret, DESKBILL_WORKER="false")
    server: subprocess.Popen[bytes] | None = None
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        await asyncio.to_thread(
            subprocess.run, [DESKBILL, "migrate"], env=env, cwd=ROOT, check=True, timeout=300
        )
        sizes = dict(SMALL if args.small else FULL)
        sizes["credit_notes"] = SMALL_CREDIT_NOTES if args.small else FULL_CREDIT_NOTES
        t0 = time.monotonic()
        counts = await fill(database_url, sizes)
        log(f"filled in {time.monotonic() - t0:.1f}s: {counts}")
        port = free_port()
        server = await asyncio.to_thread(
            subprocess.Popen, [DESKBILL, "serve", "--no-worker", "--port", str(port)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as probe:
            for _ in range(600):
                try:
                    await probe.get(f"{base}/exports/invoices.csv")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
        token = await admin_token(database_url, secret)
        started_kib = memory_kib(server.pid, "VmRSS")
        print(
            f"\n{date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; rows: {counts}; "
            f"server RSS after start {started_kib / 1024:.0f} MiB\n"
        )
        print("| export | rows | MB | best rows/s | median rows/s | server peak RSS MiB |")
        print("|---|---|---|---|---|---|")
        for kind in args.kinds.split(","):
            rounds = [
                await download(f"{base}/exports/{kind}.csv", token) for _ in range(args.rounds)
            ]
            rows, size, _ = rounds[0]
            rates = [r / seconds for r, _, seconds in rounds]
            peak = memory_kib(server.pid, "VmHWM")
            print(
                f"| {kind} | {rows:,} | {size / 1e6:.1f} | {max(rates):,.0f} | "
                f"{statistics.median(rates):,.0f} | {peak / 1024:.0f} |",
                flush=True,
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
        log(f"dropped {dbname}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--small", action="store_true", help="a twentieth of the rows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="invoice-items,invoices,payments")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
