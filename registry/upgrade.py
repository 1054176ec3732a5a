"""Upgrades of a data directory: which version last migrated it, refusing newer ones, pre-upgrade backups.

`registry.db.migrate` calls this around applying the migrations:

- `refuse_newer` (read-only, before anything is written): a data directory
  whose database has migrations this code does not know (in a migration set
  it does know), or whose recorded version is above `VERSION`, was made by a
  newer cargohold. It raises `DataDirTooNew` naming both versions and what
  to do; nothing is changed.
- `pre_upgrade_backup`: when an existing database was last migrated by
  another (older) version, before this one migrates it, the database (SQLite's
  online backup API) and the small state files (`DataPaths.state_files`) are
  copied to ``<data>/backups/pre-upgrade-<old>-to-<new>-<UTC time>/`` first
  (blobs are immutable and migrations never touch them). The newest
  `KEEP_UPGRADE_BACKUPS` are kept. Rolling back is: stop, reinstall the old
  version, put that ``cargohold.db`` (and ``keys/``, ``tls/``) back
  (docs/operations.md, Upgrading the appliance).
- `record_version`: the ``appliance_versions`` table (registry.schema m007)
  gets a row whenever a version migrates the directory for the first time.

A database without that table was last migrated by cargohold 0.1.0 (the
first release; the table came with 0.2.0).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from registry.backup import copy_state_files, parse_version, snapshot_database
from registry.dbengine import Database, Migrations, SQLiteDatabase
from registry.paths import DataPaths
from registry.version import VERSION

BASELINE = "0.1.0"  # the version that made every database without an appliance_versions table
KEEP_UPGRADE_BACKUPS = 3
MIGRATIONS_TABLE = Migrations.migrations_table
UPGRADE_NOTE = "UPGRADE.json"


class DataDirTooNew(Exception):
    """The data directory was migrated by a newer cargohold; the message says which and what to do."""


def recorded_version(conn: Database) -> str | None:
    """The version that last migrated the database; BASELINE for one with migrations but no record; None if new."""
    tables = set(conn.table_names())
    if "appliance_versions" in tables:
        row = conn.execute("SELECT version FROM appliance_versions ORDER BY id DESC LIMIT 1").fetchone()
        if row is not None:
            return str(row[0])
    if MIGRATIONS_TABLE in tables and conn.execute(f"SELECT COUNT(*) FROM {MIGRATIONS_TABLE}").fetchone()[0]:
        return BASELINE
    return None


def _unknown_migrations(conn: Database, sets: Sequence[Migrations]) -> list[str]:
    if MIGRATIONS_TABLE not in conn.table_names():
        return []
    known = {m.name: {x.name for x in m._migrations} for m in sets}
    return [f"{s}/{n}" for s, n in conn.execute(f"SELECT migration_set, name FROM {MIGRATIONS_TABLE} ORDER BY id")
            if s in known and n not in known[s]]


def _backup_from_this_version(paths: DataPaths) -> Path | None:
    """The newest pre-upgrade backup a newer version took when it upgraded from this one."""
    if not paths.upgrade_backups.is_dir():
        return None
    found = sorted(p for p in paths.upgrade_backups.glob(f"pre-upgrade-{VERSION}-to-*")
                   if not p.name.endswith(".partial"))
    return found[-1] if found else None


def refuse_newer(paths: DataPaths, sets: Sequence[Migrations]) -> None:
    """Raise DataDirTooNew if a newer cargohold migrated the database; reads only (no write, no WAL checkpoint)."""
    conn = SQLiteDatabase(sqlite3.connect(f"file:{paths.database}?mode=ro", uri=True, timeout=30))
    try:
        refuse_newer_database(paths, conn, sets)
    finally:
        conn.close()


def refuse_newer_database(paths: DataPaths, conn: Database, sets: Sequence[Migrations]) -> None:
    """`refuse_newer` on an open connection (PostgreSQL's metadata, whose database is no file); reads only."""
    version = recorded_version(conn)
    unknown = _unknown_migrations(conn, sets)
    newer = version is not None and parse_version(version) > parse_version(VERSION)
    if not newer and not unknown:
        return
    made_by = f"cargohold {version}" if version else "a newer cargohold"
    detail = f" (it has migrations this version does not know: {', '.join(unknown)})" if unknown else ""
    backup = _backup_from_this_version(paths)
    where = str(backup) if backup is not None else \
        f"{paths.upgrade_backups}/pre-upgrade-{VERSION}-to-<newer>-<time> (if the newer version took one)"
    rollback = (f"; to go back to {VERSION} instead, stop the appliance and put back the pre-upgrade backup "
                f"{where} (docs/operations.md, Upgrading the appliance)")
    raise DataDirTooNew(f"the data directory {paths.root} was last migrated by {made_by}{detail}; this is "
                        f"cargohold {VERSION}, which cannot use it. Install {made_by} or newer{rollback}. "
                        "Nothing was changed")


def needs_backup(db: Database) -> str | None:
    """The version that last migrated an existing database, if it is not this one (an upgrade is starting)."""
    version = recorded_version(db)
    return version if version is not None and version != VERSION else None


def pre_upgrade_backup(paths: DataPaths, old: str, notify: Callable[[str], None]) -> Path:
    """Copy the database and state files to a new pre-upgrade backup directory; returns it. Keeps the newest few."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = paths.upgrade_backups / f"pre-upgrade-{old}-to-{VERSION}-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = paths.upgrade_backups / f"pre-upgrade-{old}-to-{VERSION}-{stamp}-{n}"
    partial = target.with_name(target.name + ".partial")
    if paths.upgrade_backups.is_dir():  # an earlier attempt that crashed half-way (we hold the migration lock)
        for stale in paths.upgrade_backups.glob("pre-upgrade-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    paths.upgrade_backups.chmod(0o700)
    snapshot_database(paths.database, partial / paths.database.name)
    files = copy_state_files(paths, partial)
    note = {"from": old, "to": VERSION, "takenAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "database": paths.database.name, "stateFiles": [f["path"] for f in files]}
    (partial / UPGRADE_NOTE).write_text(json.dumps(note, indent=2) + "\n")
    partial.rename(target)
    kept = sorted((p for p in paths.upgrade_backups.glob("pre-upgrade-*") if not p.name.endswith(".partial")),
                  key=lambda p: (p.stat().st_mtime, p.name))  # oldest first, whatever versions the names carry
    for old_backup in kept[:-KEEP_UPGRADE_BACKUPS]:
        shutil.rmtree(old_backup, ignore_errors=True)
    notify(f"Upgrading the data directory from cargohold {old} to {VERSION}. The database and keys as they were "
           f"are in {target} (to roll back: stop, reinstall cargohold {old}, put them back; docs/operations.md, "
           "Upgrading the appliance).")
    return target


def record_version(db: Database, previous: str | None) -> None:
    """Record that this VERSION migrated the database (`previous`: the version recorded before migrating).

    Call after migrating; writes only when the version changed or none is recorded yet.
    """
    row = db.execute("SELECT version FROM appliance_versions ORDER BY id DESC LIMIT 1").fetchone()
    if row is not None and row[0] == VERSION:
        return
    db.execute("INSERT INTO appliance_versions (version, previous, migrated_at) VALUES (?, ?, ?)",
               [VERSION, previous, time.time()])
