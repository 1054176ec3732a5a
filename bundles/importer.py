"""Streaming, crash-safe bundle import: the core behind `cargohold bundle import` and the HTTP API.

One pass over the file (or its ``.partNNN`` parts, in order): the bytes go
through a counting reader (SHA-256 of the compressed file when a detached
signature must be checked, and a check of the zstd frame structure so a
truncated file is noticed), zstd stream decompression (with limits on the
total and on the ratio), and `tarfile` in streaming mode, member by member:

1. ``cargohold-bundle.json`` first: the bundle manifest, refused over the
   caps of `bundles.format.MANIFEST_LIMITS` on its bytes, before it is
   parsed (`registry.boundedjson`); then ``cargohold-bundle.sig``, whose
   signature is checked against the trusted keys (`bundles.trust`) before a
   single blob is written. A "plain" bundle (an OCI image layout tarred by
   other tooling, no manifest member) can only be vouched for by a detached
   signature over the whole compressed file: that one is checked on a first
   plain read of the file (`_hash_parts`), before anything is decompressed
   or written, and the import's own read must hash to the same digest.
2. Every member is checked as it passes: no absolute paths, ``..``, links,
   devices or fifos, no duplicates, nothing the manifest does not list,
   sizes and digests as listed. Blobs are written to a staging directory
   under ``imports/staging/<bundle id>/`` on the data volume, hashed while
   they stream, fsynced, verified, then renamed. Blobs the store already
   holds are hashed (the bundle must still be intact) but not rewritten.
3. When the whole stream and every signature have been verified, and every
   image in index.json resolves to content that is present, the staged
   blobs are moved into the store (`BlobStore.adopt`: a rename on the
   filesystem; with an object store, a verified multipart upload at the
   blob's final key, so a key never holds wrong bytes) and `publish`
   records every manifest and tag in ONE transaction. An object store's
   objects are only blobs until then: nothing names them, and what a failed
   import left there is swept by garbage collection after its grace period.

A bundle that ends with a frame index (`bundles.frames`) and needs no
detached signature is read by `bundles.frame_import` instead: the same
checks, with its frames decompressed, hashed and staged on several threads.

A refusal removes the staging directory and leaves the store as it was. A
crash (SIGKILL) leaves at most verified staged blobs and orphan blob files
that nothing references; importing the same bundle again reuses them and
completes. Nothing half-published is ever visible, since publishing is one
SQLite transaction.
"""

from __future__ import annotations

import contextvars
import errno
import fcntl
import hashlib
import os
import posixpath
import queue
import shutil
import struct
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

from bundles import artifacts, frames, keys, releases
from bundles import format as fmt
from bundles.releases import ReleaseInfo
from bundles.tarheaders import BoundedTarInfo
from bundles.trust import TrustStore
from registry import boundedjson
from registry.blobstore import BlobInfo, BlobStore, fsync_dir, local_copy
from registry.db import is_disk_full, write_transaction
from registry.dbengine import Error as DatabaseError
from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.gc import import_guard
from registry.manifests import MANIFEST_TYPES, OCI_INDEX, ParsedManifest, parse_manifest
from registry.model import Registry
from registry.names import ImageReference, MappingRule, map_reference
from registry.paths import DataPaths
from registry.quotas import QuotaExceeded

CHUNK = 1 << 20
MAX_SIGNATURE_BYTES = 64 << 10
MAX_LAYOUT_FILE_BYTES = fmt.MAX_LAYOUT_FILE_BYTES
LAYOUT_LIMITS = fmt.LAYOUT_LIMITS
SIGNATURE_LIMITS = boundedjson.JsonLimits(max_bytes=MAX_SIGNATURE_BYTES, max_depth=4, max_containers=16,
                                          max_elements=64)
ADOPT_THREADS = 8  # staged blobs moved into the store at once (fsync-bound, not CPU-bound)
RATIO_FLOOR = 1 << 20  # the ratio check starts once this many compressed bytes have been read
_LAYOUT_DIRS = {"blobs", "blobs/sha256", "blobs/sha512", "charts", "cluster-definitions"}

Progress = Callable[[str, int, int], None]  # (state, compressed bytes read, compressed total)


class BundleRefused(Exception):
    """The bundle was refused; `code` classifies why and the message names the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImportPolicy:
    """What an import accepts (from `web.config.Config`)."""

    project: str = "spectro-images"
    allow_unsigned: bool = False
    max_bytes: int = 512 << 30
    max_unpacked_bytes: int = 1 << 40
    max_ratio: int = 100
    reserve_bytes: int = 256 << 20
    mapping_rules: tuple[MappingRule, ...] = ()


@dataclass(frozen=True)
class PublishedImage:
    """An image the import made visible."""

    reference: str
    repository: str
    tag: str | None
    digest: Digest

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "repository": self.repository, "tag": self.tag,
                "digest": str(self.digest)}


# -- the bundle file: parts, counting, zstd frames -----------------------------------------------------------


def bundle_parts(path: Path) -> list[Path]:
    """The files making up a bundle: itself, or its ``.part000, .part001, ...`` in order.

    `path` may name the bundle (``b.tar.zst``, used as it is when it exists,
    else its parts) or any of its parts. Raises BundleRefused(NOT_FOUND).
    """
    match = fmt.PART_SUFFIX.search(path.name)
    if match is None and path.is_file():
        return [path]
    base = path.with_name(path.name[: match.start()]) if match else path
    parts: list[Path] = []
    width = len(match.group(1)) if match else 3
    while True:
        part = base.with_name(f"{base.name}.part{len(parts):0{width}d}")
        if not part.is_file():
            break
        parts.append(part)
    if not parts:
        raise BundleRefused("NOT_FOUND", f"no bundle at {path} (and no {base.name}.part000 beside it)")
    stray = base.with_name(f"{base.name}.part{len(parts) + 1:0{width}d}")
    if stray.exists():
        raise BundleRefused("TRUNCATED", f"part {len(parts):0{width}d} of {base.name} is missing "
                            f"but {stray.name} exists")
    return parts


class _ZstdFrames:
    """Follows the zstd frame structure of the compressed bytes, so a cut-off file is noticed.

    The zstandard library's stream reader ends quietly when its input ends
    mid-frame; this parser knows where each frame's last block and checksum
    end (RFC 8878, section 3.1), at a cost of a few steps per 128 KiB block.
    """

    _MAGIC = 0xFD2FB528

    def __init__(self) -> None:
        self._need = 4           # bytes to collect into _head before _step
        self._head = b""
        self._skip = 0           # bytes to pass over (block content, skippable frame)
        self._state = "magic"
        self._checksum = False
        self.frames = 0

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            take = min(self._need - len(self._head), len(view))
            self._head += bytes(view[:take])
            view = view[take:]
            if len(self._head) == self._need:
                head, self._head = self._head, b""
                self._step(head)

    def _step(self, head: bytes) -> None:
        if self._state == "magic":
            (magic,) = struct.unpack("<I", head)
            if magic == self._MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            else:
                raise BundleRefused("FORMAT", "the file is not a zstd-compressed bundle (bad zstd frame magic)")
        elif self._state == "skippable":
            self._skip = struct.unpack("<I", head)[0]
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            fhd = head[0]
            single = (fhd >> 5) & 1
            self._checksum = bool((fhd >> 2) & 1)
            fcs = [1 if single else 0, 2, 4, 8][fhd >> 6]
            self._skip = (0 if single else 1) + [0, 1, 2, 4][fhd & 3] + fcs
            self._state, self._need = "block", 3
        elif self._state == "block":
            (header,) = struct.unpack("<I", head + b"\0")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            if kind == 3:
                raise BundleRefused("FORMAT", "corrupt zstd stream (reserved block type)")
            self._skip = 1 if kind == 1 else size
            if last:
                if self._checksum:
                    self._skip += 4
                self.frames += 1
                self._state, self._need = "magic", 4
            else:
                self._need = 3

    def complete(self) -> bool:
        return self._state == "magic" and not self._head and not self._skip and self.frames > 0


class _Compressed:
    """Reads the parts in sequence: counts, hashes (for detached signatures), follows frames, reports progress."""

    def __init__(self, parts: list[Path], hash_file: bool, progress: Progress | None,
                 progress_base: int = 0) -> None:
        self.parts = parts
        self.total = sum(p.stat().st_size for p in parts)
        self.count = 0
        # With a detached signature the file was read once already (`_hash_parts`): progress counts both reads.
        self.progress_base = progress_base
        self.sha256 = hashlib.sha256() if hash_file else None
        self.frames = _ZstdFrames()
        self.progress = progress
        self.state = "verifying"
        self._index = 0
        self._file: IO[bytes] | None = None

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        while self._index < len(self.parts):
            if self._file is None:
                self._file = self.parts[self._index].open("rb")
            data = self._file.read(n)
            if data:
                self.count += len(data)
                if self.sha256 is not None:
                    self.sha256.update(data)
                self.frames.feed(data)
                if self.progress is not None:
                    self.progress(self.state, self.progress_base + self.count, self.progress_base + self.total)
                return data
            self._file.close()
            self._file = None
            self._index += 1
        return b""

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Unpacked:
    """The decompressed stream, refusing it once it grows past the total or ratio limits."""

    def __init__(self, compressed: _Compressed, policy: ImportPolicy) -> None:
        self.compressed = compressed
        self.policy = policy
        # max_window_size stays at zstd's default (128 MiB): memory must stay flat whatever the bundle.
        self.reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], compressed), read_size=CHUNK,
                                                                 read_across_frames=True)
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.reader.read(CHUNK if n is None or n < 0 else n)
        except zstandard.ZstdError as exc:
            raise BundleRefused("FORMAT", f"the bundle is not a valid zstd stream: {exc}") from None
        self.count += len(data)
        if self.count > self.policy.max_unpacked_bytes:
            raise BundleRefused("LIMIT", f"the bundle decompresses to more than the configured limit of "
                                f"{self.policy.max_unpacked_bytes} bytes (bundle_max_unpacked_bytes)")
        if self.count > self.policy.max_ratio * max(self.compressed.count, RATIO_FLOOR):
            raise BundleRefused("LIMIT", f"the bundle decompresses more than {self.policy.max_ratio} times its "
                                "compressed size (bundle_max_ratio): refused as a decompression bomb")
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Readable(Protocol):
    """Decompressed bytes: `_Unpacked` (the whole stream) or one frame (`bundles.frame_import`)."""

    def read(self, n: int = -1) -> bytes: ...


class _TarStream:
    """A tar archive read member by member from a stream, in one pass.

    Headers (ustar, GNU long names, pax) are parsed by `tarfile.TarInfo`,
    which reads them through ``self.fileobj``/``self.offset`` like a
    `TarFile`; member data is handed out straight from the decompressor's
    buffers. `tarfile`'s own stream mode copies every byte three more times
    through its buffers, which made it the largest CPU cost of an import.
    """

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, raw: _Readable) -> None:
        self.raw = raw
        self.fileobj = self  # tarfile.TarInfo.fromtarfile reads headers through this
        self.pax_headers: dict[str, str] = {}
        self.offset = 0  # set by TarInfo to the end of the current member's (padded) data
        self._pos = 0
        self._data_left = 0

    # What TarInfo.fromtarfile needs of a TarFile's fileobj.
    def read(self, n: int) -> bytes:
        out = []
        got = 0
        while got < n:
            chunk = self.raw.read(n - got)
            if not chunk:
                break
            out.append(chunk)
            got += len(chunk)
        self._pos += got
        return b"".join(out)

    def tell(self) -> int:
        return self._pos

    def next(self) -> tarfile.TarInfo | None:
        """The next member's header (after skipping what is left of the current one); None at the end."""
        self._skip(self.offset - self._pos)
        try:
            info = BoundedTarInfo.fromtarfile(self)  # type: ignore[arg-type]
        # These HeaderError subclasses exist at run time but are missing from typeshed's stubs.
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):  # type: ignore[attr-defined]
            return None
        except tarfile.TruncatedHeaderError:  # type: ignore[attr-defined]
            raise tarfile.ReadError("unexpected end of data") from None
        self._data_left = info.size if info.isreg() else 0
        return info

    def read_data(self, n: int) -> bytes:
        """Up to `n` bytes of the current member's data; b"" when it is all read."""
        if self._data_left <= 0:
            return b""
        chunk = self.raw.read(min(n, self._data_left))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        self._data_left -= len(chunk)
        self._pos += len(chunk)
        return chunk

    def _skip(self, n: int) -> None:
        self._data_left = 0
        while n > 0:
            chunk = self.raw.read(min(n, CHUNK))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            n -= len(chunk)
            self._pos += len(chunk)


class _Sink:
    """Hashes, and writes when told, member data on a worker thread.

    SHA-256 and file writes release the GIL, and so does zstd, so the
    worker hashes and writes chunk N while the main thread decompresses
    chunk N+1. At most `DEPTH` chunks (of up to 1 MiB) wait in between,
    which bounds the memory this costs.
    """

    DEPTH = 8
    _END = object()

    def __init__(self) -> None:
        self._chunks: queue.Queue[Any] = queue.Queue(maxsize=self.DEPTH)
        self._results: queue.Queue[tuple[str | None, OSError | None]] = queue.Queue()
        # In a copy of the import's context, so what it logs carries the import's request id.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._work,),
                                        name="import-hash", daemon=True)
        self._thread.start()

    def begin(self, hasher: Any, out: IO[bytes] | None) -> None:
        self._chunks.put((hasher, out))

    def feed(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def end(self) -> str:
        """The member's hex digest once every chunk is hashed and written; raises the write's OSError."""
        self._chunks.put(self._END)
        hexdigest, error = self._results.get()
        if error is not None:
            raise error
        assert hexdigest is not None
        return hexdigest

    def close(self) -> None:
        self._chunks.put(None)
        self._thread.join()

    def _work(self) -> None:
        hasher: Any = None
        out: IO[bytes] | None = None
        error: OSError | None = None
        while True:
            item = self._chunks.get()
            if item is None:
                return
            if isinstance(item, tuple):
                (hasher, out), error = item, None
            elif item is self._END:
                self._results.put((None if error else hasher.hexdigest(), error))
            elif error is None:
                hasher.update(item)
                if out is not None:
                    try:
                        out.write(item)
                    except OSError as exc:  # reported at end(); the rest of the member is still consumed
                        error = exc


# -- staging ---------------------------------------------------------------------------------------------------


class _Staging:
    """``imports/staging/<bundle id>/``: verified blobs waiting to be published, and a lock.

    A file at ``<algorithm>/<hex>`` here always holds exactly those bytes,
    durably: it is renamed there only after its content was verified and
    fsynced. The fsync runs on a background thread (`commit`), so the disk
    flushes one blob while the main thread decompresses and hashes the
    next; on this kind of machine fsync, not CPU, bounds the import.
    """

    _PENDING = 4  # blobs written but not yet fsynced (open files held meanwhile)

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = (root / "lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BundleRefused("BUSY", "this bundle is being imported by another job right now") from None
        (root / "tmp").mkdir(exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage-fsync")
        self._pending: deque[Future[None]] = deque()
        self._mutex = threading.Lock()  # a parallel import (bundles.frame_import) commits from several threads

    def commit(self, out: IO[bytes], tmp: Path, digest: Digest) -> None:
        """Fsync `out` (verified content of `digest`) and rename it into place, in the background."""
        with self._mutex:
            while len(self._pending) >= self._PENDING:
                self._pending.popleft().result()
            self._pending.append(self._pool.submit(self._commit, out, tmp, self.path(digest)))

    @staticmethod
    def _commit(out: IO[bytes], tmp: Path, final: Path) -> None:
        try:
            out.flush()
            os.fsync(out.fileno())
        finally:
            out.close()
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp, final)

    def flush(self) -> None:
        """Wait for every background commit; raises the first failure (e.g. ENOSPC)."""
        try:
            while self._pending:
                self._pending.popleft().result()
        except OSError as exc:
            raise BundleRefused("DISK_FULL" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "STORAGE",
                                f"could not stage a blob: {exc.strerror}") from None
        for algo in ("sha256", "sha512"):
            if (self.root / algo).is_dir():
                fsync_dir(self.root / algo)

    def path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.encoded

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def fetched(self, digest: Digest, store: BlobStore) -> Path:
        """A local copy of a blob already in a store with no local files (an object store), for reading.

        Under ``fetched/``, which `staged` never lists: it is not published again, and goes with the staging.
        """
        return local_copy(store, digest, self.root / "fetched" / digest.algorithm / digest.encoded)

    def staged(self) -> Iterator[tuple[Digest, Path]]:
        for algo in ("sha256", "sha512"):
            d = self.root / algo
            if d.is_dir():
                for f in d.iterdir():
                    yield Digest(algo, f.name), f

    def remove(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self._lock.close()


# -- member checks ---------------------------------------------------------------------------------------------


def _member_name(info: tarfile.TarInfo) -> str | None:
    """The member's normalised path, None for a harmless directory entry; raises for anything unsafe."""
    raw = info.name
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        # tarfile keeps undecodable bytes as surrogates; such a name could not be stored, logged or shown.
        raise BundleRefused("UNSAFE_MEMBER", f"member name {raw.encode('utf-8', 'surrogateescape')!r} is not "
                            "valid UTF-8") from None
    if raw.startswith("/") or raw.startswith("\\"):
        raise BundleRefused("UNSAFE_MEMBER", f"member {raw!r} has an absolute path")
    parts = raw.split("/")
    if ".." in parts or "\\" in raw:
        raise BundleRefused("UNSAFE_MEMBER", f"member {raw!r} leaves the bundle ('..' in its path)")
    name = posixpath.normpath(raw) if raw not in ("", ".", "./") else "."
    if info.issym():
        raise BundleRefused("UNSAFE_MEMBER", f"member {raw!r} is a symbolic link (to {info.linkname!r}); "
                            "bundles may hold only regular files")
    if info.islnk():
        raise BundleRefused("UNSAFE_MEMBER", f"member {raw!r} is a hard link (to {info.linkname!r}); "
                            "bundles may hold only regular files")
    if info.ischr() or info.isblk():
        raise BundleRefused("UNSAFE_MEMBER", f"member {raw!r} is a device file")
    if info.isfifo():
        raise BundleRefused("UNSAFE_MEMBER", f"member {raw!r} is a fifo")
    if info.isdir():
        if name == "." or name in _LAYOUT_DIRS:
            return None
        raise BundleRefused("UNSAFE_MEMBER", f"unexpected directory {raw!r} in the bundle")
    if not info.isreg() or info.issparse() or info.type == tarfile.CONTTYPE:
        raise BundleRefused("UNSAFE_MEMBER", f"member {raw!r} is not a plain regular file (tar type {info.type!r})")
    return name


def _read_small(tar: _TarStream, info: tarfile.TarInfo, name: str, cap: int) -> bytes:
    if info.size > cap:
        raise BundleRefused("LIMIT", f"member {name} has {info.size} bytes, more than the {cap} allowed for it")
    return b"".join(iter(lambda: tar.read_data(CHUNK), b""))


def _read_layout_file(tar: _TarStream, info: tarfile.TarInfo, name: str) -> bytes:
    """oci-layout or index.json, refused over `LAYOUT_LIMITS` before it is parsed (MANIFEST_TOO_LARGE)."""
    if info.size > MAX_LAYOUT_FILE_BYTES:
        raise BundleRefused("MANIFEST_TOO_LARGE", f"member {name} has {info.size} bytes, more than the "
                            f"{MAX_LAYOUT_FILE_BYTES} allowed")
    data = _read_small(tar, info, name, MAX_LAYOUT_FILE_BYTES)
    try:
        boundedjson.check(data, name, LAYOUT_LIMITS)
    except boundedjson.JsonRefused as exc:
        raise BundleRefused("MANIFEST_TOO_LARGE", exc.message) from None
    return data


def _read_bundle_manifest(tar: _TarStream, info: tarfile.TarInfo, state: _State) -> bytes:
    """Read and decode cargohold-bundle.json into `state` within the format's caps; its bytes."""
    name = fmt.MANIFEST_MEMBER
    if info.size > fmt.MAX_MANIFEST_BYTES:  # refused at its header: not one byte of it is read
        raise BundleRefused("MANIFEST_TOO_LARGE", f"{name} has {info.size} bytes, more than the "
                            f"{fmt.MAX_MANIFEST_BYTES} allowed")
    data = _read_small(tar, info, name, fmt.MAX_MANIFEST_BYTES)
    try:
        state.manifest = fmt.BundleManifest.decode(data)
    except fmt.ManifestTooLarge as exc:
        raise BundleRefused("MANIFEST_TOO_LARGE", str(exc)) from None
    except fmt.FormatError as exc:
        raise BundleRefused("FORMAT", str(exc)) from None
    state.manifest_digest = Digest.of_bytes(data)
    return data


def _listed_member(listed: dict[str, fmt.Member], info: tarfile.TarInfo, name: str) -> fmt.Member:
    """The manifest's entry for member `name`; refused unless the manifest lists it with this size."""
    member = listed.get(name)
    if member is None:
        raise BundleRefused("UNLISTED_MEMBER", f"member {name} is not listed in the bundle manifest")
    if info.size != member.size:
        raise BundleRefused("SIZE_MISMATCH", f"member {name} has {info.size} bytes, the bundle manifest says "
                            f"{member.size}")
    return member


def _verified_layout_file(tar: _TarStream, info: tarfile.TarInfo, name: str, member: fmt.Member) -> bytes:
    """oci-layout or index.json within its caps, refused unless it has the digest the manifest lists."""
    data = _read_layout_file(tar, info, name)
    actual = Digest.of_bytes(data, member.digest.algorithm)
    if actual != member.digest:
        raise BundleRefused("DIGEST_MISMATCH", f"member {name} has digest {actual}, the bundle manifest "
                            f"says {member.digest}")
    return data


def _digest_from_path(name: str) -> Digest | None:
    algo, _, encoded = name[len(fmt.BLOB_PREFIX):].partition("/")
    try:
        return Digest.parse(f"{algo}:{encoded}")
    except RegistryError:
        return None


# -- the import --------------------------------------------------------------------------------------------------


@dataclass
class _State:
    """What one import has seen and staged so far."""

    manifest: fmt.BundleManifest | None = None
    manifest_digest: Digest | None = None
    embedded_key: str | None = None
    layout: dict[str, bytes] = field(default_factory=dict)  # oci-layout, index.json
    files: dict[str, Digest] = field(default_factory=dict)  # chart / cluster-definition path -> digest
    sizes: dict[Digest, int] = field(default_factory=dict)  # content the bundle carries
    new_blobs: int = 0
    reused_blobs: int = 0
    bytes_written: int = 0
    sink: _Sink | None = None
    release: dict[str, Any] | None = None  # the release this import recorded (bundles.releases)


class Importer:
    """Imports bundles into one registry, trusting the keys of one trust store."""

    def __init__(self, registry: Registry, trust: TrustStore, policy: ImportPolicy) -> None:
        self.registry = registry
        self.trust = trust
        self.policy = policy
        self.paths = registry.paths

    def run(self, source: Path, signature: bytes | None = None, progress: Progress | None = None,
            allow_unsigned: bool | None = None) -> dict[str, Any]:
        """Import the bundle at `source` (file or parts); returns the report.

        `signature` is a detached signature file's content (raw, base64 or
        hex). Raises BundleRefused, leaving the store as it was. Holds the
        garbage collector's import guard throughout: an import reuses blob
        files the store already has, which the GC's file sweep must not
        remove under it.
        """
        with import_guard(self.paths):
            return self._run(source, signature, progress, allow_unsigned)

    def _run(self, source: Path, signature: bytes | None, progress: Progress | None,
             allow_unsigned: bool | None) -> dict[str, Any]:
        started = time.monotonic()
        allow = self.policy.allow_unsigned if allow_unsigned is None else allow_unsigned
        parts = bundle_parts(source)
        try:
            detached = keys.read_signature_file(signature) if signature is not None else None
        except keys.SignatureError as exc:
            raise BundleRefused("SIGNATURE", str(exc)) from None
        total = sum(p.stat().st_size for p in parts)
        if total > self.policy.max_bytes:
            raise BundleRefused("LIMIT", f"the bundle has {total} bytes, more than the configured limit of "
                                f"{self.policy.max_bytes} (bundle_max_bytes)")
        detached_key: str | None = None
        verified_digest: bytes | None = None
        if detached is None:
            # Independent frames and their index (bundles.frames): verified in parallel, each byte hashed once.
            # A detached signature covers the whole compressed file instead, which is then read as one stream.
            try:
                index = frames.read_index(parts, [p.stat().st_size for p in parts])
            except frames.FrameIndexError as exc:
                raise BundleRefused("FORMAT", f"the bundle's frame index is invalid: {exc}") from None
            if index is not None and len(index.frames) > 1:
                from bundles.frame_import import FrameImport

                report = FrameImport(self, source, parts, index, progress, allow).run(started)
                if report is not None:
                    return report
        if detached is not None:
            # The signature covers the compressed file, so it is checked first, on one plain read of the file:
            # nothing is decompressed, unpacked or written for a bundle no trusted key vouches for.
            verified_digest = self._hash_parts(parts, progress, 2 * total)
            detached_key = self._check_detached(verified_digest, detached)
        compressed = _Compressed(parts, hash_file=detached is not None, progress=progress,
                                 progress_base=total if detached is not None else 0)
        sink = _Sink()
        state = _State(sink=sink)
        staging: _Staging | None = None
        try:
            unpacked = _Unpacked(compressed, self.policy)
            tar = _TarStream(unpacked)
            staging = self._read_members(tar, unpacked, parts, total, detached, allow, state)
            staging.flush()
            self._finish_stream(compressed)
            if compressed.sha256 is not None and compressed.sha256.digest() != verified_digest:
                raise BundleRefused("SIGNATURE", "the bundle file changed while it was being imported: the bytes "
                                    "read are not the bytes the detached signature was checked against")
            compressed.state = "importing"
            if progress is not None:
                progress("importing", compressed.count, compressed.total)
            images, definitions = self._verify_and_publish(source, state, staging, detached_key, allow)
        except BaseException:
            compressed.close()
            sink.close()
            if staging is not None:
                staging.remove()
            raise
        compressed.close()
        sink.close()
        staging.remove()
        report = self._report(source, parts, compressed.count, unpacked.count, state, detached_key, images,
                              definitions, time.monotonic() - started)
        report["verification"] = {"mode": "sequential", "frames": compressed.frames.frames}
        return report

    def _verify_and_publish(self, source: Path, state: _State, staging: _Staging, detached_key: str | None,
                            allow: bool) -> tuple[list[PublishedImage], list[Any]]:
        """Once every member is verified and staged: resolve the images, check definitions, publish."""
        if state.embedded_key is None and detached_key is None and not allow:
            # Refused earlier for every shape of bundle; kept so no path can publish unsigned content.
            raise BundleRefused("UNSIGNED", "the bundle is not signed and unsigned bundles are refused by "
                                "policy (allow_unsigned_bundles)")
        plan = self._plan(state, staging)
        self._check_content_trust(plan, staging)
        _check_quotas(self.registry, self.registry.db, plan)  # before anything moves into the store
        definitions = self._parse_definitions(state, staging)
        manifest = state.manifest
        release = ReleaseInfo(
            manifest.name if manifest else _plain_name(source), manifest.version if manifest else "",
            str(source), str(state.manifest_digest) if state.manifest_digest else None,
            state.embedded_key or detached_key, state.bytes_written)
        return self._publish_staged(plan, state, staging, definitions, release), definitions

    # -- pass 1: the stream ------------------------------------------------------------------------------------

    def _read_members(self, tar: _TarStream, unpacked: _Unpacked, parts: list[Path], total: int,
                      detached: bytes | None, allow: bool, state: _State) -> _Staging:
        seen: set[str] = set()
        manifest_bytes = b""
        staging: _Staging | None = None
        listed: dict[str, fmt.Member] = {}
        position = 0
        current = "the first member"
        try:
            while True:
                info = tar.next()
                if info is None:
                    break
                name = _member_name(info)
                if name is None:
                    continue
                current = name
                if name in seen:
                    raise BundleRefused("UNSAFE_MEMBER", f"member {name} appears twice in the bundle")
                seen.add(name)
                position += 1
                if position == 1 and name == fmt.MANIFEST_MEMBER:
                    manifest_bytes = _read_bundle_manifest(tar, info, state)
                    assert state.manifest is not None
                    listed = {m.path: m for m in state.manifest.members}
                    continue
                if position == 1:
                    # A plain OCI layout from other tooling: only a detached signature can vouch for it.
                    if detached is None and not allow:
                        raise BundleRefused("UNSIGNED", "the bundle has no cargohold-bundle.json (a plain OCI "
                                            "layout) and no detached signature was given; unsigned bundles "
                                            "are refused by policy (allow_unsigned_bundles)")
                    staging = self._open_staging(parts, total, None)
                if position == 2 and state.manifest is not None:
                    if name == fmt.SIGNATURE_MEMBER:
                        data = _read_small(tar, info, name, MAX_SIGNATURE_BYTES)
                        state.embedded_key = self._check_embedded(data, manifest_bytes)
                        continue
                    if detached is None and not allow:
                        raise BundleRefused("UNSIGNED", f"the bundle has no {fmt.SIGNATURE_MEMBER} and no detached "
                                            "signature was given; unsigned bundles are refused by policy "
                                            "(allow_unsigned_bundles)")
                if state.manifest is not None and staging is None:
                    staging = self._open_staging(parts, total, state.manifest_digest)
                    self._check_external(state.manifest)
                    self._check_space(state.manifest, staging)
                assert staging is not None
                if state.manifest is not None:
                    self._take_listed(tar, info, name, listed, state, staging)
                else:
                    self._take_plain(tar, info, name, state, staging)
            if state.manifest is not None and staging is None:
                # A manifest (and signature) with no other member at all.
                staging = self._open_staging(parts, total, state.manifest_digest)
            if staging is None:
                raise BundleRefused("FORMAT", "the bundle is an empty tar archive")
            missing = [p for p in listed if p not in seen]
            if missing:
                raise BundleRefused("TRUNCATED", f"member {missing[0]} listed in the bundle manifest is missing "
                                    f"({len(missing)} missing in all): the bundle is truncated or incomplete")
            unpacked.drain()  # tar padding and trailing blocks, still counted against the limits
        except tarfile.ReadError as exc:
            if staging is not None:
                staging.remove()
            raise BundleRefused("TRUNCATED", f"the bundle ends early (truncated) or is damaged in {current}: "
                                f"{exc}") from None
        except tarfile.TarError as exc:
            if staging is not None:
                staging.remove()
            raise BundleRefused("FORMAT", f"the bundle is not a valid tar archive (at {current}): {exc}") from None
        except BaseException:
            if staging is not None:
                staging.remove()
            raise
        return staging

    def _open_staging(self, parts: list[Path], total: int, manifest_digest: Digest | None) -> _Staging:
        if manifest_digest is not None:
            bundle_id = manifest_digest.encoded
        else:
            # A plain bundle has no manifest to name it: its first 1 MiB and size do, stably across retries.
            h = hashlib.sha256(str(total).encode())
            with parts[0].open("rb") as f:
                h.update(f.read(1 << 20))
            bundle_id = "plain-" + h.hexdigest()
        return _Staging(self.paths.imports / "staging" / bundle_id)

    def _check_embedded(self, data: bytes, manifest_bytes: bytes) -> str:
        try:
            signature = keys.Signature.from_json(boundedjson.loads(data, fmt.SIGNATURE_MEMBER, SIGNATURE_LIMITS))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleRefused("SIGNATURE", f"{fmt.SIGNATURE_MEMBER} is not a valid signature: {exc}") from None
        trusted = self.trust.get(signature.key_id)
        if trusted is None:
            raise BundleRefused("SIGNATURE", f"the bundle is signed by key {signature.key_id}, which this "
                                "appliance does not trust (add it with `cargohold keys add`)")
        try:
            keys.verify(trusted.public_key(), signature, manifest_bytes)
        except keys.SignatureError as exc:
            raise BundleRefused("SIGNATURE", f"the bundle's signature is invalid: {exc}") from None
        return trusted.id

    def _check_external(self, manifest: fmt.BundleManifest) -> None:
        missing = [b for b in manifest.external_blobs if self.registry.store.stat(b.digest) is None]
        if missing:
            base = manifest.base or {}
            raise BundleRefused("MISSING_BASE", f"this is a delta bundle over {base.get('name', '?')} "
                                f"{base.get('version', '?')}, and {len(missing)} blob(s) it relies on are not on "
                                f"this appliance (first: {missing[0].digest}); import the base bundle "
                                f"{base.get('name', '?')} {base.get('version', '?')} first")

    def _check_space(self, manifest: fmt.BundleManifest, staging: _Staging) -> None:
        needed = 0
        for m in manifest.members:
            if m.path in fmt.LAYOUT_MEMBERS:
                continue
            if self.registry.store.stat(m.digest) is None and not staging.has(m.digest):
                needed += m.size
        self._require_space(needed, f"the bundle needs {needed} bytes of new content")

    def _require_space(self, needed: int, what: str) -> None:
        free = shutil.disk_usage(self.paths.root).free
        if needed + self.policy.reserve_bytes > free:
            raise BundleRefused("DISK_FULL", f"not enough free disk on the data volume: {what}, {free} bytes are "
                                f"free and {self.policy.reserve_bytes} must stay free (import_reserve_bytes)")

    def _take_listed(self, tar: _TarStream, info: tarfile.TarInfo, name: str,
                     listed: dict[str, fmt.Member], state: _State, staging: _Staging) -> None:
        member = _listed_member(listed, info, name)
        if name in fmt.LAYOUT_MEMBERS:
            state.layout[name] = _verified_layout_file(tar, info, name, member)
            return
        if not name.startswith(fmt.BLOB_PREFIX):
            state.files[name] = member.digest
        self._take_content(tar, info, name, member.digest, state, staging)

    def _take_plain(self, tar: _TarStream, info: tarfile.TarInfo, name: str, state: _State,
                    staging: _Staging) -> None:
        if name in fmt.LAYOUT_MEMBERS:
            state.layout[name] = _read_layout_file(tar, info, name)
            return
        digest = _digest_from_path(name) if name.startswith(fmt.BLOB_PREFIX) else None
        if digest is None:
            raise BundleRefused("UNLISTED_MEMBER", f"member {name} is not part of an OCI image layout (a bundle "
                                "without cargohold-bundle.json may hold only oci-layout, index.json and "
                                "blobs/<algorithm>/<hex>)")
        if self.registry.store.stat(digest) is None and not staging.has(digest):
            self._require_space(info.size, f"member {name} needs {info.size} bytes")
        self._take_content(tar, info, name, digest, state, staging)

    def _take_content(self, tar: _TarStream, info: tarfile.TarInfo, name: str, digest: Digest,
                      state: _State, staging: _Staging) -> None:
        """Hash a content member against `digest`; stage it unless the store or staging holds it already."""
        present = self.registry.store.stat(digest) is not None or staging.has(digest)
        out: IO[bytes] | None = None
        tmp = staging.root / "tmp" / digest.encoded
        sink = state.sink
        assert sink is not None
        try:
            if not present:
                out = tmp.open("wb")
            sink.begin(digest.hasher(), out)
            try:
                while True:
                    chunk = tar.read_data(CHUNK)
                    if not chunk:
                        break
                    sink.feed(chunk)
            finally:
                hexdigest = sink.end()  # also when reading failed: the worker must be done with `out`
            actual = Digest(digest.algorithm, hexdigest)
            if actual != digest:
                raise BundleRefused("DIGEST_MISMATCH", f"member {name} has digest {actual}, expected {digest}")
            if out is not None:
                staging.commit(out, tmp, digest)  # closes `out` once fsynced
                out = None
                state.new_blobs += 1
                state.bytes_written += info.size
            else:
                state.reused_blobs += 1
        except OSError as exc:
            raise BundleRefused("DISK_FULL" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "STORAGE",
                                f"could not stage member {name}: {exc.strerror}") from None
        finally:
            if out is not None:
                out.close()
                tmp.unlink(missing_ok=True)
        state.sizes[digest] = info.size

    @staticmethod
    def _hash_parts(parts: list[Path], progress: Progress | None, reported_total: int) -> bytes:
        """SHA-256 of the compressed file (its parts in order), read once; progress as "verifying"."""
        h = hashlib.sha256()
        done = 0
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress("verifying", done, reported_total)
        return h.digest()

    @staticmethod
    def _finish_stream(compressed: _Compressed) -> None:
        compressed.drain()  # a detached signature covers the whole file, trailing bytes included
        if not compressed.frames.complete():
            raise BundleRefused("TRUNCATED", "the bundle file ends in the middle of a zstd frame: it is truncated "
                                "(for a split bundle: is a part missing or short?)")

    def _check_detached(self, digest: bytes, detached: bytes) -> str:
        """The id of the trusted RSA/ECDSA key whose signature `detached` is over the file digest; else refused."""
        candidates = [k for k in self.trust.list() if k.key_type != "ed25519"]
        if not candidates:
            raise BundleRefused("SIGNATURE", "a detached signature was given but no RSA or ECDSA key is trusted "
                                "(add one with `cargohold keys add`)")
        for key in candidates:
            try:
                keys.verify_detached(key.public_key(), detached, digest)
                return key.id
            except keys.SignatureError:
                continue
        raise BundleRefused("SIGNATURE", f"the detached signature does not verify the bundle file with any of the "
                            f"{len(candidates)} trusted RSA/ECDSA key(s): wrong key, or the file or signature "
                            "was altered")

    # -- pass 2: what to publish -------------------------------------------------------------------------------

    def _locate(self, digest: Digest, staging: _Staging) -> Path | None:
        if staging.has(digest):
            return staging.path(digest)
        store = self.registry.store
        path = store.local_path(digest)
        if path is None and store.stat(digest) is not None:
            # An object store: what an earlier bundle brought (a delta bundle's base manifests) is read locally.
            return staging.fetched(digest, store)
        return path

    def _plan(self, state: _State, staging: _Staging) -> dict[str, _RepoPlan]:
        """Resolve every image of index.json to content that is present; raises BundleRefused naming a gap."""
        index_bytes = state.layout.get("index.json")
        if index_bytes is None:
            raise BundleRefused("FORMAT", "the bundle has no index.json (not an OCI image layout)")
        if "oci-layout" not in state.layout:
            raise BundleRefused("FORMAT", "the bundle has no oci-layout file (not an OCI image layout)")
        try:
            index = parse_manifest(index_bytes, OCI_INDEX)
        except RegistryError as exc:
            raise BundleRefused("FORMAT", f"index.json: {exc.message}") from None
        named: dict[str, Descriptor] = {}
        unnamed: list[Descriptor] = []
        for entry in index.manifests:
            ref = (entry.annotations or {}).get(fmt.REF_NAME_ANNOTATION)
            if ref is None:
                unnamed.append(entry)
            elif ref in named and named[ref].digest != entry.digest:
                raise BundleRefused("FORMAT", f"index.json names {ref} twice with different digests")
            else:
                named[ref] = entry
        if state.manifest is not None:
            for image in state.manifest.images:
                known = named.get(image.reference)
                if known is None:
                    named[image.reference] = Descriptor(image.media_type, image.digest, image.size)
                elif known.digest != image.digest:
                    raise BundleRefused("FORMAT", f"image {image.reference}: the bundle manifest says {image.digest},"
                                        f" index.json says {known.digest}")
        carried = state.manifest.artifacts if state.manifest is not None else ()
        if not named and not carried:
            raise BundleRefused("FORMAT", "index.json names no image (no org.opencontainers.image.ref.name)")
        cache: dict[Digest, tuple[ParsedManifest, BlobInfo]] = {}
        plans: dict[str, _RepoPlan] = {}
        where: dict[Digest, list[str]] = {}
        for artifact in carried:  # format 2: files and charts, placed under the project by their own names
            self._plan_artifact(artifact, named.pop(artifact.ref_name, None), staging, cache, plans, where, state)
        for ref_text, entry in sorted(named.items()):
            image_ref, repository = self._place(ref_text, entry.digest)
            plan = plans.setdefault(repository, _RepoPlan())
            self._walk(entry.digest, entry.media_type, ref_text, staging, cache, plan, state)
            if image_ref.tag and plan.tags.get(image_ref.tag, entry.digest) != entry.digest:
                # Only a file or chart can be there already: a mapping rule placed an image on its tag.
                raise BundleRefused("FORMAT", f"image {ref_text} would be published as {repository}:{image_ref.tag},"
                                    " where the bundle also publishes a file or chart")
            if image_ref.tag:
                plan.tags[image_ref.tag] = entry.digest
            plan.images.append(PublishedImage(ref_text, repository, image_ref.tag, entry.digest))
            for digest in plan.manifest_order:
                where.setdefault(digest, []).append(repository)
        for entry in unnamed:
            # Referrers (signatures, SBOMs) travel untagged: they go where their subject goes.
            parsed, _ = self._load_manifest(entry.digest, entry.media_type, "an untagged index.json entry",
                                            staging, cache, state)
            repos = sorted(set(where.get(parsed.subject.digest, []))) if parsed.subject else []
            if not repos:
                raise BundleRefused("FORMAT", f"index.json entry {entry.digest} has no "
                                    f"{fmt.REF_NAME_ANNOTATION} and refers to no image of the bundle: "
                                    "cannot tell which repository it belongs to")
            for repository in repos:
                self._walk(entry.digest, entry.media_type, f"referrer {entry.digest}", staging, cache,
                           plans[repository], state)
        return plans

    def _check_content_trust(self, plans: dict[str, _RepoPlan], staging: _Staging) -> None:
        """Refuse (IMAGE_UNSIGNED) images a content-trust project would not serve; see bundles.image_policy."""
        from bundles.image_policy import unsigned_images
        from registry.image_trust import CONTENT_TRUST_COSIGN, ImageTrust

        findings = unsigned_images(ImageTrust(self.registry), plans, lambda d: self._locate(d, staging),
                                   self.registry.max_manifest_bytes)
        if findings:
            projects = sorted({f.repository.split("/", 1)[0] for f in findings})
            raise BundleRefused("IMAGE_UNSIGNED", f"project {', '.join(projects)} enables {CONTENT_TRUST_COSIGN} "
                                "and these images carry no valid cosign signature by a trusted image-signing key: "
                                + "; ".join(map(str, findings)))

    def _plan_artifact(self, artifact: fmt.ArtifactEntry, entry: Descriptor | None, staging: _Staging,
                       cache: dict[Digest, tuple[ParsedManifest, BlobInfo]], plans: dict[str, _RepoPlan],
                       where: dict[Digest, list[str]], state: _State) -> None:
        """Plan a file or chart artifact at ``<project>/<repository>:<tag>``, after checking it is what the bundle
        manifest says it is (the manifest vouches for the bytes; this keeps the two descriptions from disagreeing)."""
        what = f"{artifact.name} {artifact.version}"
        if entry is None:
            raise BundleRefused("FORMAT", f"{what}: index.json has no entry named {artifact.ref_name}")
        if entry.digest != artifact.manifest_digest:
            raise BundleRefused("FORMAT", f"{what}: the bundle manifest says {artifact.manifest_digest}, index.json "
                                f"says {entry.digest}")
        repository = f"{self.policy.project}/{artifact.repository}"
        plan = plans.setdefault(repository, _RepoPlan())
        self._walk(entry.digest, entry.media_type, what, staging, cache, plan, state)
        problem = artifacts.mismatch(cache[entry.digest][0], artifact)
        if problem:
            raise BundleRefused("FORMAT", f"{what}: {problem}")
        plan.tags[artifact.tag] = entry.digest
        plan.images.append(PublishedImage(artifact.ref_name, repository, artifact.tag, entry.digest))
        for digest in plan.manifest_order:
            where.setdefault(digest, []).append(repository)

    def _place(self, ref_text: str, digest: Digest) -> tuple[ImageReference, str]:
        tail = ref_text.rsplit("/", 1)[-1]
        if ":" not in tail and "@" not in ref_text:
            raise BundleRefused("FORMAT", f"index.json reference {ref_text!r} is not a full image reference "
                                "with a tag (e.g. docker.io/library/nginx:1.25)")
        try:
            ref = fmt.parse_reference(ref_text, "index.json")
            repository = map_reference(ref, self.policy.mapping_rules, self.policy.project)
        except fmt.FormatError as exc:
            raise BundleRefused("FORMAT", str(exc)) from None
        except RegistryError as exc:
            raise BundleRefused("FORMAT", f"image reference {ref_text!r}: {exc.message}") from None
        if ref.digest is not None and ref.digest != digest:
            raise BundleRefused("FORMAT", f"image reference {ref_text} names digest {ref.digest} but its "
                                f"index.json entry is {digest}")
        return ref, repository

    def _load_manifest(self, digest: Digest, media_type: str, what: str, staging: _Staging,
                       cache: dict[Digest, tuple[ParsedManifest, BlobInfo]],
                       state: _State) -> tuple[ParsedManifest, BlobInfo]:
        if digest in cache:
            return cache[digest]
        path = self._locate(digest, staging)
        if path is None:
            raise self._absent(digest, what, state)
        limit = self.registry.max_manifest_bytes
        with path.open("rb") as f:
            body = f.read(limit + 1)
        if len(body) > limit:
            raise BundleRefused("LIMIT", f"manifest {digest} ({what}) is larger than the {limit}-byte limit")
        if media_type not in MANIFEST_TYPES:
            raise BundleRefused("FORMAT", f"{what}: {digest} has media type {media_type!r}, not a manifest type")
        try:
            parsed = parse_manifest(body, media_type, digest)
        except RegistryError as exc:
            raise BundleRefused("FORMAT", f"manifest {digest} ({what}): {exc.message}") from None
        cache[digest] = (parsed, BlobInfo(digest, len(body)))
        return cache[digest]

    def _absent(self, digest: Digest, what: str, state: _State) -> BundleRefused:
        manifest = state.manifest
        if manifest is not None and manifest.base:
            hint = (f"; this is a delta bundle: import its base {manifest.base.get('name', '?')} "
                    f"{manifest.base.get('version', '?')} first")
        else:
            hint = ""
        return BundleRefused("MISSING_CONTENT", f"{what} needs {digest}, which is neither in the bundle nor on "
                             f"this appliance{hint}")

    def _walk(self, digest: Digest, media_type: str, what: str, staging: _Staging,
              cache: dict[Digest, tuple[ParsedManifest, BlobInfo]], plan: _RepoPlan, state: _State) -> None:
        """Add a manifest and all it references to `plan`, children before parents."""
        if digest in plan.manifests:
            return
        parsed, info = self._load_manifest(digest, media_type, what, staging, cache, state)
        for child in parsed.manifests:
            self._walk(child.digest, child.media_type, f"{what} (child {child.digest})", staging, cache, plan, state)
        for blob in parsed.required_blobs:
            path = self._locate(blob.digest, staging)
            if path is None:
                raise self._absent(blob.digest, f"{what} (manifest {digest})", state)
            size = path.stat().st_size
            if size != blob.size:
                raise BundleRefused("SIZE_MISMATCH", f"{what}: blob {blob.digest} has {size} bytes, manifest "
                                    f"{digest} says {blob.size}")
            plan.blobs[blob.digest] = size
        plan.manifests[digest] = (parsed, info)
        plan.manifest_order.append(digest)

    def _parse_definitions(self, state: _State, staging: _Staging) -> list[Any]:
        """Validate the cluster definitions the bundle carries (before anything is published)."""
        if not any(p.startswith(fmt.CLUSTERDEF_PREFIX) for p in state.files):
            return []
        from bundles.clusterdef import DefinitionError, parse_archive

        out = []
        for path, digest in sorted(state.files.items()):
            if not path.startswith(fmt.CLUSTERDEF_PREFIX):
                continue
            located = self._locate(digest, staging)
            assert located is not None
            try:
                out.append(parse_archive(located, source=f"bundle member {path}"))
            except DefinitionError as exc:
                raise BundleRefused("FORMAT", f"cluster definition {path}: {exc}") from None
        return out

    # -- pass 3: publish ---------------------------------------------------------------------------------------

    def _publish_staged(self, plans: dict[str, _RepoPlan], state: _State, staging: _Staging,
                        definitions: list[Any], release: ReleaseInfo | None = None) -> list[PublishedImage]:
        """Move staged blobs into the store, then publish in one transaction; undo the moves if that fails."""
        adopted: list[Digest] = []
        store = self.registry.store

        def move(digest: Digest, path: Path) -> Digest | None:
            if store.stat(digest) is not None:
                path.unlink()
                return None
            store.adopt(path, digest, path.stat().st_size)
            return digest

        try:
            # Each move fsyncs the file and its directory: a few ms of waiting on the disk each, which
            # several threads spend at once (the filesystem's journal commits them together).
            with ThreadPoolExecutor(max_workers=ADOPT_THREADS, thread_name_prefix="import-adopt") as pool:
                moves = [pool.submit(move, digest, path) for digest, path in staging.staged()]
                failures: list[BaseException] = []
                for future in moves:
                    try:
                        if (done := future.result()) is not None:
                            adopted.append(done)
                    except BaseException as exc:  # re-raised below, once every move has ended
                        failures.append(exc)
            if failures:
                raise failures[0]
            files = [BlobInfo(d, state.sizes[d]) for d in state.files.values()]
            named = [(path, str(d), state.sizes[d]) for path, d in sorted(state.files.items())]
            state.release = publish(self.registry, plans, files, definitions, self.paths, release, named)
        except RegistryError as exc:
            for digest in adopted:
                store.delete(digest)
            raise BundleRefused("DISK_FULL" if exc.code == "INSUFFICIENT_STORAGE" else "PUBLISH",
                                f"publishing failed, nothing was published: {exc.message}") from None
        except DatabaseError as exc:
            for digest in adopted:
                store.delete(digest)
            if is_disk_full(exc):
                raise BundleRefused("DISK_FULL", "publishing failed, nothing was published: the database could "
                                    f"not be written ({exc}); free space on the data volume") from None
            raise BundleRefused("PUBLISH", f"publishing failed, nothing was published: database error ({exc})") \
                from None
        except BaseException:
            for digest in adopted:
                store.delete(digest)
            raise
        return [image for plan in plans.values() for image in plan.images]

    # -- report ------------------------------------------------------------------------------------------------

    def _report(self, source: Path, parts: list[Path], bytes_read: int, bytes_unpacked: int, state: _State,
                detached_key: str | None, images: list[PublishedImage], definitions: list[Any],
                duration: float) -> dict[str, Any]:
        manifest = state.manifest
        bundle: dict[str, Any] = {"format": "plain-oci-layout"}
        if manifest is not None:
            bundle = {"format": "cargohold", "name": manifest.name, "version": manifest.version,
                      "created": manifest.created, "platforms": list(manifest.platforms),
                      "manifestDigest": str(state.manifest_digest)}
            if manifest.base:
                bundle["base"] = dict(manifest.base)
            if manifest.incomplete is not None:
                # Built with --allow-incomplete: what its cluster definitions lacked at build time.
                bundle["incomplete"] = manifest.incomplete
        signatures = []
        if state.embedded_key:
            signatures.append({"kind": "embedded", "keyId": state.embedded_key})
        if detached_key:
            signatures.append({"kind": "detached", "keyId": detached_key})
        charts = []
        if manifest is not None:
            charts = [{"name": c.name, "version": c.version, "path": c.path, "digest": str(state.files[c.path])}
                      for c in manifest.charts]
        return {
            "source": str(source),
            "parts": len(parts),
            "bundle": bundle,
            "keyId": state.embedded_key or detached_key,
            "signatures": signatures,
            "unsigned": not signatures,
            "images": [i.to_json() for i in sorted(images, key=lambda i: (i.repository, i.reference))],
            "charts": charts + [{"name": c.name, "version": c.version, "repository": c.repository, "tag": c.tag,
                                 "digest": str(c.digest)} for c in (manifest.chart_artifacts if manifest else ())],
            "files": [{"name": f.name, "version": f.version, "repository": f.repository, "tag": f.tag,
                       "digest": str(f.digest), "size": f.size} for f in (manifest.files if manifest else ())],
            "clusterDefinitions": [getattr(d, "name", str(d)) for d in definitions],
            "release": state.release,
            "blobs": {"new": state.new_blobs, "reused": state.reused_blobs},
            "bytesWritten": state.bytes_written,
            "bytesRead": bytes_read,
            "bytesUnpacked": bytes_unpacked,
            "durationSeconds": round(duration, 3),
        }


@dataclass
class _RepoPlan:
    """What to publish in one repository."""

    blobs: dict[Digest, int] = field(default_factory=dict)
    manifests: dict[Digest, tuple[ParsedManifest, BlobInfo]] = field(default_factory=dict)
    manifest_order: list[Digest] = field(default_factory=list)
    tags: dict[str, Digest] = field(default_factory=dict)
    images: list[PublishedImage] = field(default_factory=list)


RepoPlan = _RepoPlan  # what `publish` takes, for callers that plan without a bundle (bundles.follow)


def _plain_name(source: Path) -> str:
    name = source.name
    for suffix in (".tar.zst", ".tzst", ".zst", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _check_quotas(registry: Registry, db: Any, plans: dict[str, _RepoPlan]) -> None:
    """Refuse (QUOTA_EXCEEDED) a bundle whose new content would take a project past its storage limit."""
    by_project: dict[str, dict[str, int]] = {}
    for repository, plan in plans.items():
        wanted = by_project.setdefault(repository.split("/", 1)[0], {})
        wanted.update({str(d): size for d, size in plan.blobs.items()})
        wanted.update({str(d): info.size for d, (_, info) in plan.manifests.items()})
    for project, blobs in sorted(by_project.items()):
        try:
            registry.quota.require(db, project, blobs)
        except QuotaExceeded as exc:
            raise BundleRefused("QUOTA_EXCEEDED", f"nothing was imported: the bundle's new content for project "
                                f"{project} is {exc.adding} bytes, and the project uses {exc.used} of its "
                                f"{exc.hard}-byte storage quota; raise the quota (PUT /api/v2.0/quotas/{{id}}) "
                                "or free space in the project first") from None


def publish(registry: Registry, plans: dict[str, _RepoPlan], files: list[BlobInfo], definitions: list[Any],
            paths: DataPaths, release: ReleaseInfo | None = None,
            named_files: list[tuple[str, str, int]] | None = None) -> dict[str, Any] | None:
    """Make a verified bundle visible: link blobs, record manifests (children first), set tags, store
    cluster definitions, record the release, all in ONE transaction; returns the release summary.

    This is the one place an import changes what clients see. The staging
    rule (`bundles.releases`): a new tag is set now; a tag that exists and
    points elsewhere is left alone and recorded as pending, to move at
    promotion. Likewise a definition whose name is already stored is only
    kept with the release until promotion.
    """
    store_defs = None
    if definitions:
        from bundles.clusterdef import ClusterDefinitions

        store_defs = ClusterDefinitions(paths)
    pending: dict[str, set[str]] = {}
    with write_transaction(registry.db) as db:
        _check_quotas(registry, db, plans)  # again under the write lock: pushes may have landed meanwhile
        for info in files:
            registry.register_blob(db, info)  # charts and definitions: recorded, served by no repository
        for repository, plan in sorted(plans.items()):
            repo_id = registry.ensure_repository(db, repository)
            for digest, size in plan.blobs.items():
                registry.link(db, repo_id, BlobInfo(digest, size))
            for digest in plan.manifest_order:
                parsed, info = plan.manifests[digest]
                registry.publish_manifest(db, repo_id, repository, parsed, info)
            now, pending[repository] = releases.tag_plan(db, repo_id, plan.tags)
            for tag, digest in sorted(now.items()):
                registry.set_tag(db, repo_id, tag, digest)
        if store_defs is not None:
            for definition in definitions:
                if releases.definition_is_new(db, definition.name):
                    store_defs.put(definition)
        if release is None:
            return None
        images = [(i.reference, i.repository, i.tag, str(i.digest),
                   plans[i.repository].manifests[i.digest][0].media_type,
                   i.tag is not None and i.tag in pending.get(i.repository, set()))
                  for plan in plans.values() for i in plan.images]
        release_id = releases.record_release(db, release, images, definitions, named_files or [])
    waiting = sorted(f"{r}:{t}" for r, tags in pending.items() for t in tags)
    return {"id": release_id, "name": release.name, "version": release.version, "pendingTags": waiting}
