"""Harbor's garbage-collection endpoints, backed by the appliance's maintenance jobs and GC schedule.

Route table (Harbor's shapes; system administrators only; errors in Harbor's
``{"errors": [{"code", "message"}]}``):

    GET   /api/v2.0/system/gc                 GC history (``GCHistory``), newest first; page, page_size;
                                              X-Total-Count and Link
    GET   /api/v2.0/system/gc/{id}            one run
    GET   /api/v2.0/system/gc/{id}/log        its log, text/plain
    GET   /api/v2.0/system/gc/schedule        the schedule (``Schedule``: {"schedule": {"type", "cron",
                                              "next_scheduled_time"}, "parameters", ...})
    POST  /api/v2.0/system/gc/schedule        type ``Manual``: run a collection now (201, Location of the run);
                                              another type: set the schedule (201)
    PUT   /api/v2.0/system/gc/schedule        set the schedule (200); ``Manual`` runs now as POST does

A run is a maintenance job of kind ``gc`` (`bundles.maintenance_jobs`), so it
takes the one slot (409 ``CONFLICT`` naming the running job), keeps the
release retention, in-use protection and grace of every collection, and
appears in ``/api/cargohold/v1/jobs`` and the UI; its Harbor id is the job's
number (``seq``). The schedule set here is stored as the GC schedule's
override (`bundles.maintenance_schedule`) and wins over ``gc_schedule``
until set again; type ``None`` turns scheduled collection off.

Harbor's types map onto the appliance's schedule syntax (`bundles.schedule`):
Hourly = ``hourly``, Daily = ``daily@00:00``, Weekly = ``weekly@sun 00:00``,
Custom takes a six-field cron (seconds first, as Harbor's) of the shapes
``0 M H * * *`` (daily), ``0 M H * * D`` (weekly, D 0-6 from Sunday) and
``0 0 * * * *`` (hourly), or ``@every 30m`` / ``@hourly`` / ``@daily`` /
``@weekly``; other crons are refused naming these. Parameters: ``dry_run``
(scheduled and manual runs only list what would go), ``delete_untagged``
(recorded; untagged manifests no release or cluster keeps are always
collected once older than the grace), ``workers`` (recorded; one thread).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from bundles.api_access import ApiAccess
from bundles.api_json import guarded_blueprint, harbor_listed, harbor_paging, json_body
from bundles.maintenance_jobs import GC, SCHEDULE, JobBusy, JobOptions, MaintenanceJob, MaintenanceJobs
from bundles.maintenance_schedule import MaintenanceScheduler
from bundles.releases import ReleaseError
from bundles.schedule import Schedule, parse_schedule

PREFIX = "/api/v2.0"
_STATUS = {"running": "Running", "done": "Success", "failed": "Error", "interrupted": "Stopped"}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TYPES = ("Hourly", "Daily", "Weekly", "Custom", "None", "Manual")
_PARAMETERS = {"delete_untagged": bool, "dry_run": bool, "workers": int}
_CRON_SHAPES = ('"0 M H * * *" (daily), "0 M H * * D" (weekly, D 0-6 from Sunday), "0 0 * * * *" (hourly), '
                '"@every 30m", "@hourly", "@daily" or "@weekly"')


def _bad(message: str) -> ReleaseError:
    return ReleaseError(message, 400, "BAD_REQUEST")


def iso(t: float | None) -> str | None:
    """Unix seconds as Harbor writes times (UTC, milliseconds)."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def harbor_schedule(schedule: Schedule) -> tuple[str, str]:
    """Harbor's (type, cron) for an appliance schedule."""
    if not schedule.enabled:
        return "None", ""
    if schedule.kind == "hourly":
        return "Hourly", "0 0 * * * *"
    if schedule.kind == "every":
        return "Custom", f"@every {schedule.text.removeprefix('every ')}"
    dow = "*" if schedule.kind == "daily" else str((schedule.weekday + 1) % 7)
    cron = f"0 {schedule.minute} {schedule.hour} * * {dow}"
    if schedule.hour == schedule.minute == 0 and (schedule.kind == "daily" or schedule.weekday == 6):
        return ("Daily" if schedule.kind == "daily" else "Weekly"), cron
    return "Custom", cron


def appliance_schedule(kind: str, cron: str) -> str:
    """The appliance schedule for Harbor's `kind` and `cron`; raises ReleaseError (400) naming what is wrong."""
    if kind == "None":
        return "off"
    if kind == "Hourly":
        return "hourly"
    if kind == "Daily":
        return "daily@00:00"
    if kind == "Weekly":
        return "weekly@sun 00:00"
    text = " ".join(cron.split())
    descriptors = {"@hourly": "hourly", "@daily": "daily@00:00", "@midnight": "daily@00:00",
                   "@weekly": "weekly@sun 00:00"}
    if text in descriptors:
        return descriptors[text]
    every = re.fullmatch(r"@every (\d{1,9})([smhd])", text)
    if every:
        return f"every {every.group(1)}{every.group(2)}"
    fields = text.split(" ")
    if len(fields) == 6 and fields[0] == "0" and fields[3] == fields[4] == "*":
        minute, hour, dow = fields[1], fields[2], fields[5]
        if minute == "0" and hour == "*" and dow == "*":
            return "hourly"
        if minute.isdigit() and hour.isdigit() and int(minute) < 60 and int(hour) < 24:
            if dow == "*":
                return f"daily@{int(hour):02d}:{int(minute):02d}"
            if dow.isdigit() and int(dow) <= 7:
                return f"weekly@{_DAYS[(int(dow) - 1) % 7]} {int(hour):02d}:{int(minute):02d}"
    raise _bad(f"cron {cron!r} is not a schedule this appliance runs: use a six-field cron of the shapes "
               f"{_CRON_SHAPES}. Nothing was changed.")


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("parameters must be an object like {\"dry_run\": false, \"delete_untagged\": true}")
    for key, value in params.items():
        want = _PARAMETERS.get(key)
        if want is None:
            raise _bad(f"parameter {key!r} is not supported; supported: {', '.join(_PARAMETERS)}")
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise _bad(f"parameter {key} must be {'true or false' if want is bool else 'a whole number'}")
    return dict(params)


def _schedule_body(body: dict[str, Any]) -> tuple[str, str]:
    schedule = body.get("schedule")
    if not isinstance(schedule, dict):
        raise _bad("schedule must be an object like {\"type\": \"Daily\"} or {\"type\": \"Manual\"}")
    kind = schedule.get("type")
    if kind not in _TYPES:
        raise _bad(f"schedule type must be one of {', '.join(_TYPES)}, not {kind!r}")
    cron = schedule.get("cron") or ""
    if not isinstance(cron, str):
        raise _bad("schedule cron must be a string")
    if kind == "Custom" and not cron.strip():
        raise _bad("a Custom schedule needs a cron")
    return kind, cron


def create_blueprint(jobs: MaintenanceJobs, scheduler: MaintenanceScheduler, guard: ApiAccess) -> Blueprint:
    """The /api/v2.0/system/gc* endpoints over the appliance's maintenance jobs."""
    bp = guarded_blueprint("harbor_gc", guard)

    def history(job: MaintenanceJob, in_force: str | None = None) -> dict[str, Any]:
        if job.trigger == SCHEDULE:
            kind, cron = harbor_schedule(parse_schedule(in_force or scheduler.state(GC).schedule))
            schedule: dict[str, Any] = {"type": kind, "cron": cron}
        else:
            schedule = {"type": "Manual", "cron": ""}
        params = {"dry_run": job.dry_run, "delete_untagged": True, **(job.options.get("harbor") or {})}
        return {"id": job.seq, "job_name": "GARBAGE_COLLECTION", "job_kind": job.trigger.upper(),
                "job_parameters": json.dumps(params), "schedule": schedule,
                "job_status": _STATUS.get(job.state, "Error"), "deleted": False,
                "creation_time": iso(job.created_at), "update_time": iso(job.updated_at)}

    def find(gc_id: str) -> MaintenanceJob:
        job = jobs.by_seq(int(gc_id)) if gc_id.isascii() and gc_id.isdigit() and len(gc_id) < 12 else None
        if job is None or job.kind != GC:
            raise ReleaseError(f"garbage collection {gc_id[:40]!r} not found", 404, "NOT_FOUND")
        return job

    @bp.get(f"{PREFIX}/system/gc")
    def list_gc() -> Response:
        guard.require_admin("read the garbage collection history")
        page, size = harbor_paging(_bad)
        total = jobs.count(GC)
        in_force = scheduler.state(GC).schedule
        return harbor_listed([history(j, in_force) for j in jobs.list(size, GC, (page - 1) * size)], total, page, size)

    @bp.get(f"{PREFIX}/system/gc/<gc_id>")
    def get_gc(gc_id: str) -> Response:
        guard.require_admin("read the garbage collection history")
        return jsonify(history(find(gc_id)))

    @bp.get(f"{PREFIX}/system/gc/<gc_id>/log")
    def gc_log(gc_id: str) -> Response:
        guard.require_admin("read the garbage collection history")
        return Response("".join(f"{line}\n" for line in log_lines(find(gc_id))), mimetype="text/plain")

    def schedule_json() -> dict[str, Any]:
        state = scheduler.state(GC)
        kind, cron = harbor_schedule(parse_schedule(state.schedule))
        # Times the appliance does not have (no next run when off; never set here) are left out, not null.
        schedule = {"type": kind, "cron": cron, "next_scheduled_time": iso(state.next_run_at)}
        times = {"creation_time": iso(state.updated_at), "update_time": iso(state.updated_at)}
        return {"schedule": {k: v for k, v in schedule.items() if v is not None},
                "parameters": state.parameters or {"delete_untagged": True, "dry_run": False},
                **{k: v for k, v in times.items() if v is not None}}

    @bp.get(f"{PREFIX}/system/gc/schedule")
    def get_schedule() -> Response:
        guard.require_admin("read the garbage collection schedule")
        return jsonify(schedule_json())

    def change(status: int) -> Response:
        principal = guard.require_admin("run or schedule garbage collection")
        body = json_body()
        kind, cron = _schedule_body(body)
        params = _parameters(body)
        if kind == "Manual":
            options = JobOptions(harbor=params) if params else JobOptions()
            try:
                job = jobs.start(GC, bool(params.get("dry_run")), principal.username, request.remote_addr or "",
                                 options=options)
            except JobBusy as exc:
                raise ReleaseError(f"{exc}; wait for it to finish", 409, "CONFLICT") from None
            resp = Response(status=201)
            resp.headers["Location"] = f"{PREFIX}/system/gc/{job.seq}"
            return resp
        text = appliance_schedule(kind, cron)
        state = scheduler.set_override(GC, text, params)
        guard.record("update", "gc-schedule", f"{state.schedule} {json.dumps(params, sort_keys=True)}")
        return Response(status=status)

    @bp.post(f"{PREFIX}/system/gc/schedule")
    def create_schedule() -> Response:
        return change(201)

    @bp.put(f"{PREFIX}/system/gc/schedule")
    def update_schedule() -> Response:
        return change(200)

    return bp


def log_lines(job: MaintenanceJob) -> list[str]:
    """A run's log as Harbor shows one: what ran, with what, what it removed (or would), and how it ended."""
    started = iso(job.created_at)
    what = "dry run" if job.dry_run else "run"
    lines = [f"{started} [INFO] garbage collection {what} {job.id} started by "
             f"{'the schedule' if job.trigger == SCHEDULE else job.requested_by}",
             f"{started} [INFO] retain {job.options.get('retain')} releases, grace "
             f"{job.options.get('graceSeconds')} s"]
    if job.state == "running":
        lines.append(f"{iso(job.updated_at)} [INFO] {job.phase or 'starting'} {job.done}/{job.total}")
    r = job.result or {}
    ended = iso(job.finished_at)
    for warning in r.get("warnings", []):
        lines.append(f"{ended} [WARNING] {warning}")
    verb = "would remove" if job.dry_run else "removed"
    for m in r.get("manifestsRemoved", []):
        lines.append(f"{ended} [INFO] {verb} manifest {m['repository']}@{m['digest']} ({m['size']} bytes)")
    for b in r.get("blobsRemoved", []):
        lines.append(f"{ended} [INFO] {verb} blob {b['digest']} ({b['size']} bytes)")
    if job.state == "done":
        lines.append(f"{ended} [INFO] {verb} {len(r.get('manifestsRemoved', []))} manifests, "
                     f"{len(r.get('blobsRemoved', []))} blobs, {r.get('bytesReclaimed', 0)} bytes; "
                     f"{r.get('uploadsExpired', 0)} stale uploads")
        if r.get("deferred"):
            lines.append(f"{ended} [WARNING] {r['deferred']}")
        lines.append(f"{ended} [INFO] success")
    elif job.state in ("failed", "interrupted"):
        lines.append(f"{ended} [ERROR] {job.error}")
    return lines
