"""The SQLite metadata database: connections, transactions and migrations.

One connection per thread (gunicorn's gthread workers share nothing across
threads), WAL mode so readers never wait for the writer, and a busy timeout so
concurrent writers from several worker processes queue instead of failing.
Schema changes are sqlite-utils `Migrations`; every package registers its own
set here through `register_migrations` and `open_database` applies them all
under a file lock, so workers starting together never race a migration.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlite_utils import Database, Migrations

from registry.paths import DataPaths
from registry.version import VERSION

_local = threading.local()
_migration_sets: list[Migrations] = []
_migrated: set[Path] = set()
_migrated_lock = threading.Lock()


def register_migrations(migrations: Migrations) -> Migrations:
    """Add a package's migration set; applied in registration order."""
    if all(m.name != migrations.name for m in _migration_sets):
        _migration_sets.append(migrations)
    return migrations


def connect(path: Path) -> Database:
    """A new connection in autocommit mode; transactions are explicit."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit the client was told about (a pushed manifest, a promoted
    # release) survives a power cut too; edge boxes lose power more than most.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return Database(conn)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def migrate(paths: DataPaths, notify: Callable[[str], None] = _stderr) -> None:
    """Apply every registered migration set (idempotent, process-safe), upgrading with care (registry.upgrade).

    A database migrated by a newer cargohold raises `registry.upgrade.DataDirTooNew`
    before anything is written. Before an existing database is migrated (or
    first used by another version), its pre-upgrade backup is taken and
    `notify` is told where it is.
    """
    import registry.schema  # noqa: F401  (registers the registry's migrations)
    from registry import upgrade

    if paths.database.exists():
        upgrade.refuse_newer(paths, _migration_sets)
    paths.ensure()
    with paths.migration_lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if paths.database.exists():  # again under the lock: a newer version's start may have won the race
            upgrade.refuse_newer(paths, _migration_sets)
        db = connect(paths.database)
        try:
            old = upgrade.needs_backup(db)
            if old is not None:
                upgrade.pre_upgrade_backup(paths, old, notify)
            previous = upgrade.recorded_version(db.conn)
            for migrations in _migration_sets:
                migrations.apply(db)
            if upgrade.recorded_version(db.conn) != VERSION or previous is None:
                with write_transaction(db):
                    upgrade.record_version(db, previous)
        finally:
            db.close()


def open_database(paths: DataPaths) -> Database:
    """This thread's connection to the data directory's database."""
    key = paths.database.resolve() if paths.database.exists() else paths.database
    cache: dict[Path, Database] = getattr(_local, "dbs", None) or {}
    _local.dbs = cache
    db = cache.get(key)
    if db is None:
        with _migrated_lock:
            if key not in _migrated:
                migrate(paths)
                _migrated.add(paths.database.resolve())
        key = paths.database.resolve()
        db = cache.get(key) or connect(paths.database)
        cache[key] = db
    return db


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[Database]:
    """A transaction that takes the write lock at once (BEGIN IMMEDIATE).

    sqlite-utils' `atomic()` begins a deferred transaction; when such a
    transaction reads first and then writes while another process has written,
    SQLite fails it with SQLITE_BUSY instead of waiting. Starting with the
    write lock makes concurrent writers wait their turn for busy_timeout.
    Nested use becomes a savepoint through `atomic()`.
    """
    pending: list[Callable[[], None]] | None = getattr(db, _AFTER_COMMIT, None)
    if db.conn.in_transaction:
        mark = len(pending) if pending is not None else 0
        try:
            with db.atomic():
                yield db
        except BaseException:
            if pending is not None:
                del pending[mark:]  # the savepoint rolled back: so did what it would have announced
            raise
        return
    pending = []
    setattr(db, _AFTER_COMMIT, pending)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.rollback()
            raise
        else:
            db.execute("COMMIT")
    finally:
        setattr(db, _AFTER_COMMIT, None)
    for callback in pending:
        callback()


_AFTER_COMMIT = "_cargohold_after_commit"


def after_commit(db: Database, callback: Callable[[], None]) -> None:
    """Run `callback` once the `write_transaction` open on `db` commits (at once if none is); never on rollback.

    For what must only be said of a committed write, such as logging an
    audit entry (registry.audit).
    """
    pending: list[Callable[[], None]] | None = getattr(db, _AFTER_COMMIT, None)
    if pending is None:
        callback()
    else:
        pending.append(callback)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is SQLite (or the OS under it) saying the disk or database is full (SQLITE_FULL, ENOSPC).

    SQLite reports a full disk as ``sqlite3.OperationalError: database or disk
    is full`` (SQLITE_FULL, also when `PRAGMA max_page_count` is reached);
    callers turn it into the same refusal as a full data volume rather than a
    server error.
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF == sqlite3.SQLITE_FULL
        return "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
