"""The schedule syntax of maintenance jobs, and when a schedule is next due.

One small syntax instead of cron, because the appliance needs a handful of
shapes and an operator on site should be able to read each one aloud
(``gc_schedule``, ``scrub_schedule``, ``expire_schedule``; docs/operations.md):

    off                      never (the job runs only when started by hand)
    hourly                   every hour, on the hour
    daily                    every day at 00:00
    daily@HH:MM              every day at HH:MM (24-hour clock)
    weekly                   every Sunday at 00:00
    weekly@DAY HH:MM         every DAY (mon, tue, ... sun, or the full name) at HH:MM
    every N[s|m|h|d]         every N seconds (minutes, hours, days), counted from the previous run

Times are the appliance's local time. Parsing is case-insensitive and
raises ValueError naming what is wrong; a schedule is a frozen value with
`next_after(t)`: the first due time strictly after `t` (None for ``off``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

OFF = "off"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)\Z")
_EVERY = re.compile(r"^every\s+(\d{1,9})\s*([smhd])\Z")
SYNTAX = ('"off", "hourly", "daily", "daily@HH:MM", "weekly", "weekly@DAY HH:MM" (DAY: mon..sun) or '
          '"every N" with a unit s, m, h or d (e.g. "every 30m")')


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: `kind` is off, hourly, daily, weekly or every."""

    text: str  # the normalised spelling, as shown and stored
    kind: str
    hour: int = 0
    minute: int = 0
    weekday: int = 6  # Monday 0 .. Sunday 6
    seconds: int = 0  # for "every"

    @property
    def enabled(self) -> bool:
        return self.kind != OFF

    def next_after(self, t: float) -> float | None:
        """The first due time strictly after `t` (Unix seconds), or None when the schedule is off."""
        if self.kind == OFF:
            return None
        if self.kind == "every":
            return t + self.seconds
        now = dt.datetime.fromtimestamp(t)  # naive local time: "03:00" means the site's 03:00
        if self.kind == "hourly":
            candidate = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
            return candidate.timestamp()
        candidate = now.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        if self.kind == "weekly":
            candidate += dt.timedelta(days=(self.weekday - candidate.weekday()) % 7)
        step = dt.timedelta(days=7 if self.kind == "weekly" else 1)
        while candidate.timestamp() <= t:
            candidate += step
        return candidate.timestamp()


def _clock(text: str, original: str) -> tuple[int, int]:
    match = _CLOCK.match(text.strip())
    if match is None:
        raise ValueError(f"schedule {original!r}: {text.strip()!r} is not a time of day HH:MM (00:00 to 23:59)")
    return int(match.group(1)), int(match.group(2))


def parse_schedule(text: str) -> Schedule:
    """Parse `text` (the syntax in the module docstring); raises ValueError naming the problem."""
    original = text
    t = " ".join(str(text).strip().lower().split())
    if t in (OFF, "never", "none"):
        return Schedule(OFF, OFF)
    if t == "hourly":
        return Schedule("hourly", "hourly")
    every = _EVERY.match(t)
    if every is not None:
        seconds = int(every.group(1)) * _UNITS[every.group(2)]
        if seconds < 1:
            raise ValueError(f"schedule {original!r}: the interval must be at least 1s")
        return Schedule(f"every {every.group(1)}{every.group(2)}", "every", seconds=seconds)
    kind, _, when = t.partition("@")
    kind = kind.strip()
    if kind == "daily":
        hour, minute = _clock(when, original) if when else (0, 0)
        return Schedule(f"daily@{hour:02d}:{minute:02d}", "daily", hour, minute)
    if kind == "weekly":
        day_text, _, clock = when.strip().partition(" ") if when else ("sun", "", "00:00")
        if day_text in _DAYS:
            weekday = _DAYS.index(day_text)
        elif day_text in _FULL_DAYS:
            weekday = _FULL_DAYS.index(day_text)
        else:
            raise ValueError(f"schedule {original!r}: {day_text!r} is not a day of the week (mon, tue, ... sun)")
        hour, minute = _clock(clock, original) if clock else (0, 0)
        return Schedule(f"weekly@{_DAYS[weekday]} {hour:02d}:{minute:02d}", "weekly", hour, minute, weekday)
    raise ValueError(f"schedule {original!r} is not one of {SYNTAX}")
