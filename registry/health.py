"""Readiness checks of one data directory: the one function behind /readyz and Harbor's /api/v2.0/health.

Three checks, each of what a pull or a push needs:

- ``database``: the SQLite database takes a write. A fresh connection (not a
  worker's cached one, so its short busy timeout applies) rewrites one
  heartbeat row in a ``BEGIN IMMEDIATE`` transaction: a database that is
  read-only, full, missing or held by another writer for longer than
  `DB_TIMEOUT_SECONDS` fails.
- ``blobstore``: the blob store answers: its directory is there and can be
  listed, or, with an object store, its bucket exists and the credentials
  reach it (`BlobStore.check`).
- ``disk``: the free space on the data volume is above the reserve every
  write must leave (``CARGOHOLD_IMPORT_RESERVE_BYTES``); below it pushes,
  uploads and imports are refused with 507. With an object store the data
  volume still holds the database and upload and import staging, so the
  check stays; its message does not claim blobs live there.

Messages name what is wrong in words an operator acts on, never a path, a
size or a secret: the endpoints answer anyone.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass

from registry.blobstore import BlobStore
from registry.dbengine import Error as DatabaseError
from registry.paths import DataPaths

DB_TIMEOUT_SECONDS = 3.0
DATABASE, BLOBSTORE, DISK = "database", "blobstore", "disk"


@dataclass(frozen=True)
class Check:
    """One check's result: `error` says what is wrong (None when it passed)."""

    name: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failing(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def check_database(paths: DataPaths, timeout: float = DB_TIMEOUT_SECONDS) -> Check:
    """A real write: the heartbeat row, in its own write transaction on a fresh connection."""
    if paths.database_url:
        return _check_postgres(paths.database_url, timeout)
    if not paths.database.is_file():
        return Check(DATABASE, "the database is missing")
    try:
        # mode=rw: a missing database is reported, never created empty.
        conn = sqlite3.connect(f"{paths.database.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout,
                               isolation_level=None)
    except sqlite3.Error as exc:
        return Check(DATABASE, f"the database cannot be opened ({_sqlite_reason(exc)})")
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO health_heartbeat (id, checked_at, pid) VALUES (1, ?, ?) ON CONFLICT (id) "
                         "DO UPDATE SET checked_at = excluded.checked_at, pid = excluded.pid",
                         [time.time(), os.getpid()])
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
    except sqlite3.Error as exc:
        return Check(DATABASE, f"the database cannot be written ({_sqlite_reason(exc)})")
    finally:
        conn.close()
    return Check(DATABASE)


def _check_postgres(url: str, timeout: float) -> Check:
    """The same heartbeat write on PostgreSQL, bounded by `timeout` (connecting, the write lock, the write)."""
    from registry.db import connect_postgres, write_transaction

    try:
        db = connect_postgres(url)
    except DatabaseError as exc:
        return Check(DATABASE, f"the PostgreSQL database cannot be reached ({type(exc).__name__})")
    try:
        db.execute(f"SET statement_timeout = {int(timeout * 1000)}")
        with write_transaction(db):
            db.execute("INSERT INTO health_heartbeat (id, checked_at, pid) VALUES (1, ?, ?) ON CONFLICT (id) "
                       "DO UPDATE SET checked_at = excluded.checked_at, pid = excluded.pid",
                       [time.time(), os.getpid()])
    except DatabaseError as exc:
        return Check(DATABASE, f"the PostgreSQL database cannot be written ({type(exc).__name__})")
    finally:
        db.close()
    return Check(DATABASE)


def _sqlite_reason(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return f"another writer held it for more than {DB_TIMEOUT_SECONDS:g} s"
    if "full" in text:
        return "the disk or database is full"
    if "readonly" in text or "read-only" in text:
        return "it is read-only"
    if "no such table" in text:
        return "its tables are not migrated yet"
    return "an SQLite error; see the appliance log"


def check_blobstore(store: BlobStore) -> Check:
    """The blob store answers (its directory can be listed, or its bucket is there)."""
    return Check(BLOBSTORE, store.check())


def check_disk(paths: DataPaths, reserve_bytes: int) -> Check:
    """Free space on the data volume above `reserve_bytes`."""
    try:
        free = shutil.disk_usage(paths.root).free
    except OSError as exc:
        return Check(DISK, f"the data volume's free space cannot be read ({exc.strerror or 'I/O error'})")
    if free <= reserve_bytes:
        return Check(DISK, "free space on the data volume is below the reserve (CARGOHOLD_IMPORT_RESERVE_BYTES): "
                           "pushes, uploads and imports are refused until space is freed")
    return Check(DISK)


def readiness(paths: DataPaths, reserve_bytes: int, store: BlobStore) -> Readiness:
    """Every check, in a fixed order (database, blobstore, disk)."""
    return Readiness((check_database(paths), check_blobstore(store), check_disk(paths, reserve_bytes)))
