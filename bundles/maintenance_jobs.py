"""Maintenance as background jobs: garbage collection, scrub and expiry, one at a time, with progress and a record.

A job is a row of ``maintenance_jobs`` (bundles.schema m007, m008) and a
thread in the process that claimed it (a gunicorn worker, or the CLI).
The row records that process (pid and start time, `registry.processes`), so
a job whose process died (a killed worker, a restart) reads ``interrupted``
instead of ``running`` forever; nothing about such a job needs undoing,
since collection, scrub and expiry are safe to stop at any point and to run
again.

Only one job runs at a time, across every worker and process: every entry
point (the jobs API, the older synchronous ``POST /gc`` and ``/scrub``, the
UI, the CLI's ``gc``/``scrub``/``expire``, the scheduler of
`bundles.maintenance_schedule`) claims the one slot with `claim` inside a
write transaction; a claim while a job runs raises `JobBusy` naming it.
Bundle imports keep their own guard against the file sweep
(`registry.gc.import_guard`).

Kinds: ``gc`` (with ``dry_run``: what would be removed, nothing changed),
``scrub`` (re-hash every blob at a limited read rate, quarantine damaged
ones) and ``expire`` (stale upload sessions and import staging,
`bundles.expiry`). A job's thread runs at a lower CPU and I/O priority
(`registry.throttle.lower_priority`), so pulls keep their speed. Results are
the JSON `cargohold gc|scrub|expire --json` print; ``options`` records the
settings the job ran with (retention, grace, read-rate limit).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bundles.expiry import ExpireStep, expire_staging
from bundles.gc_policy import DEFAULT_RETAIN, ClusterSource, GcRefused, collect
from bundles.releases import Releases
from registry import leases, logcontext
from registry.audit import AuditLog
from registry.db import open_database, write_transaction
from registry.dbengine import Database
from registry.dbengine import Error as DatabaseError
from registry.gc import DEFAULT_GRACE_SECONDS
from registry.paths import DataPaths
from registry.processes import process_alive, process_start
from registry.scrub import scrub
from registry.throttle import lower_priority
from registry.uploads import Uploads

_log = logging.getLogger(__name__)

GC = "gc"
SCRUB = "scrub"
EXPIRE = "expire"
KINDS = (GC, SCRUB, EXPIRE)
RUNNING = "running"
MANUAL = "manual"
SCHEDULE = "schedule"
DEFAULT_SCRUB_RATE = 64 << 20  # bytes per second a scrub reads by default
Progress = Callable[[str, int, int], None]  # (phase, done, total)
Errors = list[BaseException]  # what a job's thread raised, for a caller that waits for it
Audited = tuple[str, str, str]  # (action, resource type, summary) for the audit log


class JobBusy(RuntimeError):
    """Another maintenance job runs now; `job` is it."""

    def __init__(self, job: MaintenanceJob) -> None:
        by = f", started by {job.requested_by}" if job.requested_by else ""
        super().__init__(f"a {job.title.lower()} is already running (job {job.id}{by}, "
                         f"{job.phase or 'starting'} {job.done}/{job.total})")
        self.job = job


@dataclass(frozen=True)
class JobOptions:
    """How a job runs. `rate_bytes` None: the appliance's configured scrub rate."""

    retain: int = DEFAULT_RETAIN
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    quarantine: bool = True
    ignore_cluster: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    rate_bytes: int | None = None
    harbor: dict[str, Any] | None = None  # the parameters a Harbor API caller gave (recorded, shown back)

    def to_json(self) -> dict[str, Any]:
        doc = {"retain": self.retain, "graceSeconds": self.grace_seconds, "quarantine": self.quarantine,
               "ignoreCluster": self.ignore_cluster, "kubeconfig": self.kubeconfig, "context": self.context,
               "rateBytes": self.rate_bytes}
        return {**doc, "harbor": self.harbor} if self.harbor else doc

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> JobOptions:
        d = doc or {}
        return cls(int(d.get("retain", DEFAULT_RETAIN)), float(d.get("graceSeconds", DEFAULT_GRACE_SECONDS)),
                   bool(d.get("quarantine", True)), bool(d.get("ignoreCluster", False)), d.get("kubeconfig"),
                   d.get("context"), d.get("rateBytes"), d.get("harbor"))


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
    trigger: str = MANUAL
    options: dict[str, Any] = field(default_factory=dict)
    seq: int = 0  # the job's number: 1, 2, ... (Harbor's integer id)

    @property
    def title(self) -> str:
        if self.kind == SCRUB:
            return "Scrub"
        if self.kind == EXPIRE:
            return "Expiry of stale uploads"
        return "Garbage collection dry run" if self.dry_run else "Garbage collection"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "dryRun": self.dry_run, "state": self.state, "phase": self.phase,
                "done": self.done, "total": self.total, "result": self.result, "error": self.error,
                "requestedBy": self.requested_by, "createdAt": self.created_at, "updatedAt": self.updated_at,
                "finishedAt": self.finished_at, "trigger": self.trigger, "options": self.options, "seq": self.seq}


_COLUMNS = ("id, kind, dry_run, state, phase, done, total, result, error, requested_by, created_at, updated_at, "
            "finished_at, pid, pid_start, trigger, options, seq")


class MaintenanceJobs:
    """The maintenance jobs of one data directory.

    `scrub_rate_bytes`: the read rate a scrub keeps to unless told otherwise
    (0: no limit); `expire_steps`: what the expire job clears besides registry
    upload sessions and import staging; `upload_expiry_seconds`: how long an
    idle upload, or an untouched staging directory, lives.
    """

    def __init__(self, releases: Releases, uploads: Uploads | None, audit: AuditLog | None = None,
                 scrub_rate_bytes: int = DEFAULT_SCRUB_RATE, expire_steps: Sequence[ExpireStep] = (),
                 upload_expiry_seconds: float | None = None) -> None:
        self.releases = releases
        self.uploads = uploads
        self.audit = audit
        self.scrub_rate_bytes = scrub_rate_bytes
        self.expire_steps = tuple(expire_steps)
        self.upload_expiry_seconds = float(upload_expiry_seconds if upload_expiry_seconds is not None else
                                           uploads.expiry_seconds if uploads is not None else 24 * 3600)

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

    def by_seq(self, seq: int) -> MaintenanceJob | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM maintenance_jobs WHERE seq = ?", [seq]).fetchone()
        return self._reap(row) if row else None

    def list(self, limit: int = 20, kind: str | None = None, offset: int = 0) -> list[MaintenanceJob]:
        where, args = ("WHERE kind = ? ", [kind]) if kind else ("", [])
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM maintenance_jobs {where}ORDER BY created_at DESC "
                               "LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [self._reap(r) for r in rows]

    def count(self, kind: str | None = None) -> int:
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        return int(self.db.execute(f"SELECT COUNT(*) FROM maintenance_jobs {where}", args).fetchone()[0])

    def latest(self, kind: str, dry_run: bool | None = None, requested_by: str | None = None) -> MaintenanceJob | None:
        for job in self.list(50, kind):
            if dry_run is not None and job.dry_run != dry_run:
                continue
            if requested_by is None or job.requested_by == requested_by:
                return job
        return None

    def running(self) -> MaintenanceJob | None:
        """The job holding the slot now, if any (one whose process died is marked interrupted first)."""
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM maintenance_jobs WHERE state = 'running' "
                               "ORDER BY created_at DESC").fetchall()
        for row in rows:
            job = self._reap(row)
            if job.state == RUNNING:
                return job
        return None

    def _reap(self, row: Any) -> MaintenanceJob:
        """The job of `row`; one left running by a process that is gone is marked interrupted."""
        job = MaintenanceJob(row[0], row[1], bool(row[2]), row[3], row[4], int(row[5] or 0), int(row[6] or 0),
                             json.loads(row[7]) if row[7] else None, row[8], row[9], row[10], row[11], row[12],
                             row[15] or MANUAL, json.loads(row[16]) if row[16] else {}, int(row[17] or 0))
        machine_alive = leases.machine_judge(self.paths)
        if job.state != RUNNING or process_alive(row[13], row[14], machine_alive):
            return job
        message = ("interrupted: the appliance process running it ended before it finished. Nothing needs "
                   "undoing; start it again.")
        now = time.time()
        try:
            with write_transaction(self.db) as db:
                db.execute("UPDATE maintenance_jobs SET state = 'interrupted', error = ?, finished_at = ?, "
                           "updated_at = ? WHERE id = ? AND state = 'running'", [message, now, now, job.id])
        except DatabaseError as exc:  # a full database: shown as interrupted all the same, recorded next time
            _log.warning("maintenance job %s: could not record it as interrupted: %s", job.id, exc)
        return MaintenanceJob(**{**job.__dict__, "state": "interrupted", "error": message, "finished_at": now})

    # -- claiming the slot

    def claim(self, db: Database, kind: str, dry_run: bool, requested_by: str,
              options: JobOptions | None = None, trigger: str = MANUAL) -> str:
        """Record a new running job owned by this process, inside the caller's write transaction; its id.

        Raises JobBusy when another job holds the slot; ValueError for an unknown kind.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown maintenance job kind {kind!r}")
        running = self.running()
        if running is not None:
            raise JobBusy(running)
        options = options or JobOptions()
        if kind == SCRUB and options.rate_bytes is None:
            options = JobOptions(**{**asdict(options), "rate_bytes": self.scrub_rate_bytes})
        job_id = uuid.uuid4().hex
        now = time.time()
        pid = os.getpid()
        leases.keep_alive(self.paths)  # replicas on other machines judge this job by this machine's lease
        db.execute("INSERT INTO maintenance_jobs (id, kind, dry_run, state, phase, done, total, requested_by, "
                   "pid, pid_start, created_at, updated_at, trigger, options, seq) VALUES (?, ?, ?, 'running', "
                   "'starting', 0, 0, ?, ?, ?, ?, ?, ?, ?, "
                   "(SELECT COALESCE(MAX(seq), 0) + 1 FROM maintenance_jobs))",
                   [job_id, kind, int(dry_run and kind == GC), requested_by, pid, process_start(pid), now, now,
                    trigger, json.dumps(options.to_json())])
        return job_id

    def _claim_now(self, kind: str, dry_run: bool, requested_by: str, options: JobOptions | None,
                   trigger: str) -> str:
        with write_transaction(self.db) as db:
            return self.claim(db, kind, dry_run, requested_by, options, trigger)

    # -- running

    def start(self, kind: str, dry_run: bool, requested_by: str, source_ip: str = "",
              retain: int = DEFAULT_RETAIN, grace_seconds: float = DEFAULT_GRACE_SECONDS,
              quarantine: bool = True, options: JobOptions | None = None, trigger: str = MANUAL) -> MaintenanceJob:
        """Claim the one slot and run the job on a daemon thread of this process; raises JobBusy."""
        options = options or JobOptions(retain=retain, grace_seconds=grace_seconds, quarantine=quarantine)
        job_id = self._claim_now(kind, dry_run, requested_by, options, trigger)
        self.launch(job_id, source_ip)
        started = self.get(job_id)
        assert started is not None
        return started

    def launch(self, job_id: str, source_ip: str = "", progress: Progress | None = None,
               errors: Errors | None = None) -> threading.Thread:
        """Run the claimed job `job_id` on a daemon thread (at a lower priority); returns the thread."""
        job = self.get(job_id)
        assert job is not None, job_id

        def work() -> None:
            lower_priority()
            self._run(job, source_ip, progress, errors)

        # In a copy of this context: the job logs with the id of the request that started it.
        return logcontext.start_thread(work, f"maintenance-{job.kind}-{job_id[:8]}")

    def run(self, kind: str, dry_run: bool, requested_by: str, source_ip: str = "",
            options: JobOptions | None = None, progress: Progress | None = None,
            wait: float | None = None) -> MaintenanceJob:
        """Claim the slot, run the job to its end (on its own lower-priority thread) and return it finished.

        With `wait` (seconds), a busy slot is waited for that long before JobBusy is raised.
        Raises GcRefused (as `collect` words it) when a collection was refused; the job records it too.
        """
        deadline = time.monotonic() + (wait or 0)
        while True:
            try:
                job_id = self._claim_now(kind, dry_run, requested_by, options, MANUAL)
                break
            except JobBusy:
                if wait is None or time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
        errors: Errors = []
        self.launch(job_id, source_ip, progress, errors).join()
        for exc in errors:
            raise exc
        finished = self.get(job_id)
        assert finished is not None
        return finished

    def _progress(self, job_id: str, also: Progress | None = None) -> Progress:
        last_at = [0.0]
        last_phase = [""]

        def report(phase: str, done: int, total: int) -> None:
            if also is not None:
                also(phase, done, total)
            now = time.monotonic()
            if now - last_at[0] < 0.5 and done < total and phase == last_phase[0]:
                return  # at most twice a second: progress is for eyes, not a write per blob
            last_at[0], last_phase[0] = now, phase
            try:
                with write_transaction(self.db) as db:
                    db.execute("UPDATE maintenance_jobs SET phase = ?, done = ?, total = ?, updated_at = ? "
                               "WHERE id = ?", [phase, done, total, time.time(), job_id])
            except DatabaseError as exc:
                _log.warning("maintenance job %s: could not record progress: %s", job_id, exc)

        return report

    def _execute(self, job: MaintenanceJob, progress: Progress) -> tuple[dict[str, Any], Audited | None]:
        """Do the work of `job`; its result and what to audit (None: nothing). Raises what the work raises."""
        options = JobOptions.from_json(job.options)
        if job.kind == GC:
            progress("checking the cluster", 0, 0)
            cluster = ClusterSource.from_env(Path(options.kubeconfig) if options.kubeconfig else None,
                                             options.context)
            result = collect(self.releases, self.uploads, options.retain, options.grace_seconds, job.dry_run,
                             cluster, options.ignore_cluster, progress)
            summary = (f"{len(result['manifestsRemoved'])} manifests, {len(result['blobsRemoved'])} blobs, "
                       f"{result['bytesReclaimed']} bytes (retain {options.retain})")
            return result, None if job.dry_run else ("delete", "garbage-collection", summary)
        if job.kind == SCRUB:
            count = int(self.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])
            progress("hashing", 0, count)
            report = scrub(self.releases.registry, options.quarantine,
                           lambda checked, _bytes: progress("hashing", checked, max(count, checked)),
                           rate_bytes=int(options.rate_bytes or 0))
            return report.to_json(), ("update", "scrub",
                                      f"{report.checked} blobs checked, {len(report.damaged)} damaged")
        return self._expire(progress), None

    def _expire(self, progress: Progress) -> dict[str, Any]:
        started = time.monotonic()
        steps: list[ExpireStep] = []
        if self.uploads is not None:
            uploads = self.uploads
            steps.append(ExpireStep("uploads", lambda: uploads.expire(self.upload_expiry_seconds)))
        steps += self.expire_steps
        steps.append(ExpireStep("staging", lambda: expire_staging(self.paths, self.upload_expiry_seconds)))
        result: dict[str, Any] = {"maxAgeSeconds": self.upload_expiry_seconds}
        freed = 0
        for done, step in enumerate(steps):
            progress(f"expiring {step.name}", done, len(steps))
            count, size = step.run()
            result[step.name] = {"removed": count, "bytes": size}
            freed += size
        progress("expired", len(steps), len(steps))
        result["bytesReclaimed"] = freed
        result["durationSeconds"] = round(time.monotonic() - started, 3)
        return result

    def _run(self, job: MaintenanceJob, source_ip: str, also: Progress | None,
             errors: Errors | None) -> None:
        progress = self._progress(job.id, also)
        try:
            result, audited = self._execute(job, progress)
        except GcRefused as exc:
            if errors is not None:
                errors.append(exc)  # the caller (the CLI) words it for its own command line
            # The CLI's message ends with what to pass on its command line; a job says what to do instead.
            why = str(exc).split(". Nothing was collected.", 1)[0]
            self._finish(job.id, "failed", None, f"{why}. Nothing was collected. Check the appliance's connection "
                                                 "to the cluster, then start the collection again.")
            return
        except Exception as exc:  # recorded on the job, which the caller follows; the log has the rest
            _log.exception("maintenance job %s (%s) failed", job.id, job.kind)
            self._finish(job.id, "failed", None, f"{type(exc).__name__}: {exc}. Nothing more was changed; "
                                                 "start it again, and if it fails again, check the disk.")
            return
        if audited is not None and self.audit is not None:
            try:
                self.audit.record(job.requested_by or "", *audited, source_ip)
            except DatabaseError:
                _log.exception("maintenance job %s: could not record it in the audit log", job.id)
        self._finish(job.id, "done", result, None)

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
            except DatabaseError as exc:
                _log.error("maintenance job %s: could not record its end: %s", job_id, exc)
                if delay is None:
                    return
                time.sleep(delay)
