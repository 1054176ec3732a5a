"""Online backup and verified restore of a data directory (`cargohold backup` / `cargohold restore`).

A backup directory holds:

    <dest>/
      cargohold-backup.json   the manifest: format, version, times, counts, bytes, the database's and
                              every state file's sha256. Written last: a backup without it is unfinished
      database.sqlite         a snapshot of the metadata database (SQLite's online backup API, one step,
                              so one consistent read transaction; rollback-journal mode, one file)
      blobs/sha256/<2 hex>/<hex>
                              exactly the blobs the snapshot's ``blobs`` table records
      state/keys/... state/tls/... state/initial-admin-password
                              the small state files (`DataPaths.state_files`)
      .backup.lock            held by the backup writing into the directory (one at a time)

The appliance keeps serving and accepting pushes meanwhile. The backup holds
`registry.gc.backup_guard` from before the snapshot until the last blob is
copied, so a garbage collection running meanwhile removes rows but defers its
file sweep: every blob the snapshot names is still on disk when its turn
comes. Pushes after the snapshot are simply not in this backup.

Each blob is copied to a temporary name in the backup, hashed while it is
copied, fsynced, checked against its digest and recorded size, and renamed
into place. Into an existing backup, blobs already present with the right
size are not copied again (their names are their digests; `verify_existing`
re-hashes them too), and blobs the new snapshot no longer names are pruned, so
the directory always mirrors one snapshot (keep older states by rotating
directories). The previous backup stays restorable until the new database is
renamed in: the manifest is removed just before that switch and written after.

Restore checks the manifest, the database's sha256 and integrity, and every
blob's digest and size while copying, and every state file's sha256; the
database is renamed into place last, so a refused or interrupted restore
never leaves a directory that looks like an appliance (it removes what it
wrote). Upload sessions in flight are not backed up (their rows are dropped
from the snapshot; clients start those pushes again).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.blobstore import CHUNK, fsync_dir
from registry.db import connect_sqlite
from registry.digest import Digest
from registry.errors import RegistryError
from registry.paths import DataPaths
from registry.version import VERSION

FORMAT = 1
MANIFEST = "cargohold-backup.json"
DATABASE = "database.sqlite"
STATE = "state"
BLOBS = "blobs"
LOCK = ".backup.lock"  # held by the backup writing into the directory
_TMP_SUFFIX = ".partial"
# Names a restore may find in a directory that is otherwise empty (a mount point).
_IGNORED_IN_EMPTY = frozenset({"lost+found"})
# Lock and scratch files under the state directories that are not state.
_NOT_STATE = frozenset({".lock"})

Progress = Callable[[str], None]


class BackupError(Exception):
    """The backup or restore cannot go on; the message names the problem and what was (not) changed."""


@dataclass
class BackupReport:
    """What one `backup` did."""

    dest: Path
    version: str = VERSION  # the version that last migrated the backed-up database (what restoring it needs)
    started_at: float = 0.0
    snapshot_at: float = 0.0
    finished_at: float = 0.0
    blobs: int = 0
    bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    reused: int = 0
    reused_bytes: int = 0
    pruned: int = 0
    pruned_bytes: int = 0
    state_files: list[dict[str, Any]] = field(default_factory=list)
    database: dict[str, Any] = field(default_factory=dict)
    upload_sessions_dropped: int = 0

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "cargoholdVersion": self.version, "madeBy": VERSION,
                "startedAt": _iso(self.started_at),
                "snapshotAt": _iso(self.snapshot_at), "finishedAt": _iso(self.finished_at),
                "database": self.database, "blobs": {"count": self.blobs, "bytes": self.bytes},
                "stateFiles": self.state_files}

    def to_json(self) -> dict[str, Any]:
        return {"dest": str(self.dest), "cargoholdVersion": self.version, "snapshotAt": _iso(self.snapshot_at),
                "finishedAt": _iso(self.finished_at), "blobs": self.blobs, "bytes": self.bytes,
                "copied": self.copied, "copiedBytes": self.copied_bytes, "reused": self.reused,
                "reusedBytes": self.reused_bytes, "pruned": self.pruned, "prunedBytes": self.pruned_bytes,
                "stateFiles": len(self.state_files), "uploadSessionsDropped": self.upload_sessions_dropped,
                "durationSeconds": round(self.finished_at - self.started_at, 3)}


@dataclass
class RestoreReport:
    """What one `restore` did."""

    source: Path
    data_dir: Path
    version: str = ""
    blobs: int = 0
    bytes: int = 0
    state_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "dataDir": str(self.data_dir), "backupVersion": self.version,
                "blobs": self.blobs, "bytes": self.bytes, "stateFiles": self.state_files}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _quiet(_: str) -> None:
    pass


# -- pieces shared with registry.upgrade -------------------------------------------------------------------


def snapshot_database(database: Path, target: Path) -> None:
    """Copy the live database into `target` (a new file) with SQLite's online backup API, in one step.

    One step means one read transaction on the source: in WAL mode writers
    carry on meanwhile, and the copy is the database as of one commit. The
    copy is switched to a rollback journal (one self-contained file) and fsynced.
    """
    target.unlink(missing_ok=True)
    src = connect_sqlite(database)
    try:
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            src.conn.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    _fsync_file(target)


def copy_state_files(paths: DataPaths, dest: Path) -> list[dict[str, Any]]:
    """Copy the state files (`DataPaths.state_files`) under `dest`, keeping modes; returns their records.

    Each record: path relative to the data directory, size, sha256, mode.
    Each file is written to a temporary name, fsynced and renamed.
    """
    records: list[dict[str, Any]] = []
    for top in paths.state_files():
        for src in _files_under(top):
            rel = src.relative_to(paths.root)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            mode = src.stat().st_mode & 0o777
            digest, size = _copy_hashed(src, target, mode)
            records.append({"path": str(rel), "size": size, "sha256": digest, "mode": oct(mode)})
    for parent in {dest / Path(r["path"]).parent for r in records}:
        fsync_dir(parent)
    return records


def _files_under(top: Path) -> Iterator[Path]:
    if top.is_file():
        yield top
        return
    if not top.is_dir():
        return
    for path in sorted(top.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name not in _NOT_STATE:
            yield path


def _copy_hashed(src: Path, target: Path, mode: int = 0o600, algorithm: str = "sha256") -> tuple[str, int]:
    """Copy `src` to `target` through a temporary file, hashing while copying; fsynced. Returns (hex, size)."""
    tmp = target.with_name(target.name + _TMP_SUFFIX)
    h = hashlib.new(algorithm)
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out, src.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return h.hexdigest(), size


def _copy_blob(src: Path, staging: Path, target: Path, digest: Digest, size: int) -> tuple[str, int] | None:
    """Copy blob `src` to `target` through `staging`, verifying it; None when it is `digest` and `size`.

    Otherwise nothing reaches `target` and the answer is (the hex the bytes hash to, how many there were).
    Raises FileNotFoundError when `src` is missing (backup and restore each word that their own way).
    """
    actual, got = _copy_hashed(src, staging, 0o600, digest.algorithm)
    if actual != digest.encoded or got != size:
        staging.unlink(missing_ok=True)
        return actual, got
    os.replace(staging, target)
    return None


def _hash_file(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    h = hashlib.new(algorithm)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def recorded_blobs(database: Path) -> list[tuple[Digest, int]]:
    """The (digest, size) of every blob a database file records, read-only."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT digest, size FROM blobs ORDER BY digest").fetchall()
    finally:
        conn.close()
    out = []
    for text, size in rows:
        try:
            out.append((Digest.parse(text), int(size)))
        except RegistryError:
            raise BackupError(f"the database records a blob with an invalid digest {text!r}") from None
    return out


def _schema_version(conn: sqlite3.Connection) -> str:
    """The version that last migrated a database (see registry.upgrade); VERSION for one never migrated."""
    from registry.dbengine import SQLiteDatabase
    from registry.upgrade import recorded_version  # registry.upgrade builds on this module

    return recorded_version(SQLiteDatabase(conn)) or VERSION


def _blob_rel(digest: Digest) -> Path:
    return Path(BLOBS) / digest.algorithm / digest.encoded[:2] / digest.encoded


# -- backup ---------------------------------------------------------------------------------------------------


def _refuse_postgres(paths: DataPaths) -> None:
    if paths.database_url:
        raise BackupError("the metadata is in PostgreSQL (CARGOHOLD_DATABASE_URL): back it up with PostgreSQL's own "
                          "tools (pg_dump) and the blob store with them or a file copy; cargohold backup and restore "
                          "handle SQLite data directories only (docs/operations.md, PostgreSQL metadata). "
                          "Nothing was changed")


def backup(paths: DataPaths, dest: Path, progress: Progress = _quiet, verify_existing: bool = False,
           after_snapshot: Callable[[], None] | None = None) -> BackupReport:
    """Back up the data directory `paths` into `dest` while the appliance runs; returns the report.

    Raises BackupError when a blob the snapshot records is missing or damaged
    in the store (naming them; the backup is then left without a manifest,
    but what it copied stays for the next run), or `dest` is unusable.
    `after_snapshot` runs once the snapshot is taken, under the guard (tests
    use it to run a collection at that moment).
    """
    _refuse_postgres(paths)
    dest = dest.resolve()
    if dest == paths.root or paths.root in dest.parents:
        raise BackupError(f"{dest} is inside the data directory {paths.root}; back up to another directory "
                          "(another disk, ideally)")
    if dest.exists() and not dest.is_dir():
        raise BackupError(f"{dest} is not a directory")
    if (dest / "cargohold.db").exists():
        raise BackupError(f"{dest} holds a cargohold appliance (cargohold.db), not a backup; choose another "
                          "directory (nothing was changed)")
    traces = (MANIFEST, DATABASE, BLOBS, STATE, LOCK, DATABASE + _TMP_SUFFIX, STATE + _TMP_SUFFIX)
    if dest.is_dir() and any(dest.iterdir()) and not any((dest / name).exists() for name in traces):
        raise BackupError(f"{dest} is not empty and holds no cargohold backup; choose an empty or new directory, "
                          "or an earlier backup's (nothing was changed)")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _dest_lock(dest):
        return _backup(paths, dest, progress, verify_existing, after_snapshot)


@contextlib.contextmanager
def _dest_lock(dest: Path) -> Iterator[None]:
    """One backup at a time into one directory; a second one is refused at once."""
    with (dest / LOCK).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup into {dest} is running; nothing was changed") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _backup(paths: DataPaths, dest: Path, progress: Progress, verify_existing: bool,
            after_snapshot: Callable[[], None] | None) -> BackupReport:
    report = BackupReport(dest, started_at=time.time())
    partial_db = dest / (DATABASE + _TMP_SUFFIX)
    # Imported here: registry.gc records metrics, and `serve` imports this module (through registry.upgrade)
    # in its master before the metrics directory exists (web/metrics_dir.py).
    from registry.gc import backup_guard

    with backup_guard(paths):
        progress("taking a snapshot of the database")
        snapshot_database(paths.database, partial_db)
        report.snapshot_at = time.time()
        conn = sqlite3.connect(partial_db, isolation_level=None)
        try:
            report.version = _schema_version(conn)
            report.upload_sessions_dropped = int(conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0])
            conn.execute("DELETE FROM uploads")  # their bytes are not backed up: clients push them again
        finally:
            conn.close()
        _fsync_file(partial_db)
        if after_snapshot is not None:
            after_snapshot()
        wanted = recorded_blobs(partial_db)
        report.blobs = len(wanted)
        report.bytes = sum(size for _, size in wanted)
        progress(f"the snapshot records {report.blobs} blobs ({report.bytes} bytes)")
        _copy_blobs(paths, dest, wanted, report, progress, verify_existing)
        progress("copying keys and TLS material")
        staging_state = dest / (STATE + _TMP_SUFFIX)
        shutil.rmtree(staging_state, ignore_errors=True)
        report.state_files = copy_state_files(paths, staging_state)
    db_hex, db_size = _hash_file(partial_db)
    report.database = {"path": DATABASE, "size": db_size, "sha256": db_hex}
    # The switch: from here until the manifest is written, the backup reads as unfinished.
    (dest / MANIFEST).unlink(missing_ok=True)
    fsync_dir(dest)
    os.replace(partial_db, dest / DATABASE)
    shutil.rmtree(dest / STATE, ignore_errors=True)
    os.replace(staging_state, dest / STATE)
    report.pruned, report.pruned_bytes = _prune(dest, {d for d, _ in wanted})
    fsync_dir(dest)
    report.finished_at = time.time()
    _write_json(dest / MANIFEST, report.manifest())
    progress(f"backup complete: {report.copied} blobs copied ({report.copied_bytes} bytes), {report.reused} "
             f"already there, {report.pruned} pruned")
    return report


def _copy_blobs(paths: DataPaths, dest: Path, wanted: list[tuple[Digest, int]], report: BackupReport,
                progress: Progress, verify_existing: bool) -> None:
    problems: list[str] = []
    dirs: set[Path] = set()
    last = time.monotonic()
    for n, (digest, size) in enumerate(wanted, 1):
        target = dest / _blob_rel(digest)
        if target.is_file() and target.stat().st_size == size and (
                not verify_existing or _hash_file(target, digest.algorithm)[0] == digest.encoded):
            report.reused += 1
            report.reused_bytes += size
        else:
            src = paths.blob(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                wrong = _copy_blob(src, target.with_name(target.name + ".copy"), target, digest, size)
            except FileNotFoundError:
                problems.append(f"{digest} is recorded but its file {src} is missing")
                continue
            if wrong is not None:
                problems.append(f"{digest} in the store is damaged (its {wrong[1]} bytes hash to "
                                f"{digest.algorithm}:{wrong[0]}; recorded size {size})")
                continue
            dirs.add(target.parent)
            report.copied += 1
            report.copied_bytes += size
        if time.monotonic() - last >= 2 or n == len(wanted):
            last = time.monotonic()
            progress(f"blobs: {n}/{len(wanted)} ({report.copied} copied, {report.reused} already there)")
    for d in dirs:
        fsync_dir(d)
    if problems:
        listed = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BackupError(f"the backup is incomplete (no {MANIFEST} was written): {len(problems)} recorded "
                          f"blob(s) cannot be copied: {listed}. Run `cargohold scrub`, import the bundles or push "
                          "the images again to repair the store, then back up again")


def _prune(dest: Path, keep: set[Digest]) -> tuple[int, int]:
    """Remove blob files (and leftovers of interrupted copies) the snapshot does not name."""
    count, size = 0, 0
    root = dest / BLOBS
    if not root.is_dir():
        return 0, 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        algorithm = path.parent.parent.name
        try:
            digest = Digest.parse(f"{algorithm}:{path.name}")
        except RegistryError:
            digest = None
        if digest is None or digest not in keep:
            st = path.stat()
            path.unlink()
            if digest is not None:
                count += 1
                size += st.st_size
    return count, size


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    with tmp.open("w") as out:
        json.dump(doc, out, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# -- restore --------------------------------------------------------------------------------------------------


def read_manifest(source: Path) -> dict[str, Any]:
    """The backup manifest of `source`; raises BackupError when there is none or it is not one."""
    path = source / MANIFEST
    if (source / "cargohold.db").exists():
        raise BackupError(f"{source} is a data directory, not a backup (make one with `cargohold backup`); "
                          "nothing was restored")
    if not path.is_file():
        what = "an unfinished backup (it has no" if (source / DATABASE).exists() or (source / BLOBS).exists() \
            else "not a cargohold backup (no"
        raise BackupError(f"{source} is {what} {MANIFEST}); nothing was restored")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read as a backup manifest ({exc}); nothing was restored") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{path} is not a backup manifest of format {FORMAT} (format "
                          f"{doc.get('format') if isinstance(doc, dict) else '?'}); nothing was restored")
    return doc


def parse_version(text: str) -> tuple[int, ...]:
    """``0.2.0`` -> (0, 2, 0); leading digits of each dot-separated part (``1rc1`` -> 1)."""
    out = []
    for part in str(text).split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits or 0))
    return tuple(out)


def _empty_enough(root: Path) -> bool:
    return not root.exists() or all(p.name in _IGNORED_IN_EMPTY for p in root.iterdir())


def restore(source: Path, paths: DataPaths, progress: Progress = _quiet,
            hold: Callable[[DataPaths], contextlib.AbstractContextManager[Any]] | None = None) -> RestoreReport:
    """Rebuild a data directory from the backup `source`, verifying everything; returns the report.

    Refuses (BackupError, nothing left behind) a data directory that holds an
    appliance or anything else, an unfinished or foreign backup, one made by
    a newer version, a database or state file whose sha256 differs from the
    manifest's, and any blob that is missing or whose bytes do not hash to
    its name. The database goes into place last. `hold`, if given, is
    entered once the directory exists and held to the end (the CLI keeps
    `cargohold serve` off the directory with it).
    """
    _refuse_postgres(paths)
    source = source.resolve()
    root = paths.root
    if root.exists() and not root.is_dir():
        raise BackupError(f"{root} is not a directory; nothing was restored")
    if paths.database.exists():
        raise BackupError(f"{root} already holds a cargohold appliance ({paths.database.name}); restore only "
                          "into a new or empty directory (move the old one aside first). Nothing was changed")
    if not _empty_enough(root):
        raise BackupError(f"{root} is not empty; restore only into a new or empty directory. Nothing was changed")
    manifest = read_manifest(source)
    version = str(manifest.get("cargoholdVersion", "?"))
    if parse_version(version) > parse_version(VERSION):
        raise BackupError(f"{source} holds a data directory of cargohold {version}, newer than this cargohold "
                          f"{VERSION}; install cargohold {version} or newer to restore it. Nothing was restored")
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    before = {p.name for p in root.iterdir()}
    report = RestoreReport(source, root, version)
    with hold(paths) if hold is not None else contextlib.nullcontext():
        try:
            _restore_into(source, paths, manifest, report, progress)
        except BaseException:
            for p in root.iterdir():
                if p.name not in before:
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
            if created_root:
                with contextlib.suppress(OSError):
                    root.rmdir()
            raise
    return report


def _restore_into(source: Path, paths: DataPaths, manifest: dict[str, Any], report: RestoreReport,
                  progress: Progress) -> None:
    paths.ensure()
    db_info = manifest.get("database") or {}
    staged_db = paths.tmp / "restore-database.sqlite"
    src_db = source / DATABASE
    if not src_db.is_file():
        raise BackupError(f"{src_db} is missing from the backup; nothing was restored")
    progress("verifying and copying the database")
    actual, _ = _copy_hashed(src_db, staged_db)
    if actual != db_info.get("sha256"):
        raise BackupError(f"{src_db} does not match the backup manifest (sha256 {actual}, manifest says "
                          f"{db_info.get('sha256')}): the backup was changed or damaged; nothing was restored")
    conn = sqlite3.connect(f"file:{staged_db}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if check != "ok":
        raise BackupError(f"{src_db} fails SQLite's integrity check ({check}); nothing was restored")
    wanted = recorded_blobs(staged_db)
    problems: list[str] = []
    dirs: set[Path] = set()
    last = time.monotonic()
    for n, (digest, size) in enumerate(wanted, 1):
        src = source / _blob_rel(digest)
        target = paths.blob(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = paths.tmp / f"restore-{digest.encoded}"
        try:
            wrong = _copy_blob(src, tmp, target, digest, size)
        except FileNotFoundError:
            problems.append(f"{digest} is missing from the backup ({src})")
            continue
        if wrong is not None:
            problems.append(f"{digest} in the backup is damaged or changed ({src}: {wrong[1]} bytes hashing to "
                            f"{digest.algorithm}:{wrong[0]}; recorded size {size})")
            continue
        dirs.add(target.parent)
        report.blobs += 1
        report.bytes += size
        if time.monotonic() - last >= 2 or n == len(wanted):
            last = time.monotonic()
            progress(f"blobs verified and copied: {n}/{len(wanted)}")
    if problems:
        listed = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BackupError(f"the backup cannot be restored: {len(problems)} blob(s) fail verification: {listed}. "
                          "Nothing was restored")
    for d in dirs:
        fsync_dir(d)
    progress("verifying and copying keys and TLS material")
    for record in manifest.get("stateFiles") or []:
        rel = Path(str(record.get("path", "")))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise BackupError(f"the backup manifest names a state file outside the data directory ({rel}); "
                              "nothing was restored")
        src = source / STATE / rel
        if not src.is_file():
            raise BackupError(f"state file {rel} is missing from the backup ({src}); nothing was restored")
        target = paths.root / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = int(str(record.get("mode", "0o600")), 8) & 0o777
        actual, _ = _copy_hashed(src, target, mode)
        if actual != record.get("sha256"):
            raise BackupError(f"state file {rel} in the backup does not match the manifest's sha256: the backup "
                              "was changed or damaged; nothing was restored")
        report.state_files += 1
    fsync_dir(paths.root)
    # Last: only now does the directory hold an appliance.
    os.replace(staged_db, paths.database)
    fsync_dir(paths.root)
    progress(f"restored {report.blobs} blobs ({report.bytes} bytes) and {report.state_files} state files")
