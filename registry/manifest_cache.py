"""A per-process cache of manifest bytes by digest, bounded in total size.

A manifest GET reads the manifest's bytes from the blob store. On the local
filesystem that is an open and a read from the page cache; on an object
store it is one GET round trip through the S3 client, which measured as the
largest single cost of a manifest GET there (docs/performance.md, "Scaling
out"). Manifests are content-addressed, so bytes cached under their digest
never go stale: whether a repository still holds a manifest is decided by
the database before the bytes are asked for, so a deleted manifest is never
served from here. Only bytes that hash to their digest are kept, so the
cache never holds what the store should not have returned.

One cache per process (gunicorn workers fork before anything is read, so
each starts empty); least recently used entries go first once the total
passes the bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from registry.digest import Digest

DEFAULT_MAX_BYTES = 32 << 20


class ManifestCache:
    """Manifest bytes by digest, least recently used out first; thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Digest, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: Digest) -> bytes | None:
        with self._lock:
            data = self._entries.get(digest)
            if data is not None:
                self._entries.move_to_end(digest)
            return data

    def put(self, digest: Digest, data: bytes) -> None:
        """Keep `data` under `digest` if it hashes to it and fits; otherwise do nothing."""
        if len(data) > self.max_bytes or Digest.of_bytes(data, digest.algorithm) != digest:
            return
        with self._lock:
            if digest in self._entries:
                return
            self._entries[digest] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._size -= len(dropped)

    @property
    def size(self) -> int:
        return self._size


MANIFESTS = ManifestCache()
