"""Scheduled maintenance: when GC, scrub and expiry run by themselves, and the claim that runs each due time once.

Each serving worker runs a `MaintenanceScheduler` on a daemon thread
(`web.maintenance.start_scheduler`, started after the fork). Every tick it
reads ``maintenance_schedule`` (bundles.schema m008), one row per kind:

- a row whose recorded schedule differs from the one in force (first start,
  or a changed setting) gets its next run computed from now: a schedule
  never fires just because the appliance started;
- a row whose ``next_run_at`` has passed is due. In one write transaction a
  worker checks it is still due, claims the maintenance slot for the job
  (`MaintenanceJobs.claim`) and moves ``next_run_at`` on. The other workers
  find it no longer due, so with any number of workers a due run starts
  once. A due run that finds the slot busy (another job, by hand or
  scheduled) stays due and is tried again on the next tick.
- A run missed while the appliance was down is due at the first tick after
  start (once, however many were missed).

The schedule in force for a kind is the one set through the API (the
``override``, e.g. Harbor's ``PUT /system/gc/schedule``; kept in the
database) if any, else the configured one (``gc_schedule``,
``scrub_schedule``, ``expire_schedule``). Scheduled runs use the default
options: GC with the default retention and grace (it never races an upload
or import), scrub at the configured read rate; the stored ``parameters``
(Harbor's, e.g. ``{"dry_run": true}``) can make scheduled collections dry runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from bundles.maintenance_jobs import GC, KINDS, SCHEDULE, JobBusy, JobOptions, MaintenanceJob, MaintenanceJobs
from bundles.schedule import Schedule, parse_schedule
from registry.db import write_transaction

SCHEDULER_USER = "scheduler"  # who a scheduled job's record and the audit log name
TICK_SECONDS = 1.0
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleState:
    """A kind's schedule as shown: what is in force, where it comes from, the next and last run."""

    kind: str
    schedule: str  # in force (normalised)
    configured: str
    override: str | None
    parameters: dict[str, Any]
    next_run_at: float | None
    last_run_at: float | None
    last_job_id: str | None
    updated_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "schedule": self.schedule, "configured": self.configured,
                "override": self.override, "parameters": self.parameters, "nextRunAt": self.next_run_at,
                "lastRunAt": self.last_run_at, "lastJobId": self.last_job_id, "updatedAt": self.updated_at}


class MaintenanceScheduler:
    """Runs each kind's maintenance job when its schedule says; safe to run in every worker at once."""

    def __init__(self, jobs: MaintenanceJobs, configured: dict[str, Schedule]) -> None:
        unknown = set(configured) - set(KINDS)
        if unknown:
            raise ValueError(f"no maintenance job kind {sorted(unknown)}")
        self.jobs = jobs
        self.configured = dict(configured)
        self._waiting: dict[str, str] = {}  # kind -> the job it waits for (logged once, not every tick)

    def _row(self, kind: str) -> Any:
        return self.jobs.db.execute("SELECT schedule, override, parameters, next_run_at, last_run_at, last_job_id, "
                                    "updated_at FROM maintenance_schedule WHERE kind = ?", [kind]).fetchone()

    def in_force(self, kind: str, row: Any = None) -> Schedule:
        """The schedule in force for `kind`: the API's override if set, else the configured one."""
        row = self._row(kind) if row is None else row
        if row is not None and row[1]:
            return parse_schedule(row[1])
        return self.configured.get(kind) or parse_schedule("off")

    def state(self, kind: str) -> ScheduleState:
        row = self._row(kind)
        spec = self.in_force(kind, row)
        configured = self.configured.get(kind) or parse_schedule("off")
        if row is None:
            return ScheduleState(kind, spec.text, configured.text, None, {}, None, None, None, None)
        # Not yet recorded under the schedule in force (the first tick does it): show what it will be.
        next_run = row[3] if row[0] == spec.text else spec.next_after(time.time())
        return ScheduleState(kind, spec.text, configured.text, row[1], json.loads(row[2]) if row[2] else {},
                             next_run, row[4], row[5], row[6])

    def states(self) -> list[ScheduleState]:
        return [self.state(kind) for kind in KINDS]

    def set_override(self, kind: str, schedule: str | None, parameters: dict[str, Any] | None = None,
                     now: float | None = None) -> ScheduleState:
        """Set (or with None, clear) the API's schedule for `kind`; raises ValueError for a bad schedule."""
        if kind not in KINDS:
            raise ValueError(f"no maintenance job kind {kind!r}")
        spec = parse_schedule(schedule) if schedule is not None else self.configured.get(kind) or \
            parse_schedule("off")
        now = time.time() if now is None else now
        with write_transaction(self.jobs.db) as db:
            db.execute("INSERT INTO maintenance_schedule (kind, schedule, override, parameters, next_run_at, "
                       "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(kind) DO UPDATE SET "
                       "schedule = excluded.schedule, override = excluded.override, "
                       "parameters = excluded.parameters, next_run_at = excluded.next_run_at, "
                       "updated_at = excluded.updated_at",
                       [kind, spec.text, spec.text if schedule is not None else None,
                        json.dumps(parameters or {}), spec.next_after(now), now])
        return self.state(kind)

    def tick(self, now: float | None = None) -> list[MaintenanceJob]:
        """Start every due job this worker claims; the jobs started. Never raises for a busy slot."""
        now = time.time() if now is None else now
        started: list[MaintenanceJob] = []
        for kind in KINDS:
            row = self._row(kind)
            spec = self.in_force(kind, row)
            if row is None or row[0] != spec.text:
                self._record(kind, spec, now)
                continue
            if row[3] is None or row[3] > now:
                continue
            job_id = self._claim_due(kind, spec, now)
            if job_id is not None:
                self.jobs.launch(job_id)
                job = self.jobs.get(job_id)
                if job is not None:
                    started.append(job)
        return started

    def _record(self, kind: str, spec: Schedule, now: float) -> None:
        """Record `spec` as the schedule of `kind`, its next run counted from `now` (unless another worker did)."""
        with write_transaction(self.jobs.db) as db:
            row = db.execute("SELECT schedule FROM maintenance_schedule WHERE kind = ?", [kind]).fetchone()
            if row is not None and row[0] == spec.text:
                return
            db.execute("INSERT INTO maintenance_schedule (kind, schedule, next_run_at, updated_at) VALUES "
                       "(?, ?, ?, ?) ON CONFLICT(kind) DO UPDATE SET schedule = excluded.schedule, "
                       "next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
                       [kind, spec.text, spec.next_after(now), now])

    def _claim_due(self, kind: str, spec: Schedule, now: float) -> str | None:
        """Claim the due run of `kind`: the job's id, or None (not due any more, or the slot is busy)."""
        with write_transaction(self.jobs.db) as db:
            row = db.execute("SELECT schedule, next_run_at, parameters FROM maintenance_schedule WHERE kind = ?",
                             [kind]).fetchone()
            if row is None or row[0] != spec.text or row[1] is None or row[1] > now:
                return None  # another worker claimed it, or the schedule changed meanwhile
            parameters = json.loads(row[2]) if row[2] else {}
            try:
                job_id = self.jobs.claim(db, kind, kind == GC and bool(parameters.get("dry_run")), SCHEDULER_USER,
                                         JobOptions(), SCHEDULE)
            except JobBusy as exc:
                if self._waiting.get(kind) != exc.job.id:
                    self._waiting[kind] = exc.job.id
                    _log.info("scheduled %s due: waiting, %s", kind, exc)
                return None
            db.execute("UPDATE maintenance_schedule SET next_run_at = ?, last_run_at = ?, last_job_id = ?, "
                       "updated_at = ? WHERE kind = ?", [spec.next_after(now), now, job_id, now, kind])
            return job_id

    def run_forever(self, stop: threading.Event, interval: float = TICK_SECONDS) -> None:
        """Tick every `interval` seconds until `stop` is set; logs and carries on after any failure."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a locked or full database: try again next tick; the appliance serves on
                _log.exception("maintenance scheduler: tick failed")
            stop.wait(interval)
