"""Business hours: weekly opening windows in a time zone, with closed and extra-open dates.

Pure: `is_open(now)` takes an aware datetime, so tests and flows pass the time in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)\Z")


def parse_window(text: str) -> tuple[time, time]:
    """'09:00-21:00' -> (09:00, 21:00); '24:00' as an end means midnight. Raises ValueError."""
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a window like 09:00-21:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start = time(h1, m1)
    end = time.max if (h2, m2) == (24, 0) else time(h2 % 24, m2)
    if (h2, m2) != (24, 0) and end <= start:
        raise ValueError(f"{text!r}: the window ends before it starts")
    return start, end


@dataclass(frozen=True)
class BusinessHours:
    timezone: str
    weekly: dict[str, tuple[tuple[time, time], ...]] = field(default_factory=dict)
    closed_dates: frozenset[date] = frozenset()
    open_dates: dict[date, tuple[tuple[time, time], ...]] = field(default_factory=dict)

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        day = local.date()
        if day in self.closed_dates:
            return False
        windows = self.open_dates.get(day, self.weekly.get(DAYS[local.weekday()], ()))
        t = local.time()
        return any(start <= t < end or (end == time.max and t >= start) for start, end in windows)
