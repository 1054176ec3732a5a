"""HTTP face of releases, garbage collection, scrub and disk usage.

Route table (JSON). Access as for the other appliance APIs (`bundles.api_access`):
reads need a signed-in principal that may pull from the default project,
everything that changes state (promote, roll back, discard, GC, scrub) a system
administrator; refusals answer 401 (with the Bearer challenge), 403, 429.

    GET   /api/cargohold/v1/releases                      every release, oldest first, with usage
    GET   /api/cargohold/v1/releases/<id>                 one release (id, ``promoted`` or ``latest``):
                                                          images (pending marked), definitions, files, usage
    GET   /api/cargohold/v1/releases/<id>/diff?from=<id>  differences from `from` (default: the promoted one)
    GET   /api/cargohold/v1/releases/<id>/files/<digest>  the bytes of one of the release's files (a chart or
                                                          definition archive, served by no repository)
    GET   /api/cargohold/v1/releases/events?after=<seq>   promote/rollback/discard events after `seq`, oldest
                                                          first (at most `limit`, default 1000), and the last seq:
                                                          what a follower appliance replays (bundles.follow)
    GET   /api/cargohold/v1/follower                      on a follower: the primary, last sync, lag, last error
                                                          (404 on an appliance that follows no primary)
    POST  /api/cargohold/v1/releases/<id>/check           readiness as it will be after promotion (not kept)
    POST  /api/cargohold/v1/releases/<id>/promote         {"force": false, "reason": "..."}: check, then move tags
    POST  /api/cargohold/v1/releases/rollback             back to the previously promoted release
    DELETE /api/cargohold/v1/releases/<id>                {"reason": "..."} (optional): discard a release that
                                                          will not be promoted; its content leaves the retention
    POST  /api/cargohold/v1/gc                            {"dryRun", "retain", "grace", "ignoreCluster"}
    POST  /api/cargohold/v1/scrub                         {"quarantine": true}: re-hash every blob
                                                          (both wait for the run's end; they take the one
                                                          maintenance slot, 409 JOB_BUSY while a job runs;
                                                          /jobs/gc and /jobs/scrub run in the background)
    GET   /api/cargohold/v1/disk                          free space on the data volume, usage per release

Errors answer ``{"errors": [{"code", "message"}]}``: 400 bad input, 404
unknown release, 409 refused (not ready, nothing to roll back, content
collected, discarding the promoted release or the rollback target, cluster
unreachable for GC). Promotion, rollback and discard are audited
in their own transaction (resource type ``release``); GC (``garbage-collection``)
and scrub (``scrub``) after they ran.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file

from bundles.api_access import ApiAccess
from bundles.api_json import PREFIX, error_response, flag, guarded_blueprint, json_body
from bundles.gc_policy import DEFAULT_RETAIN, GcRefused
from bundles.maintenance_jobs import GC, SCRUB, JobBusy, JobOptions, MaintenanceJob, MaintenanceJobs
from bundles.releases import ReleaseError, Releases
from registry.digest import Digest
from registry.errors import RegistryError
from registry.gc import DEFAULT_GRACE_SECONDS, parse_grace
from registry.uploads import Uploads


def create_blueprint(releases: Releases, guard: ApiAccess, uploads: Uploads, jobs: MaintenanceJobs) -> Blueprint:
    """The release endpoints over one data directory."""
    bp = guarded_blueprint("releases", guard)

    def _principal() -> Any:
        return guard.require_reader()

    def _admin(action: str) -> Any:
        return guard.require_admin(action)

    @bp.get(f"{PREFIX}/releases")
    def list_releases() -> Response:
        _principal()
        usage = releases.usage()
        return jsonify({"releases": [{**r.to_json(), "usage": usage.get(r.id)} for r in releases.all()]})

    @bp.get(f"{PREFIX}/releases/events")
    def events() -> Response:
        _principal()
        after, limit = request.args.get("after", "0"), request.args.get("limit", "1000")
        if not (after.isascii() and after.isdigit() and limit.isascii() and limit.isdigit()) or len(after) > 18 \
                or len(limit) > 4 or not 1 <= int(limit) <= 1000:
            raise ReleaseError("after must be a sequence number and limit a number from 1 to 1000", 400,
                               "BAD_REQUEST")
        found = releases.events(int(after), int(limit))
        return jsonify({"events": found, "last": releases.last_event()})

    @bp.get(f"{PREFIX}/follower")
    def follower() -> Response:
        _principal()
        from bundles.follow import status  # the follower's module, needed only here

        found = status(releases.paths)
        if found is None:
            raise ReleaseError("this appliance follows no primary", 404, "NOT_FOUND")
        return jsonify(found.to_json())

    @bp.get(f"{PREFIX}/releases/<rid>/files/<digest>")
    def release_file(rid: str, digest: str) -> Response:
        _principal()
        release = releases.get(rid)
        try:
            wanted = Digest.parse(digest)
        except RegistryError as exc:
            raise ReleaseError(exc.message, 400, "DIGEST_INVALID") from None
        found = releases.file_digest(release.id, str(wanted))
        path = releases.registry.blob_path(found) if found is not None else None
        if path is None or not path.is_file():
            raise ReleaseError(f"release {release.id} has no file {wanted} here", 404, "NOT_FOUND")
        # Charts and definition archives are small: sent by the app, not through the front's blob path.
        resp = send_file(path, mimetype="application/octet-stream", conditional=True, etag=str(wanted))
        resp.headers["Docker-Content-Digest"] = str(wanted)
        return resp

    @bp.get(f"{PREFIX}/releases/<rid>")
    def show(rid: str) -> Response:
        _principal()
        return jsonify(releases.show(rid))

    @bp.get(f"{PREFIX}/releases/<rid>/diff")
    def diff(rid: str) -> Response:
        _principal()
        return jsonify(releases.diff(request.args.get("from", "promoted"), rid))

    @bp.post(f"{PREFIX}/releases/<rid>/check")
    def check(rid: str) -> Response:
        _principal()
        return jsonify(releases.check(rid))

    @bp.post(f"{PREFIX}/releases/<rid>/promote")
    def promote(rid: str) -> Response:
        principal = _admin("promote releases")
        body = json_body()
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ReleaseError("reason must be a string", 400, "BAD_REQUEST")
        return jsonify(releases.promote(rid, principal.username, request.remote_addr or "", flag(body, "force"),
                                        reason))

    @bp.post(f"{PREFIX}/releases/rollback")
    def rollback() -> Response:
        principal = _admin("roll back releases")
        return jsonify(releases.rollback(principal.username, request.remote_addr or ""))

    @bp.delete(f"{PREFIX}/releases/<rid>")
    def discard(rid: str) -> Response:
        principal = _admin("discard releases")
        body = json_body()
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ReleaseError("reason must be a string", 400, "BAD_REQUEST")
        return jsonify(releases.discard(rid, principal.username, request.remote_addr or "", reason))

    @bp.post(f"{PREFIX}/gc")
    def gc() -> Response:
        _admin("collect garbage")
        body = json_body()
        retain = body.get("retain", DEFAULT_RETAIN)
        if not isinstance(retain, int) or isinstance(retain, bool) or retain < 1:
            raise ReleaseError("retain must be a whole number of releases, at least 1", 400, "BAD_REQUEST")
        try:
            grace = parse_grace(str(body["grace"])) if "grace" in body else DEFAULT_GRACE_SECONDS
        except ValueError as exc:
            raise ReleaseError(str(exc), 400, "BAD_REQUEST") from None
        options = JobOptions(retain=retain, grace_seconds=grace, ignore_cluster=flag(body, "ignoreCluster"))
        try:
            job = _run(GC, flag(body, "dryRun"), options)
        except GcRefused as exc:
            return error_response(409, "CLUSTER_UNREACHABLE", str(exc))
        except JobBusy as exc:
            return error_response(409, "JOB_BUSY", f"{exc}; wait for it to finish", exc.job.to_json())
        return _finished(job)

    @bp.post(f"{PREFIX}/scrub")
    def run_scrub() -> Response:
        _admin("scrub the blob store")
        body = json_body()
        try:
            job = _run(SCRUB, False, JobOptions(quarantine=flag(body, "quarantine", True)))
        except JobBusy as exc:
            return error_response(409, "JOB_BUSY", f"{exc}; wait for it to finish", exc.job.to_json())
        return _finished(job)

    def _run(kind: str, dry_run: bool, options: JobOptions) -> MaintenanceJob:
        principal = _principal()
        return jobs.run(kind, dry_run, principal.username, request.remote_addr or "", options)

    def _finished(job: MaintenanceJob) -> Response:
        if job.state != "done" or job.result is None:
            return error_response(500, "JOB_FAILED", job.error or f"{job.title} did not finish", job.to_json())
        return jsonify(job.result)

    @bp.get(f"{PREFIX}/disk")
    def disk() -> Response:
        _principal()
        return jsonify(releases.disk())

    return bp
