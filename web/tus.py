"""Resumable uploads over the tus 1.0 protocol: the records and the bytes (no HTTP here).

One row per upload in the ``tus_uploads`` table (the "web" migration set);
its bytes go to ``imports/tus/<id>/data`` and, once complete, are renamed to
``imports/tus/<id>/<file name>`` so an import reports the operator's file
name. A row holds the declared length, the offset reached, the metadata the
client sent, the running SHA-256 of everything received (as resumable hash
state, `registry.hashstate`, so any gunicorn worker continues an upload),
the expiry, and once complete the file's digest and the import job started
from it.

Appending streams the request body to disk in 1 MiB blocks: memory stays
flat whatever the chunk size. A chunk sent with a checksum is verified
before it counts; on a mismatch, or when such a chunk arrives short (the
connection dropped), it is cut off again and the offset stays where it was.
A chunk without a checksum keeps whatever arrived, so a dropped connection
loses nothing. Only one append runs per upload at a time (an exclusive
file lock), and the offset is checked under that lock.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlite_utils import Database, Migrations

from registry import hashstate
from registry.db import open_database, register_migrations, write_transaction
from registry.paths import DataPaths

BLOCK = 1 << 20
MAX_METADATA_BYTES = 4096
_ID = re.compile(r"^[0-9a-f]{32}$")

web_migrations = register_migrations(Migrations("web"))


@web_migrations()
def m001_tus_uploads(db: Database) -> None:
    # tus_uploads: resumable uploads (web.tus); hash_state is registry.hashstate's saved SHA-256 context.
    db.table("tus_uploads").create(
        {"id": str, "length": int, "offset": int, "metadata": str, "hash_state": bytes, "owner": str,
         "created_at": float, "expires_at": float, "completed_at": float, "sha256": str, "filename": str,
         "job_id": str},
        pk="id", not_null={"length", "offset", "metadata", "created_at", "expires_at"},
    )
    db.table("tus_uploads").create_index(["expires_at"])


class TusError(Exception):
    """A request the upload store refuses; `status` is the HTTP status tus calls for."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TusUpload:
    """One upload as recorded."""

    id: str
    length: int
    offset: int
    metadata: dict[str, str]
    owner: str
    created_at: float
    expires_at: float
    completed_at: float | None
    sha256: str | None
    filename: str | None
    job_id: str | None

    @property
    def complete(self) -> bool:
        return self.offset == self.length

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "length": self.length, "offset": self.offset, "metadata": self.metadata,
                "createdAt": self.created_at, "expiresAt": self.expires_at, "completedAt": self.completed_at,
                "sha256": self.sha256, "filename": self.filename, "jobId": self.job_id}


def parse_metadata(header: str | None) -> dict[str, str]:
    """tus Upload-Metadata (``key base64value,key2 base64value2``) as a dict; raises TusError 400."""
    if not header:
        return {}
    if len(header) > MAX_METADATA_BYTES:
        raise TusError(400, f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    out: dict[str, str] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key or not re.match(r"^[A-Za-z0-9._-]+$", key) or key in out:
            raise TusError(400, f"Upload-Metadata has an invalid or repeated key {key!r}")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode() if value.strip() else ""
        except (binascii.Error, UnicodeDecodeError):
            raise TusError(400, f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text") from None
    return out


def parse_checksum(header: str | None) -> bytes | None:
    """The expected SHA-256 of a chunk from ``Upload-Checksum: sha256 <base64>``; raises TusError."""
    if not header:
        return None
    algorithm, _, value = header.strip().partition(" ")
    if algorithm.lower() != "sha256":
        raise TusError(400, f"unsupported checksum algorithm {algorithm!r}: this server supports sha256")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raise TusError(400, "Upload-Checksum value is not base64") from None
    if len(raw) != 32:
        raise TusError(400, "Upload-Checksum sha256 value must be 32 bytes (base64)")
    return raw


class TusUploads:
    """The resumable uploads of one data directory."""

    _COLUMNS = ("id, length, offset, metadata, owner, created_at, expires_at, completed_at, sha256, filename, "
                "job_id")

    def __init__(self, paths: DataPaths, expiry_seconds: int, max_size: int) -> None:
        self.paths = paths
        self.expiry_seconds = expiry_seconds
        self.max_size = max_size
        self.root = paths.imports / "tus"

    @property
    def db(self) -> Database:
        return open_database(self.paths)

    def directory(self, upload_id: str) -> Path:
        return self.root / upload_id

    def data_path(self, upload: TusUpload) -> Path:
        """Where the upload's bytes are: ``data`` while open, the file name once complete."""
        d = self.directory(upload.id)
        return d / upload.filename if upload.filename else d / "data"

    # -- records

    def create(self, length: int, metadata: dict[str, str], owner: str) -> TusUpload:
        """A new empty upload of `length` bytes; raises TusError 413 over the size limit."""
        if length < 0:
            raise TusError(400, "Upload-Length must be a non-negative integer")
        if length > self.max_size:
            raise TusError(413, f"Upload-Length {length} is over the limit of {self.max_size} bytes "
                           "(bundle_max_bytes)")
        self.expire()
        upload_id = uuid.uuid4().hex
        directory = self.directory(upload_id)
        directory.mkdir(parents=True)
        (directory / "data").touch()
        now = time.time()
        state = hashstate.ResumableSha256().state() if hashstate.available() else None
        with write_transaction(self.db) as db:
            db.execute(f"INSERT INTO tus_uploads ({self._COLUMNS}, hash_state) VALUES "
                       "(?, ?, 0, ?, ?, ?, ?, NULL, NULL, NULL, NULL, ?)",
                       [upload_id, length, json.dumps(metadata), owner, now, now + self.expiry_seconds, state])
        upload = self.get(upload_id)
        assert upload is not None
        if length == 0:
            upload = self._complete(upload, None)
        return upload

    def get(self, upload_id: str) -> TusUpload | None:
        """The upload, or None if unknown or expired (an expired one is removed)."""
        if not _ID.match(upload_id):
            return None
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM tus_uploads WHERE id = ?", [upload_id]).fetchone()
        if row is None:
            return None
        upload = TusUpload(row[0], int(row[1]), int(row[2]), json.loads(row[3]), row[4] or "", float(row[5]),
                           float(row[6]), row[7], row[8], row[9], row[10])
        if upload.expires_at <= time.time() and not upload.job_id:
            self.delete(upload.id)
            return None
        return upload

    def set_job(self, upload_id: str, job_id: str) -> None:
        with write_transaction(self.db) as db:
            db.execute("UPDATE tus_uploads SET job_id = ? WHERE id = ?", [job_id, upload_id])

    def delete(self, upload_id: str) -> None:
        """Terminate: forget the upload and remove its bytes (idempotent)."""
        with write_transaction(self.db) as db:
            db.execute("DELETE FROM tus_uploads WHERE id = ?", [upload_id])
        shutil.rmtree(self.directory(upload_id), ignore_errors=True)

    def expire(self, now: float | None = None) -> int:
        """Remove every upload past its expiry; returns how many."""
        now = time.time() if now is None else now
        rows = self.db.execute("SELECT id FROM tus_uploads WHERE expires_at <= ?", [now]).fetchall()
        for (upload_id,) in rows:
            self.delete(upload_id)
        return len(rows)

    def discard_file(self, upload: TusUpload) -> None:
        """Remove a completed upload's bytes (after its import) but keep its record."""
        self.data_path(upload).unlink(missing_ok=True)

    # -- bytes

    def append(self, upload_id: str, offset: int, body: IO[bytes], content_length: int | None,
               checksum: bytes | None, on_complete: Callable[[TusUpload], None] | None = None) -> TusUpload:
        """Write one chunk at `offset`; returns the upload afterwards.

        Raises TusError: 404 unknown, 409 offset mismatch, 413 past the
        declared length, 460 checksum mismatch (the chunk is discarded).
        `on_complete` runs (under the upload's lock) when the last byte lands.
        """
        upload = self.get(upload_id)
        if upload is None:
            raise TusError(404, f"no upload {upload_id} (unknown, terminated or expired)")
        path = self.directory(upload.id) / "data"
        try:
            handle = path.open("r+b")
        except FileNotFoundError:
            raise TusError(409 if upload.complete else 404, f"upload {upload_id} is already complete") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            upload = self.get(upload_id)  # re-read under the lock: another request may have appended
            if upload is None:
                raise TusError(404, f"no upload {upload_id} (terminated)")
            if offset != upload.offset:
                raise TusError(409, f"Upload-Offset {offset} does not match the upload's offset {upload.offset}")
            if upload.complete:
                raise TusError(409, f"upload {upload_id} is already complete")
            room = upload.length - upload.offset
            if content_length is not None and content_length > room:
                raise TusError(413, f"the chunk of {content_length} bytes goes past the declared Upload-Length "
                               f"({room} bytes left)")
            self._write(upload, handle, body, content_length, room, checksum)
            upload = self.get(upload_id)
            assert upload is not None
            if upload.complete:
                upload = self._complete(upload, on_complete)
        return upload

    def _saved_state(self, upload_id: str) -> bytes | None:
        row = self.db.execute("SELECT hash_state FROM tus_uploads WHERE id = ?", [upload_id]).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def _write(self, upload: TusUpload, handle: IO[bytes], body: IO[bytes], content_length: int | None,
               room: int, checksum: bytes | None) -> int:
        state = self._saved_state(upload.id)
        running = hashstate.ResumableSha256(state) if state is not None else None
        chunk_hash = hashlib.sha256() if checksum is not None else None
        handle.seek(upload.offset)
        handle.truncate()  # bytes past the offset are from a chunk that never counted
        wanted = room if content_length is None else content_length
        received = 0
        dropped = False
        while received < wanted:
            try:
                block = body.read(min(BLOCK, wanted - received))
            except Exception:  # the client went away mid-chunk (OSError, werkzeug's ClientDisconnected)
                dropped = True
                break
            if not block:
                dropped = content_length is not None
                break
            handle.write(block)
            if chunk_hash is not None:
                chunk_hash.update(block)
            if running is not None:
                running.update(block)
            received += len(block)
        if content_length is None and received == wanted and body.read(1):
            handle.truncate(upload.offset)
            raise TusError(413, "the chunk goes past the declared Upload-Length")
        if chunk_hash is not None and (dropped or chunk_hash.digest() != checksum):
            handle.truncate(upload.offset)
            if dropped:
                raise TusError(400, "the chunk arrived incomplete and was discarded (its checksum cannot be checked)")
            raise TusError(460, "Upload-Checksum does not match the chunk's sha256; the chunk was discarded")
        handle.flush()
        os.fsync(handle.fileno())
        with write_transaction(self.db) as db:
            db.execute("UPDATE tus_uploads SET offset = offset + ?, hash_state = ?, expires_at = ? WHERE id = ?",
                       [received, running.state() if running is not None else None,
                        time.time() + self.expiry_seconds, upload.id])
        return received

    def _complete(self, upload: TusUpload, on_complete: Callable[[TusUpload], None] | None) -> TusUpload:
        state = self._saved_state(upload.id)
        data = self.directory(upload.id) / "data"
        if state is not None:
            digest = hashstate.ResumableSha256(state).hexdigest()
        else:  # no resumable hashing on this machine: hash the file once, streaming
            h = hashlib.sha256()
            with data.open("rb") as f:
                while block := f.read(BLOCK):
                    h.update(block)
            digest = h.hexdigest()
        filename = _safe_name(upload.metadata.get("filename", "")) or "upload.bin"
        os.replace(data, self.directory(upload.id) / filename)
        with write_transaction(self.db) as db:
            db.execute("UPDATE tus_uploads SET completed_at = ?, sha256 = ?, filename = ? WHERE id = ?",
                       [time.time(), f"sha256:{digest}", filename, upload.id])
        done = self.get(upload.id)
        assert done is not None
        if on_complete is not None:
            on_complete(done)
            done = self.get(upload.id) or done
        return done


def _safe_name(name: str) -> str:
    """A file name with no path and only plain characters (what werkzeug's secure_filename keeps, roughly)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip("._-")
    return cleaned[:200] if cleaned != "data" else "data.bin"
