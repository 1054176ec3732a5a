"""Whether a recorded process still runs: by pid, and by pid plus start time where pids may be reused.

Import jobs, seed scans and the serve lock record which process owns them;
after a crash or a container restart that process is gone and its pid may
belong to another one, so a pid alone is not enough (see `process_start`).
With metadata shared between machines (PostgreSQL), a process recorded
under another boot id is never judged from here (`process_alive`'s `shared`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The boot and start time of the live process `pid` (Linux /proc), or None if it is gone or /proc cannot say.

    A pid alone does not name a process for long: pids are reused (pid_max
    is 32768 on many systems), and in a container each start of the
    appliance hands out the same small pids again in the same order, so a
    job's worker killed with the container had its pid taken by the next
    start's worker and the job showed "importing" forever instead of
    "interrupted" (tests/web/test_kill.py). A process started at the same
    clock tick of the same boot with the same pid is the same process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime field 22
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has finished: nothing of it runs any more
        return None
    return f"{boot}:{fields[19]}"


def _on_this_machine(pid_start: str) -> bool:
    """Whether a `process_start` value was taken on this machine (since its last boot: the same boot id)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return True
    return pid_start.rsplit(":", 1)[0] == boot


def process_alive(pid: int | None, pid_start: str | None = None,
                  machine_alive: Callable[[str], bool] | None = None) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not); with `pid_start`, that same process.

    A process of another machine is judged by `machine_alive(boot id)` (its
    lease, registry.leases); without `machine_alive` (metadata only this machine
    uses, SQLite) a process recorded under another boot id ran before a reboot.
    """
    if not pid:
        return False
    if pid_start is not None:
        if not _on_this_machine(pid_start):
            # Recorded by an appliance on another machine sharing the metadata (PostgreSQL): its pid means
            # nothing here; only that machine's lease says whether it still runs anything.
            # Without shared metadata (SQLite: one machine) another boot id is this machine before a reboot.
            return machine_alive(pid_start.rsplit(":", 1)[0]) if machine_alive is not None else False
        return process_start(pid) == pid_start  # gone, or another process that got the same pid
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")
