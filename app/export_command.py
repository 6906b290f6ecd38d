"""``deskbill export KIND --org SLUG [--filter JSON] [-o FILE]``: an HTTP export's CSV
written by the operator's command, as the organization's analyst would download it
(the whole organization, the graph's filter names and checks), with a rich progress
bar of rows written on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from sqlalchemy import func, select

from app.database import create_engine, create_sessionmaker
from app.exports import EXPORTS, export_text, to_input
from app.settings import Settings
from models import Role
from resolvers.viewer import Viewer
from services import provisioning
from services.errors import DomainError


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- rows/s" if speed is None else f"{speed:,.0f} rows/s")


async def _export(settings: Settings, kind: str, org_key: str, raw: object, out: IO[bytes]) -> int:
    engine = create_engine(settings.database_url, limits=settings.database_limits)
    sessions = create_sessionmaker(engine)
    console = Console(stderr=True)
    try:
        filter_cls, statement, _, _ = EXPORTS[kind]
        async with sessions() as session:
            org = await provisioning.find_organization(session, org_key)
            who = Viewer(
                user_id=None, organization_id=org.id, role=Role.ANALYST,
                currency=org.currency, timezone=org.timezone, account_ids=None,
                test_clock_at=org.test_clock_at,
            )  # fmt: skip
            stmt = statement(who, to_input(filter_cls, raw))
            total = await session.scalar(
                select(func.count()).select_from(stmt.order_by(None).subquery())
            )
        with Progress(
            TextColumn(f"export {kind}"), BarColumn(), MofNCompleteColumn(),
            _RowsPerSecond(), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal,
        ) as bar:  # fmt: skip
            task = bar.add_task(kind, total=total)
            lines = 0
            async with contextlib.aclosing(export_text(sessions, kind, who, stmt)) as chunks:
                async for chunk in chunks:
                    data = chunk.encode() if isinstance(chunk, str) else chunk
                    out.write(data)
                    lines += data.count(b"\n")
                    bar.update(task, completed=max(0, lines - 1))
        print(f"{total} {kind} rows written", file=sys.stderr)
        return 0
    finally:
        await engine.dispose()


def run(settings: Settings, kind: str, org: str, filter_json: str | None, output: str) -> int:
    """Write the export; exit status 2 with a sentence when the input is wrong."""
    if kind not in EXPORTS:
        print(f"No export named {kind}; exports: {', '.join(sorted(EXPORTS))}.", file=sys.stderr)
        return 2
    try:
        raw = json.loads(filter_json) if filter_json else None
    except json.JSONDecodeError:
        print('--filter must be JSON, e.g. {"status": ["DUE"]}.', file=sys.stderr)
        return 2
    try:
        if output == "-":
            return asyncio.run(_export(settings, kind, org, raw, sys.stdout.buffer))
        with open(output, "wb") as out:
            return asyncio.run(_export(settings, kind, org, raw, out))
    except DomainError as refused:
        print(refused.message, file=sys.stderr)
        return 2
