"""Imports started from uploads already on the appliance, and the uploads not finished yet.

Route table:

    GET   /api/v1/uploads                   the unfinished bundle uploads of every administrator, newest first
                                            (``?fingerprint=<fp>``: only the requester's own with that fingerprint,
                                            what a browser asks before resuming a file chosen again)
    POST  /api/v1/imports/uploads           JSON {"parts": [upload id, ...], "signature": upload id?}: import the
                                            completed ``kind=part`` uploads, in that order, as ONE split bundle
                                            -> 202 {"jobId": ...}
    POST  /api/v1/imports/<id>/retry        run a failed import again from the uploaded file(s) still on disk
                                            -> 202 {"jobId": ...}; 409 while it runs or once done; 410 when the
                                            uploaded file is gone

All need an administrator (a UI session sends ``X-CSRF-Token`` on POST),
as the tus endpoint does (`web.ui.tus_api`).

Split bundles: each ``NAME.tar.zst.partNNN`` goes up as its own tus upload
of kind ``part`` (which starts nothing when complete, like a signature).
The import request links (hard links, no copy) every part into the first
part's upload directory under its own name, so the importer reads them as
it reads parts beside each other on disk (`bundles.importer.bundle_parts`).
Every upload an import read (parts, signature) records the job, which is
how a retry finds its files again.

Unfinished uploads: the browser gives every upload (a partial one of a
parallel upload too) the metadata ``filename``, ``size`` and
``fingerprint`` (name, size and the SHA-256 of the file's first and last
MiB). Grouped by fingerprint, the partials of one file are one unfinished
upload; given the fingerprint, a browser with no memory of the upload
(another browser, a cleared profile) resumes it by its URLs (it tells the
parts apart by their lengths, which upload.js makes all different).
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from bundles.format import PART_SUFFIX
from bundles.importer import BundleRefused
from bundles.jobs import start_in_background
from registry.auth import Principal
from web.tus import PARTIAL, TusUpload
from web.ui.tus_api import MAX_SIGNATURE_BYTES, PREFIX, _admin, _ui

MAX_BUNDLE_PARTS = 1000
RETRYABLE = ("failed",)


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _uploads_of_job(job_id: str) -> list[TusUpload]:
    """Every upload an import job read (its bundle, or its parts and signature)."""
    ui = _ui()
    rows = ui.uploads.db.execute("SELECT id FROM tus_uploads WHERE job_id = ?", [job_id]).fetchall()
    return [u for (upload_id,) in rows if (u := ui.uploads._load(upload_id)) is not None]


def _signature_bytes(upload: TusUpload | None) -> bytes | None:
    if upload is None:
        return None
    path = _ui().uploads.local_path(upload)
    if not path.is_file():
        raise BundleRefused("NOT_FOUND", "the uploaded signature is no longer on the appliance")
    with path.open("rb") as f:
        return f.read(MAX_SIGNATURE_BYTES + 1)


def _start(who: Principal, source: Any, signature: bytes | None, read: list[TusUpload],
           cleanup: list[Any]) -> Any:
    """Start the import of `source`, and record its job on every upload it reads."""
    ui = _ui()
    job = start_in_background(ui.imports.importer, ui.imports.jobs, source, signature, cleanup)
    for upload in read:
        ui.uploads.set_job(upload.id, job.id)
    current_app.extensions["cargohold"].audit.record(who.username, "create", "import", f"{job.id}:{source.name}",
                                                     request.remote_addr or "")
    return job


def _link_parts(parts: list[TusUpload]) -> tuple[Any, list[Any]]:
    """Hard-link every part beside the first; returns (the bundle path the importer reads, the files to remove
    once imported)."""
    uploads = _ui().uploads
    first = uploads.local_path(parts[0])
    directory = first.parent
    base = PART_SUFFIX.sub("", first.name)
    cleanup = []
    for upload in parts:
        path = uploads.local_path(upload)
        if not path.is_file():
            raise BundleRefused("NOT_FOUND", f"the uploaded part {upload.filename} is no longer on the appliance")
        cleanup.append(path)
        beside = directory / path.name
        if beside != path:
            beside.unlink(missing_ok=True)
            os.link(path, beside)
            cleanup.append(beside)
    return directory / base, cleanup


def _part_number(upload: TusUpload) -> int:
    """The NNN of a part upload named ``NAME.partNNN`` (-1 for any other name)."""
    match = PART_SUFFIX.search(upload.filename or "")
    return int(match.group(1)) if match else -1


def _base_name(upload: TusUpload) -> str:
    """The bundle name of a part upload: its file name without ``.partNNN``."""
    return PART_SUFFIX.sub("", upload.filename or "")


def _unfinished(owner: str | None = None, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """Unfinished bundle (or part) uploads, a parallel upload's partials grouped as one file."""
    uploads = _ui().uploads
    rows = uploads.db.execute("SELECT id FROM tus_uploads WHERE final_id IS NULL AND expires_at > ? "
                              "AND job_id IS NULL ORDER BY created_at DESC", [time.time()]).fetchall()
    groups: dict[tuple[str, str], list[TusUpload]] = {}
    for (upload_id,) in rows:
        upload = uploads._load(upload_id)
        if upload is None:
            continue
        kind = upload.metadata.get("kind", "bundle")
        if kind == "signature":
            continue
        # Complete uploads are finished, but for: a partial one in no final upload yet (part of an unfinished
        # file: its bytes count, and a browser resuming the file needs its URL), and, asked by fingerprint, a
        # split bundle's part not imported yet (the browser need not send it again).
        if upload.complete and upload.concat != PARTIAL and not (kind == "part" and fingerprint is not None):
            continue
        if owner is not None and upload.owner != owner:
            continue
        fp = upload.metadata.get("fingerprint") or upload.id
        if fingerprint is not None and fp != fingerprint:
            continue
        groups.setdefault((upload.owner, fp), []).append(upload)
    out: list[dict[str, Any]] = []
    for (who, fp), members in groups.items():
        meta = members[0].metadata
        size = int(meta["size"]) if (meta.get("size") or "").isdigit() else sum(u.length for u in members)
        received = sum(u.offset for u in members)
        out.append({
            "filename": meta.get("filename") or "(unnamed upload)", "size": size, "received": received,
            "percent": round(100 * received / size, 1) if size else 0.0, "owner": who,
            "createdAt": min(u.created_at for u in members), "fingerprint": fp,
            "parallel": members[0].concat == PARTIAL,
            "complete": all(u.complete for u in members) and members[0].concat != PARTIAL,
            "uploads": [{"url": f"{PREFIX}/{u.id}", "offset": u.offset, "length": u.length} for u in members],
        })
    out.sort(key=lambda g: -g["createdAt"])
    return out


def create_blueprint() -> Blueprint:
    bp = Blueprint("import_api", __name__)

    @bp.get(PREFIX)
    def unfinished() -> Response:
        who = _admin()
        if isinstance(who, Response):
            return who
        fingerprint = request.args.get("fingerprint")
        found = _unfinished(who.username if fingerprint else None, fingerprint)
        resp = jsonify({"uploads": found})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.post("/api/v1/imports/uploads")
    def import_parts() -> Response:
        who = _admin()
        if isinstance(who, Response):
            return who
        body = request.get_json(silent=True)
        ids = body.get("parts") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or len(ids) > MAX_BUNDLE_PARTS \
                or not all(isinstance(i, str) for i in ids):
            return _error(400, "BAD_REQUEST", 'send JSON {"parts": [upload id, ...], "signature": upload id}: '
                          "the uploads of the bundle's parts, in order")
        uploads = _ui().uploads
        parts: list[TusUpload] = []
        for n, upload_id in enumerate(ids):
            upload = uploads.get(upload_id, owner=who.username)
            if upload is None or not upload.complete or upload.metadata.get("kind") != "part":
                return _error(400, "BAD_REQUEST", f"part {n + 1} ({upload_id[:40]}) is not a completed part upload "
                              "of yours; nothing was imported: upload every part again")
            if _part_number(upload) != n or _base_name(upload) != _base_name(parts[0] if parts else upload):
                return _error(400, "BAD_REQUEST", f"the parts are not one bundle's .part000, .part001, … in order "
                              f"(number {n + 1} is {upload.filename}); nothing was imported: choose all the parts "
                              "of one bundle")
            parts.append(upload)
        sig_upload = None
        sig_id = body.get("signature") if isinstance(body, dict) else None
        if sig_id:
            sig_upload = uploads.get(str(sig_id), owner=who.username)
            if sig_upload is None or not sig_upload.complete or sig_upload.metadata.get("kind") != "signature":
                return _error(400, "BAD_REQUEST", "the signature is not a completed signature upload of yours; "
                              "upload it again")
        try:
            source, cleanup = _link_parts(parts)
            job = _start(who, source, _signature_bytes(sig_upload), [*parts, *([sig_upload] if sig_upload else [])],
                         cleanup)
        except BundleRefused as exc:
            return _error(410 if exc.code == "NOT_FOUND" else 507 if exc.code == "DISK_FULL" else 400, exc.code,
                          exc.message + "; nothing was imported")
        resp = jsonify({"jobId": job.id})
        resp.status_code = 202
        return resp

    @bp.post("/api/v1/imports/<job_id>/retry")
    def retry(job_id: str) -> Response:
        who = _admin()
        if isinstance(who, Response):
            return who
        job = _ui().imports.jobs.get(job_id)
        if job is None:
            return _error(404, "NOT_FOUND", f"there is no import {job_id[:40]}")
        if job.state not in RETRYABLE:
            return _error(409, "NOT_RETRYABLE", f"this import is {job.state}; only a failed or interrupted import "
                          "can be run again")
        read = _uploads_of_job(job_id)
        bundle = [u for u in read if u.metadata.get("kind", "bundle") == "bundle"]
        parts = sorted((u for u in read if u.metadata.get("kind") == "part"), key=_part_number)
        if parts and [_part_number(p) for p in parts] != list(range(len(parts))):
            parts = []
        gone = _error(410, "GONE", "the uploaded file is no longer on the appliance (it was imported, removed or "
                      "expired, or this import came from the seed directory or another client); nothing was "
                      "imported: upload the bundle again")
        if not bundle and not parts:
            return gone
        uploads = _ui().uploads
        try:
            if bundle:
                path = uploads.local_path(bundle[0])
                if not path.is_file():
                    return gone
                sig_id = bundle[0].metadata.get("signature")
                sig = uploads._load(sig_id) if sig_id else None
                if sig_id and (sig is None or not uploads.local_path(sig).is_file()):
                    return gone
                new = _start(who, path, _signature_bytes(sig), [bundle[0], *([sig] if sig else [])], [path])
            else:
                if not all(uploads.local_path(p).is_file() for p in parts):
                    return gone
                sigs = [u for u in read if u.metadata.get("kind") == "signature"]
                source, cleanup = _link_parts(parts)
                new = _start(who, source, _signature_bytes(sigs[0] if sigs else None), [*parts, *sigs], cleanup)
        except BundleRefused as exc:
            if exc.code == "NOT_FOUND":
                return gone
            return _error(507 if exc.code == "DISK_FULL" else 400, exc.code, exc.message + "; nothing was imported")
        resp = jsonify({"jobId": new.id})
        resp.status_code = 202
        return resp

    @bp.app_context_processor
    def retry_helpers() -> dict[str, Any]:
        return {"retry_available": retry_available}

    return bp


def retry_available(job_id: str) -> bool:
    """Whether a job's uploaded file is still on disk, so Retry import can reuse it (for the Imports page)."""
    uploads = _ui().uploads
    files = [u for u in _uploads_of_job(job_id) if u.metadata.get("kind", "bundle") in ("bundle", "part")]
    return bool(files) and all(uploads.data_path(u).is_file() for u in files)

