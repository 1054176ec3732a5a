"""HTTP face of the site's files (`bundles.files`): list them, download one over plain HTTP.

    GET  /api/cargohold/v1/files                     every file the caller may pull (JSON)
    GET  /api/cargohold/v1/files/<name>[:<version>]  the file's bytes (newest version without one)
    GET  /api/cargohold/v1/files/sha256:<hex>        the file with those bytes
    HEAD the same                                    headers only

A download answers ``Content-Disposition: attachment; filename=<name>``,
``Digest: sha-256=<base64>`` (RFC 3230), ``Docker-Content-Digest`` and
``ETag`` with the sha256, and honours ``Range`` (``Accept-Ranges: bytes``)
and ``If-None-Match``. Behind the nginx front the bytes go out by
``X-Accel-Redirect`` exactly as a blob GET on /v2/ does, so a download of
many GB holds no worker. Access is that of pulling the file's repository:
anonymous when its project is public; credentials as everywhere else
(Basic, Bearer). Errors answer ``{"errors": [{"code", "message"}]}``.
"""

from __future__ import annotations

import base64

from flask import Blueprint, Response, g, jsonify, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from bundles.api_access import ApiAccess, ApiDenied
from bundles.files import FileUnknown, SiteFiles
from registry.errors import RegistryError

PREFIX = "/api/cargohold/v1"


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    return resp


def create_blueprint(files: SiteFiles, guard: ApiAccess, accel_prefix: str | None = None) -> Blueprint:
    """The files blueprint; `accel_prefix` as for the /v2/ blob GET (set when nginx sends the bytes)."""
    bp = Blueprint("files", __name__, url_prefix=PREFIX)
    registry = files.registry

    @bp.errorhandler(ApiDenied)
    def _denied(exc: ApiDenied) -> Response:
        return guard.denied(exc)

    @bp.errorhandler(RequestedRangeNotSatisfiable)
    def _bad_range(exc: RequestedRangeNotSatisfiable) -> Response:
        resp = _error(416, "RANGE_INVALID", "the requested range is not satisfiable")
        if exc.length is not None:
            resp.headers["Content-Range"] = f"bytes */{exc.length}"
        return resp

    @bp.before_request
    def _authenticate() -> None:
        guard.authenticate()

    def _visible(repository: str) -> bool:
        return guard.access.allowed(guard.principal(), "pull", repository)

    def _exists(spec: str) -> bool:
        try:
            files.find(spec, lambda _: True)
        except FileUnknown:
            return False
        return True

    @bp.get("/files")
    def list_files() -> Response:
        return jsonify({"files": [f.to_json() for f in files.all() if _visible(f.repository)]})

    @bp.route("/files/<path:spec>", methods=["GET", "HEAD"])
    def download(spec: str) -> Response:
        try:
            found = files.find(spec, _visible)
        except FileUnknown as exc:
            if guard.principal() is None and _exists(spec):
                # There, in a project the anonymous caller may not pull from: ask for credentials, as /v2/ does.
                raise ApiDenied(401, "UNAUTHORIZED", f"authentication required to download {spec}") from None
            return _error(404, "NOT_FOUND", str(exc))
        path = registry.blob_path(found.digest)
        if path is None or not path.is_file():
            return _error(404, "NOT_FOUND", f"file {found.name} {found.version}: its content {found.digest} is "
                          "not in the store")
        headers = {"Docker-Content-Digest": str(found.digest), "ETag": f'"{found.digest}"',
                   "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(found.digest.encoded)).decode(),
                   "Content-Disposition": f'attachment; filename="{found.name}"',
                   "Cache-Control": "private, max-age=0, must-revalidate", "X-Content-Type-Options": "nosniff"}
        g.file_served = found.reference
        if accel_prefix and request.method == "GET":
            if request.if_none_match.contains(str(found.digest)):
                return Response(status=304, headers=headers)
            wanted = request.range  # nginx would answer a bad Range in HTML: refuse it here, in our shape
            if "Range" in request.headers and (
                    wanted is None or wanted.units != "bytes" or len(wanted.ranges) != 1
                    or wanted.range_for_length(found.size) is None):
                raise RequestedRangeNotSatisfiable(length=found.size)
            headers["X-Accel-Redirect"] = accel_prefix + path.relative_to(registry.paths.blobs).as_posix()
            return Response(status=200, headers=headers, mimetype="application/octet-stream")
        try:
            resp = send_file(path, mimetype="application/octet-stream", conditional=True, etag=str(found.digest),
                             as_attachment=True, download_name=found.name)
        except OSError:
            return _error(404, "NOT_FOUND", f"file {found.name} {found.version}: its content is not readable")
        resp.headers.update({k: v for k, v in headers.items() if k != "ETag"})
        resp.headers["Accept-Ranges"] = "bytes"  # behind the front, nginx says so itself
        return resp

    @bp.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError) -> Response:
        return _error(400, exc.code, exc.message)

    return bp
