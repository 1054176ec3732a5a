"""The metadata database: which engine, connections, transactions and migrations.

SQLite in the data directory is the default (``cargohold.db``); with
``CARGOHOLD_DATABASE_URL=postgresql://...`` (`DataPaths.database_url`) the
metadata lives in PostgreSQL instead, through the same interface
(`registry.dbengine`: one SQL dialect both engines speak, and the few
statements where they part). One connection per thread (gunicorn's gthread
workers share nothing across threads) and per process (a forked worker never
uses its parent's connection). On SQLite: WAL mode so readers never wait for
the writer, and a busy timeout so concurrent writers from several worker
processes queue instead of failing. Schema changes are `registry.dbengine.Migrations`;
every package registers its own set here through `register_migrations` and
`open_database` applies them all under a lock (a file lock on SQLite, an
advisory lock on PostgreSQL), so workers and replicas starting together
never race a migration.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator

from registry.dbengine import Database, Migrations, PostgresDatabase, SQLiteDatabase, lock_key
from registry.dbengine import is_disk_full as is_disk_full
from registry.paths import DataPaths
from registry.version import VERSION

__all__ = ["Database", "Migrations", "after_commit", "connect", "is_disk_full", "migrate", "open_database",
           "register_migrations", "write_transaction"]

_local = threading.local()
_migration_sets: list[Migrations] = []
_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def register_migrations(migrations: Migrations) -> Migrations:
    """Add a package's migration set; applied in registration order."""
    if all(m.name != migrations.name for m in _migration_sets):
        _migration_sets.append(migrations)
    return migrations


def connect(paths: DataPaths) -> Database:
    """A new connection to the data directory's database, in autocommit mode; transactions are explicit."""
    if paths.database_url:
        return connect_postgres(paths.database_url)
    return connect_sqlite(paths.database)


def connect_postgres(url: str) -> PostgresDatabase:
    """A new PostgreSQL connection (psycopg 3, autocommit) that answers as the SQLite one does.

    Python booleans go in as integers (the shared schema's flags are INTEGER
    columns, as on SQLite) and NUMERIC results (SUM over BIGINT) come back as
    int, or float when they have a fraction, as SQLite's do.
    """
    import psycopg

    conn = psycopg.connect(url, autocommit=True, connect_timeout=30, application_name="cargohold")
    bool_dumper, numeric_loader = _pg_adapters()
    conn.adapters.register_dumper(bool, bool_dumper)
    conn.adapters.register_loader("numeric", numeric_loader)
    return PostgresDatabase(conn)


@functools.cache
def _pg_adapters() -> tuple[type, type]:
    """psycopg adapters (made once, on first use: psycopg is imported only when PostgreSQL is configured)."""
    from psycopg.adapt import Loader
    from psycopg.types.numeric import IntDumper

    class BoolAsInt(IntDumper):
        def dump(self, obj: object) -> bytes:
            return b"1" if obj else b"0"

    class NumericAsNumber(Loader):
        def load(self, data: bytes | bytearray | memoryview) -> int | float:
            text = bytes(data).decode()
            return int(text) if text.lstrip("-").isdigit() else float(text)

    return BoolAsInt, NumericAsNumber


def connect_sqlite(path: os.PathLike[str] | str) -> SQLiteDatabase:
    """A new SQLite connection with the appliance's settings."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit the client was told about (a pushed manifest, a promoted
    # release) survives a power cut too; edge boxes lose power more than most.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA recursive_triggers=ON")  # as sqlite-utils' Database set it on every connection it wrapped
    return SQLiteDatabase(conn)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _database_key(paths: DataPaths) -> str:
    """Which database `paths` names: the PostgreSQL URL, or the resolved SQLite file."""
    if paths.database_url:
        return paths.database_url
    return str(paths.database.resolve() if paths.database.exists() else paths.database)


@contextlib.contextmanager
def cluster_lock(paths: DataPaths, name: str, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """Hold the lock `name` for every process sharing this metadata; yields whether it was taken.

    On SQLite (one machine) a file lock ``<data>/<name>.lock``; on PostgreSQL
    a session-level advisory lock (`registry.dbengine.lock_key`) on a
    connection of its own, so it holds across machines and is released
    when the holder ends or dies (its session closes). `shared` holders
    exclude only exclusive ones; without `wait`, yields False at once
    instead of waiting for a holder.
    """
    if paths.database_url:
        db = connect_postgres(paths.database_url)
        try:
            fn = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
            if not wait:
                fn = fn.replace("pg_advisory_lock", "pg_try_advisory_lock")
            row = db.conn.execute(f"SELECT {fn}(%s)", [lock_key(name)]).fetchone()
            yield wait or bool(row[0])
        finally:
            db.close()  # ends the session: the lock goes with it
        return
    paths.ensure()
    with (paths.root / f"{name}.lock").open("a") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _migration_lock(paths: DataPaths) -> Iterator[None]:
    if paths.database_url:
        with cluster_lock(paths, "migrations"):
            yield
        return
    paths.ensure()
    with paths.migration_lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def migrate(paths: DataPaths, notify: Callable[[str], None] = _stderr) -> None:
    """Apply every registered migration set (idempotent, process-safe), upgrading with care (registry.upgrade).

    A database migrated by a newer cargohold raises `registry.upgrade.DataDirTooNew`
    before anything is written. Before an existing database is migrated (or
    first used by another version), its pre-upgrade backup is taken and
    `notify` is told where it is.
    """
    import registry.schema  # noqa: F401  (registers the registry's migrations)
    from registry import upgrade

    if paths.database_url is None and paths.database.exists():
        upgrade.refuse_newer(paths, _migration_sets)
    with _migration_lock(paths):
        if paths.database_url is None and paths.database.exists():
            upgrade.refuse_newer(paths, _migration_sets)  # again under the lock: a newer version may have won
        db = connect(paths)
        try:
            if isinstance(db, PostgresDatabase):
                paths.ensure()  # keys, TLS and staging still live in the data directory
                db.check_settings()
                upgrade.refuse_newer_database(paths, db, _migration_sets)
            old = upgrade.needs_backup(db)
            if old is not None and isinstance(db, PostgresDatabase):
                notify(f"Upgrading the PostgreSQL metadata from cargohold {old} to {VERSION}; take your own "
                       "pg_dump first if you may want to roll back (docs/operations.md, PostgreSQL metadata).")
            elif old is not None:
                upgrade.pre_upgrade_backup(paths, old, notify)
            previous = upgrade.recorded_version(db)
            for migrations in _migration_sets:
                migrations.apply(db)
            if upgrade.recorded_version(db) != VERSION or previous is None:
                with write_transaction(db):
                    upgrade.record_version(db, previous)
        finally:
            db.close()


def open_database(paths: DataPaths) -> Database:
    """This thread's connection to the data directory's database (migrated on first use in the process)."""
    if getattr(_local, "pid", None) != os.getpid():
        # A forked child never uses its parent's connections (nor closes them: they are the parent's).
        _local.dbs = {}
        _local.pid = os.getpid()
    cache: dict[str, Database] = _local.dbs
    key = _database_key(paths)
    db = cache.get(key)
    if isinstance(db, PostgresDatabase) and (db.conn.broken or db.conn.closed):
        # The server restarted or the network dropped the session: the next request gets a new one.
        cache.pop(key, None)
        db = None
    if db is None:
        with _migrated_lock:
            if key not in _migrated:
                migrate(paths)
                _migrated.add(_database_key(paths))
        key = _database_key(paths)
        db = cache.get(key) or connect(paths)
        cache[key] = db
    return db


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[Database]:
    """A transaction that takes the write lock at once (`Database.begin_write`).

    On SQLite that is BEGIN IMMEDIATE: a deferred transaction that reads
    first and then writes while another process has written fails with
    SQLITE_BUSY instead of waiting, while starting with the write lock makes
    concurrent writers wait their turn for busy_timeout. On PostgreSQL it is
    an advisory lock every writer takes (registry.dbengine), so writers
    queue the same way across replicas. Nested use becomes a savepoint.
    """
    pending: list[Callable[[], None]] | None = getattr(db, _AFTER_COMMIT, None)
    if db.in_transaction:
        mark = len(pending) if pending is not None else 0
        try:
            with db.savepoint():
                yield db
        except BaseException:
            if pending is not None:
                del pending[mark:]  # the savepoint rolled back: so did what it would have announced
            raise
        return
    pending = []
    setattr(db, _AFTER_COMMIT, pending)
    try:
        db.begin_write()
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        else:
            db.commit()
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
