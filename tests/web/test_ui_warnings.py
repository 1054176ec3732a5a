"""The dashboard's free-space warning thresholds (web.ui.warnings.space_warning), without a server."""

from __future__ import annotations

from web.ui.warnings import NEAR_RESERVE_BYTES, space_warning

MIB, GIB = 1 << 20, 1 << 30


def test_no_warning_with_room_to_spare() -> None:
    assert space_warning(free=256 * MIB + NEAR_RESERVE_BYTES, reserve=256 * MIB) is None
    assert space_warning(free=100 * GIB, reserve=256 * MIB) is None
    # A reserve larger than the margin is itself the margin.
    assert space_warning(free=2 * 4 * GIB, reserve=4 * GIB) is None


def test_near_the_reserve_warns_before_writes_fail() -> None:
    warning = space_warning(free=256 * MIB + 300 * MIB, reserve=256 * MIB)
    assert warning is not None and warning.id == "warn-space"
    assert warning.title == "Free space is running out"
    assert "556 MiB is free, and 256 MiB must stay free" in warning.text
    assert "larger than 300 MiB will be refused" in warning.text
    near_big_reserve = space_warning(free=4 * GIB + 3 * GIB, reserve=4 * GIB)
    assert near_big_reserve is not None and "7.0 GiB is free, and 4.0 GiB must stay free" in near_big_reserve.text


def test_below_the_reserve_says_writes_are_refused() -> None:
    for free in (256 * MIB, 10 * MIB, 0):
        warning = space_warning(free=free, reserve=256 * MIB)
        assert warning is not None and warning.title == "The data volume is full: uploads and imports are refused"
        assert "must stay free" in warning.text and "import_reserve" not in warning.text
