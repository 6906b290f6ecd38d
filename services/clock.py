"""The billing clock: the engine asks it for "now" instead of calling datetime.now().

Tests pass a ``FixedClock`` and move it; the server passes ``SystemClock``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo


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
