"""What ``deskbill bill`` shows: on a terminal a progress bar while the run goes
(accounts done of the run's accounts, accounts per second, time left), then a summary
a person reads at a glance; with ``--json`` one JSON object on stdout for scripts.

The bar is rich's (``rich.progress``): it measures the rate and the time left itself,
redraws in place without flooding a log, and switches itself off when stderr is not
a terminal, so cron mails and CI logs get the summary only.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from app.lifecycle import bill_once
from app.settings import Settings
from services.billing import BillingRunResult


class _AccountsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.completed and task.elapsed:
            # A batched run reports whole batches: too few samples for rich's estimate.
            speed = task.completed / task.elapsed
        return Text("-- accounts/s" if speed is None else f"{speed:,.0f} accounts/s")


def run(settings: Settings, as_of: datetime, *, as_json: bool) -> int:
    """Bill once for ``as_of`` and report; exit status 1 when an account or an
    organization failed (they are retried by the next run), else 0."""
    console = Console(stderr=True)
    started = time.monotonic()
    with Progress(
        TextColumn("billing"),
        BarColumn(),
        MofNCompleteColumn(),
        _AccountsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("billing", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = asyncio.run(bill_once(settings, as_of, progress))
    seconds = time.monotonic() - started
    print(json.dumps(as_document(result, seconds)) if as_json else summary(result, seconds))
    return 1 if result.failures or result.failed_organizations else 0


def as_document(result: BillingRunResult, seconds: float) -> dict[str, object]:
    """The run as one JSON object (what ``--json`` prints)."""
    return {
        "asOf": result.as_of.isoformat(),
        "seconds": round(seconds, 3),
        "accountsProcessed": result.accounts_processed,
        "accountsSkipped": result.accounts_skipped,
        "invoicesFinalized": result.invoices_finalized,
        "invoicesDiscarded": result.invoices_discarded,
        "statusChanges": result.status_changes,
        "planPeriodsAdded": result.plan_periods_added,
        "plansEnded": result.plans_ended,
        "steps": {name: count for name, count in sorted(result.steps.items())},
        "accountsContinued": sorted(result.accounts_continued),
        "failedAccounts": [
            {"account": account, "reason": why} for account, why in sorted(result.failures.items())
        ],
        "failedOrganizations": sorted(result.failed_organizations),
    }


def summary(result: BillingRunResult, seconds: float) -> str:
    """The run in a few aligned lines, failures last with what happens to them."""
    rate = result.accounts_processed / seconds if seconds > 0 else 0.0
    rows = [
        ("invoices finalized", result.invoices_finalized),
        ("invoices discarded", result.invoices_discarded),
        ("status changes", result.status_changes),
        ("plan periods added", result.plan_periods_added),
        ("plans ended", result.plans_ended),
        *((name.replace("_", " "), count) for name, count in sorted(result.steps.items())),
    ]
    if result.accounts_skipped:
        rows.append(("skipped (another worker had them)", result.accounts_skipped))
    if result.accounts_continued:
        rows.append(("catching up in the next run", len(result.accounts_continued)))
    width = max(len(label) for label, _ in rows)
    lines = [
        f"Billing run as of {result.as_of.isoformat()}: {result.accounts_processed} accounts "
        f"in {seconds:.1f} s ({rate:,.0f} accounts/s)",
        *(f"  {label:<{width}}  {count:>8,}" for label, count in rows),
    ]
    if result.failures:
        lines.append(f"{len(result.failures)} accounts failed (rolled back; the next run retries):")
        lines += [f"  account {account}: {why}" for account, why in sorted(result.failures.items())]
    if result.failed_organizations:
        listed = ", ".join(str(org) for org in sorted(result.failed_organizations))
        lines.append(f"Organizations whose work could not be listed (see the log): {listed}")
    return "\n".join(lines)
