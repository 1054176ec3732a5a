"""The seed directory: zero-touch import of the bundles and cluster definitions an installer placed there.

A seed directory (``<data>/seed`` unless configured, or a mounted USB stick)
is scanned at start and on demand. What a scan considers, by file name, in
name order:

- ``X.tar.zst`` (a bundle), or its parts ``X.tar.zst.part000, .part001, …``
  when ``X.tar.zst`` itself is absent, each with an optional detached
  signature ``X.tar.zst.sig``;
- ``Y.tgz`` (a cluster definition on its own) with an optional detached
  ``Y.tgz.sig``.

Hidden files (a leading ``.``, as rsync and many copy tools name a file
while they write it) and every other name are ignored; so is the
``.sig`` of nothing. Nothing in the directory is trusted for being there: every bundle
is imported under the normal policy (`bundles.importer`), as an ordinary
import job, and every definition needs a trusted key's signature
(`bundles.clusterdef_trust`).

**Partial copies.** A file set (all parts and the signature) is taken only
once none of its files changed (mtime or ctime) for `settle_seconds`, and a
part set only when its parts are numbered without a gap; otherwise it is
reported ``waiting`` and looked at again (a scan waits, re-checking, while
something is still being written). A part set that is still growing when
it is imported is refused ``TRUNCATED`` and recorded with the identity it
had; once the missing parts arrive, its identity has changed and it is
imported anew.

**Imported once.** Each file set is recorded in ``seed_files`` by its path
with its identity: total size and newest mtime of its files. A later scan
skips a set recorded ``imported`` or ``refused`` with the same identity
(a refused one is tried again only when asked, ``retry_refused``: say,
after its signing key was trusted), retries one ``interrupted`` (its
process ended mid-way; the import job shows ``INTERRUPTED`` and staging is
reused), and takes a set whose identity changed as new. Each set is claimed
in one write transaction before its import, by the process doing it (pid
and start time, as import jobs are); a claim held by a live process is
left alone, so two workers or a command-line scan beside the server never
import the same set twice.

**One scan at a time.** A scan is a row of ``seed_scans``; claiming one
fails while another process's scan runs. A start-up scan belongs to one
``cargohold serve`` (the master's pid and start time): once one of its
workers has finished it, no other worker (nor one that replaces a worker
recycled later) scans again for that start; if the worker running it
died, the next worker to boot scans again and retries what was
interrupted.

Every import's start and outcome goes to the audit log (``create import``
with the job, then ``update seed`` with the outcome and its refusal code).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundles.clusterdef import ClusterDefinitions, DefinitionError
from bundles.clusterdef_trust import MAX_SIGNATURE_BYTES, SignaturePolicy, import_archive
from bundles.importer import BundleRefused, Importer, bundle_parts
from bundles.jobs import ImportJobs, disk_full_refusal, run_import
from bundles.trust import TrustStore
from registry import leases
from registry.audit import append as audit_append
from registry.db import is_disk_full, open_database, write_transaction
from registry.dbengine import Error as DatabaseError
from registry.dbengine import insert_id
from registry.paths import DataPaths
from registry.processes import process_alive, process_start

_log = logging.getLogger(__name__)

BUNDLE_SUFFIX = ".tar.zst"
DEFINITION_SUFFIX = ".tgz"
SIGNATURE_SUFFIX = ".sig"
MAX_WAIT_SECONDS = 3600.0  # a scan stops waiting for files still being written after this long
_PART = re.compile(r"^(?P<base>.+\.tar\.zst)\.part\d{3,}$")

# Outcomes in a scan's report.
IMPORTED = "imported"            # imported by this scan
REFUSED = "refused"              # refused by this scan (errorCode says why)
DONE_EARLIER = "done-earlier"    # imported by an earlier scan: skipped
REFUSED_EARLIER = "refused-earlier"  # refused by an earlier scan, unchanged since: skipped
BUSY = "busy"                    # another process is importing it right now
WAITING = "waiting"              # still being written, or a part set with a gap: looked at again later


class SeedDirError(Exception):
    """The seed directory (or a file in it) cannot be read; the message names it and why."""


@dataclass(frozen=True)
class SeedEntry:
    """One bundle (with its parts and detached signature) or definition found in a seed directory."""

    kind: str  # "bundle" or "definition"
    name: str  # the bundle's (or definition's) file name; for a part set, the name without .partNNN
    path: Path  # what the importer is given: the file, or the name its parts share
    files: tuple[Path, ...]  # every file of the set: the file or its parts, then the signature
    signature: Path | None
    size: int  # of all its files
    mtime_ns: int  # the newest mtime of its files
    settled: bool  # unchanged for the settle time
    problem: str | None = None  # why it cannot be taken yet (a part missing), or None

    @property
    def parts(self) -> int:
        return len(self.files) - (1 if self.signature else 0)


def discover(seed_dir: Path, settle_seconds: float, now: float | None = None) -> list[SeedEntry]:
    """The bundles and definitions in `seed_dir`, by name; [] if it does not exist. Reads no file's content."""
    try:
        names = sorted(n for n in os.listdir(seed_dir) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:  # unreadable (permissions, an unplugged stick): said, not a traceback
        raise SeedDirError(f"cannot read the seed directory {seed_dir}: {exc.strerror or exc}") from None
    now = time.time() if now is None else now
    files = {n for n in names if (seed_dir / n).is_file()}
    entries: list[SeedEntry] = []
    seen_bases: set[str] = set()
    for name in sorted(files):
        part = _PART.match(name)
        try:
            if name.endswith(BUNDLE_SUFFIX) or part:
                base = part.group("base") if part else name
                if base in seen_bases or (part and base in files):
                    continue  # a part set is one entry; parts beside the whole file are not what is imported
                seen_bases.add(base)
                entries.append(_entry("bundle", seed_dir, base, files, settle_seconds, now))
            elif name.endswith(DEFINITION_SUFFIX):
                entries.append(_entry("definition", seed_dir, name, files, settle_seconds, now))
        except FileNotFoundError:  # removed since it was listed: it is simply not there
            continue
        except OSError as exc:
            raise SeedDirError(f"cannot read {seed_dir / name}: {exc.strerror or exc}") from None
    return entries


def _entry(kind: str, seed_dir: Path, name: str, files: set[str], settle: float, now: float) -> SeedEntry:
    path = seed_dir / name
    problem = None
    if kind == "bundle":
        try:
            members = bundle_parts(path)
        except BundleRefused as exc:  # a gap in the part numbers: more is probably still being copied
            members, problem = [seed_dir / n for n in sorted(files) if n.startswith(name + ".part")], exc.message
    else:
        members = [path]
    signature = seed_dir / (name + SIGNATURE_SUFFIX) if name + SIGNATURE_SUFFIX in files else None
    all_files = tuple(members) + ((signature,) if signature else ())
    size, mtime_ns, changed = 0, 0, 0.0
    for f in all_files:
        st = f.stat()
        size += st.st_size
        mtime_ns = max(mtime_ns, st.st_mtime_ns)
        # ctime too: a copy that preserves times (cp -p) sets an old mtime, but writing moves ctime.
        changed = max(changed, st.st_mtime, st.st_ctime)
    return SeedEntry(kind, name, path, all_files, signature, size, mtime_ns, now - changed >= settle, problem)


@dataclass(frozen=True)
class SeedScan:
    """One scan as recorded."""

    id: int
    seed_dir: str
    trigger: str  # "start", "cli", "api", "ui"
    requested_by: str
    state: str  # running, done, failed, interrupted
    report: dict[str, Any] | None
    started_at: float
    finished_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "seedDir": self.seed_dir, "trigger": self.trigger, "requestedBy": self.requested_by,
                "state": self.state, "report": self.report, "startedAt": self.started_at,
                "finishedAt": self.finished_at}


@dataclass(frozen=True)
class SeedFile:
    """What is recorded of one file set of a seed directory."""

    path: str
    kind: str
    size: int
    mtime_ns: int
    parts: int
    signature: str | None
    state: str  # importing, imported, refused, interrupted
    job_id: str | None
    error_code: str | None
    error: str | None
    digest: str | None  # a bundle's manifest digest, a definition archive's sha256
    result: str | None  # what it became: "<bundle name> <version>", "<definition> <version>"
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "mtimeNs": self.mtime_ns,
                "parts": self.parts, "signature": self.signature, "state": self.state, "jobId": self.job_id,
                "errorCode": self.error_code, "error": self.error, "digest": self.digest, "result": self.result,
                "updatedAt": self.updated_at}


@dataclass
class _Report:
    seed_dir: str
    files: list[dict[str, Any]] = field(default_factory=list)
    trusted_keys: int = 0
    error: str | None = None  # why the scan failed (SeedDirError)

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f["outcome"]] = counts.get(f["outcome"], 0) + 1
        return {"seedDir": self.seed_dir, "exists": Path(self.seed_dir).is_dir(), "trustedKeys": self.trusted_keys,
                "files": self.files, "counts": counts, "error": self.error}


class SeedScanner:
    """Scans one seed directory into one data directory, through the import core the API uses."""

    _FILE_COLUMNS = ("path, kind, size, mtime_ns, parts, signature, state, job_id, error_code, error, digest, result, "
                     "updated_at")
    _SCAN_COLUMNS = "id, seed_dir, trigger, requested_by, state, report, started_at, finished_at, pid, pid_start"

    def __init__(self, paths: DataPaths, seed_dir: Path, importer: Importer, jobs: ImportJobs, trust: TrustStore,
                 definitions: ClusterDefinitions, allow_unsigned_definitions: bool = False,
                 settle_seconds: float = 2.0) -> None:
        self.paths = paths
        self.seed_dir = seed_dir
        self.importer = importer
        self.jobs = jobs
        self.trust = trust
        self.definitions = definitions
        self.allow_unsigned_definitions = allow_unsigned_definitions
        self.settle_seconds = settle_seconds

    @property
    def db(self) -> Any:
        return open_database(self.paths)

    # -- scans -------------------------------------------------------------------------------------------------

    def claim_scan(self, trigger: str, requested_by: str, serve: str | None = None) -> tuple[int, bool] | None:
        """Record a new running scan owned by this process: (its id, True).

        (id, False) when another live process's scan runs (that one's id);
        None for a start-up scan of `serve` that a worker already finished.
        A running scan whose process is gone is marked interrupted.
        """
        me, me_start = os.getpid(), process_start(os.getpid())
        with write_transaction(self.db) as db:
            for scan_id, pid, pid_start in db.execute(
                    "SELECT id, pid, pid_start FROM seed_scans WHERE state = 'running'").fetchall():
                if process_alive(pid, pid_start, leases.machine_judge(self.paths)):
                    return int(scan_id), False
                db.execute("UPDATE seed_scans SET state = 'interrupted', finished_at = ? WHERE id = ?",
                           [time.time(), scan_id])
            if trigger == "start" and serve is not None and db.execute(
                    "SELECT 1 FROM seed_scans WHERE serve = ? AND trigger = 'start' AND state = 'done'",
                    [serve]).fetchone():
                return None
            scan_id = insert_id(
                db, "INSERT INTO seed_scans (seed_dir, trigger, requested_by, serve, state, pid, pid_start, report, "
                "started_at) VALUES (?, ?, ?, ?, 'running', ?, ?, NULL, ?)",
                [str(self.seed_dir), trigger, requested_by, serve, me, me_start, time.time()])
            audit_append(db, requested_by, "create", "seed-scan", f"{scan_id}:{self.seed_dir}")
        return scan_id, True

    def run_scan(self, scan_id: int, requested_by: str, retry_refused: bool = False,
                 max_wait: float = MAX_WAIT_SECONDS, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Scan the directory under the claimed scan `scan_id`: import what is new; returns the report.

        Waits (re-checking every `settle_seconds`, at most `max_wait`) while
        files are still being written. The report is written to the scan's
        row after every file, so it can be followed while the scan runs.
        Never raises for a bundle or definition refused: that is recorded and
        the scan goes on with the next. Raises SeedDirError (recorded on the
        scan as failed) when the directory cannot be read.
        """
        report = _Report(str(self.seed_dir), trusted_keys=len(self.trust.list()))
        handled: set[str] = set()
        deadline = time.monotonic() + max_wait
        try:
            while True:
                pending = False
                for entry in discover(self.seed_dir, self.settle_seconds):
                    if entry.name in handled:
                        continue
                    if not entry.settled:
                        pending = True
                        continue
                    if entry.problem:  # a gap in a part set: the parts still to come are new files, unsettled
                        continue
                    handled.add(entry.name)
                    report.files.append(self._one(entry, scan_id, requested_by, retry_refused))
                    self._save(scan_id, report, "running")
                if not pending or time.monotonic() >= deadline:
                    break
                sleep(self.settle_seconds)
            for entry in discover(self.seed_dir, self.settle_seconds):  # what is still not ready, as it stands
                if entry.name not in handled:
                    report.files.append(self._line(entry, WAITING, error=entry.problem or (
                        "still being written (changed less than "
                        f"{self.settle_seconds:g} s ago); scan again once the copy has finished")))
            report.files.sort(key=lambda f: f["name"])
        except SeedDirError as exc:
            report.error = str(exc)
            self._save(scan_id, report, "failed")
            raise
        except BaseException:
            self._save(scan_id, report, "failed")
            raise
        self._save(scan_id, report, "done")
        return report.to_json()

    def _save(self, scan_id: int, report: _Report, state: str) -> None:
        try:
            with write_transaction(self.db) as db:
                db.execute("UPDATE seed_scans SET report = ?, state = ?, finished_at = ? WHERE id = ?",
                           [json.dumps(report.to_json()), state, None if state == "running" else time.time(),
                            scan_id])
        except DatabaseError as exc:  # the scan's own record is advisory; the imports are recorded on their own
            _log.warning("seed scan %s: could not record its report: %s", scan_id, exc)

    def get_scan(self, scan_id: int) -> SeedScan | None:
        row = self.db.execute(f"SELECT {self._SCAN_COLUMNS} FROM seed_scans WHERE id = ?", [scan_id]).fetchone()
        return self._scan(row) if row else None

    def latest_scan(self) -> SeedScan | None:
        row = self.db.execute(f"SELECT {self._SCAN_COLUMNS} FROM seed_scans ORDER BY id DESC LIMIT 1").fetchone()
        return self._scan(row) if row else None

    def _scan(self, row: Any) -> SeedScan:
        state = row[4]
        if state == "running" and not process_alive(row[8], row[9], leases.machine_judge(self.paths)):
            state = "interrupted"  # its process ended mid-scan; the next scan retries what it left
        return SeedScan(int(row[0]), row[1], row[2], row[3] or "", state, json.loads(row[5]) if row[5] else None,
                        row[6], row[7])

    def files(self) -> list[SeedFile]:
        """Every file set ever recorded, by path, with an importing one whose process is gone shown interrupted."""
        rows = self.db.execute(f"SELECT {self._FILE_COLUMNS}, pid, pid_start FROM seed_files ORDER BY path")
        out = []
        for row in rows.fetchall():
            record = SeedFile(*row[:13])
            if record.state == "importing" and not process_alive(row[13], row[14], leases.machine_judge(self.paths)):
                record = SeedFile(**{**record.__dict__, "state": "interrupted"})
            out.append(record)
        return out

    # -- one file set ------------------------------------------------------------------------------------------

    def _claim(self, entry: SeedEntry, scan_id: int, retry_refused: bool) -> tuple[str | None, SeedFile | None]:
        """Take `entry` for this process: (None, previous record) if taken, else (the outcome to report, record)."""
        me, me_start = os.getpid(), process_start(os.getpid())
        with write_transaction(self.db) as db:
            row = db.execute(f"SELECT {self._FILE_COLUMNS}, pid, pid_start FROM seed_files WHERE path = ?",
                             [str(entry.path)]).fetchone()
            previous = SeedFile(*row[:13]) if row else None
            same = previous is not None and (previous.size, previous.mtime_ns) == (entry.size, entry.mtime_ns)
            if previous is not None and same:
                if previous.state == "imported":
                    return DONE_EARLIER, previous
                if previous.state == "refused" and not retry_refused:
                    return REFUSED_EARLIER, previous
                if previous.state == "importing" and row is not None and \
                        process_alive(row[13], row[14], leases.machine_judge(self.paths)):
                    return BUSY, previous
            db.execute(
                "INSERT INTO seed_files (path, kind, size, mtime_ns, parts, signature, state, job_id, "
                "error_code, error, digest, result, pid, pid_start, scan_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'importing', NULL, NULL, NULL, NULL, NULL, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET kind = excluded.kind, size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, parts = excluded.parts, signature = excluded.signature, "
                "state = excluded.state, job_id = NULL, error_code = NULL, error = NULL, digest = NULL, result = NULL, "
                "pid = excluded.pid, pid_start = excluded.pid_start, scan_id = excluded.scan_id, "
                "updated_at = excluded.updated_at",
                [str(entry.path), entry.kind, entry.size, entry.mtime_ns, entry.parts,
                 entry.signature.name if entry.signature else None, me, me_start, scan_id, time.time()])
        return None, previous if same else None

    def _record(self, entry: SeedEntry, state: str, job_id: str | None = None, code: str | None = None,
                error: str | None = None, digest: str | None = None, result: str | None = None,
                audit: tuple[str, str, str, str] | None = None) -> None:
        """Record the outcome of `entry`, and its audit entry, in one transaction; logged if SQLite cannot."""
        try:
            with write_transaction(self.db) as db:
                db.execute("UPDATE seed_files SET state = ?, job_id = ?, error_code = ?, error = ?, digest = ?, "
                           "result = ?, pid = NULL, pid_start = NULL, updated_at = ? WHERE path = ?",
                           [state, job_id, code, error, digest, result, time.time(), str(entry.path)])
                if audit is not None:
                    audit_append(db, *audit)
        except DatabaseError as exc:
            # Left "importing" with this process as owner: shown interrupted once it ends, and retried then.
            _log.error("seed %s: could not record its outcome (%s %s): %s", entry.name, state, code or "", exc)

    def _one(self, entry: SeedEntry, scan_id: int, who: str, retry_refused: bool) -> dict[str, Any]:
        outcome, previous = self._claim(entry, scan_id, retry_refused)
        if outcome is not None:
            assert previous is not None
            return self._line(entry, outcome, previous.job_id, previous.error_code, previous.error, previous.result)
        retried = previous.state if previous is not None else None
        line = self._definition(entry, who) if entry.kind == "definition" else self._bundle(entry, who)
        if retried in ("interrupted", "importing", "refused"):
            line["retried"] = "interrupted" if retried == "importing" else retried
        return line

    def _signature(self, entry: SeedEntry) -> bytes | None:
        if entry.signature is None:
            return None
        with entry.signature.open("rb") as f:
            return f.read(MAX_SIGNATURE_BYTES + 1)  # more is refused by keys.read_signature_file, by size

    def _bundle(self, entry: SeedEntry, who: str) -> dict[str, Any]:
        source = f"seed/{entry.name}"
        try:
            signature = self._signature(entry)
            job = self.jobs.create(source, entry.size - (entry.signature.stat().st_size if entry.signature else 0))
        except (OSError, *DatabaseError) as exc:  # type: ignore[misc]
            refusal = disk_full_refusal(exc) if is_disk_full(exc) else BundleRefused("STORAGE", f"cannot start: {exc}")
            self._record(entry, "interrupted", code=refusal.code, error=refusal.message)
            return self._line(entry, REFUSED, code=refusal.code, error=refusal.message)
        try:
            with write_transaction(self.db) as db:
                audit_append(db, who, "create", "import", f"{job.id}:{source}")
        except DatabaseError as exc:
            _log.warning("seed %s: could not audit the import's start: %s", entry.name, exc)
        _log.info("seed: importing %s (job %s)", entry.name, job.id)
        try:
            report = run_import(self.importer, self.jobs, job.id, entry.path, signature)
        except BundleRefused as exc:
            # BUSY: the same bundle is being imported by someone else now; not final, so the next scan looks again.
            state = "interrupted" if exc.code == "BUSY" else "refused"
            self._record(entry, state, job.id, exc.code, exc.message,
                         audit=(who, "update", "seed", f"{source}: refused {exc.code} (job {job.id})"))
            _log.info("seed: %s refused (%s): %s", entry.name, exc.code, exc.message)
            return self._line(entry, BUSY if exc.code == "BUSY" else REFUSED, job.id, exc.code, exc.message)
        except Exception as exc:  # recorded on the job as INTERNAL by run_import; the scan goes on with the next
            _log.exception("seed: importing %s failed", entry.name)
            message = f"internal error ({type(exc).__name__}); see the appliance log"
            self._record(entry, "refused", job.id, "INTERNAL", message,
                         audit=(who, "update", "seed", f"{source}: refused INTERNAL (job {job.id})"))
            return self._line(entry, REFUSED, job.id, "INTERNAL", message)
        bundle = report.get("bundle") or {}
        result = (f"{bundle.get('name')} {bundle.get('version')}" if bundle.get("format") == "cargohold"
                  else "plain OCI layout") + f": {len(report.get('images') or [])} images"
        self._record(entry, "imported", job.id, digest=bundle.get("manifestDigest"), result=result,
                     audit=(who, "update", "seed", f"{source}: imported (job {job.id})"))
        return self._line(entry, IMPORTED, job.id, result=result)

    def _definition(self, entry: SeedEntry, who: str) -> dict[str, Any]:
        source = f"seed/{entry.name}"
        try:
            signature = self._signature(entry)
            stored = import_archive(self.definitions, entry.path, source,
                                    SignaturePolicy(self.trust, self.allow_unsigned_definitions), signature)
        except (DefinitionError, OSError) as exc:
            code = getattr(exc, "code", "DEFINITION_INVALID") if isinstance(exc, DefinitionError) else "STORAGE"
            self._record(entry, "refused", code=code, error=str(exc),
                         audit=(who, "update", "seed", f"{source}: refused {code}"))
            return self._line(entry, REFUSED, code=code, error=str(exc))
        except DatabaseError as exc:
            code = "DISK_FULL" if is_disk_full(exc) else "PUBLISH"
            self._record(entry, "interrupted", code=code, error=str(exc))
            return self._line(entry, REFUSED, code=code, error=str(exc))
        result = f"cluster definition {stored.name} {stored.version}"
        self._record(entry, "imported", digest=f"sha256:{stored.digest}" if stored.digest else None, result=result,
                     audit=(who, "create", "cluster-definition", f"{stored.name}:{stored.version} ({source})"))
        return self._line(entry, IMPORTED, result=result)

    @staticmethod
    def _line(entry: SeedEntry, outcome: str, job_id: str | None = None, code: str | None = None,
              error: str | None = None, result: str | None = None) -> dict[str, Any]:
        return {"name": entry.name, "kind": entry.kind, "parts": entry.parts,
                "signature": entry.signature.name if entry.signature else None, "size": entry.size,
                "outcome": outcome, "jobId": job_id, "errorCode": code, "error": error, "result": result}


def serve_identity() -> str | None:
    """Which `cargohold serve` this gunicorn worker belongs to: its master's pid and start time."""
    parent = os.getppid()
    start = process_start(parent)
    return f"{parent}:{start}" if start else None

