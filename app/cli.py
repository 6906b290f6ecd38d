"""The ``deskbill`` command: serve, migrate, demo, bill, worker, token, export-schema."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from app.settings import Settings, async_database_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", async_database_url(database_url))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def _parse_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deskbill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="fill an empty database with demo data")
    serve.add_argument("--no-worker", action="store_true", help="do not run the billing clock")

    sub.add_parser("migrate", help="bring the database schema to the newest revision")
    demo = sub.add_parser("demo", help="fill an empty database with a demo coworking space")
    demo.add_argument("--force", action="store_true", help="add demo data even if not empty")

    bill = sub.add_parser("bill", help="run the billing clock once for an instant")
    bill.add_argument("--as-of", type=_parse_instant, default=None)

    sub.add_parser("worker", help="run the billing clock without serving HTTP")
    sub.add_parser("export-schema", help="print the GraphQL SDL")

    args = parser.parse_args(argv)
    settings = Settings.from_env()

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
        from app.lifecycle import bill_once

        as_of = args.as_of or datetime.now(UTC)
        print(asyncio.run(bill_once(settings, as_of)))
        return 0
    if args.command == "worker":
        from app.lifecycle import run_worker

        asyncio.run(run_worker(settings))
        return 0
    if args.command == "serve":
        import uvicorn

        migrate(settings.database_url)
        if args.demo:
            from app.demo import load_demo

            asyncio.run(load_demo(settings, force=False, host=f"http://{args.host}:{args.port}"))
        if args.no_worker:
            settings = Settings.from_env(worker_enabled=False)
        from app.asgi import create_app

        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
