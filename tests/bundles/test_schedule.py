"""The maintenance schedule syntax (bundles.schedule): what each spelling means and when it is next due.

Pure functions over fixed local times; the real scheduler is tested against a running appliance in
tests/bundles/test_maintenance_schedule.py.
"""

from __future__ import annotations

import datetime as dt

import pytest

from bundles.schedule import parse_schedule


def _at(*fields: int) -> float:
    return dt.datetime(*fields).timestamp()  # local time, as schedules are


def test_spellings_are_normalised() -> None:
    assert parse_schedule("OFF").text == "off" and not parse_schedule("off").enabled
    assert parse_schedule(" Daily ").text == "daily@00:00"
    assert parse_schedule("daily@3:00").text == "daily@03:00"
    assert parse_schedule("weekly").text == "weekly@sun 00:00"
    assert parse_schedule("Weekly@Monday 4:05").text == "weekly@mon 04:05"
    assert parse_schedule("every 30m").seconds == 1800
    assert parse_schedule("every  5 s").text == "every 5s"


def test_next_run_times() -> None:
    wed = _at(2026, 12, 2, 8, 30)  # a Wednesday
    assert parse_schedule("off").next_after(wed) is None
    assert parse_schedule("hourly").next_after(wed) == _at(2026, 12, 2, 9, 0)
    assert parse_schedule("daily@03:00").next_after(wed) == _at(2026, 12, 3, 3, 0)
    assert parse_schedule("daily@09:15").next_after(wed) == _at(2026, 12, 2, 9, 15)
    assert parse_schedule("weekly@sun 04:00").next_after(wed) == _at(2026, 12, 6, 4, 0)
    assert parse_schedule("weekly@wed 08:00").next_after(wed) == _at(2026, 12, 9, 8, 0)
    assert parse_schedule("weekly@wed 09:00").next_after(wed) == _at(2026, 12, 2, 9, 0)
    assert parse_schedule("every 5s").next_after(wed) == wed + 5
    # Strictly after: a run claimed at its due time is next due a whole period later.
    assert parse_schedule("daily@03:00").next_after(_at(2026, 12, 3, 3, 0)) == _at(2026, 12, 4, 3, 0)
    assert parse_schedule("hourly").next_after(_at(2026, 12, 2, 9, 0)) == _at(2026, 12, 2, 10, 0)


@pytest.mark.parametrize("text, words", [
    ("daily@25:00", "not a time of day"),
    ("daily@3", "not a time of day"),
    ("weekly@someday 03:00", "not a day of the week"),
    ("every 0s", "at least 1s"),
    ("every 5", "is not one of"),
    ("sometimes", "is not one of"),
    ("*/5 * * * *", "is not one of"),
])
def test_bad_schedules_are_refused_naming_the_problem(text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(text)
    assert words in str(info.value) and repr(text) in str(info.value)
