"""HTTP face of the seed directory (`bundles.seed`): start a scan, follow its report, see what each file became.

Route table (JSON; `bundles.api_access` rules: the POST needs a system
administrator, the GETs any signed-in principal that may pull from the
default project):

    POST  /api/v1/seed/scan          start a scan ({"retryRefused": true}? to try refused files again);
                                     202 {"scan", "scanUrl", "started"}; a scan already running is answered
                                     with that one (started: false)
    GET   /api/v1/seed               the directory, whether it is scanned at start, the trusted-key count,
                                     the latest scan and every file set recorded
    GET   /api/v1/seed/scans/<id>    one scan: state (running, done, failed, interrupted) and its report,
                                     written file by file while it runs

The scan runs on a daemon thread of the worker that took the request (as an
import does); each bundle is a normal import job (``/api/v1/imports``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Response, jsonify, request

from bundles.api_access import ApiAccess, ApiDenied
from bundles.seed import SeedScanner

PREFIX = "/api/v1/seed"


@dataclass(frozen=True)
class SeedApiConfig:
    """What the endpoints need besides the scanner."""

    scan_at_start: bool
    start: Callable[[SeedScanner, int, str, bool], None]  # runs a claimed scan in the background


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    return resp


def create_blueprint(scanner: SeedScanner, guard: ApiAccess, config: SeedApiConfig) -> Blueprint:
    bp = Blueprint("seed", __name__, url_prefix=PREFIX)

    @bp.errorhandler(ApiDenied)
    def _denied(exc: ApiDenied) -> Response:
        return guard.denied(exc)

    @bp.before_request
    def _authenticate() -> None:
        guard.authenticate()

    @bp.post("/scan")
    def scan() -> Response:
        principal = guard.require_admin("scan the seed directory")
        body = request.get_json(silent=True) if request.content_length else {}
        if not isinstance(body, dict) or not isinstance(body.get("retryRefused", False), bool):
            return _error(400, "FORMAT", 'expected no body, or a JSON object {"retryRefused": true|false}')
        claimed = scanner.claim_scan("api", principal.username)
        assert claimed is not None  # only a start-up scan is ever turned away
        scan_id, started = claimed
        if started:
            config.start(scanner, scan_id, principal.username, bool(body.get("retryRefused", False)))
        found = scanner.get_scan(scan_id)
        assert found is not None
        url = f"{PREFIX}/scans/{scan_id}"
        resp = jsonify({"scan": found.to_json(), "scanUrl": url, "started": started})
        resp.status_code = 202
        resp.headers["Location"] = url
        return resp

    @bp.get("")
    def overview() -> Response:
        guard.require_reader()
        latest = scanner.latest_scan()
        return jsonify({"seedDir": str(scanner.seed_dir), "scanAtStart": config.scan_at_start,
                        "trustedKeys": len(scanner.trust.list()), "latestScan": latest.to_json() if latest else None,
                        "files": [f.to_json() for f in scanner.files()]})

    @bp.get("/scans/<int:scan_id>")
    def get_scan(scan_id: int) -> Response:
        guard.require_reader()
        found = scanner.get_scan(scan_id)
        if found is None:
            return _error(404, "NOT_FOUND", f"no seed scan {scan_id}")
        return jsonify(found.to_json())

    return bp
