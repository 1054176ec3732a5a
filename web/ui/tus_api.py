"""The tus 1.0 upload endpoint, and the import status the UI polls.

Route table (tus 1.0 core + creation, checksum, termination, expiration, concatenation):

    OPTIONS /api/v1/uploads           Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm (no auth)
    POST    /api/v1/uploads           Upload-Length, Upload-Metadata -> 201 Location, Upload-Expires;
                                      with Upload-Concat: partial, a part of a parallel upload;
                                      with Upload-Concat: final;<url> <url>... (no Upload-Length), the upload
                                      assembled from those complete partials, in order -> 201, complete
    HEAD    /api/v1/uploads/<id>      Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, Upload-Concat
    PATCH   /api/v1/uploads/<id>      application/offset+octet-stream at Upload-Offset (409 on a mismatch),
                                      optional Upload-Checksum "sha256 <base64>" (460 on a mismatch);
                                      403 for a final upload
    DELETE  /api/v1/uploads/<id>      terminate: 204, the bytes are removed
    GET     /api/v1/uploads/<id>      the upload record as JSON (not part of tus): offset, sha256, jobId
    GET     /ui/api/imports/<id>      an import job as JSON, for the UI's live progress

Every tus response carries ``Tus-Resumable: 1.0.0``. Every route but
OPTIONS needs an admin: a UI session (with ``X-CSRF-Token`` on POST, PATCH
and DELETE) or Basic/Bearer credentials, through
`registry.token_api.request_principal`. An upload belongs to the principal
that created it: HEAD, GET, PATCH and DELETE of it, naming it as a part of a
final upload, or naming it as a bundle's ``signature``, by anyone else
answer as for an unknown upload (404; a tus client then starts a new upload
rather than fail). ``Upload-Length`` and ``Upload-Offset`` are ASCII digits
(`registry.numbers`), or 400 naming the header.

Metadata keys the appliance reads: ``filename``; ``kind`` (``bundle``, the
default, ``signature``, or ``part``: a ``.partNNN`` file of a split bundle,
which starts nothing, see `web.ui.import_api`); ``fingerprint`` and ``size``
(what `web.ui.import_api` lists unfinished uploads by); and for a bundle,
``signature`` = the id of a completed signature upload. When a bundle upload's last byte lands, the
import starts (`bundles.jobs.start_in_background`), and the final PATCH
answers with ``Cargohold-Import-Job`` (also on HEAD afterwards). Each
completed upload reports its file's digest in ``Cargohold-Upload-Sha256``.

Concatenation: partial uploads never start anything; a final upload takes
its metadata (``filename``, ``kind``, ``signature``) from its own POST, and
its import starts when the POST has assembled it, exactly as when a single
upload's last byte lands. Its digest is the SHA-256 of the whole assembled
file. The partials must be the requester's own, complete, and each used in
one final upload (see `web.tus.TusUploads.concatenate` for the statuses).
"""

from __future__ import annotations

import base64
import re
import shutil
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, jsonify, request

from bundles.importer import BundleRefused
from bundles.jobs import start_in_background
from registry.access import TooManyAttempts
from registry.auth import Principal
from registry.errors import RegistryError
from registry.numbers import NumberInvalid, parse_number
from registry.token_api import request_principal
from web.tus import FINAL, PARTIAL, TusError, TusUpload, parse_checksum, parse_metadata
from web.ui import UiServices

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,checksum,termination,expiration,concatenation"
PREFIX = "/api/v1/uploads"
_UPLOAD_PATH = re.compile(rf"^{re.escape(PREFIX)}/([0-9a-f]{{32}})$")
MAX_SIGNATURE_BYTES = 64 << 10
_REFUSED_STATUS = {"NOT_FOUND": 410, "DISK_FULL": 507}  # an import that cannot start; anything else is 500
KINDS = ("bundle", "signature", "part")  # a part of a split bundle: imported by web.ui.import_api


def _ui() -> UiServices:
    return current_app.extensions["cargohold.ui"]  # type: ignore[no-any-return]


def _tus(resp: Response) -> Response:
    resp.headers["Tus-Resumable"] = TUS_VERSION
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _fail(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    resp = Response(message + "\n", status=status, mimetype="text/plain")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return _tus(resp)


def _expires(upload: TusUpload) -> str:
    return formatdate(upload.expires_at, usegmt=True)


def _upload_headers(resp: Response, upload: TusUpload) -> Response:
    resp.headers["Upload-Offset"] = str(upload.offset)
    resp.headers["Upload-Length"] = str(upload.length)
    if not upload.complete:
        resp.headers["Upload-Expires"] = _expires(upload)
    if upload.sha256:
        resp.headers["Cargohold-Upload-Sha256"] = upload.sha256
    if upload.job_id:
        resp.headers["Cargohold-Import-Job"] = upload.job_id
        resp.headers["Cargohold-Import-Url"] = f"/ui/imports/{upload.job_id}"
    if upload.concat == PARTIAL:
        resp.headers["Upload-Concat"] = PARTIAL
    elif upload.concat == FINAL:
        resp.headers["Upload-Concat"] = f"{FINAL};" + " ".join(f"{PREFIX}/{part}" for part in upload.parts)
    return resp


def _parse_final(header: str) -> list[str]:
    """The upload ids an ``Upload-Concat: final;<url> <url>...`` names (absolute URLs or paths); raises TusError 400."""
    ids: list[str] = []
    for url in header[len(FINAL) + 1:].split():
        match = _UPLOAD_PATH.match(urlsplit(url).path)
        if match is None:
            raise TusError(400, f"Upload-Concat names {url!r}, which is not an upload of this endpoint "
                           f"({PREFIX}/<id>)")
        ids.append(match.group(1))
    return ids


def _check_space(needed: int) -> None:
    """Raise TusError 507 unless `needed` more bytes leave the free-space reserve on the data volume."""
    config = current_app.extensions["cargohold"].config
    free = shutil.disk_usage(config.paths.root).free
    if needed + config.import_reserve_bytes > free:
        raise TusError(507, f"not enough free disk for {needed} more bytes: {free} bytes free, "
                       f"{config.import_reserve_bytes} must stay free (import_reserve_bytes)")


def _admin() -> Principal | Response:
    """The admin the request acts as, or the error response to send."""
    services = current_app.extensions["cargohold"]
    try:
        principal = request_principal(services.access, _ui().signer)
    except TooManyAttempts as exc:
        return _fail(429, exc.message, {"Retry-After": str(exc.retry_after)})
    except RegistryError as exc:
        status = 401 if exc.code == "UNAUTHORIZED" else 403
        return _fail(status, exc.message, {"WWW-Authenticate": 'Basic realm="cargohold"'} if status == 401 else {})
    if principal is None:
        return _fail(401, "authentication required: uploads need an administrator (sign in, or Basic credentials)",
                     {"WWW-Authenticate": 'Basic realm="cargohold"'})
    if not principal.admin:
        return _fail(403, f"{principal.username} may not upload bundles (administrators only)")
    g.principal = principal
    return principal


def _own_upload(upload_id: str) -> TusUpload | Response:
    """The upload the request names if the requester created it, or the error response to send (auth failure,
    or 404: unknown, expired, or another principal's, which to anyone but its creator does not exist)."""
    who = _admin()
    if isinstance(who, Response):
        return who
    upload = _ui().uploads.get(upload_id, owner=who.username)
    if upload is None:
        return _fail(404, f"no upload {upload_id[:40]} of {who.username} (unknown, terminated, expired, or "
                     "another user's)")
    return upload


def _header_number(name: str) -> int | Response:
    """A required numeric tus header (``Upload-Length``, ``Upload-Offset``), or the 400 to send."""
    raw = request.headers.get(name)
    if raw is None:
        return _fail(400, f"{name} is required and must be a non-negative integer")
    try:
        return parse_number(raw, name)
    except NumberInvalid as exc:
        return _fail(400, exc.message)


def _start_import(upload: TusUpload) -> None:
    """Called when a bundle upload's last byte lands: start its import (a signature upload just waits)."""
    ui = _ui()
    if upload.metadata.get("kind", "bundle") != "bundle":
        return
    signature: bytes | None = None
    jobs = ui.imports.jobs
    sig_id = upload.metadata.get("signature")
    path = ui.uploads.data_path(upload)
    if sig_id:
        sig = ui.uploads.get(sig_id)
        if sig is None or not sig.complete:
            job = jobs.create(path.name, upload.length)
            jobs.fail(job.id, f"the signature upload {sig_id} is gone or incomplete; upload the bundle and its "
                      "signature again", "SIGNATURE")
            ui.uploads.set_job(upload.id, job.id)
            return
        with ui.uploads.open_completed(sig) as f:
            signature = f.read(MAX_SIGNATURE_BYTES + 1)
    job = start_in_background(ui.imports.importer, jobs, path, signature, [path])
    ui.uploads.set_job(upload.id, job.id)
    # The same audit entry as an import through POST /api/v1/bundles.
    principal: Principal | None = g.get("principal")
    current_app.extensions["cargohold"].audit.record(principal.username if principal else "", "create", "import",
                                                     f"{job.id}:{path.name}", request.remote_addr or "")


def create_blueprint() -> Blueprint:
    bp = Blueprint("tus", __name__)

    @bp.route(PREFIX, methods=["OPTIONS"])
    @bp.route(f"{PREFIX}/<upload_id>", methods=["OPTIONS"])
    def options(upload_id: str | None = None) -> Response:
        resp = Response(status=204)
        resp.headers["Tus-Version"] = TUS_VERSION
        resp.headers["Tus-Extension"] = EXTENSIONS
        resp.headers["Tus-Max-Size"] = str(_ui().uploads.max_size)
        resp.headers["Tus-Checksum-Algorithm"] = "sha256"
        return _tus(resp)

    @bp.post(PREFIX)
    def create() -> Response:
        who = _admin()
        if isinstance(who, Response):
            return who
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            return _fail(412, f"Tus-Resumable must be {TUS_VERSION}", {"Tus-Version": TUS_VERSION})
        concat = (request.headers.get("Upload-Concat") or "").strip()
        if concat and concat != PARTIAL and not concat.startswith(f"{FINAL};"):
            return _fail(400, f"Upload-Concat must be {PARTIAL!r} or '{FINAL};<upload URL> <upload URL>...'")
        raw_length = request.headers.get("Upload-Length")
        length = 0
        if concat.startswith(FINAL):
            if raw_length is not None:
                return _fail(400, "a final upload (Upload-Concat: final) takes no Upload-Length: its length is the "
                             "sum of its partial uploads")
            if request.content_length:
                return _fail(400, "a final upload (Upload-Concat: final) takes no data: its bytes come from its "
                             "partial uploads")
        elif raw_length is None:
            return _fail(400, "Upload-Length is required and must be a non-negative integer "
                         "(deferred lengths are not supported)")
        else:
            parsed = _header_number("Upload-Length")
            if isinstance(parsed, Response):
                return parsed
            length = parsed
        uploads = _ui().uploads
        try:
            metadata = parse_metadata(request.headers.get("Upload-Metadata"))
            kind = metadata.get("kind", "bundle")
            if kind not in KINDS:
                raise TusError(400, f"metadata kind {kind!r} is not one of {', '.join(KINDS)}")
            sig_id = metadata.get("signature")
            if sig_id:
                sig = uploads.get(sig_id, owner=who.username)  # only the requester's own signature upload
                if sig is None or not sig.complete or sig.metadata.get("kind") != "signature":
                    raise TusError(400, f"metadata signature {sig_id!r} does not name a completed signature upload")
            if concat.startswith(FINAL):
                part_ids = _parse_final(concat)
                own_parts = [p for i in part_ids if (p := uploads.get(i, who.username))]
                if kind == "signature" and sum(p.length for p in own_parts) > MAX_SIGNATURE_BYTES:
                    raise TusError(413, f"a signature upload may be at most {MAX_SIGNATURE_BYTES} bytes")
                upload = uploads.concatenate(part_ids, metadata, who.username, _start_import, _check_space)
            else:
                if kind == "signature" and length > MAX_SIGNATURE_BYTES and concat != PARTIAL:
                    raise TusError(413, f"a signature upload may be at most {MAX_SIGNATURE_BYTES} bytes")
                _check_space(length)
                upload = uploads.create(length, metadata, who.username, partial=concat == PARTIAL)
                if upload.complete:  # an empty upload completes at creation
                    upload = uploads.get(upload.id) or upload
                elif (request.content_length
                      and request.headers.get("Content-Type") == "application/offset+octet-stream"):
                    upload = uploads.append(upload.id, 0, request.stream, request.content_length,
                                            parse_checksum(request.headers.get("Upload-Checksum")), _start_import,
                                            owner=who.username)
        except TusError as exc:
            return _fail(exc.status, exc.message)
        except BundleRefused as exc:  # the bundle vanished between its assembly and the import's start, or the
            # database is too full to record the import's job
            return _fail(_REFUSED_STATUS.get(exc.code, 500), exc.message)
        resp = Response(status=201)
        resp.headers["Location"] = f"{PREFIX}/{upload.id}"
        return _tus(_upload_headers(resp, upload))

    @bp.route(f"{PREFIX}/<upload_id>", methods=["HEAD"])
    def head(upload_id: str) -> Response:
        upload = _own_upload(upload_id)
        if isinstance(upload, Response):
            return upload
        resp = Response(status=200)
        if upload.metadata:
            resp.headers["Upload-Metadata"] = _metadata_header(upload)
        return _tus(_upload_headers(resp, upload))

    @bp.get(f"{PREFIX}/<upload_id>")
    def get(upload_id: str) -> Response:
        upload = _own_upload(upload_id)
        if isinstance(upload, Response):
            return upload
        return _tus(jsonify(upload.to_json()))

    @bp.patch(f"{PREFIX}/<upload_id>")
    def patch(upload_id: str) -> Response:
        who = _admin()
        if isinstance(who, Response):
            return who
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            return _fail(412, f"Tus-Resumable must be {TUS_VERSION}", {"Tus-Version": TUS_VERSION})
        if request.mimetype != "application/offset+octet-stream":
            return _fail(415, "Content-Type must be application/offset+octet-stream")
        offset = _header_number("Upload-Offset")
        if isinstance(offset, Response):
            return offset
        try:
            upload = _ui().uploads.append(upload_id, offset, request.stream, request.content_length,
                                          parse_checksum(request.headers.get("Upload-Checksum")), _start_import,
                                          owner=who.username)
        except TusError as exc:
            return _fail(exc.status, exc.message)
        except BundleRefused as exc:  # the bundle vanished between its last byte and the import's start, or the
            # database is too full to record the import's job
            return _fail(_REFUSED_STATUS.get(exc.code, 500), exc.message)
        return _tus(_upload_headers(Response(status=204), upload))

    @bp.delete(f"{PREFIX}/<upload_id>")
    def terminate(upload_id: str) -> Response:
        upload = _own_upload(upload_id)
        if isinstance(upload, Response):
            return upload
        _ui().uploads.delete(upload.id)
        return _tus(Response(status=204))

    @bp.get("/ui/api/imports/<job_id>")
    def import_job(job_id: str) -> Response:
        who = _admin()
        if isinstance(who, Response):
            return who
        job = _ui().imports.jobs.get(job_id)
        if job is None:
            resp = jsonify({"errors": [{"code": "NOT_FOUND", "message": f"no import job {job_id}"}]})
            resp.status_code = 404
            return resp
        body: dict[str, Any] = job.to_json()
        body["now"] = time.time()
        resp = jsonify(body)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp


def _metadata_header(upload: TusUpload) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in upload.metadata.items())
