"""Machine leases: whether another machine sharing the PostgreSQL metadata still runs its jobs.

A job records the process running it (`registry.processes.process_start`:
pid, boot id, start tick). On its own machine an appliance judges that by
the pid; a job recorded on another machine (replicas sharing the database,
docs/operations.md "Scaling out") it cannot judge by pid, and a machine that
died would leave its jobs "running" forever. So every process that serves or
runs jobs on PostgreSQL keeps its machine's lease fresh: one row per boot id
in ``machine_leases`` whose ``heartbeat_at`` a daemon thread renews every
`BEAT_SECONDS`. A job from a machine whose lease is older than
`LEASE_SECONDS` is dead (its machine stopped, or lost the database for that
long); one from a machine with a fresh lease is left for that machine to
judge. SQLite metadata is one machine's: nothing here runs there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from registry.db import open_database, write_transaction
from registry.paths import DataPaths

BEAT_SECONDS = 15.0
LEASE_SECONDS = 90.0  # six missed beats: a busy database or a paused VM is not a death

_log = logging.getLogger(__name__)
_started: dict[tuple[int, str], threading.Thread] = {}
_started_lock = threading.Lock()


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def beat(paths: DataPaths, now: float | None = None) -> None:
    """Renew this machine's lease now."""
    now = time.time() if now is None else now
    with write_transaction(open_database(paths)) as db:
        db.execute("INSERT INTO machine_leases (boot_id, heartbeat_at) VALUES (?, ?) "
                   "ON CONFLICT (boot_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at "
                   "WHERE machine_leases.heartbeat_at < excluded.heartbeat_at", [boot_id(), now])


def keep_alive(paths: DataPaths) -> None:
    """Renew this machine's lease now and then every `BEAT_SECONDS`, from a daemon thread of this process
    (once per process and database; a no-op on SQLite)."""
    if not paths.database_url:
        return
    key = (os.getpid(), paths.database_url)
    with _started_lock:
        if key in _started:
            return
        beat(paths)

        def run() -> None:
            while True:
                time.sleep(BEAT_SECONDS)
                try:
                    beat(paths)
                except Exception as exc:  # engine errors or a lost connection: the next beat tries again
                    _log.warning("could not renew this machine's lease in the metadata database: %s", exc)

        thread = threading.Thread(target=run, name="cargohold-lease", daemon=True)
        thread.start()
        _started[key] = thread


def machine_alive(paths: DataPaths, boot: str, now: float | None = None) -> bool:
    """Whether the machine of boot id `boot` renewed its lease within `LEASE_SECONDS`."""
    now = time.time() if now is None else now
    row = open_database(paths).execute("SELECT heartbeat_at FROM machine_leases WHERE boot_id = ?",
                                       [boot]).fetchone()
    return row is not None and float(row[0]) > now - LEASE_SECONDS


def machine_judge(paths: DataPaths) -> Callable[[str], bool] | None:
    """What `registry.processes.process_alive` asks about another machine's boot id: its lease, with shared
    metadata (PostgreSQL); None with SQLite, whose records are this machine's alone."""
    if not paths.database_url:
        return None
    return lambda boot: machine_alive(paths, boot)
