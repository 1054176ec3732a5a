"""The content-addressed blob store behind a small interface.

`BlobStore` is what callers use (stat, open, ingest, adopt, delete, walk);
`FilesystemBlobStore` keeps blobs under the data directory (see
`registry.paths`). A blob is written to a temporary file on the same
filesystem, hashed while it streams in, fsynced, checked against the expected
digest and size, and only then renamed into place, so a blob path never holds
wrong bytes. `registry.s3store.S3BlobStore` implements the same protocol on
S3-compatible object storage; callers never ask which one runs: what they
need of a backend (a way to send bytes without reading them through Python,
a health check, a free-space check, quarantine) is a method here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from registry.digest import Digest
from registry.errors import RegistryError
from registry.paths import DataPaths

CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobInfo:
    """What the store knows about one stored blob."""

    digest: Digest
    size: int
    # When the blob was last written or reused (epoch seconds; 0 when unknown): garbage collection leaves
    # unreferenced blobs younger than its grace period alone. Not part of a blob's identity.
    modified: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class ServeHint:
    """How a blob's bytes can be sent without passing through the app: a local file, or a presigned URL."""

    path: Path | None = None
    url: str | None = None


class BlobStore(Protocol):
    """Operations every blob backend provides."""

    def stat(self, digest: Digest) -> BlobInfo | None: ...
    def open(self, digest: Digest, offset: int = 0) -> BinaryIO: ...
    def local_path(self, digest: Digest) -> Path | None: ...
    def serve_hint(self, digest: Digest, expires: int) -> ServeHint: ...
    def check(self) -> str | None: ...
    def describe(self) -> str: ...
    def require_space(self, incoming: int, reserve: int, what: str) -> None: ...
    def quarantine(self, digest: Digest, name: str) -> str | None: ...
    def ingest(
        self, stream: BinaryIO, expected: Digest | None = None, expected_size: int | None = None
    ) -> BlobInfo: ...
    def ingest_bytes(self, data: bytes, expected: Digest | None = None) -> BlobInfo: ...
    def adopt(self, path: Path, digest: Digest, size: int) -> BlobInfo: ...
    def delete(self, digest: Digest) -> bool: ...
    def walk(self) -> Iterator[BlobInfo]: ...


def local_copy(store: BlobStore, digest: Digest, target: Path) -> Path:
    """`target`, holding blob `digest` of `store` (copied there once, streamed): for code that must read a stored
    blob as a file where the store keeps none (an object store). Raises BLOB_UNKNOWN if the blob is absent."""
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        with store.open(digest) as src, part.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        os.replace(part, target)
    return target


def require_space(root: Path, incoming: int, reserve: int, what: str) -> None:
    """Refuse a write that would leave less than `reserve` bytes free on the data volume.

    Raises INSUFFICIENT_STORAGE (507) naming the shortfall. An edge box with
    a full disk cannot even record a failed upload, so writers stop before it.
    """
    free = shutil.disk_usage(root).free
    if incoming + reserve > free:
        raise RegistryError("INSUFFICIENT_STORAGE",
                            f"not enough free space for {what}: {incoming} bytes incoming, {free} free and "
                            f"{reserve} must stay free (import_reserve_bytes)")


def storage_error(exc: OSError, what: str) -> RegistryError:
    """Translate a failed write into a registry error that says why."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RegistryError("INSUFFICIENT_STORAGE", f"no space left on the data volume while writing {what}")
    return RegistryError("UNKNOWN", f"storage error while writing {what}: {exc.strerror}")


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk, so a rename or create in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemBlobStore:
    """Blobs as files under ``<data>/blobs`` (see `registry.paths`)."""

    def __init__(self, paths: DataPaths) -> None:
        self.paths = paths

    def describe(self) -> str:
        return str(self.paths.blobs)

    def stat(self, digest: Digest) -> BlobInfo | None:
        try:
            st = self.paths.blob(digest).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(digest, st.st_size, st.st_mtime)

    def open(self, digest: Digest, offset: int = 0) -> BinaryIO:
        """Open a blob for reading from byte `offset`; raises BLOB_UNKNOWN if it is absent."""
        try:
            f = self.paths.blob(digest).open("rb")
        except FileNotFoundError:
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in the store") from None
        if offset:
            f.seek(offset)
        return f

    def local_path(self, digest: Digest) -> Path | None:
        path = self.paths.blob(digest)
        return path if path.exists() else None

    def serve_hint(self, digest: Digest, expires: int) -> ServeHint:
        """The blob's file (sendfile, or the front's file location); `expires` does not apply."""
        return ServeHint(path=self.paths.blob(digest))

    def check(self) -> str | None:
        """None if the blob directory can be listed; otherwise what is wrong (for /readyz)."""
        try:
            with os.scandir(self.paths.blobs) as entries:
                next(entries, None)
        except FileNotFoundError:
            return "the blob store's directory is missing"
        except NotADirectoryError:
            return "the blob store's path is not a directory"
        except OSError as exc:
            why = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else (exc.strerror or "I/O error")
            return f"the blob store cannot be read ({why})"
        return None

    def require_space(self, incoming: int, reserve: int, what: str) -> None:
        """Blobs land on the data volume: refuse a write that would leave less than `reserve` free."""
        require_space(self.paths.root, incoming, reserve, what)

    def quarantine(self, digest: Digest, name: str) -> str | None:
        """Move a damaged blob to ``<data>/quarantine/<name>``; where it went, or None if it was gone."""
        self.paths.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.paths.quarantine / name
        try:
            os.replace(self.paths.blob(digest), target)
        except FileNotFoundError:
            return None
        return str(target)

    def temp_file(self) -> tuple[int, Path]:
        """A new temporary file in the store's filesystem (fd, path)."""
        fd, name = tempfile.mkstemp(dir=self.paths.tmp, prefix="blob-")
        return fd, Path(name)

    def ingest(self, stream: BinaryIO, expected: Digest | None = None, expected_size: int | None = None) -> BlobInfo:
        """Stream `stream` into the store, verifying digest and size.

        Raises DIGEST_INVALID or SIZE_INVALID on a mismatch, and
        INSUFFICIENT_STORAGE when the disk fills; in every failure the store
        is unchanged. Idempotent: ingesting a blob already stored keeps the
        existing file.
        """
        algorithm = expected.algorithm if expected else "sha256"
        hasher = hashlib.new(algorithm)
        fd, tmp = self.temp_file()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if expected_size is not None and size > expected_size:
                        raise RegistryError("SIZE_INVALID", f"blob is larger than the expected {expected_size} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected_size is not None and size != expected_size:
                raise RegistryError("SIZE_INVALID", f"blob has {size} bytes, expected {expected_size}")
            digest = Digest(algorithm, hasher.hexdigest())
            if expected is not None and digest != expected:
                raise RegistryError("DIGEST_INVALID", f"content digest {digest} does not match the expected {expected}")
            return self._place(tmp, digest, size)
        except OSError as exc:
            raise storage_error(exc, "a blob") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def ingest_bytes(self, data: bytes, expected: Digest | None = None) -> BlobInfo:
        """Store a small in-memory blob (a manifest or config). Same contract as `ingest`."""
        digest = Digest.of_bytes(data, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise RegistryError("DIGEST_INVALID", f"content digest {digest} does not match the expected {expected}")
        existing = self.stat(digest)
        if existing is not None:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.paths.blob(digest))  # fresh mtime for the GC grace period, as in `_place`
            return existing
        fd, tmp = self.temp_file()
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            return self._place(tmp, digest, len(data))
        except OSError as exc:
            raise storage_error(exc, "a manifest") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(self, path: Path, digest: Digest, size: int) -> BlobInfo:
        """Move a file whose digest the caller verified while writing into place.

        The file must be on the data volume. It is fsynced before the rename.
        """
        try:
            with path.open("rb+") as f:
                os.fsync(f.fileno())
            return self._place(path, digest, size)
        except OSError as exc:
            raise storage_error(exc, "a blob") from exc

    def _place(self, tmp: Path, digest: Digest, size: int) -> BlobInfo:
        final = self.paths.blob(digest)
        if final.exists():
            tmp.unlink(missing_ok=True)
            # Fresh mtime: garbage collection leaves files younger than its grace period alone, so a file
            # that was unreferenced a moment ago is not swept between this and the caller recording it.
            with contextlib.suppress(FileNotFoundError):
                os.utime(final)
            return BlobInfo(digest, final.stat().st_size)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return BlobInfo(digest, size)

    def delete(self, digest: Digest) -> bool:
        """Remove a blob file; True if it existed. Idempotent."""
        try:
            self.paths.blob(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def walk(self) -> Iterator[BlobInfo]:
        """Every blob in the store (no particular order)."""
        for algo_dir in sorted(p for p in self.paths.blobs.iterdir() if p.is_dir()):
            for prefix in sorted(p for p in algo_dir.iterdir() if p.is_dir()):
                for f in prefix.iterdir():
                    try:
                        st = f.stat()
                        yield BlobInfo(Digest.parse(f"{algo_dir.name}:{f.name}"), st.st_size, st.st_mtime)
                    except (RegistryError, FileNotFoundError):
                        continue
