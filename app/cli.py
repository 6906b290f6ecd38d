"""The ``deskbill`` command: serve, worker, migrate, demo, bill, export-schema, and
the provisioning commands ``org``, ``token`` and ``apikey`` (``app.provision``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from app.logs import configure_logging, logging_config
from app.settings import Settings, async_database_url
from app.signing import ConfigurationError, check_credentials

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# After SIGTERM, open requests and websockets get this long before uvicorn cancels
# them; the lifespan then stops the billing clock and the hub in well under 10 s.
SHUTDOWN_GRACE_SECONDS = 4


def alembic_config(database_url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", async_database_url(database_url))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    from alembic import command

    # Alembic 1.20 announces each of its own plugins at INFO on every run: a dozen lines
    # of noise above the demo's tokens. The revisions it runs are still logged.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    command.upgrade(alembic_config(database_url), revision)


def _parse_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deskbill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="fill an empty database with demo data")
    serve.add_argument("--no-worker", action="store_true", help="do not run the billing clock")
    serve.add_argument("--workers", type=int, default=1, help="server processes (production)")

    sub.add_parser("migrate", help="bring the database schema to the newest revision")
    demo = sub.add_parser("demo", help="fill an empty database with a demo coworking space")
    demo.add_argument("--force", action="store_true", help="add demo data even if not empty")

    bill = sub.add_parser("bill", help="run the billing clock once for an instant")
    bill.add_argument(
        "--as-of",
        type=_parse_instant,
        default=None,
        help="now (the default) or a past instant to catch up to; not the future",
    )
    bill.add_argument("--json", action="store_true", help="print one JSON object for scripts")

    sub.add_parser("worker", help="run the billing clock without serving HTTP")
    export = sub.add_parser("export", help="write an export's CSV (as /exports/KIND.csv)")
    export.add_argument(
        "kind",
        help="invoices, invoice-items, payments, credit-notes, credit-allocations, refunds, events",
    )
    export.add_argument("--org", required=True, help="slug or id")
    export.add_argument("--filter", default=None, help="the graph's filter as JSON")
    export.add_argument("-o", "--output", default="-", help="file to write (default stdout)")
    sub.add_parser("export-schema", help="print the GraphQL SDL")
    from app import provision

    provision.add_commands(sub)

    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command in ("serve", "worker"):
        # Our own lines (one per billing run, refusals, warnings) next to uvicorn's,
        # each with its request id; DESKBILL_LOG_FORMAT=json for one object per line.
        configure_logging(settings.log_format)

    if args.command in provision.COMMANDS:
        return provision.run(args, settings, migrate)
    try:
        # The demo makes a secret of its own, but one that is set must be good.
        demo_fills_in = getattr(args, "demo", False) and settings.token_secret is None
        if args.command in ("serve", "worker") and not demo_fills_in:
            check_credentials(settings)
    except ConfigurationError as missing:
        print(missing, file=sys.stderr)
        return 2

    if args.command == "export-schema":
        from app.graphql import build_schema

        sys.stdout.write(build_schema(settings).as_str() + "\n")
        return 0
    if args.command == "migrate":
        migrate(settings.database_url)
        return 0
    if args.command == "demo":
        migrate(settings.database_url)
        from app.demo import load_demo

        asyncio.run(load_demo(settings, force=args.force))
        return 0
    if args.command == "bill":
        from app import bill_command
        from services.clock import refuse_future
        from services.errors import ValidationError

        now = datetime.now(UTC)
        try:
            as_of = refuse_future(args.as_of or now, now, "--as-of")
        except ValidationError as refused:
            print(refused.message, file=sys.stderr)
            return 2
        return bill_command.run(settings, as_of, as_json=args.json)
    if args.command == "export":
        from app import export_command

        return export_command.run(settings, args.kind, args.org, args.filter, args.output)
    if args.command == "worker":
        from app.lifecycle import run_worker

        asyncio.run(run_worker(settings))
        return 0
    if args.command == "serve":
        import uvicorn

        if args.workers < 1:
            parser.error("--workers must be 1 or more")
        if args.workers > 1 and settings.broadcast_url.startswith("memory"):
            sys.stderr.write(
                f"deskbill serve --workers {args.workers} needs a broadcast channel the "
                "processes share, or subscribers miss events served by the others: set "
                "DESKBILL_BROADCAST_URL to redis://… or postgres://… (memory:// reaches "
                "one process only).\n"
            )
            return 2
        migrate(settings.database_url)
        if args.demo:
            from app.demo import demo_settings, load_demo

            asyncio.run(load_demo(settings, force=False, host=f"http://{args.host}:{args.port}"))
            settings = asyncio.run(demo_settings(settings))
            if args.workers > 1 and settings.token_secret is not None:
                # Worker processes read their settings from the environment again.
                os.environ["DESKBILL_TOKEN_SECRET"] = settings.token_secret
        if args.no_worker:
            os.environ["DESKBILL_WORKER"] = "false"  # read again by every worker process
            settings = replace(settings, worker_enabled=False)
        from app.asgi import create_app

        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again so the
        # process would end as "killed"; a finished graceful shutdown is a success.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        # With several processes each builds its own app (engines, hub) from the
        # environment; uvicorn needs the factory's import path for that.
        uvicorn.run(
            "app.asgi:create_app" if args.workers > 1 else create_app(settings),
            factory=args.workers > 1, workers=args.workers, host=args.host, port=args.port,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS, log_level="info",
            # Every process (each worker too) logs through our handler: request ids, JSON.
            log_config=logging_config(settings.log_format),
            ws_max_size=settings.max_body_bytes,
        )  # fmt: skip
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
