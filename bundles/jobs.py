"""Import jobs: one row per bundle import, readable while it runs.

States: ``verifying`` (streaming the bundle, checking signatures, sizes and
digests, staging blobs), ``importing`` (moving verified blobs into the store
and publishing), then ``done`` (with the report) or ``failed`` (with the
error, and the refusal code: `bundles.importer.BundleRefused.code`, or
``INTERNAL`` for an unexpected failure). Progress is written at most every
`PROGRESS_BYTES` or `PROGRESS_SECONDS`, so a fast import does not spend its
time on SQLite, and a progress write that fails (a full disk) does not stop
the import: its end is recorded, or refused, all the same.

When the database itself is full, the import is refused with ``DISK_FULL``;
recording that needs a little space too. If even that fails, the failure is
logged and retried a few times; a job that still could not be recorded
stays open in the database until its process ends, and is then shown as
failed ("interrupted") like any job whose process is gone.

A job records the id of the process running it, and what tells that
process from a later one given the same id (the boot and the process's
start time). A job still open whose process is gone (killed, crashed,
appliance restarted) is shown as failed ("interrupted"); importing the same
bundle again resumes from what was staged.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundles import metrics
from bundles.importer import BundleRefused, Importer, Progress, bundle_parts
from registry import leases, logcontext
from registry.db import is_disk_full, migrate, open_database, write_transaction
from registry.dbengine import Error as DatabaseError
from registry.paths import DataPaths
from registry.processes import process_alive, process_start

PROGRESS_BYTES = 64 << 20
PROGRESS_SECONDS = 1.0
STATES = ("verifying", "importing", "done", "failed")
OPEN_STATES = ("verifying", "importing")
INTERNAL = "INTERNAL"  # the error code of a job that failed on something other than a refusal
RECORD_RETRIES = (1.0, 5.0, 30.0)  # seconds between attempts to record a job's end when SQLite cannot write
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportJob:
    """One import as recorded."""

    id: str
    source: str
    state: str
    bytes_done: int
    bytes_total: int
    error: str | None
    report: dict[str, Any] | None
    pid: int | None
    created_at: float
    updated_at: float
    pid_start: str | None = None  # `registry.processes.process_start` of `pid` when the job was created
    error_code: str | None = None  # the refusal code of a failed job (docs/bundle-import.md, "Refusals")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "state": self.state, "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total, "error": self.error, "errorCode": self.error_code,
                "report": self.report, "createdAt": self.created_at, "updatedAt": self.updated_at}


def _printable(text: str) -> str:
    """`text` as SQLite can store it: undecodable bytes kept as surrogates (tar names) become escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ImportJobs:
    """The import_jobs table of one data directory."""

    _COLUMNS = ("id, source, state, bytes_done, bytes_total, error, report, pid, created_at, updated_at, pid_start, "
                "error_code")

    def __init__(self, paths: DataPaths) -> None:
        import bundles.schema  # noqa: F401  (registers the tables)

        self.paths = paths
        migrate(paths)

    @property
    def db(self) -> Any:
        return open_database(self.paths)

    def create(self, source: str, bytes_total: int = 0) -> ImportJob:
        """A new job in state verifying, owned by this process."""
        now = time.time()
        job_id = uuid.uuid4().hex
        leases.keep_alive(self.paths)  # replicas on other machines judge this job by this machine's lease
        with write_transaction(self.db) as db:
            db.execute(f"INSERT INTO import_jobs ({self._COLUMNS}) "
                       "VALUES (?, ?, 'verifying', 0, ?, NULL, NULL, ?, ?, ?, ?, NULL)",
                       [job_id, _printable(source), bytes_total, os.getpid(), now, now, process_start(os.getpid())])
        job = self.get(job_id)
        assert job is not None
        return job

    def progress(self, job_id: str, bytes_done: int, bytes_total: int, state: str | None = None) -> None:
        with write_transaction(self.db) as db:
            db.execute("UPDATE import_jobs SET bytes_done = ?, bytes_total = ?, state = COALESCE(?, state), "
                       "updated_at = ? WHERE id = ?", [bytes_done, bytes_total, state, time.time(), job_id])

    def finish(self, job_id: str, report: dict[str, Any]) -> None:
        with write_transaction(self.db) as db:
            db.execute("UPDATE import_jobs SET state = 'done', report = ?, bytes_done = bytes_total, "
                       "updated_at = ? WHERE id = ?", [json.dumps(report), time.time(), job_id])

    def fail(self, job_id: str, error: str, code: str = INTERNAL) -> None:
        """Record the job as failed with `error` and its refusal `code`; raises a database error if it cannot."""
        with write_transaction(self.db) as db:
            db.execute("UPDATE import_jobs SET state = 'failed', error = ?, error_code = ?, updated_at = ? "
                       "WHERE id = ?", [_printable(error), code, time.time(), job_id])

    def fail_or_log(self, job_id: str, error: str, code: str, retries: tuple[float, ...] = ()) -> bool:
        """`fail`, logging instead of raising when SQLite cannot write, retried after each delay in `retries`.

        Returns whether the failure is recorded. One not recorded leaves the
        job open until its process ends; `_reap` then shows it as failed.
        """
        for delay in (*retries, None):
            try:
                self.fail(job_id, error, code)
                return True
            except DatabaseError as exc:
                _log.error("import job %s: could not record its end (%s: %s) in the database: %s%s", job_id, code,
                           _printable(error), exc, "" if delay is None else f"; retrying in {delay:.0f} s")
                if delay is None:
                    return False
                time.sleep(delay)
        return False

    def get(self, job_id: str) -> ImportJob | None:
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM import_jobs WHERE id = ?", [job_id]).fetchone()
        return self._reap(self._job(row)) if row else None

    def list(self, limit: int = 100) -> list[ImportJob]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM import_jobs ORDER BY created_at DESC LIMIT ?",
                               [limit]).fetchall()
        return [self._reap(self._job(r)) for r in rows]

    def _reap(self, job: ImportJob) -> ImportJob:
        """A job left open by a process that is gone is failed (interrupted)."""
        if job.state in OPEN_STATES and not process_alive(job.pid, job.pid_start, leases.machine_judge(self.paths)):
            message = ("interrupted: the importing process ended before finishing; use Retry import on the "
                       "Imports page, or import the bundle again, to complete it (what was verified is reused)")
            try:
                with write_transaction(self.db) as db:
                    db.execute("UPDATE import_jobs SET state = 'failed', error = ?, error_code = 'INTERRUPTED', "
                               "updated_at = ? WHERE id = ? AND state IN ('verifying', 'importing')",
                               [message, time.time(), job.id])
            except DatabaseError as exc:  # a full database: shown as failed all the same, recorded next time
                _log.warning("import job %s: could not record it as interrupted: %s", job.id, exc)
            return ImportJob(**{**job.__dict__, "state": "failed", "error": message, "error_code": "INTERRUPTED"})
        return job

    @staticmethod
    def _job(row: Any) -> ImportJob:
        return ImportJob(row[0], row[1], row[2], int(row[3] or 0), int(row[4] or 0), row[5],
                         json.loads(row[6]) if row[6] else None, row[7], row[8], row[9], row[10], row[11])


class JobProgress:
    """A progress callback for the importer that writes to a job, throttled."""

    def __init__(self, jobs: ImportJobs, job_id: str) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self._last_bytes = -PROGRESS_BYTES
        self._last_time = 0.0
        self._state: str | None = None

    def __call__(self, state: str, done: int, total: int) -> None:
        now = time.monotonic()
        if (state != self._state or done - self._last_bytes >= PROGRESS_BYTES
                or now - self._last_time >= PROGRESS_SECONDS):
            try:
                self.jobs.progress(self.job_id, done, total, state)
            except DatabaseError as exc:
                if not is_disk_full(exc):
                    raise
                # Progress is advisory: the import goes on, and its end (or DISK_FULL at publishing) is recorded.
                _log.warning("import job %s: progress not recorded, the database is full: %s", self.job_id, exc)
            self._state, self._last_bytes, self._last_time = state, done, now


def disk_full_refusal(exc: BaseException) -> BundleRefused:
    """The DISK_FULL refusal for SQLite (or the OS) saying the disk is full (`registry.db.is_disk_full`)."""
    return BundleRefused("DISK_FULL", f"the database could not be written ({exc}): the data volume is full; "
                         "free space on it and import again")


def run_import(importer: Importer, jobs: ImportJobs, job_id: str, source: Path, signature: bytes | None = None,
               allow_unsigned: bool | None = None, progress: Progress | None = None,
               record_retries: tuple[float, ...] = ()) -> dict[str, Any]:
    """Run one import under job `job_id`: progress, then the report or the error, recorded.

    Returns the report (with ``jobId``); raises BundleRefused (a full disk
    or database is DISK_FULL) and re-raises any other unexpected error,
    after recording it on the job with its code (``INTERNAL`` for the
    unexpected). Recording never raises over the refusal; when SQLite cannot
    write even that, it is logged (and retried after `record_retries`).
    """
    tracker = JobProgress(jobs, job_id)

    def both(state: str, done: int, total: int) -> None:
        tracker(state, done, total)
        if progress is not None:
            progress(state, done, total)

    # The one place every import runs through (CLI, API, UI, seed directory): its events are logged here, once.
    started = time.monotonic()
    name = _printable(source.name)
    _log.info("bundle import %s started: %s", job_id, name, extra={"job_id": job_id, "bundle": name})
    try:
        report = importer.run(source, signature, both, allow_unsigned)
    except BundleRefused as exc:
        _log.info("bundle import %s refused (%s): %s", job_id, exc.code, _printable(exc.message),
                  extra={"job_id": job_id, "bundle": name, "code": exc.code,
                         "duration_ms": round((time.monotonic() - started) * 1000, 1)})
        metrics.record_import("refused", exc.code, time.monotonic() - started)
        jobs.fail_or_log(job_id, exc.message, exc.code, record_retries)
        raise
    except BaseException as exc:
        if is_disk_full(exc):
            refusal = disk_full_refusal(exc)
            _log.info("bundle import %s refused (%s): %s", job_id, refusal.code, refusal.message,
                      extra={"job_id": job_id, "bundle": name, "code": refusal.code,
                             "duration_ms": round((time.monotonic() - started) * 1000, 1)})
            metrics.record_import("refused", refusal.code, time.monotonic() - started)
            jobs.fail_or_log(job_id, refusal.message, refusal.code, record_retries)
            raise refusal from None
        metrics.record_import("failed", INTERNAL, time.monotonic() - started)
        _log.exception("bundle import %s failed (%s)", job_id, INTERNAL,
                       extra={"job_id": job_id, "bundle": name, "code": INTERNAL})
        jobs.fail_or_log(job_id, f"internal error ({type(exc).__name__}); see the appliance log", INTERNAL,
                         record_retries)
        raise
    metrics.record_import("done", "", time.monotonic() - started, int(report.get("bytesRead") or 0))
    _log.info("bundle import %s finished: %s", job_id, name,
              extra={"job_id": job_id, "bundle": name, "duration_ms": round((time.monotonic() - started) * 1000, 1),
                     **_summary(report)})
    report["jobId"] = job_id
    try:
        jobs.finish(job_id, report)
    except DatabaseError as exc:
        # Published (one transaction, committed) but not recorded as done: say so rather than fail the import.
        _log.error("import job %s: imported, but the report could not be recorded: %s", job_id, exc)
    return report


def start_in_background(importer: Importer, jobs: ImportJobs, source: Path, signature: bytes | None,
                        cleanup: list[Path], done: Callable[[ImportJob], None] | None = None) -> ImportJob:
    """Create a job for `source` and run the import in a daemon thread; returns the job at once.

    Raises BundleRefused before any job exists: NOT_FOUND if the bundle is
    missing, DISK_FULL if the database is too full to record the job.
    `cleanup` files are removed after a successful import; `done` runs
    after the import either way (not after an unexpected crash of the
    process, which `_reap` reports as interrupted).
    """
    parts = bundle_parts(source)
    try:
        job = jobs.create(source.name, sum(p.stat().st_size for p in parts))
    except DatabaseError as exc:
        if is_disk_full(exc):
            raise disk_full_refusal(exc) from None
        raise

    def work() -> None:
        try:
            run_import(importer, jobs, job.id, source, signature, record_retries=RECORD_RETRIES)
        except BaseException:  # logged, and recorded on the job, by run_import; never leaves it "verifying"
            pass
        else:
            for path in cleanup:  # an uploaded bundle is not needed once imported
                path.unlink(missing_ok=True)
        if done is not None:
            final = jobs.get(job.id)
            if final is not None:
                done(final)

    # In a copy of this context: the import's log lines carry the id of the request that started it.
    logcontext.start_thread(work, f"import-{job.id[:8]}")
    return job


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The counts of an import report worth a log field (whatever of them the report has)."""
    found: dict[str, Any] = {}
    for key, field in (("images", "images"), ("charts", "charts"), ("files", "files"),
                       ("clusterDefinitions", "definitions"), ("bytesWritten", "bytes_written")):
        value = report.get(key)
        if isinstance(value, list):
            found[field] = len(value)
        elif isinstance(value, int | str) and not isinstance(value, bool):
            found[field] = value
    release = report.get("release")
    if isinstance(release, dict) and release.get("id") is not None:
        found["release"] = release["id"]
    blobs = report.get("blobs")
    if isinstance(blobs, dict):
        found["blobs_new"], found["blobs_reused"] = blobs.get("new"), blobs.get("reused")
    return found
