"""The read-rate limit of scrub (registry.throttle.Throttle) with a fake clock: no waiting, no timing."""

from __future__ import annotations

import pytest

from registry.throttle import Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_reader_faster_than_the_rate_is_held_to_it() -> None:
    clock = FakeClock()
    throttle = Throttle(1 << 20, clock, clock.sleep)  # 1 MiB/s
    for _ in range(10):  # ten 1 MiB chunks read instantly
        throttle.consume(1 << 20)
    assert clock.now - 1000.0 == pytest.approx(10.0)  # ten seconds for ten MiB
    assert len(clock.sleeps) == 10 and throttle.slept == pytest.approx(10.0)


def test_a_slow_reader_is_not_slowed_further_and_gets_at_most_one_second_of_burst() -> None:
    clock = FakeClock()
    throttle = Throttle(1 << 20, clock, clock.sleep)
    clock.now += 60  # a minute of nothing (a slow disk, or no blobs): no minute of credit
    throttle.consume(1 << 20)
    assert clock.sleeps == []
    for _ in range(3):
        throttle.consume(1 << 20)
    assert sum(clock.sleeps) == pytest.approx(2.0, abs=1e-6)  # 4 MiB since: one second of burst, then 1 MiB/s


def test_no_limit_never_sleeps() -> None:
    clock = FakeClock()
    throttle = Throttle(0, clock, clock.sleep)
    for _ in range(100):
        throttle.consume(1 << 20)
    assert clock.sleeps == [] and throttle.slept == 0


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        Throttle(-1)
