"""The billing clock: the engine asks it for "now" instead of calling datetime.now().

Tests pass a ``FixedClock`` and move it; the server passes ``SystemClock``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from services.errors import ValidationError

# How far ahead of a live organization's clock (the wall clock) a billing run may be
# asked for: enough for a caller's clock running a little fast, too little to finalize
# tomorrow's invoices or make anything due early by more than these minutes.
MAX_CLOCK_SKEW = timedelta(minutes=5)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    current: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def now(self) -> datetime:
        return self.current

    def set(self, instant: datetime) -> None:
        if instant.tzinfo is None:
            raise ValueError("the clock takes aware datetimes")
        self.current = instant.astimezone(UTC)

    def advance(self, delta: timedelta) -> None:
        self.current += delta


def local_date(instant: datetime, timezone: str) -> date:
    """The calendar date of ``instant`` in the organization's timezone."""
    return instant.astimezone(ZoneInfo(timezone)).date()


def start_of_day(day: date, timezone: str) -> datetime:
    """The UTC instant at which ``day`` begins in ``timezone``."""
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def refuse_future(
    instant: datetime, now: datetime, name: str = "asOf", *, sandbox: bool = False
) -> datetime:
    """``instant`` if it is not after ``now`` (plus ``MAX_CLOCK_SKEW`` for a live
    organization); otherwise a VALIDATION error that changes nothing. A past instant
    is a catch-up. A sandbox's clock is exact: its future is reached by advancing it."""
    if sandbox:
        if instant > now:
            raise ValidationError(
                f"`{name}` {instant.astimezone(UTC).isoformat()} is after this sandbox's test "
                f"clock ({now.astimezone(UTC).isoformat()}): move the clock there with "
                "advanceTestClock(to:), which bills every step on the way.",
                field=name,
            )
        return instant
    if instant > now + MAX_CLOCK_SKEW:
        minutes = int(MAX_CLOCK_SKEW.total_seconds() // 60)
        raise ValidationError(
            f"`{name}` {instant.astimezone(UTC).isoformat()} is in the future: a live "
            f"organization's clock is the wall clock ({now.astimezone(UTC).isoformat()}), "
            f"so billing runs for now or a past instant (at most {minutes} minutes ahead).",
            field=name,
        )
    return instant


class SandboxOrganization(Protocol):
    """What ``organization_now`` reads of an organization (the row, or the viewer's copy)."""

    @property
    def test_clock_at(self) -> datetime | None: ...


def organization_now(clock: Clock | datetime, org: SandboxOrganization | None) -> datetime:
    """What time it is for ``org``: the one answer every mutation, derived status,
    "today" and event of that organization uses (rules §9.3, §9.4).

    A live organization runs on the wall clock (the process's ``clock``, or its instant
    already read); a sandbox organization on its test clock, which only
    advanceTestClock moves. ``org`` is the row or the viewer's copy of its clock, so
    this costs no statement."""
    if org is not None and org.test_clock_at is not None:
        return org.test_clock_at
    return clock if isinstance(clock, datetime) else clock.now()
