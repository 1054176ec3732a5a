"""Import jobs: one row per bundle import, readable while it runs.

States: ``verifying`` (streaming the bundle, checking signatures, sizes and
digests, staging blobs), ``importing`` (moving verified blobs into the store
and publishing), then ``done`` (with the report) or ``failed`` (with the
error). Progress is written at most every `PROGRESS_BYTES` or
`PROGRESS_SECONDS`, so a fast import does not spend its time on SQLite.

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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundles.importer import BundleRefused, Importer, Progress, bundle_parts
from registry.db import migrate, open_database, write_transaction
from registry.paths import DataPaths

PROGRESS_BYTES = 64 << 20
PROGRESS_SECONDS = 1.0
STATES = ("verifying", "importing", "done", "failed")
OPEN_STATES = ("verifying", "importing")
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
    pid_start: str | None = None  # `_process_start` of `pid` when the job was created

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "state": self.state, "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total, "error": self.error, "report": self.report,
                "createdAt": self.created_at, "updatedAt": self.updated_at}


def _process_start(pid: int) -> str | None:
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
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has finished: nothing of it runs an import
        return None
    return f"{boot}:{fields[19]}"


def _alive(pid: int | None, pid_start: str | None) -> bool:
    if not pid:
        return False
    if pid_start is not None:
        return _process_start(pid) == pid_start  # gone, or another process that got the same pid
    try:  # a job recorded before start times were, or where /proc could not give one
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ImportJobs:
    """The import_jobs table of one data directory."""

    _COLUMNS = "id, source, state, bytes_done, bytes_total, error, report, pid, created_at, updated_at, pid_start"

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
        with write_transaction(self.db) as db:
            db.execute(f"INSERT INTO import_jobs ({self._COLUMNS}) "
                       "VALUES (?, ?, 'verifying', 0, ?, NULL, NULL, ?, ?, ?, ?)",
                       [job_id, source, bytes_total, os.getpid(), now, now, _process_start(os.getpid())])
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

    def fail(self, job_id: str, error: str) -> None:
        with write_transaction(self.db) as db:
            db.execute("UPDATE import_jobs SET state = 'failed', error = ?, updated_at = ? WHERE id = ?",
                       [error, time.time(), job_id])

    def get(self, job_id: str) -> ImportJob | None:
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM import_jobs WHERE id = ?", [job_id]).fetchone()
        return self._reap(self._job(row)) if row else None

    def list(self, limit: int = 100) -> list[ImportJob]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM import_jobs ORDER BY created_at DESC LIMIT ?",
                               [limit]).fetchall()
        return [self._reap(self._job(r)) for r in rows]

    def _reap(self, job: ImportJob) -> ImportJob:
        """A job left open by a process that is gone is failed (interrupted)."""
        if job.state in OPEN_STATES and not _alive(job.pid, job.pid_start):
            message = ("interrupted: the importing process ended before finishing; import the bundle again "
                       "to complete it (what was verified is reused)")
            with write_transaction(self.db) as db:
                db.execute("UPDATE import_jobs SET state = 'failed', error = ?, updated_at = ? "
                           "WHERE id = ? AND state IN ('verifying', 'importing')", [message, time.time(), job.id])
            return ImportJob(**{**job.__dict__, "state": "failed", "error": message})
        return job

    @staticmethod
    def _job(row: Any) -> ImportJob:
        return ImportJob(row[0], row[1], row[2], int(row[3] or 0), int(row[4] or 0), row[5],
                         json.loads(row[6]) if row[6] else None, row[7], row[8], row[9], row[10])


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
            self.jobs.progress(self.job_id, done, total, state)
            self._state, self._last_bytes, self._last_time = state, done, now


def run_import(importer: Importer, jobs: ImportJobs, job_id: str, source: Path, signature: bytes | None = None,
               allow_unsigned: bool | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run one import under job `job_id`: progress, then the report or the error, recorded.

    Returns the report (with ``jobId``); re-raises BundleRefused (and any
    unexpected error) after recording it on the job.
    """
    tracker = JobProgress(jobs, job_id)

    def both(state: str, done: int, total: int) -> None:
        tracker(state, done, total)
        if progress is not None:
            progress(state, done, total)

    try:
        report = importer.run(source, signature, both, allow_unsigned)
    except BundleRefused as exc:
        jobs.fail(job_id, exc.message)
        raise
    except BaseException as exc:
        jobs.fail(job_id, f"internal error ({type(exc).__name__}); see the appliance log")
        raise
    report["jobId"] = job_id
    jobs.finish(job_id, report)
    return report


def start_in_background(importer: Importer, jobs: ImportJobs, source: Path, signature: bytes | None,
                        cleanup: list[Path], done: Callable[[ImportJob], None] | None = None) -> ImportJob:
    """Create a job for `source` and run the import in a daemon thread; returns the job at once.

    Raises BundleRefused(NOT_FOUND) before any job exists if the bundle is
    missing. `cleanup` files are removed after a successful import; `done`
    runs after the import either way (not after an unexpected crash of the
    process, which `_reap` reports as interrupted).
    """
    parts = bundle_parts(source)
    job = jobs.create(source.name, sum(p.stat().st_size for p in parts))

    def work() -> None:
        try:
            run_import(importer, jobs, job.id, source, signature)
        except BundleRefused as exc:
            _log.info("bundle import %s refused: %s", job.id, exc.message)
        except Exception:
            _log.exception("bundle import %s failed", job.id)
        else:
            for path in cleanup:  # an uploaded bundle is not needed once imported
                path.unlink(missing_ok=True)
        if done is not None:
            final = jobs.get(job.id)
            if final is not None:
                done(final)

    threading.Thread(target=work, name=f"import-{job.id[:8]}", daemon=True).start()
    return job
