"""HTTP face of bundle import: upload, import an uploaded file, follow the job.

Route table (JSON; who may call what is `bundles.api_access`'s rule: the POSTs
need a system administrator, the GETs any signed-in principal that may pull
from the default project; credentials are Basic or Bearer):

    POST  /api/v1/bundles           multipart: file in `uploadFile`, optional detached `signature`
                                    (file or text field); streamed to imports/ on disk, then imported
    POST  /api/v1/bundles/import    {"path": "<file under imports/>", "signature": "<file under imports/>"?}
    GET   /api/v1/imports           recent import jobs, newest first (?limit=0-1000, default 100)
    GET   /api/v1/imports/<id>      one job: state, bytes done/total, error, report (readable while it runs)

Both POSTs answer 202 with the job and its URL (also in Location), and are
recorded in the audit log (``create bundle`` for the stored upload, ``create
import`` for the job). The
upload is written to disk as it arrives (werkzeug's multipart parser with
a stream factory that writes files under ``imports/``), so memory stays
flat whatever the bundle's size.

The import itself runs in a background thread of the worker that took
the request. That is enough here: the import streams with flat memory and
releases the GIL in zstd, hashing and file I/O; its state lives in SQLite,
so any worker answers GET /api/v1/imports/<id>; and if the worker dies
mid-way, the job shows as interrupted and importing the same file again
resumes from what was verified (crash-safe by design, see
`bundles.importer`). A separate queue/worker process would add moving parts
for no gain on a one-box appliance.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import parse_form_data
from werkzeug.utils import secure_filename

from bundles.api_access import ApiAccess, ApiDenied
from bundles.importer import BundleRefused, Importer
from bundles.jobs import ImportJobs, disk_full_refusal, start_in_background
from registry.db import is_disk_full
from registry.dbengine import Error as DatabaseError
from registry.numbers import NumberInvalid, parse_number
from registry.paths import DataPaths

PREFIX = "/api/v1"
MAX_IMPORTS_LIMIT = 1000  # GET /api/v1/imports?limit= (default 100): one page, never the whole table at once
MAX_SIGNATURE_BYTES = 64 << 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")

_STATUS = {"NOT_FOUND": 404, "BUSY": 409, "DISK_FULL": 507, "STORAGE": 507, "LIMIT": 413}


@dataclass(frozen=True)
class BundleApiConfig:
    """What the endpoints need besides the core objects."""

    max_upload_bytes: int
    reserve_bytes: int


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    return resp


def create_blueprint(importer: Importer, jobs: ImportJobs, guard: ApiAccess, paths: DataPaths,
                     config: BundleApiConfig) -> Blueprint:
    """The bundle import endpoints over one data directory."""
    bp = Blueprint("bundles", __name__, url_prefix=PREFIX)

    @bp.errorhandler(ApiDenied)
    def _denied(exc: ApiDenied) -> Response:
        return guard.denied(exc)

    @bp.errorhandler(BundleRefused)
    def _refused(exc: BundleRefused) -> Response:
        return _error(_STATUS.get(exc.code, 400), exc.code, exc.message)

    def _database(exc: Exception) -> Response:
        if is_disk_full(exc):  # e.g. no room to record the job: the same answer as a full data volume
            refusal = disk_full_refusal(exc)
            return _error(507, refusal.code, refusal.message)
        raise exc

    for database_error in DatabaseError:  # each engine's
        bp.register_error_handler(database_error, _database)

    @bp.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return _error(413, "LIMIT", f"the upload is larger than the configured limit of {config.max_upload_bytes}"
                      " bytes (bundle_max_bytes)")

    @bp.before_request
    def _authenticate() -> None:
        guard.authenticate()

    def _start(source: Path, signature: bytes | None, cleanup: list[Path]) -> Response:
        # Refuses a missing file before a job exists; the import runs in a thread (also the tus upload's path).
        job = start_in_background(importer, jobs, source, signature, cleanup)
        guard.record("create", "import", f"{job.id}:{source.name}")
        url = f"{PREFIX}/imports/{job.id}"
        resp = jsonify({"job": job.to_json(), "jobUrl": url})
        resp.status_code = 202
        resp.headers["Location"] = url
        return resp

    @bp.post("/bundles")
    def upload() -> Response:
        guard.require_admin("import bundles")
        length = request.content_length
        if length is not None and length > config.max_upload_bytes:
            raise RequestEntityTooLarge()
        free = shutil.disk_usage(paths.root).free
        if length is not None and length + config.reserve_bytes > free:
            return _error(507, "DISK_FULL", f"not enough free disk for a {length}-byte upload: {free} bytes free, "
                          f"{config.reserve_bytes} must stay free (import_reserve_bytes)")
        incoming = paths.imports / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        created: list[Path] = []

        def factory(total_content_length: int | None, content_type: str | None, filename: str | None,
                    content_length: int | None = None) -> IO[bytes]:
            f = tempfile.NamedTemporaryFile(dir=incoming, prefix="upload-", delete=False)  # noqa: SIM115
            created.append(Path(f.name))
            return f

        try:
            _, form, files = parse_form_data(request.environ, stream_factory=factory,
                                             max_content_length=config.max_upload_bytes,
                                             max_form_memory_size=MAX_SIGNATURE_BYTES * 2)
            upload_file = files.get("uploadFile")
            if upload_file is None or not upload_file.filename:
                raise BundleRefused("FORMAT", "the multipart form has no file in the field uploadFile")
            name = secure_filename(upload_file.filename) or "bundle.tar.zst"
            signature: bytes | None = None
            sig_file = files.get("signature")
            if sig_file is not None and sig_file.filename:
                signature = sig_file.stream.read(MAX_SIGNATURE_BYTES + 1)
            elif form.get("signature"):
                signature = form["signature"].encode()
            upload_file.stream.flush()
            os.fsync(upload_file.stream.fileno())
            staged = Path(upload_file.stream.name)
            for f in files.values():
                f.stream.close()
            target = paths.imports / f"{uuid.uuid4().hex[:12]}-{name}"
            os.replace(staged, target)
        finally:
            for path in created:
                path.unlink(missing_ok=True)
        guard.record("create", "bundle", target.name)
        return _start(target, signature, [target])

    def _under_imports(name: Any, what: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise BundleRefused("FORMAT", f"{what} must be the name of a file directly under the imports "
                                "directory (letters, digits, . _ + -; no path)")
        path = (paths.imports / name)
        if path.resolve().parent != paths.imports.resolve():
            raise BundleRefused("FORMAT", f"{what} {name!r} is not a file under the imports directory")
        return path

    @bp.post("/bundles/import")
    def import_uploaded() -> Response:
        guard.require_admin("import bundles")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BundleRefused("FORMAT", 'expected a JSON object: {"path": "<file under imports/>"}')
        source = _under_imports(body.get("path"), "path")
        signature = None
        if body.get("signature") is not None:
            sig_path = _under_imports(body.get("signature"), "signature")
            if not sig_path.is_file():
                raise BundleRefused("NOT_FOUND", f"no signature file {sig_path.name} under the imports directory")
            with sig_path.open("rb") as f:
                signature = f.read(MAX_SIGNATURE_BYTES + 1)
        return _start(source, signature, [])

    @bp.get("/imports")
    def list_jobs() -> Response:
        guard.require_reader()
        try:
            limit = parse_number(request.args.get("limit", "100"), "limit", 0, MAX_IMPORTS_LIMIT)
        except NumberInvalid as exc:
            raise BundleRefused("FORMAT", exc.message) from None
        return jsonify({"imports": [j.to_json() for j in jobs.list(limit)]})

    @bp.get("/imports/<job_id>")
    def get_job(job_id: str) -> Response:
        guard.require_reader()
        job = jobs.get(job_id)
        if job is None:
            return _error(404, "NOT_FOUND", f"no import job {job_id}")
        return jsonify(job.to_json())

    return bp
