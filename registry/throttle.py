"""Keeping background maintenance out of the way of pulls: a read-rate limit and a lower thread priority.

`Throttle` holds a reader to `rate` bytes per second on average (a token
bucket with one second of burst): after each chunk it sleeps just long
enough that the bytes so far fit the rate. Its clock and sleep are
parameters, so its arithmetic is tested without waiting.

`lower_priority` lowers the calling thread's CPU priority (nice 10) and,
on Linux x86-64 and arm64, its I/O priority (best-effort class, lowest
level), so a scrub or collection yields the disk and the cores to requests.
Linux applies both per thread: only the maintenance thread is affected.
Both are best effort; where the system refuses, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from collections.abc import Callable

NICE = 10
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}  # the ioprio_set system call number on these architectures
_IOPRIO_WHO_PROCESS = 1  # with a thread id: that thread
_IOPRIO_CLASS_BE = 2
_IOPRIO_LOWEST = 7


class Throttle:
    """Limits a stream of reads to `rate` bytes per second (0: no limit)."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate < 0:
            raise ValueError("the rate limit cannot be negative")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._bytes = 0
        self.slept = 0.0  # seconds spent waiting, for the job's report

    def consume(self, n: int) -> None:
        """Account for `n` bytes just read; sleeps while the reader is ahead of the rate."""
        if self.rate <= 0 or n <= 0:
            return
        self._bytes += n
        now = self._clock()
        due = self._start + self._bytes / self.rate  # when these bytes may have been read at the rate
        if due - now > 0:
            self._sleep(due - now)
            self.slept += due - now
        elif now - due > 1.0:
            # Idle (or slow disk) for a while: allow at most one second of burst, not the whole backlog.
            self._start, self._bytes = now - 1.0, 0


def lower_priority() -> list[str]:
    """Lower this thread's CPU and I/O priority; returns what was applied (e.g. ``["nice 10", "ioprio be/7"]``)."""
    applied: list[str] = []
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(NICE, os.getpriority(os.PRIO_PROCESS, tid)))
        applied.append(f"nice {os.getpriority(os.PRIO_PROCESS, tid)}")
    except (OSError, AttributeError):
        pass
    number = _IOPRIO_SET.get(platform.machine())
    if number is not None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(number, _IOPRIO_WHO_PROCESS, tid, (_IOPRIO_CLASS_BE << 13) | _IOPRIO_LOWEST) == 0:
                applied.append(f"ioprio be/{_IOPRIO_LOWEST}")
        except (OSError, AttributeError):
            pass
    return applied
