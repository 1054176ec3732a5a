"""Which data directory a command works on, whether it holds an appliance, and who serves it.

Three rules the command line keeps (docs/operations.md, The data directory):

- A command that only reads or changes an existing appliance refuses a
  directory without one (no ``cargohold.db``; with PostgreSQL metadata, a
  database with no tables) instead of creating an empty store there: a
  mistyped ``--data-dir`` must not look like an empty site.
- Only one `cargohold serve` runs on a directory. It holds an exclusive
  ``flock`` on ``serve.lock`` (which names its pid) from before its set-up
  until it exits; the lock goes with the process (and its forked workers),
  so a killed appliance leaves nothing to clean up. A second serve, and
  `tls issue`, fail at once and change nothing.
- Paths the operating system refuses (not a directory, no permission, a
  read-only file system) are reported in one line (`environment_error`).

Plain Python: the CLI turns `DataDirError` into its ``Error:`` line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from registry.paths import DataPaths
from registry.processes import process_alive

# How long a serve waits for the workers of a killed predecessor to let go of the lock.
ORPHAN_WAIT_SECONDS = 10.0


class DataDirError(Exception):
    """The data directory cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ServeLock:
    """The held serve lock of one data directory: an open descriptor that must stay open while serving."""

    path: Path
    fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def check_location(paths: DataPaths) -> None:
    """Raise DataDirError if the data directory's path names something that is not a directory."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise DataDirError(f"{root} is not a directory; point --data-dir (or CARGOHOLD_DATA_DIR) at one")


def require_appliance(paths: DataPaths) -> None:
    """Raise DataDirError unless `paths` holds an appliance (its database); creates nothing."""
    check_location(paths)
    if paths.database_url:
        _require_postgres_appliance(paths)
        return
    if not paths.database.is_file():
        raise DataDirError(f"{paths.root} holds no cargohold appliance (no {paths.database.name}); check "
                           "--data-dir or CARGOHOLD_DATA_DIR, or start an appliance there with `cargohold serve`")


def _require_postgres_appliance(paths: DataPaths) -> None:
    """The PostgreSQL form of `require_appliance`: the data directory exists and the database was migrated."""
    from registry.db import connect
    from registry.dbengine import MIGRATIONS_TABLE
    from registry.dbengine import Error as DatabaseError

    if not paths.root.is_dir():
        raise DataDirError(f"{paths.root} holds no cargohold appliance (no such directory); check --data-dir or "
                           "CARGOHOLD_DATA_DIR, or start an appliance there with `cargohold serve`")
    try:
        db = connect(paths)
    except DatabaseError as exc:
        raise DataDirError(f"the PostgreSQL metadata database (CARGOHOLD_DATABASE_URL) cannot be reached: "
                           f"{type(exc).__name__}") from None
    try:
        migrated = MIGRATIONS_TABLE in db.table_names()
    finally:
        db.close()
    if not migrated:
        raise DataDirError("the PostgreSQL metadata database (CARGOHOLD_DATABASE_URL) holds no cargohold appliance "
                           "(no tables); check the setting, or start an appliance on it with `cargohold serve`")


def holder(paths: DataPaths) -> str:
    """The pid the serve lock file names, as text ("unknown" if it names none yet)."""
    try:
        text = paths.serve_lock.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def acquire_serve_lock(paths: DataPaths, purpose: str = "serve") -> ServeLock:
    """Take the data directory's serve lock, and write this process's pid into it.

    Never waits for a live holder. When the pid in the lock has died and only
    its workers still hold the lock (they are being killed with it), waits
    up to ORPHAN_WAIT_SECONDS for them. Creates the directory (0700) if it
    does not exist yet: the lock comes before any other set-up. Raises
    DataDirError naming the pid that holds it; OSError for a path the
    system refuses (see `environment_error`).
    """
    check_location(paths)
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(paths.serve_lock, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + ORPHAN_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pid = holder(paths)
            # A killed serve's workers die with it (parent-death signal) but hold the lock until they have:
            # a restart right after the kill waits for them instead of failing. A live holder fails at once.
            if pid.isdigit() and not process_alive(int(pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
        os.close(fd)
        if purpose == "serve":
            raise DataDirError(f"another cargohold serve (pid {pid}) is serving {paths.root}; stop it first "
                               "(nothing was changed)") from None
        raise DataDirError(f"cargohold serve (pid {pid}) is serving {paths.root}; stop it, run this "
                           f"{purpose} again, then start the appliance (nothing was changed)") from None
    # Descriptors from os.open are close-on-exec: nginx and other programs serve starts never hold the
    # lock, while forked gunicorn workers share it and die with the master (parent-death signal).
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return ServeLock(paths.serve_lock, fd)


# errno values that describe the machine rather than a bug: reported in one line with the path.
_ENVIRONMENT_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC,
    errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOENT, errno.EMFILE, errno.ENFILE,
})


def environment_error(exc: BaseException) -> str | None:
    """A one-line message for an error the machine caused (a path the system refuses), or None for a bug.

    Only OSErrors that name a file and carry one of the errno values above
    count: anything else is left to propagate with its traceback.
    """
    if not isinstance(exc, OSError) or exc.errno not in _ENVIRONMENT_ERRNOS or not exc.filename:
        return None
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    hint = ""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (run as the appliance's user, or choose another --data-dir)"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        hint = " (a file is in the way of a directory)"
    return f"{where}: {exc.strerror or os.strerror(exc.errno)}{hint}"
