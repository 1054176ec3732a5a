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

Every upload belongs to the principal that created it (``owner``, the user
or robot name): `get`, `append` and `concatenate` given an owner treat
another principal's upload as unknown, so only its creator can continue,
inspect, assemble or terminate it.

Concatenation (tus ``concatenation``, what parallel browser uploads use): a
*partial* upload is an ordinary upload that never completes into a file of
its own or starts an import; a *final* upload names complete partials of
the same owner, in order, and is assembled from them with flat memory: the
first part's file is renamed into place (no copy) and its running SHA-256
carries on, each following part is appended in the kernel
(``copy_file_range``: a reflink on XFS/btrfs) while another thread hashes
it, fsynced, and its file removed. Progress (the final's offset and hash state) is saved after
each part, so an assembly cut short (a crash, a proxy timeout) continues
where it stopped when the same final is asked for again. A partial's record
outlives its bytes, marked with the final it went into: each partial is
used once, and a retried final request gets the same final upload back.
Removing a final removes its partials; partials nobody concatenates expire
like any upload.

Replicas (an object store and PostgreSQL metadata shared by several
appliances, docs/operations.md "Scaling out"): a chunk may reach any
replica, so the bytes of an open upload are objects, one per chunk
(``<prefix>/tus/<id>/<offset>``, registry.s3uploads), and the upload's lock
is an advisory lock in PostgreSQL. The replica that receives the last byte
(or the final of a concatenation) streams the objects into its own
``imports/tus/<id>/`` with flat memory, completes the upload there and runs
its import; then the objects go.
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
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from registry import hashstate
from registry.db import cluster_lock, open_database, register_migrations, write_transaction
from registry.dbengine import Database, Migrations
from registry.errors import RegistryError
from registry.paths import DataPaths
from registry.s3store import S3BlobStore
from registry.s3uploads import UploadChunks

BLOCK = 1 << 20
MAX_METADATA_BYTES = 4096
MAX_PARTS = 256  # partial uploads one final upload may name; browsers use a handful
_ID = re.compile(r"^[0-9a-f]{32}$")
PARTIAL = "partial"
FINAL = "final"

web_migrations = register_migrations(Migrations("web"))


@web_migrations()
def m001_tus_uploads(db: Database) -> None:
    # tus_uploads: resumable uploads (web.tus); hash_state is registry.hashstate's saved SHA-256 context.
    db.create_table(
        "tus_uploads",
        {"id": str, "length": int, "offset": int, "metadata": str, "hash_state": bytes, "owner": str,
         "created_at": float, "expires_at": float, "completed_at": float, "sha256": str, "filename": str,
         "job_id": str},
        pk="id", not_null={"length", "offset", "metadata", "created_at", "expires_at"},
    )
    db.create_index("tus_uploads", ["expires_at"])


@web_migrations()
def m002_tus_concatenation(db: Database) -> None:
    # concat: NULL for a plain upload, 'partial' or 'final' (tus concatenation); parts: a final upload's
    # partial upload ids in order (JSON); final_id: the final upload a partial was concatenated into.
    for column in ("concat", "parts", "final_id"):
        db.add_column("tus_uploads", column, str)
    db.create_index("tus_uploads", ["final_id"])


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
    concat: str | None = None  # None, PARTIAL or FINAL
    parts: tuple[str, ...] = ()  # a final upload's partial upload ids, in order
    final_id: str | None = None  # the final upload a partial went into

    @property
    def complete(self) -> bool:
        return self.offset == self.length

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "length": self.length, "offset": self.offset, "metadata": self.metadata,
                "createdAt": self.created_at, "expiresAt": self.expires_at, "completedAt": self.completed_at,
                "sha256": self.sha256, "filename": self.filename, "jobId": self.job_id, "concat": self.concat,
                "parts": list(self.parts), "finalId": self.final_id}


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

    _COLUMNS = ("id, length, \"offset\", metadata, owner, created_at, expires_at, completed_at, sha256, filename, "
                "job_id, concat, parts, final_id")

    def __init__(self, paths: DataPaths, expiry_seconds: int, max_size: int, store: object = None) -> None:
        self.paths = paths
        self.expiry_seconds = expiry_seconds
        self.max_size = max_size
        self.root = paths.imports / "tus"
        # Open uploads' bytes in the object store when replicas share it and PostgreSQL (see the module docstring).
        self.chunks = (UploadChunks(store, "tus") if isinstance(store, S3BlobStore) and paths.database_url
                       else None)

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

    def create(self, length: int, metadata: dict[str, str], owner: str, partial: bool = False) -> TusUpload:
        """A new empty upload of `length` bytes (a tus partial upload if `partial`); raises TusError 413 over the
        size limit."""
        if length < 0:
            raise TusError(400, "Upload-Length must be a non-negative integer")
        if length > self.max_size:
            raise TusError(413, f"Upload-Length {length} is over the limit of {self.max_size} bytes "
                           "(bundle_max_bytes)")
        self.expire()
        upload_id = uuid.uuid4().hex
        if self.chunks is None:
            directory = self.directory(upload_id)
            directory.mkdir(parents=True)
            (directory / "data").touch()
        now = time.time()
        state = hashstate.ResumableSha256().state() if hashstate.available() else None
        with write_transaction(self.db) as db:
            db.execute("INSERT INTO tus_uploads (id, length, \"offset\", metadata, owner, created_at, expires_at, "
                       "hash_state, concat) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)",
                       [upload_id, length, json.dumps(metadata), owner, now, now + self.expiry_seconds, state,
                        PARTIAL if partial else None])
        upload = self.get(upload_id)
        assert upload is not None
        if length == 0:
            if self.chunks is not None:
                self._materialize([upload_id], upload_id)
            upload = self._complete(upload, None)
        return upload

    def _load(self, upload_id: str) -> TusUpload | None:
        """The upload's record as it is, expired or not."""
        if not _ID.match(upload_id):
            return None
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM tus_uploads WHERE id = ?", [upload_id]).fetchone()
        if row is None:
            return None
        return TusUpload(row[0], int(row[1]), int(row[2]), json.loads(row[3]), row[4] or "", float(row[5]),
                         float(row[6]), row[7], row[8], row[9], row[10], row[11],
                         tuple(json.loads(row[12])) if row[12] else (), row[13])

    def get(self, upload_id: str, owner: str | None = None) -> TusUpload | None:
        """The upload, or None if unknown, expired (an expired one is removed) or, when `owner` is given,
        another principal's: to anyone but its creator an upload does not exist."""
        upload = self._load(upload_id)
        if upload is None or (owner is not None and upload.owner != owner):
            return None
        if upload.expires_at <= time.time() and not upload.job_id:
            self.delete(upload.id)
            return None
        return upload

    def set_job(self, upload_id: str, job_id: str) -> None:
        with write_transaction(self.db) as db:
            db.execute("UPDATE tus_uploads SET job_id = ? WHERE id = ?", [job_id, upload_id])

    def delete(self, upload_id: str) -> None:
        """Terminate: forget the upload (a final one with its partials) and remove its bytes (idempotent)."""
        with write_transaction(self.db) as db:
            parts = [r[0] for r in db.execute("SELECT id FROM tus_uploads WHERE final_id = ?", [upload_id])]
            db.execute("DELETE FROM tus_uploads WHERE id = ? OR final_id = ?", [upload_id, upload_id])
        for gone in [upload_id, *parts]:
            shutil.rmtree(self.directory(gone), ignore_errors=True)
            if self.chunks is not None:
                self.chunks.delete(gone)

    def expire(self, now: float | None = None) -> int:
        """Remove every upload past its expiry; returns how many."""
        now = time.time() if now is None else now
        rows = self.db.execute("SELECT id FROM tus_uploads WHERE expires_at <= ?", [now]).fetchall()
        for (upload_id,) in rows:
            self.delete(upload_id)
        if self.chunks is not None:  # objects of uploads no row names any more (a replica died mid-delete)
            known = {r[0] for r in self.db.execute("SELECT id FROM tus_uploads").fetchall()}
            for upload_id, newest in self.chunks.sessions():
                if upload_id not in known and newest < now - self.expiry_seconds:
                    self.chunks.delete(upload_id)
        return len(rows)

    def discard_file(self, upload: TusUpload) -> None:
        """Remove a completed upload's bytes (after its import) but keep its record."""
        self.data_path(upload).unlink(missing_ok=True)

    # -- bytes

    def append(self, upload_id: str, offset: int, body: IO[bytes], content_length: int | None,
               checksum: bytes | None, on_complete: Callable[[TusUpload], None] | None = None,
               owner: str | None = None) -> TusUpload:
        """Write one chunk at `offset`; returns the upload afterwards.

        Raises TusError: 404 unknown (or, when `owner` is given, not that
        principal's), 409 offset mismatch, 413 past the declared length, 460
        checksum mismatch (the chunk is discarded). `on_complete` runs (under
        the upload's lock) when the last byte lands.
        """
        upload = self.get(upload_id, owner)
        if upload is None:
            raise TusError(404, f"no upload {upload_id} (unknown, terminated or expired)")
        if upload.concat == FINAL:
            raise TusError(403, f"upload {upload_id} is a final upload (tus concatenation): its bytes come from "
                           "its partial uploads, and it takes no PATCH")
        if self.chunks is not None:
            with cluster_lock(self.paths, f"tus:{upload_id}"):
                return self._append_remote(upload_id, offset, body, content_length, checksum, on_complete)
        path = self.directory(upload.id) / "data"
        try:
            handle = path.open("r+b")
        except FileNotFoundError:
            raise TusError(409 if upload.complete else 404, f"upload {upload_id} is already complete") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            # Re-read under the lock: another request may have appended.
            upload, room = self._chunk_fits(upload_id, offset, content_length)
            before = upload
            completed: list[TusUpload] = []

            def finish(received: int, state: bytes | None) -> None:
                completed.append(self._complete(before, on_complete, (before.offset + received, state)))

            self._write(upload, handle, body, content_length, room, checksum,
                        None if upload.concat == PARTIAL else finish)
            if completed:
                return completed[0]
            upload = self.get(upload_id)
            assert upload is not None
            if upload.complete:
                upload = self._complete(upload, on_complete)
        return upload

    def _chunk_fits(self, upload_id: str, offset: int, content_length: int | None) -> tuple[TusUpload, int]:
        """The upload a chunk at `offset` extends, and the bytes it has room for; raises TusError naming why not."""
        upload = self.get(upload_id)
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
        return upload, room

    def _append_remote(self, upload_id: str, offset: int, body: IO[bytes], content_length: int | None,
                       checksum: bytes | None, on_complete: Callable[[TusUpload], None] | None) -> TusUpload:
        """`append` with the chunk as an object, under the upload's advisory lock (replicas)."""
        chunks = self.chunks
        assert chunks is not None
        # Re-read under the lock: another replica may have appended.
        upload, room = self._chunk_fits(upload_id, offset, content_length)
        state = self._saved_state(upload.id)
        reader = _ChunkReader(body, room if content_length is None else content_length, state,
                              checksum is not None)
        chunks.put(upload.id, upload.offset, reader)
        received = reader.received
        dropped = reader.dropped or (content_length is not None and received < content_length)

        this_id, start = upload.id, upload.offset

        def cut() -> None:  # the chunk does not count: its object goes (a later chunk would replace it anyway)
            chunks.delete_chunk(this_id, start)

        if content_length is None and received == room and body.read(1):
            cut()
            raise TusError(413, "the chunk goes past the declared Upload-Length")
        if checksum is not None and (dropped or reader.chunk_digest() != checksum):
            cut()
            if dropped:
                raise TusError(400, "the chunk arrived incomplete and was discarded (its checksum cannot be checked)")
            raise TusError(460, "Upload-Checksum does not match the chunk's sha256; the chunk was discarded")
        if upload.offset + received == upload.length and upload.concat != PARTIAL:
            # The last byte: this replica takes the whole upload into its own data directory and completes it.
            self._materialize([upload.id], upload.id, upload.offset + received)
            done = self._complete(upload, on_complete, (upload.offset + received, reader.state()))
            if upload.metadata.get("kind", "bundle") == "bundle":
                # A signature or a split bundle's part is read later by whichever replica gets the request
                # that names it (`open_completed`): its objects stay until it is deleted or expires.
                chunks.delete(upload.id)
            return done
        with write_transaction(self.db) as db:
            db.execute("UPDATE tus_uploads SET \"offset\" = \"offset\" + ?, hash_state = ?, expires_at = ? "
                       "WHERE id = ?", [received, reader.state(), time.time() + self.expiry_seconds, upload.id])
        appended = self.get(upload_id)
        assert appended is not None
        if appended.complete:
            appended = self._complete(appended, on_complete)
        return appended

    def _materialize(self, sources: Sequence[str], upload_id: str, size: int | None = None) -> None:
        """Stream the chunk objects of `sources` (their committed lengths, in order) into
        ``<id>/data`` here, fsynced; `size` for a single source whose last chunk is not yet recorded."""
        assert self.chunks is not None
        directory = self.directory(upload_id)
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "data").open("wb") as out:
            for source in sources:
                length = size if size is not None else (self._load(source) or _gone(source)).offset
                with self.chunks.reader(source, length) as f:
                    while block := f.read(BLOCK):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())

    def local_path(self, upload: TusUpload) -> Path:
        """`data_path`, first brought here from the object store if the upload completed on another replica
        (a signature or a split bundle's part: their objects stay until they expire); flat memory."""
        path = self.data_path(upload)
        if self.chunks is None or path.exists() or not upload.complete or not upload.filename:
            return path
        directory = self.directory(upload.id)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".fetch-{os.getpid()}-{threading.get_ident()}"
        try:
            with tmp.open("wb") as out, self.chunks.reader(upload.id, upload.length) as f:
                while block := f.read(BLOCK):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except RegistryError:
            return path  # its objects are gone too: the caller finds no file and says so
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def open_completed(self, upload: TusUpload) -> IO[bytes]:
        """A completed upload's bytes: its file here, or (replicas) its objects, wherever it completed."""
        path = self.data_path(upload)
        if self.chunks is not None and not path.exists():
            return self.chunks.reader(upload.id, upload.length)
        return path.open("rb")

    def _saved_state(self, upload_id: str) -> bytes | None:
        row = self.db.execute("SELECT hash_state FROM tus_uploads WHERE id = ?", [upload_id]).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def _write(self, upload: TusUpload, handle: IO[bytes], body: IO[bytes], content_length: int | None,
               room: int, checksum: bytes | None, finish: Callable[[int, bytes | None], None] | None = None) -> int:
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
        if finish is not None and upload.offset + received == upload.length:
            # The last chunk: its offset is recorded by the completion, in the same transaction (see `_complete`).
            finish(received, running.state() if running is not None else None)
            return received
        with write_transaction(self.db) as db:
            db.execute("UPDATE tus_uploads SET \"offset\" = \"offset\" + ?, hash_state = ?, expires_at = ? "
                       "WHERE id = ?",
                       [received, running.state() if running is not None else None,
                        time.time() + self.expiry_seconds, upload.id])
        return received

    # -- concatenation

    def concatenate(self, part_ids: Sequence[str], metadata: dict[str, str], owner: str,
                    on_complete: Callable[[TusUpload], None] | None = None,
                    check_space: Callable[[int], None] | None = None) -> TusUpload:
        """The final upload made of the partial uploads `part_ids`, in that order, assembled and complete.

        Every part must be a complete partial upload of `owner`, and each goes
        into one final upload only. Asking again for exactly the same parts
        answers with the final upload they already make (assembling the rest
        first if an earlier request was cut short), so a client whose answer
        was lost may retry. `check_space(n)` is called with the bytes the
        assembly needs on top of the parts (the largest part after the first)
        and may raise. `on_complete` runs as for `append`. Raises TusError:
        400 (no parts, a part named twice, not a partial upload, not
        complete), 404 (unknown, terminated, expired, or another owner's),
        409 (already part of another final upload), 413 (the sum is over the
        size limit).
        """
        if not part_ids:
            raise TusError(400, "Upload-Concat: final names no partial uploads")
        if len(part_ids) > MAX_PARTS:
            raise TusError(400, f"Upload-Concat: final names {len(part_ids)} partial uploads; at most {MAX_PARTS}")
        repeated = sorted({p for p in part_ids if part_ids.count(p) > 1})
        if repeated:
            raise TusError(400, f"Upload-Concat: final names partial upload {repeated[0]} more than once")
        self.expire()
        now = time.time()
        with write_transaction(self.db) as db:  # check and claim the parts in one transaction: each is used once
            parts = [self._claimable(part_id, owner, now) for part_id in part_ids]
            claimed = {part.final_id for part in parts}
            if claimed == {None}:
                total = sum(part.length for part in parts)
                if total > self.max_size:
                    raise TusError(413, f"the partial uploads add up to {total} bytes, over the limit of "
                                   f"{self.max_size} bytes (bundle_max_bytes)")
                if check_space is not None:
                    check_space(max((part.length for part in parts[1:]), default=0))
                final_id = uuid.uuid4().hex
                db.execute("INSERT INTO tus_uploads (id, length, \"offset\", metadata, owner, created_at, expires_at, "
                           "concat, parts) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)",
                           [final_id, total, json.dumps(metadata), owner, now, now + self.expiry_seconds, FINAL,
                            json.dumps(list(part_ids))])
                # The parts live as long as their final upload: none expires in the middle of its assembly.
                db.execute(f"UPDATE tus_uploads SET final_id = ?, expires_at = ? WHERE id IN "
                           f"({', '.join('?' * len(part_ids))})", [final_id, now + self.expiry_seconds, *part_ids])
            else:
                taken = [part for part in parts if part.final_id is not None]
                final = self._load(taken[0].final_id or "") if len(claimed) == 1 else None
                if final is None or final.parts != tuple(part_ids):
                    raise TusError(409, f"partial upload {taken[0].id} is already part of the final upload "
                                   f"{taken[0].final_id}; each partial upload is concatenated once")
                final_id = final.id  # the same request again: the same final upload
        return self._assemble(final_id, on_complete)

    def _claimable(self, part_id: str, owner: str, now: float) -> TusUpload:
        """A part a final upload of `owner` may name (already claimed or not); raises TusError."""
        part = self._load(part_id)
        # Another principal's part is answered as unknown, like every request about another's upload: nothing
        # says it exists, and a tus client takes 404 as "gone, start again" (docs/api.md, "Uploads belong to ...").
        if part is None or (part.expires_at <= now and part.final_id is None) or part.owner != owner:
            raise TusError(404, f"no partial upload {part_id} (unknown, terminated, expired or another user's)")
        if part.concat != PARTIAL:
            raise TusError(400, f"upload {part_id} is not a partial upload (create it with Upload-Concat: partial)")
        if not part.complete:
            raise TusError(400, f"partial upload {part_id} is not complete ({part.offset} of {part.length} bytes); "
                           "finish it before concatenating (concatenation-unfinished is not supported)")
        return part

    def _assemble(self, final_id: str, on_complete: Callable[[TusUpload], None] | None) -> TusUpload:
        """Write the final upload's bytes from its parts, continuing a cut-short assembly; returns it complete."""
        if self.chunks is not None:
            with cluster_lock(self.paths, f"tus:{final_id}"):
                return self._assemble_remote(final_id, on_complete)
        directory = self.directory(final_id)
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / ".lock").open("a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one assembly per final upload; a retry waits for it, then reads it
            final = self._load(final_id)
            if final is None:
                raise TusError(404, f"the final upload {final_id} was terminated while it was assembled")
            if final.completed_at is not None:  # an assembly whose completion was cut short is completed below
                return final
            data = directory / "data"
            state = self._saved_state(final_id)
            start = 0
            for part_id in final.parts:
                part = self._load(part_id)
                if part is None:
                    self.delete(final_id)
                    raise TusError(404, f"partial upload {part_id} was removed before its final upload "
                                   f"{final_id} was assembled; upload the file again")
                if start < final.offset:  # appended by an earlier, cut-short assembly
                    start += part.length
                    continue
                source = self.directory(part_id) / "data"
                if start == 0:
                    # The first part's file becomes the final's (a rename, no copy) and its running hash is the
                    # final's so far. After a crash between the rename and the commit below, `data` has it.
                    if source.exists():
                        os.replace(source, data)
                    elif not data.exists():
                        self.delete(final_id)
                        raise TusError(404, f"the bytes of partial upload {part_id} are gone; upload the file again")
                    state = self._saved_state(part_id)
                elif not source.exists():
                    self.delete(final_id)
                    raise TusError(404, f"the bytes of partial upload {part_id} are gone; upload the file again")
                else:
                    state = _append_file(data, start, source, part.length, state)
                start += part.length
                with write_transaction(self.db) as db:
                    moved = db.execute("UPDATE tus_uploads SET \"offset\" = ?, hash_state = ?, expires_at = ? "
                                       "WHERE id = ?", [start, state, time.time() + self.expiry_seconds, final_id])
                if moved.rowcount == 0:
                    raise TusError(404, f"the final upload {final_id} was terminated while it was assembled")
                # Its bytes are in the final upload now; its record stays (complete, with final_id) so that
                # HEAD and a retried final request still find it.
                shutil.rmtree(self.directory(part_id), ignore_errors=True)
            if not data.exists():  # every part was empty
                data.touch()
            final = self._load(final_id)
            if final is None or not final.complete:
                raise TusError(404, f"the final upload {final_id} was terminated while it was assembled")
            return self._complete(final, on_complete)

    def _assemble_remote(self, final_id: str, on_complete: Callable[[TusUpload], None] | None) -> TusUpload:
        """`_assemble` from the parts' objects, in one pass on this replica (a cut-short one starts over)."""
        assert self.chunks is not None
        final = self._load(final_id)
        if final is None:
            raise TusError(404, f"the final upload {final_id} was terminated while it was assembled")
        if final.completed_at is not None:
            return final
        for part_id in final.parts:
            if self._load(part_id) is None:
                self.delete(final_id)
                raise TusError(404, f"partial upload {part_id} was removed before its final upload "
                               f"{final_id} was assembled; upload the file again")
        try:
            self._materialize(final.parts, final_id)
        except RegistryError as exc:
            self.delete(final_id)
            raise TusError(404, f"the bytes of a partial upload of {final_id} are gone; upload the file "
                           "again") from exc
        with write_transaction(self.db) as db:
            # The hash is taken from the assembled file by `_complete` (no running state across parts here).
            db.execute("UPDATE tus_uploads SET \"offset\" = length, hash_state = NULL, expires_at = ? WHERE id = ?",
                       [time.time() + self.expiry_seconds, final_id])
        final = self._load(final_id)
        if final is None or not final.complete:
            raise TusError(404, f"the final upload {final_id} was terminated while it was assembled")
        done = self._complete(final, on_complete)
        for part_id in final.parts:
            self.chunks.delete(part_id)
        return done

    def _complete(self, upload: TusUpload, on_complete: Callable[[TusUpload], None] | None,
                  landed: tuple[int, bytes | None] | None = None) -> TusUpload:
        """Record the upload complete and run `on_complete`, all in one transaction; `landed`: the last chunk's
        offset and hash state, not yet recorded.

        One transaction, because a process killed between "every byte is in"
        and "the import job exists" left an upload that HEAD showed complete,
        with no import and nothing a client could do to start one (tus
        clients then report success; tests/web/test_kill.py). Now such a
        death leaves the upload as it was before its last chunk, and the
        client's retry of that chunk completes it. `on_complete`'s own writes
        (the import job, the upload's job id, the audit row) join the
        transaction as savepoints: they are on this thread's connection.
        """
        state = landed[1] if landed is not None else self._saved_state(upload.id)
        data = self.directory(upload.id) / "data"
        if upload.concat == PARTIAL:
            # A partial upload is only ever read as a piece of a final one: its bytes stay as `data`, its running
            # hash stays saved (the final upload continues it when this part comes first), and nothing starts.
            digest = hashstate.ResumableSha256(state).hexdigest() if state is not None else None
            with write_transaction(self.db) as db:
                db.execute("UPDATE tus_uploads SET completed_at = ?, sha256 = ? WHERE id = ?",
                           [time.time(), f"sha256:{digest}" if digest else None, upload.id])
            return self.get(upload.id) or upload
        if state is not None:
            digest = hashstate.ResumableSha256(state).hexdigest()
        else:  # no resumable hashing on this machine: hash the file once, streaming
            h = hashlib.sha256()
            with data.open("rb") as f:
                while block := f.read(BLOCK):
                    h.update(block)
            digest = h.hexdigest()
        filename = _safe_name(upload.metadata.get("filename", "")) or "upload.bin"
        named = self.directory(upload.id) / filename
        if named != data:
            # A second name, not a rename: until the commit, `data` is where the upload's bytes are.
            named.unlink(missing_ok=True)
            os.link(data, named)
        with write_transaction(self.db) as db:
            if landed is not None:
                db.execute("UPDATE tus_uploads SET \"offset\" = ?, hash_state = ?, expires_at = ? WHERE id = ?",
                           [landed[0], landed[1], time.time() + self.expiry_seconds, upload.id])
            db.execute("UPDATE tus_uploads SET completed_at = ?, sha256 = ?, filename = ? WHERE id = ?",
                       [time.time(), f"sha256:{digest}", filename, upload.id])
            done = self.get(upload.id)
            assert done is not None
            if on_complete is not None:
                on_complete(done)
                done = self.get(upload.id) or done
        if named != data:
            data.unlink(missing_ok=True)
        return done


def _append_file(data: Path, offset: int, source: Path, length: int, state: bytes | None) -> bytes | None:
    """Put `source` (`length` bytes) at `offset` of `data`, fsynced; returns the running hash state continued over it.

    The copy runs in the kernel (`copy_file_range`; a reflink where the
    filesystem shares extents) while a second thread hashes `source` in
    1 MiB blocks: both release the GIL, so hashing overlaps the copy and the
    fsync instead of adding to them, and memory stays flat. Without a hash
    state (no resumable hashing on this machine) nothing is hashed here and
    the whole file is hashed once at completion. Raises TusError 500 if
    `source` is not `length` bytes long.
    """
    size = source.stat().st_size
    if size != length:
        raise TusError(500, f"{source} holds {size} bytes, its upload recorded {length}")
    running = hashstate.ResumableSha256(state) if state is not None else None
    failed: list[BaseException] = []

    def hash_source() -> None:
        assert running is not None
        try:
            with source.open("rb") as f:
                while block := f.read(BLOCK):
                    running.update(block)
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    hasher = threading.Thread(target=hash_source, name="tus-concat-hash", daemon=True)
    if running is not None:
        hasher.start()
    try:
        with source.open("rb") as src, data.open("r+b") as out:
            out.truncate(offset)  # bytes past the offset are from an assembly that was cut short
            copied = 0
            try:
                while copied < length:
                    n = os.copy_file_range(src.fileno(), out.fileno(), length - copied, copied, offset + copied)
                    if n == 0:
                        break
                    copied += n
            except OSError:  # a filesystem or kernel without copy_file_range between these files: user space
                out.truncate(offset)
                out.seek(offset)
                src.seek(0)
                copied = 0
                while block := src.read(BLOCK):
                    out.write(block)
                    copied += len(block)
            if copied != length:
                raise TusError(500, f"copied {copied} of the {length} bytes of {source}")
            out.flush()
            os.fsync(out.fileno())
    finally:
        if running is not None:
            hasher.join()
    if failed:
        raise failed[0]
    return running.state() if running is not None else None


def _safe_name(name: str) -> str:
    """A file name with no path and only plain characters (what werkzeug's secure_filename keeps, roughly)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip("._-")
    return cleaned[:200] if cleaned != "data" else "data.bin"


def _gone(upload_id: str) -> TusUpload:
    raise TusError(404, f"upload {upload_id} was removed meanwhile")


class _ChunkReader:
    """A tus chunk read up to `limit` bytes for the object store: running and per-chunk SHA-256, a drop noted."""

    def __init__(self, body: IO[bytes], limit: int, state: bytes | None, chunk_hash: bool) -> None:
        self._body = body
        self._left = limit
        self._running = hashstate.ResumableSha256(state) if state is not None else None
        self._chunk = hashlib.sha256() if chunk_hash else None
        self.received = 0
        self.dropped = False

    def read(self, size: int = -1) -> bytes:
        want = min(BLOCK if size is None or size < 0 else size, self._left)
        if want <= 0 or self.dropped:
            return b""
        try:
            block = self._body.read(want)
        except Exception:  # the client went away mid-chunk (OSError, werkzeug's ClientDisconnected)
            self.dropped = True
            return b""
        if not block:
            return b""
        for h in (self._running, self._chunk):
            if h is not None:
                h.update(block)
        self._left -= len(block)
        self.received += len(block)
        return block

    def state(self) -> bytes | None:
        return self._running.state() if self._running is not None else None

    def chunk_digest(self) -> bytes:
        assert self._chunk is not None
        return self._chunk.digest()
