"""Garbage collection and scrub as background jobs: one at a time, with progress, a result, and a record.

A job is a row of ``maintenance_jobs`` (bundles.schema m007) and a daemon
thread in the process that accepted it (a gunicorn worker, or the CLI).
The row records that process (pid and start time, `registry.processes`), so
a job whose process died (a killed worker, a restart) reads ``interrupted``
instead of ``running`` forever; nothing about such a job needs undoing,
since collection and scrub are safe to stop at any point and to run again.

Only one job runs at a time, across every worker: `MaintenanceJobs.start`
claims the slot in a write transaction (a second start while one runs gets
`JobBusy` naming it). Bundle imports keep their own guard against the file
sweep (`registry.gc.import_guard`).

Kinds: ``gc`` (with ``dry_run``: what would be removed, nothing changed) and
``scrub`` (re-hash every blob, quarantine damaged ones). Their results are
the same JSON `cargohold gc --json` and `cargohold scrub --json` print.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from bundles.gc_policy import DEFAULT_RETAIN, ClusterSource, GcRefused, collect
from bundles.releases import Releases
from registry.audit import AuditLog
from registry.db import open_database, write_transaction
from registry.gc import DEFAULT_GRACE_SECONDS
from registry.paths import DataPaths
from registry.processes import process_alive, process_start
from registry.scrub import scrub
from registry.uploads import Uploads

_log = logging.getLogger(__name__)

GC = "gc"
SCRUB = "scrub"
RUNNING = "running"
Progress = Callable[[str, int, int], None]  # (phase, done, total)


class JobBusy(RuntimeError):
    """Another maintenance job runs now; `job` is it."""

    def __init__(self, job: MaintenanceJob) -> None:
        super().__init__(f"a {job.title.lower()} is already running (job {job.id})")
        self.job = job


@dataclass(frozen=True)
class MaintenanceJob:
    id: str
    kind: str
    dry_run: bool
    state: str  # running, done, failed, interrupted
    phase: str | None
    done: int
    total: int
    result: dict[str, Any] | None
    error: str | None
    requested_by: str | None
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def title(self) -> str:
        if self.kind == SCRUB:
            return "Scrub"
        return "Garbage collection dry run" if self.dry_run else "Garbage collection"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "dryRun": self.dry_run, "state": self.state, "phase": self.phase,
                "done": self.done, "total": self.total, "result": self.result, "error": self.error,
                "requestedBy": self.requested_by, "createdAt": self.created_at, "updatedAt": self.updated_at,
                "finishedAt": self.finished_at}


_COLUMNS = ("id, kind, dry_run, state, phase, done, total, result, error, requested_by, created_at, updated_at, "
            "finished_at, pid, pid_start")


class MaintenanceJobs:
    """The maintenance jobs of one data directory."""

    def __init__(self, releases: Releases, uploads: Uploads | None, audit: AuditLog | None = None) -> None:
        self.releases = releases
        self.uploads = uploads
        self.audit = audit

    @property
    def paths(self) -> DataPaths:
        return self.releases.registry.paths

    @property
    def db(self) -> Database:
        return open_database(self.paths)

    # -- reading

    def get(self, job_id: str) -> MaintenanceJob | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM maintenance_jobs WHERE id = ?", [job_id]).fetchone()
        return self._reap(row) if row else None

    def list(self, limit: int = 20) -> list[MaintenanceJob]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM maintenance_jobs ORDER BY created_at DESC LIMIT ?",
                               [limit]).fetchall()
        return [self._reap(r) for r in rows]

    def latest(self, kind: str, dry_run: bool | None = None) -> MaintenanceJob | None:
        for job in self.list(50):
            if job.kind == kind and (dry_run is None or job.dry_run == dry_run):
                return job
        return None

    def _reap(self, row: Any) -> MaintenanceJob:
        """The job of `row`; one left running by a process that is gone is marked interrupted."""
        job = MaintenanceJob(row[0], row[1], bool(row[2]), row[3], row[4], int(row[5] or 0), int(row[6] or 0),
                             json.loads(row[7]) if row[7] else None, row[8], row[9], row[10], row[11], row[12])
        if job.state != RUNNING or process_alive(row[13], row[14]):
            return job
        message = ("interrupted: the appliance process running it ended before it finished. Nothing needs "
                   "undoing; start it again.")
        now = time.time()
        try:
            with write_transaction(self.db) as db:
                db.execute("UPDATE maintenance_jobs SET state = 'interrupted', error = ?, finished_at = ?, "
                           "updated_at = ? WHERE id = ? AND state = 'running'", [message, now, now, job.id])
        except sqlite3.Error as exc:  # a full database: shown as interrupted all the same, recorded next time
            _log.warning("maintenance job %s: could not record it as interrupted: %s", job.id, exc)
        return MaintenanceJob(**{**job.__dict__, "state": "interrupted", "error": message, "finished_at": now})

    # -- running

    def start(self, kind: str, dry_run: bool, requested_by: str, source_ip: str = "",
              retain: int = DEFAULT_RETAIN, grace_seconds: float = DEFAULT_GRACE_SECONDS,
              quarantine: bool = True) -> MaintenanceJob:
        """Claim the one slot and run the job on a daemon thread of this process; raises JobBusy."""
        if kind not in (GC, SCRUB):
            raise ValueError(f"unknown maintenance job kind {kind!r}")
        for job in self.list(20):  # reaps jobs whose process died, so they free the slot
            if job.state == RUNNING:
                raise JobBusy(job)
        job_id = uuid.uuid4().hex
        now = time.time()
        pid = os.getpid()
        with write_transaction(self.db) as db:
            running = db.execute(f"SELECT {_COLUMNS} FROM maintenance_jobs WHERE state = 'running' "
                                 "ORDER BY created_at DESC LIMIT 1").fetchone()
            if running is not None:  # started by another worker meanwhile
                raise JobBusy(self._reap(running))
            db.execute("INSERT INTO maintenance_jobs (id, kind, dry_run, state, phase, done, total, requested_by, "
                       "pid, pid_start, created_at, updated_at) VALUES (?, ?, ?, 'running', 'starting', 0, 0, ?, ?, "
                       "?, ?, ?)", [job_id, kind, int(dry_run and kind == GC), requested_by, pid,
                                    process_start(pid), now, now])

        def work() -> None:
            self._run(job_id, kind, dry_run, requested_by, source_ip, retain, grace_seconds, quarantine)

        threading.Thread(target=work, name=f"maintenance-{kind}-{job_id[:8]}", daemon=True).start()
        started = self.get(job_id)
        assert started is not None
        return started

    def _progress(self, job_id: str) -> Progress:
        last = [0.0]

        def report(phase: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] < 0.5 and done < total:
                return  # at most twice a second: progress is for eyes, not a write per blob
            last[0] = now
            try:
                with write_transaction(self.db) as db:
                    db.execute("UPDATE maintenance_jobs SET phase = ?, done = ?, total = ?, updated_at = ? "
                               "WHERE id = ?", [phase, done, total, time.time(), job_id])
            except sqlite3.Error as exc:
                _log.warning("maintenance job %s: could not record progress: %s", job_id, exc)

        return report

    def _run(self, job_id: str, kind: str, dry_run: bool, requested_by: str, source_ip: str, retain: int,
             grace_seconds: float, quarantine: bool) -> None:
        progress = self._progress(job_id)
        try:
            if kind == GC:
                progress("collecting", 0, 0)
                result = collect(self.releases, self.uploads, retain, grace_seconds, dry_run,
                                 ClusterSource.from_env(), False)
                summary = (f"{len(result['manifestsRemoved'])} manifests, {len(result['blobsRemoved'])} blobs, "
                           f"{result['bytesReclaimed']} bytes (retain {retain})")
                audited = None if dry_run else ("delete", "garbage-collection", summary)
            else:
                count = self.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
                progress("hashing", 0, int(count))
                report = scrub(self.releases.registry, quarantine,
                               lambda checked, _bytes: progress("hashing", checked, max(int(count), checked)))
                result = report.to_json()
                audited = ("update", "scrub", f"{report.checked} blobs checked, {len(report.damaged)} damaged")
        except GcRefused as exc:
            # The CLI's message ends with what to pass on its command line; a job says what to do instead.
            why = str(exc).split(". Nothing was collected.", 1)[0]
            self._finish(job_id, "failed", None, f"{why}. Nothing was collected. Check the appliance's connection "
                                                 "to the cluster, then start the collection again.")
            return
        except Exception as exc:  # recorded on the job, which the caller follows; the log has the rest
            _log.exception("maintenance job %s (%s) failed", job_id, kind)
            self._finish(job_id, "failed", None, f"{type(exc).__name__}: {exc}. Nothing more was changed; "
                                                 "start it again, and if it fails again, check the disk.")
            return
        if audited is not None and self.audit is not None:
            try:
                self.audit.record(requested_by, *audited, source_ip)
            except sqlite3.Error:
                _log.exception("maintenance job %s: could not record it in the audit log", job_id)
        self._finish(job_id, "done", result, None)

    def _finish(self, job_id: str, state: str, result: dict[str, Any] | None, error: str | None) -> None:
        now = time.time()
        for delay in (1.0, 5.0, None):
            try:
                with write_transaction(self.db) as db:
                    db.execute("UPDATE maintenance_jobs SET state = ?, result = ?, error = ?, phase = NULL, "
                               "done = CASE WHEN total > 0 AND ? = 'done' THEN total ELSE done END, "
                               "finished_at = ?, updated_at = ? WHERE id = ?",
                               [state, json.dumps(result) if result is not None else None, error, state, now, now,
                                job_id])
                return
            except sqlite3.Error as exc:
                _log.error("maintenance job %s: could not record its end: %s", job_id, exc)
                if delay is None:
                    return
                time.sleep(delay)
