"""The bytes of open `/v2/` upload sessions in the object store, so any replica can take the next chunk.

With blobs in an S3-compatible store (registry.s3store), replicas behind a
load balancer share no disk: a chunk staged on one replica's data volume is
invisible to the replica that receives the next PATCH or the final PUT.
Here each chunk is one object, ``<prefix>/uploads/<uuid>/<start offset, 20
digits>``, written while it streams in (flat memory: one part at a time);
the session's committed offset and SHA-256 state stay in the database
(registry.uploads), which is what counts. An object whose chunk was never
committed (a replica died mid-chunk) either lies at or past the committed
offset, where the next chunk replaces or ignores it, so `reader` walks the
objects from 0 and takes exactly the committed bytes. The final PUT streams
them, in order, into the blob store's ingest; then they are deleted.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol, cast

from registry.blobstore import CHUNK
from registry.errors import RegistryError
from registry.s3store import S3BlobStore, iter_parts

OFFSET_DIGITS = 20


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


class UploadChunks:
    """Upload sessions' chunks as objects of one store."""

    def __init__(self, store: S3BlobStore, area: str = "uploads") -> None:
        self.store = store
        self.area = area  # the key prefix's first segment: ``uploads`` (/v2/), ``tus`` (web.tus)

    def _prefix(self, uuid: str) -> str:
        return self.store._under(f"{self.area}/{uuid}/")

    def _key(self, uuid: str, start: int) -> str:
        return f"{self._prefix(uuid)}{start:0{OFFSET_DIGITS}d}"

    def put(self, uuid: str, start: int, stream: Readable) -> None:
        """Store everything `stream` yields as the chunk of session `uuid` starting at byte `start`."""
        s = self.store
        key = self._key(uuid, start)
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for part in iter_parts(cast(BinaryIO, stream), s.part_size):
                if upload_id is None and len(part) < s.part_size:
                    s.client.put_object(Bucket=s.url.bucket, Key=key, Body=bytes(part))
                    return
                if upload_id is None:
                    upload_id = s.client.create_multipart_upload(Bucket=s.url.bucket, Key=key)["UploadId"]
                parts.append(s._upload_part(key, upload_id, len(parts) + 1, part))
            if upload_id is not None:
                s.client.complete_multipart_upload(Bucket=s.url.bucket, Key=key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
                upload_id = None
        except RegistryError:
            raise
        except Exception as exc:
            raise s._fail(exc, "to write an upload chunk") from None
        finally:
            if upload_id is not None:
                s._abort(key, upload_id)

    def _listing(self, uuid: str) -> dict[int, tuple[str, int]]:
        """start offset: (key, size) of every chunk object of the session."""
        s = self.store
        prefix = self._prefix(uuid)
        found: dict[int, tuple[str, int]] = {}
        try:
            for page in s.client.get_paginator("list_objects_v2").paginate(Bucket=s.url.bucket, Prefix=prefix):
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(prefix):]
                    if name.isdigit():
                        found[int(name)] = (obj["Key"], int(obj["Size"]))
        except Exception as exc:
            raise s._fail(exc, "to list an upload's chunks") from None
        return found

    def reader(self, uuid: str, size: int) -> BinaryIO:
        """The session's first `size` bytes, streamed chunk object after chunk object.

        Raises BLOB_UPLOAD_INVALID if the objects do not cover them (someone
        removed them behind the database's back).
        """
        listing = self._listing(uuid)
        keys: list[tuple[str, int]] = []
        at = 0
        while at < size:
            got = listing.get(at)
            if got is None or got[1] == 0:
                raise RegistryError("BLOB_UPLOAD_INVALID", f"upload {uuid} lacks its bytes from offset {at} "
                                    "in the object store")
            take = min(got[1], size - at)
            keys.append((got[0], take))
            at += take
        return io.BufferedReader(_Concatenated(self.store, keys), CHUNK)

    def delete_chunk(self, uuid: str, start: int) -> None:
        """Remove the chunk object at `start` (one that never counted)."""
        with contextlib.suppress(Exception):  # a later chunk at the same offset replaces it anyway
            self.store.client.delete_object(Bucket=self.store.url.bucket, Key=self._key(uuid, start))

    def delete(self, uuid: str) -> None:
        """Remove every chunk object of the session (idempotent)."""
        s = self.store
        for key, _ in self._listing(uuid).values():
            with contextlib.suppress(Exception):  # what is left, `expire` finds again
                s.client.delete_object(Bucket=s.url.bucket, Key=key)

    def sessions(self) -> Iterator[tuple[str, float]]:
        """(uuid, newest chunk's time) of every session that has chunk objects."""
        s = self.store
        base = s._under(f"{self.area}/")
        newest: dict[str, float] = {}
        try:
            for page in s.client.get_paginator("list_objects_v2").paginate(Bucket=s.url.bucket, Prefix=base):
                for obj in page.get("Contents", ()):
                    uuid = obj["Key"][len(base):].split("/", 1)[0]
                    newest[uuid] = max(newest.get(uuid, 0.0), obj["LastModified"].timestamp())
        except Exception as exc:
            raise s._fail(exc, "to list uploads") from None
        yield from newest.items()


class _Concatenated(io.RawIOBase):
    """Several objects' leading bytes, one after another, fetched one at a time."""

    def __init__(self, store: S3BlobStore, keys: list[tuple[str, int]]) -> None:
        self._store = store
        self._keys = list(reversed(keys))
        self._body: Any = None
        self._left = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while True:
            if self._body is None:
                if not self._keys:
                    return 0
                key, self._left = self._keys.pop()
                try:
                    got = self._store.client.get_object(Bucket=self._store.url.bucket, Key=key,
                                                        Range=f"bytes=0-{self._left - 1}")
                except Exception as exc:
                    raise self._store._fail(exc, "to read an upload chunk") from None
                self._body = got["Body"]
            data = self._body.read(min(len(b), self._left)) if self._left else b""
            if not data:
                if self._left:
                    raise RegistryError("BLOB_UPLOAD_INVALID", "an upload chunk in the object store ended early")
                self._body.close()
                self._body = None
                continue
            n = len(data)
            b[:n] = data
            self._left -= n
            return n

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()
