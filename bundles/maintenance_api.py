"""HTTP face of the background maintenance jobs (`bundles.maintenance_jobs`) and their schedule.

Route table (JSON; access as for the other appliance APIs, `bundles.api_access`;
starting a job needs a system administrator, reading one a signed-in reader):

    POST  /api/cargohold/v1/jobs/gc       {"dryRun": false, "retain": 3, "grace": "1h"}: start a collection
    POST  /api/cargohold/v1/jobs/scrub    {"quarantine": true}: start a scrub
    POST  /api/cargohold/v1/jobs/expire   start the expiry of stale uploads and import staging
    GET   /api/cargohold/v1/jobs          the latest jobs, newest first (``?kind=gc|scrub|expire``)
    GET   /api/cargohold/v1/jobs/<id>     one job: state, phase, done/total, result (as `cargohold gc|scrub --json`),
                                          trigger (manual or schedule), options (retain, grace, rateBytes...)
    GET   /api/cargohold/v1/jobs/schedule the schedule of each kind: in force, configured, override, next and
                                          last run (`bundles.maintenance_schedule`)
    PUT   /api/cargohold/v1/jobs/schedule/<kind>  {"schedule": "daily@02:00"}: override the configured schedule
                                          (stored; ``null`` returns to the configured one)

A start answers 202 with the job and its ``Location``; 409 ``JOB_BUSY``
(with the running job in ``detail``) while another GC or scrub runs.
A job's ``state`` is running, done, failed or interrupted (its process ended).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from bundles.api_access import ApiAccess
from bundles.api_json import PREFIX, error_response, flag, guarded_blueprint, json_body
from bundles.gc_policy import DEFAULT_RETAIN
from bundles.maintenance_jobs import EXPIRE, GC, KINDS, SCRUB, JobBusy, MaintenanceJobs
from bundles.maintenance_schedule import MaintenanceScheduler
from bundles.releases import ReleaseError
from registry.gc import DEFAULT_GRACE_SECONDS, parse_grace


def create_blueprint(jobs: MaintenanceJobs, guard: ApiAccess, scheduler: MaintenanceScheduler) -> Blueprint:
    bp = guarded_blueprint("maintenance_jobs", guard)

    def _started(kind: str, dry_run: bool, **options: object) -> Response:
        principal = guard.principal()
        assert principal is not None
        try:
            job = jobs.start(kind, dry_run, principal.username, request.remote_addr or "", **options)  # type: ignore[arg-type]
        except JobBusy as exc:
            return error_response(409, "JOB_BUSY", f"{exc}; wait for it to finish", exc.job.to_json())
        resp = jsonify(job.to_json())
        resp.status_code = 202
        resp.headers["Location"] = f"{PREFIX}/jobs/{job.id}"
        return resp

    @bp.post(f"{PREFIX}/jobs/gc")
    def start_gc() -> Response:
        guard.require_admin("collect garbage")
        body = json_body()
        retain = body.get("retain", DEFAULT_RETAIN)
        if not isinstance(retain, int) or isinstance(retain, bool) or retain < 1:
            raise ReleaseError("retain must be a whole number of releases, at least 1", 400, "BAD_REQUEST")
        try:
            grace = parse_grace(str(body["grace"])) if "grace" in body else DEFAULT_GRACE_SECONDS
        except ValueError as exc:
            raise ReleaseError(str(exc), 400, "BAD_REQUEST") from None
        return _started(GC, flag(body, "dryRun"), retain=retain, grace_seconds=grace)

    @bp.post(f"{PREFIX}/jobs/scrub")
    def start_scrub() -> Response:
        guard.require_admin("scrub the blob store")
        body = json_body()
        return _started(SCRUB, False, quarantine=flag(body, "quarantine", True))

    @bp.post(f"{PREFIX}/jobs/expire")
    def start_expire() -> Response:
        guard.require_admin("expire stale uploads")
        json_body()
        return _started(EXPIRE, False)

    @bp.get(f"{PREFIX}/jobs")
    def list_jobs() -> Response:
        guard.require_reader()
        kind = request.args.get("kind") or None
        if kind is not None and kind not in KINDS:
            return error_response(400, "BAD_REQUEST", f"kind must be one of {', '.join(KINDS)}")
        return jsonify({"jobs": [j.to_json() for j in jobs.list(50, kind)]})

    @bp.get(f"{PREFIX}/jobs/schedule")
    def schedule() -> Response:
        guard.require_reader()
        return jsonify({"schedules": [s.to_json() for s in scheduler.states()]})

    @bp.put(f"{PREFIX}/jobs/schedule/<kind>")
    def set_schedule(kind: str) -> Response:
        guard.require_admin("change the maintenance schedule")
        if kind not in KINDS:
            return error_response(404, "NOT_FOUND", f"no maintenance job kind {kind!r} (one of {', '.join(KINDS)})")
        body = json_body()
        text = body.get("schedule")
        if text is not None and not isinstance(text, str):
            return error_response(400, "BAD_REQUEST", "schedule must be a string like \"daily@03:00\", or null")
        try:
            state = scheduler.set_override(kind, text)
        except ValueError as exc:
            return error_response(400, "BAD_REQUEST", f"{exc}. Nothing was changed.")
        guard.record("update", "maintenance-schedule", f"{kind}: {state.schedule}")
        return jsonify(state.to_json())

    @bp.get(f"{PREFIX}/jobs/<job_id>")
    def get_job(job_id: str) -> Response:
        guard.require_reader()
        job = jobs.get(job_id)
        if job is None:
            return error_response(404, "NOT_FOUND", f"no maintenance job {job_id}")
        return jsonify(job.to_json())

    return bp
