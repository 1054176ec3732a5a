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

from flask import Blueprint, Response, g, jsonify
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from bundles.api_access import ApiAccess, ApiDenied
from bundles.files import FileUnknown, SiteFiles
from registry.blobserve import BlobServing, blob_response
from registry.errors import RegistryError

PREFIX = "/api/cargohold/v1"


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    return resp


def create_blueprint(files: SiteFiles, guard: ApiAccess, serving: BlobServing | None = None) -> Blueprint:
    """The files blueprint; `serving` as for the /v2/ blob GET (registry/blobserve.py)."""
    serving = serving or BlobServing()
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
        if registry.store.stat(found.digest) is None:
            return _error(404, "NOT_FOUND", f"file {found.name} {found.version}: its content {found.digest} is "
                          "not in the store")
        headers = {"Docker-Content-Digest": str(found.digest), "ETag": f'"{found.digest}"',
                   "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(found.digest.encoded)).decode(),
                   "Cache-Control": "private, max-age=0, must-revalidate", "X-Content-Type-Options": "nosniff"}
        g.file_served = found.reference
        try:
            return blob_response(registry.store, found.digest, found.size, headers, serving, download_name=found.name)
        except OSError:
            return _error(404, "NOT_FOUND", f"file {found.name} {found.version}: its content is not readable")

    @bp.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError) -> Response:
        return _error(400, exc.code, exc.message)

    return bp
