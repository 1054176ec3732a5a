"""Blob upload sessions: monolithic, chunked and resumable, across workers.

A session's bytes go to ``<data>/uploads/<uuid>``; its offset and running
SHA-256 state live in SQLite, so whichever gunicorn worker receives the next
chunk continues the hash without re-reading the file. Bytes are fsynced
before the offset that counts them is committed, so after a crash the
recorded offset never runs ahead of the file; bytes past the offset (a chunk
cut short) are truncated away by the next append. A finished upload is
verified against the client's digest and moved into the blob store.

With blobs in an object store (registry.s3store) the bytes go there instead,
one object per chunk (registry.s3uploads), so replicas behind a load
balancer sharing no disk can each take any chunk; the session's lock is
then an advisory lock of the shared PostgreSQL (registry.db.cluster_lock)
instead of a lock on the local file, and the final PUT streams the chunks
into the store's ingest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO

from registry import hashstate, metrics
from registry.blobstore import CHUNK, BlobInfo, require_space, storage_error
from registry.db import cluster_lock, write_transaction
from registry.digest import Digest
from registry.errors import RegistryError
from registry.model import Registry
from registry.quotas import QuotaExceeded
from registry.s3store import S3BlobStore
from registry.s3uploads import UploadChunks

_UUID_RE = re.compile(r"^[0-9a-f]{32}\Z")
DEFAULT_EXPIRY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class UploadSession:
    """An open upload: which repository it is for and how many bytes it holds."""

    uuid: str
    repository: str
    offset: int
    created_at: float


class ClientGone(Exception):
    """The client stopped sending mid-chunk; what arrived was kept."""


class Uploads:
    """Upload sessions of one registry."""

    def __init__(self, registry: Registry, expiry_seconds: int = DEFAULT_EXPIRY_SECONDS,
                 reserve_bytes: int = 0) -> None:
        self.registry = registry
        self.paths = registry.paths
        self.expiry_seconds = expiry_seconds
        self.reserve_bytes = reserve_bytes
        # The chunks' home when blobs live in an object store; None: the local file of today.
        self.chunks = UploadChunks(registry.store) if isinstance(registry.store, S3BlobStore) else None

    def require_space(self, incoming: int | None) -> None:
        """Raise INSUFFICIENT_STORAGE unless `incoming` bytes fit above the free-space reserve."""
        if self.chunks is not None:
            return  # the bytes go to the object store, not the data volume (its quota answers)
        require_space(self.paths.root, incoming or 0, self.reserve_bytes, "this upload")

    def start(self, name: str) -> UploadSession:
        """Open a new, empty session for repository `name`; raises INSUFFICIENT_STORAGE when the disk is full."""
        self.require_space(0)
        uuid = uuidlib.uuid4().hex
        now = time.time()
        state = hashstate.ResumableSha256().state() if hashstate.available() else None
        if not self._shared_lock:
            try:
                # The bytes (or, with an object store on SQLite, only the session's lock).
                self.paths.upload(uuid).touch(exist_ok=False)
            except OSError as exc:
                raise storage_error(exc, "an upload") from exc
        with write_transaction(self.registry.db) as db:
            db.execute("INSERT INTO uploads (uuid, repository, \"offset\", hash_state, created_at, updated_at) "
                       "VALUES (?, ?, 0, ?, ?, ?)", [uuid, name, state, now, now])
        metrics.UPLOADS_STARTED.inc()
        return UploadSession(uuid, name, 0, now)

    def get(self, name: str, uuid: str) -> UploadSession:
        """The session `uuid` of repository `name`; raises BLOB_UPLOAD_UNKNOWN."""
        if not _UUID_RE.match(uuid):
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {uuid!r} is not known")
        row = self.registry.db.execute("SELECT repository, \"offset\", created_at FROM uploads WHERE uuid = ?",
                                       [uuid]).fetchone()
        if row is None or row[0] != name:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {uuid} is not known to repository {name}")
        return UploadSession(uuid, row[0], int(row[1]), float(row[2]))

    @property
    def _shared_lock(self) -> bool:
        """Whether sessions are locked in PostgreSQL (chunks in the object store, replicas on other machines)."""
        return self.chunks is not None and bool(self.paths.database_url)

    @contextmanager
    def _locked(self, session: UploadSession) -> Iterator[tuple[BinaryIO | None, int, bytes | None]]:
        """The session's file (None with an object store), locked against concurrent chunks, with the
        committed offset and hash state."""
        if self._shared_lock:
            with cluster_lock(self.paths, f"upload:{session.uuid}"):
                yield None, *self._row(session.uuid)
            return
        try:
            f = self.paths.upload(session.uuid).open("r+b")
        except FileNotFoundError:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {session.uuid} is not known") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield (None if self.chunks is not None else f), *self._row(session.uuid)

    def _row(self, uuid: str) -> tuple[int, bytes | None]:
        row = self.registry.db.execute("SELECT \"offset\", hash_state FROM uploads WHERE uuid = ?",
                                       [uuid]).fetchone()
        if row is None:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {uuid} is not known")
        return int(row[0]), (bytes(row[1]) if row[1] is not None else None)

    def append(self, session: UploadSession, stream: BinaryIO, start: int | None = None,
               length: int | None = None) -> UploadSession:
        """Append a chunk; `start` (from Content-Range) must equal the current offset.

        Raises RANGE_INVALID (416) for an out-of-order or stale chunk. If the
        client disconnects mid-chunk, the bytes that arrived are kept and
        counted, and ClientGone is raised. INSUFFICIENT_STORAGE when the chunk
        would eat into the free-space reserve.
        """
        self.require_space(length)
        with self._locked(session) as (f, offset, state):
            if start is not None and start != offset:
                raise RegistryError("RANGE_INVALID", f"chunk starts at {start} but the upload has {offset} bytes",
                                    detail={"offset": offset})
            new_offset, new_state, gone = self._write(f, offset, state, stream, length, session.uuid)
            self._commit(session.uuid, new_offset, new_state)
        if gone:
            raise ClientGone()
        return UploadSession(session.uuid, session.repository, new_offset, session.created_at)

    def _write(self, f: BinaryIO | None, offset: int, state: bytes | None, stream: BinaryIO,
               length: int | None, uuid: str = "") -> tuple[int, bytes | None, bool]:
        """Write a chunk at `offset`; returns (new offset, hash state, client gone)."""
        if f is None:
            assert self.chunks is not None
            counted = _Counted(stream, length, state)
            if length != 0:
                self.chunks.put(uuid, offset, counted)
            return offset + counted.read_bytes, counted.state(), counted.gone
        hasher = hashstate.ResumableSha256(state) if state is not None else None
        written = 0
        gone = False
        try:
            f.seek(offset)
            f.truncate()
            while length is None or written < length:
                want = CHUNK if length is None else min(CHUNK, length - written)
                try:
                    chunk = stream.read(want)
                except OSError:
                    chunk, gone = b"", True
                if not chunk:
                    gone = gone or length is not None
                    break
                f.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                written += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            f.seek(offset)
            f.truncate()
            raise storage_error(exc, "an upload") from exc
        return offset + written, hasher.state() if hasher is not None else None, gone

    def _commit(self, uuid: str, offset: int, state: bytes | None) -> None:
        with write_transaction(self.registry.db) as db:
            db.execute("UPDATE uploads SET \"offset\" = ?, hash_state = ?, updated_at = ? WHERE uuid = ?",
                       [offset, state, time.time(), uuid])

    def finish(self, session: UploadSession, digest: Digest, stream: BinaryIO | None = None,
               length: int | None = None, start: int | None = None) -> BlobInfo:
        """Append a final chunk (if any), verify the digest and store the blob.

        Raises RANGE_INVALID (416) when `start` (from Content-Range) is not the
        current offset, and DIGEST_INVALID when the content does not match
        `digest`, and QuotaExceeded (DENIED, 403) when the blob would take the
        repository's project past its storage limit; the session is then
        discarded, since no later chunk can fix it.
        Idempotent across a crash: a finish cut short after the blob was
        stored is completed by the client's retry (see `_stored_before_crash`).
        """
        stored = self._stored_before_crash(session, digest)
        if stored is not None:
            return stored
        if stream is not None and length != 0:
            self.require_space(length)
        with self._locked(session) as (f, offset, state):
            # Checked under the lock: a chunk that landed meanwhile moved the offset.
            if start is not None and start != offset:
                raise RegistryError("RANGE_INVALID", f"chunk starts at {start} but the upload has {offset} bytes",
                                    detail={"offset": offset})
            if stream is not None and length != 0:
                offset, state, gone = self._write(f, offset, state, stream, length, session.uuid)
                self._commit(session.uuid, offset, state)
                if gone:
                    raise ClientGone()
            if state is not None and digest.algorithm == "sha256":
                actual = Digest("sha256", hashstate.ResumableSha256(state).hexdigest())
            else:
                actual = self._rehash(f, digest.algorithm, session.uuid, offset)
            if actual != digest:
                self._discard(session.uuid)
                raise RegistryError("DIGEST_INVALID", f"uploaded content has digest {actual}, not {digest}",
                                    detail={"expected": str(digest), "actual": str(actual)})
            cost = {str(digest): offset}
            try:
                # Before the blob enters the store: a refused upload leaves nothing behind.
                self.registry.quota.require_repository(self.registry.db, session.repository, cost)
                if self.chunks is not None:
                    with self.chunks.reader(session.uuid, offset) as assembled:
                        info = self.registry.store.ingest(assembled, digest, offset)
                else:
                    info = self.registry.store.adopt(self.paths.upload(session.uuid), digest, offset)
                # Still under the lock: a chunk waiting for it must find the session gone,
                # never write into the file that is now a blob.
                with write_transaction(self.registry.db) as db:
                    self.registry.quota.require_repository(db, session.repository, cost)  # concurrent pushes
                    repo_id = self.registry.ensure_repository(db, session.repository)
                    self.registry.link(db, repo_id, info)
                    db.execute("DELETE FROM uploads WHERE uuid = ?", [session.uuid])
                self._drop_bytes(session.uuid)
            except QuotaExceeded:
                # No later chunk can fix it. A blob a concurrent push beat us to the quota with stays an
                # unrecorded file, which garbage collection removes.
                self._discard(session.uuid)
                raise
        metrics.UPLOADS_COMPLETED.inc()
        return info

    def _stored_before_crash(self, session: UploadSession, digest: Digest) -> BlobInfo | None:
        """The blob an interrupted `finish` had already stored, now linked and the session ended; else None.

        `finish` moves the session's file into the store, then links the blob
        and ends the session in one transaction. A process killed between the
        two (waiting for the write lock behind other writers makes that window
        real) left a session without its file: every byte the client had been
        acknowledged was in the store, yet its retried PUT was refused with
        BLOB_UPLOAD_UNKNOWN and the upload was lost to it (tests/web/test_kill.py).
        The session's saved hash state says which digest its bytes had: only
        that blob, of the session's size, is linked, so no session can claim a
        blob it did not upload.
        """
        if digest.algorithm != "sha256":
            return None
        if self.chunks is None and self.paths.upload(session.uuid).exists():
            return None
        row = self.registry.db.execute("SELECT \"offset\", hash_state FROM uploads WHERE uuid = ?",
                                       [session.uuid]).fetchone()
        if row is None or row[1] is None:
            return None
        if Digest("sha256", hashstate.ResumableSha256(row[1]).hexdigest()) != digest:
            return None
        info = self.registry.store.stat(digest)
        if info is None or info.size != int(row[0]):
            return None
        with write_transaction(self.registry.db) as db:
            if self.chunks is not None:
                # With chunk objects this also answers a finished upload of a blob already stored (no file
                # marks the crash): the project's limit still applies to it.
                self.registry.quota.require_repository(db, session.repository, {str(digest): info.size})
            repo_id = self.registry.ensure_repository(db, session.repository)
            self.registry.link(db, repo_id, info)
            db.execute("DELETE FROM uploads WHERE uuid = ?", [session.uuid])
        self._drop_bytes(session.uuid)
        return info

    def _rehash(self, f: BinaryIO | None, algorithm: str, uuid: str, size: int) -> Digest:
        h = hashlib.new(algorithm)
        if f is None:
            assert self.chunks is not None
            with self.chunks.reader(uuid, size) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            return Digest(algorithm, h.hexdigest())
        f.seek(0)
        while chunk := f.read(CHUNK):
            h.update(chunk)
        return Digest(algorithm, h.hexdigest())

    def _drop_bytes(self, uuid: str) -> None:
        """Remove a session's bytes: its chunk objects and its local file (the bytes, or only its lock)."""
        if self.chunks is not None:
            self.chunks.delete(uuid)
        self.paths.upload(uuid).unlink(missing_ok=True)

    def cancel(self, session: UploadSession) -> None:
        """Discard a session and its bytes (idempotent)."""
        self._discard(session.uuid)

    def _discard(self, uuid: str) -> None:
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM uploads WHERE uuid = ?", [uuid])
        self._drop_bytes(uuid)

    def expire(self, max_age: float | None = None) -> tuple[int, int]:
        """Remove sessions idle longer than `max_age` seconds; returns (count, bytes freed)."""
        cutoff = time.time() - (self.expiry_seconds if max_age is None else max_age)
        rows = self.registry.db.execute("SELECT uuid FROM uploads WHERE updated_at < ?", [cutoff]).fetchall()
        freed = 0
        for (uuid,) in rows:
            path = self.paths.upload(uuid)
            with suppress(FileNotFoundError):
                freed += path.stat().st_size
            self._discard(uuid)
        # Files with no session row (a crash between touch and insert) go too.
        known = {r[0] for r in self.registry.db.execute("SELECT uuid FROM uploads").fetchall()}
        if self.chunks is not None:
            for uuid, newest in self.chunks.sessions():
                if uuid not in known and newest < cutoff:
                    self.chunks.delete(uuid)
        for path in self.paths.uploads.iterdir():
            if path.name in known:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # cancelled or finished by another worker meanwhile
                continue
            if st.st_mtime < cutoff:
                freed += st.st_size
                path.unlink(missing_ok=True)
        return len(rows), freed


class _Counted:
    """A request body read up to `length` bytes, hashed and counted as it goes; a client that stops is noted.

    The object-store path's counterpart of `Uploads._write`'s loop: the
    store reads from this, so what it stored and what is counted are the
    same bytes.
    """

    def __init__(self, stream: BinaryIO, length: int | None, state: bytes | None) -> None:
        self._stream = stream
        self._length = length
        self._hasher = hashstate.ResumableSha256(state) if state is not None else None
        self.read_bytes = 0
        self.gone = False

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else min(size, CHUNK)
        if self._length is not None:
            want = min(want, self._length - self.read_bytes)
        if want <= 0 or self.gone:
            return b""
        try:
            chunk = self._stream.read(want)
        except OSError:
            chunk, self.gone = b"", True
        if not chunk:
            self.gone = self.gone or (self._length is not None and self.read_bytes < self._length)
            return b""
        if self._hasher is not None:
            self._hasher.update(chunk)
        self.read_bytes += len(chunk)
        return chunk

    def state(self) -> bytes | None:
        return self._hasher.state() if self._hasher is not None else None
