"""Parallel import of a bundle with a frame index: its zstd frames verified and staged concurrently.

`bundles.importer.Importer` hands a bundle here when it ends with a frame
index (`bundles.frames`) and no detached signature must be checked (a
detached signature covers the whole compressed file, so that file is hashed
first and read in one stream). Each byte is then hashed once, as a member:

1. Frame 0 alone, in this thread: the manifest (refused over its caps before
   it is parsed) and its embedded signature, checked against the trusted
   keys, exactly as the streaming import does. Frame 0 must hold nothing
   else. Nothing is decompressed beyond it, or written, before that.
2. The frame index is then held against the signed manifest: the unpacked
   total it claims must fit the members' sizes (plus tar headers), the
   import's limits and the ratio limit, so a lying index cannot cause more
   work than the signed content would.
3. Frames 1..N go to a small thread pool (`WORKERS`). Each worker reads its
   byte range, decompresses it (zstandard releases the GIL), parses its tar
   headers, and hashes and stages each member it holds (hashlib and file
   writes release the GIL too), with the same member checks as the
   streaming import. A frame must decompress as exactly one zstd frame of
   exactly the unpacked size the index gives and end at a member boundary;
   otherwise the bundle is refused naming the frame (and member). Memory
   per worker is a decompressor and a few 1 MiB buffers.
4. When every frame is done and every listed member was seen exactly once,
   the importer's own planning and one-transaction publish run as for any
   bundle. A refusal or crash leaves what the streaming import leaves:
   verified, fsynced staged blobs at most.
"""

from __future__ import annotations

import errno
import os
import tarfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import zstandard

from bundles import format as fmt
from bundles import frames
from bundles.importer import (
    CHUNK,
    MAX_SIGNATURE_BYTES,
    RATIO_FLOOR,
    BundleRefused,
    Progress,
    _listed_member,
    _member_name,
    _read_bundle_manifest,
    _read_small,
    _Staging,
    _State,
    _TarStream,
    _verified_layout_file,
    _ZstdFrames,
)
from registry.digest import Digest

if TYPE_CHECKING:
    from bundles.importer import Importer

WORKERS = max(2, min(4, os.cpu_count() or 2))
# Frame 0 is the manifest and its signature with their tar headers (and pax headers, at most a few KiB).
HEAD_MAX = fmt.MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + (64 << 10)
MEMBER_OVERHEAD = 4 << 10  # tar header, a pax header and padding, as the builder writes them, with margin
TAR_END = 2 * tarfile.RECORDSIZE  # end-of-archive blocks and record padding
# Member data is decompressed into one reused buffer per worker, then hashed and written from it: a fresh
# 1 MiB bytes object per chunk cost a third more CPU (new pages to fault in, data out of cache by the write).
DATA_CHUNK = 256 << 10


class _Stopped(Exception):
    """Another frame was refused: this worker stops early (never reported)."""


class _FrameInput:
    """One frame's compressed bytes, followed structurally (`_ZstdFrames`) and counted."""

    def __init__(self, job: FrameImport, frame: frames.Frame) -> None:
        self.job, self.frame = job, frame
        self.span = frames.Span(job.parts, job.sizes, frame.offset, frame.offset + frame.size)
        self.check = _ZstdFrames()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self.job.stop.is_set():
            raise _Stopped
        try:
            data = self.span.read(CHUNK if n is None or n < 0 else n)
        except frames.FrameIndexError as exc:
            raise BundleRefused("TRUNCATED", f"frame {self.frame.number}: {exc}") from None
        try:
            self.check.feed(data)
        except BundleRefused as exc:
            raise BundleRefused(exc.code, f"frame {self.frame.number} (bytes {self.frame.offset}.."
                                f"{self.frame.offset + self.frame.size}): {exc.message}: the frame index does not "
                                "match the bundle") from None
        self.count += len(data)
        self.job.add_read(len(data))
        return data


class _FrameOutput:
    """One frame decompressed: exactly the unpacked size the index gives, never more."""

    def __init__(self, source: _FrameInput, where: list[str]) -> None:
        self.source, self.frame, self.where = source, source.frame, where
        # read_across_frames=False: the reader stops at the frame's end; any byte after it is found by `check`.
        self.reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=CHUNK,  # type: ignore[arg-type]
                                                                 read_across_frames=False)
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.reader.read(CHUNK if n is None or n < 0 else n)
        except zstandard.ZstdError as exc:
            raise BundleRefused("FORMAT", f"{self.where[0]} is damaged: frame {self.frame.number} of the bundle "
                                f"is not valid zstd data ({exc})") from None
        self.count += len(data)
        if self.count > self.frame.usize:
            raise BundleRefused("FORMAT", f"frame {self.frame.number} unpacks to more than the "
                                f"{self.frame.usize} bytes the frame index gives (at {self.where[0]})")
        return data

    def readinto(self, view: memoryview) -> int:
        try:
            n = self.reader.readinto(view)
        except zstandard.ZstdError as exc:
            raise BundleRefused("FORMAT", f"{self.where[0]} is damaged: frame {self.frame.number} of the bundle "
                                f"is not valid zstd data ({exc})") from None
        self.count += n
        if self.count > self.frame.usize:
            raise BundleRefused("FORMAT", f"frame {self.frame.number} unpacks to more than the "
                                f"{self.frame.usize} bytes the frame index gives (at {self.where[0]})")
        return n

    def finish(self) -> None:
        """Read what is left (tar padding); the frame must be exactly as large as the index says, and one frame."""
        while self.read(CHUNK):
            pass
        n = self.frame.number
        if self.count != self.frame.usize:
            raise BundleRefused("TRUNCATED", f"frame {n} unpacks to {self.count} bytes, the frame index says "
                                f"{self.frame.usize} (at {self.where[0]}): the bundle is truncated or damaged")
        while self.source.read(CHUNK):
            pass
        if self.source.check.frames != 1 or not self.source.check.complete():
            raise BundleRefused("FORMAT", f"bytes {self.frame.offset}..{self.frame.offset + self.frame.size} "
                                f"(frame {n} of the frame index) are not exactly one complete zstd frame")


class _FrameTar(_TarStream):
    """`_TarStream` over one frame, whose member data can also be read into a reused buffer."""

    raw: _FrameOutput

    def readinto_data(self, view: memoryview) -> int:
        """Up to len(`view`) bytes of the current member's data into `view`; 0 when it is all read."""
        if self._data_left <= 0:
            return 0
        n = self.raw.readinto(view[: min(len(view), self._data_left)])
        if not n:
            raise tarfile.ReadError("unexpected end of data")
        self._data_left -= n
        self._pos += n
        return n


class FrameImport:
    """One parallel import of a bundle with a frame index, on behalf of `importer`."""

    def __init__(self, importer: Importer, source: Path, parts: list[Path], index: frames.FrameIndex,
                 progress: Progress | None, allow: bool) -> None:
        self.importer, self.source, self.parts, self.index = importer, source, parts, index
        self.sizes = [p.stat().st_size for p in parts]
        self.total = sum(self.sizes)
        self.progress, self.allow = progress, allow
        self.state = _State()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._seen: set[str] = {fmt.MANIFEST_MEMBER}
        self._listed: dict[str, fmt.Member] = {}
        self.read_bytes = self.total - index.data_end  # the index itself, read by `frames.read_index`
        self.unpacked_bytes = 0

    def _buffer(self) -> memoryview:
        """This worker thread's reused data buffer."""
        view: memoryview | None = getattr(self._local, "view", None)
        if view is None:
            view = self._local.view = memoryview(bytearray(DATA_CHUNK))
        return view

    def add_read(self, n: int) -> None:
        with self._lock:
            self.read_bytes += n

    def run(self, started: float) -> dict[str, Any] | None:
        """Import; returns the report, or None when frame 0 does not start with a manifest (read as a stream)."""
        staging: _Staging | None = None
        importer = self.importer
        try:
            if not self._head(self.index.frames[0]):
                return None
            manifest = self.state.manifest
            assert manifest is not None
            self._check_claims(manifest)
            staging = importer._open_staging(self.parts, self.total, self.state.manifest_digest)
            importer._check_external(manifest)
            importer._check_space(manifest, staging)
            self._frames(staging)
            staging.flush()
            missing = [p for p in self._listed if p not in self._seen]
            if missing:
                raise BundleRefused("TRUNCATED", f"member {missing[0]} listed in the bundle manifest is missing "
                                    f"({len(missing)} missing in all): the bundle is truncated or incomplete")
            if self.progress is not None:
                self.progress("importing", self.read_bytes, self.total)
            images, definitions = importer._verify_and_publish(self.source, self.state, staging, None, self.allow)
        except BaseException:
            if staging is not None:
                staging.remove()
            raise
        staging.remove()
        report = importer._report(self.source, self.parts, self.read_bytes, self.unpacked_bytes, self.state, None,
                                  images, definitions, time.monotonic() - started)
        report["verification"] = {"mode": "parallel", "frames": len(self.index.frames), "workers": WORKERS}
        return report

    # -- frame 0: the manifest and its signature, before anything else -----------------------------------------

    def _head(self, frame: frames.Frame) -> bool:
        if frame.usize > HEAD_MAX:
            raise BundleRefused("FORMAT", f"frame 0 of the frame index claims {frame.usize} unpacked bytes; it "
                                f"must hold only {fmt.MANIFEST_MEMBER} and {fmt.SIGNATURE_MEMBER} "
                                f"(at most {HEAD_MAX} bytes)")
        where = ["the start of the bundle"]
        source = _FrameInput(self, frame)
        out = _FrameOutput(source, where)
        tar = _FrameTar(out)
        state = self.state
        try:
            info = tar.next()
            if info is None or info.name != fmt.MANIFEST_MEMBER or not info.isreg():
                return False  # not a cargohold bundle: the streaming import reads (and judges) it
            name = fmt.MANIFEST_MEMBER
            where[0] = f"member {name}"
            data = _read_bundle_manifest(tar, info, state)
            assert state.manifest is not None
            self._listed = {m.path: m for m in state.manifest.members}
            if tar.offset < frame.usize:
                info = tar.next()
                if info is None or _member_name(info) != fmt.SIGNATURE_MEMBER:
                    raise BundleRefused("FORMAT", f"frame 0 holds more than {fmt.MANIFEST_MEMBER} and "
                                        f"{fmt.SIGNATURE_MEMBER}: the frame index does not match the bundle")
                where[0] = f"member {fmt.SIGNATURE_MEMBER}"
                self._seen.add(fmt.SIGNATURE_MEMBER)
                sig = _read_small(tar, info, fmt.SIGNATURE_MEMBER, MAX_SIGNATURE_BYTES)
                state.embedded_key = self.importer._check_embedded(sig, data)
            elif not self.allow:
                raise BundleRefused("UNSIGNED", f"the bundle has no {fmt.SIGNATURE_MEMBER} and no detached "
                                    "signature was given; unsigned bundles are refused by policy "
                                    "(allow_unsigned_bundles)")
            if tar.offset != frame.usize:
                what = "holds more than" if tar.offset < frame.usize else "ends inside"
                raise BundleRefused("FORMAT", f"frame 0 {what} {fmt.MANIFEST_MEMBER} and {fmt.SIGNATURE_MEMBER} "
                                    f"(the frame ends at unpacked byte {frame.usize}, they at {tar.offset}): the "
                                    "frame index does not match the bundle")
            out.finish()
        except tarfile.ReadError as exc:
            raise BundleRefused("TRUNCATED", f"the bundle ends early (truncated) or is damaged in {where[0]}: "
                                f"{exc}") from None
        except tarfile.TarError as exc:
            raise BundleRefused("FORMAT", f"the bundle is not a valid tar archive (at {where[0]}): {exc}") from None
        finally:
            source.span.close()
        self.unpacked_bytes += out.count
        return True

    def _check_claims(self, manifest: fmt.BundleManifest) -> None:
        """The index's unpacked total must fit what the signed manifest and the policy allow."""
        claimed = self.index.unpacked
        policy = self.importer.policy
        allowed = (manifest.total_size + (len(manifest.members) + 2) * MEMBER_OVERHEAD + TAR_END
                   + self.index.frames[0].usize)
        if claimed > allowed:
            raise BundleRefused("FORMAT", f"the frame index claims {claimed} unpacked bytes; the signed manifest's "
                                f"members take at most {allowed}: the frame index does not match the bundle")
        if claimed > policy.max_unpacked_bytes:
            raise BundleRefused("LIMIT", f"the bundle decompresses to more than the configured limit of "
                                f"{policy.max_unpacked_bytes} bytes (bundle_max_unpacked_bytes)")
        if claimed > policy.max_ratio * max(self.total, RATIO_FLOOR):
            raise BundleRefused("LIMIT", f"the bundle decompresses more than {policy.max_ratio} times its "
                                "compressed size (bundle_max_ratio): refused as a decompression bomb")

    # -- frames 1..N, in parallel ------------------------------------------------------------------------------

    def _frames(self, staging: _Staging) -> None:
        # Largest first: the last frames to finish are then small ones, so no core idles long at the end.
        rest = sorted(self.index.frames[1:], key=lambda f: -f.usize)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="import-frame") as pool:
            futures: dict[Future[None], frames.Frame] = {pool.submit(self._frame, f, staging): f for f in rest}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                if self.progress is not None:
                    self.progress("verifying", self.read_bytes, self.total)
                if any(f.exception() is not None for f in done):
                    self.stop.set()
                    wait(pending)
                    break
        failed = sorted(((futures[f].number, f.exception()) for f in futures
                         if f.done() and not f.cancelled() and f.exception() is not None
                         and not isinstance(f.exception(), _Stopped)), key=lambda x: x[0])
        if failed:
            raise failed[0][1]  # type: ignore[misc]

    def _frame(self, frame: frames.Frame, staging: _Staging) -> None:
        where = [f"the start of frame {frame.number}"]
        source = _FrameInput(self, frame)
        out = _FrameOutput(source, where)
        tar = _FrameTar(out)
        last = frame.number == len(self.index.frames) - 1
        try:
            while last or tar.offset < frame.usize:
                info = tar.next()
                if info is None:
                    if not last:
                        raise BundleRefused("FORMAT", f"frame {frame.number} ends, or holds the tar end-of-archive "
                                            f"marker, before the {frame.usize} unpacked bytes the frame index "
                                            "gives: the frame index does not match the bundle")
                    break
                name = _member_name(info)
                if name is None:
                    continue
                where[0] = f"member {name}"
                if not last and tar.offset > frame.usize:
                    raise BundleRefused("FORMAT", f"member {name} runs past the end of frame {frame.number}: the "
                                        "frame index does not match the bundle")
                with self._lock:
                    if name in self._seen:
                        raise BundleRefused("UNSAFE_MEMBER", f"member {name} appears twice in the bundle")
                    self._seen.add(name)
                self._take(tar, info, name, frame.number, staging)
            out.finish()
        except tarfile.ReadError as exc:
            raise BundleRefused("TRUNCATED", f"the bundle ends early (truncated) or is damaged in {where[0]} "
                                f"(frame {frame.number}): {exc}") from None
        except tarfile.TarError as exc:
            raise BundleRefused("FORMAT", f"the bundle is not a valid tar archive (at {where[0]}, frame "
                                f"{frame.number}): {exc}") from None
        finally:
            source.span.close()
        with self._lock:
            self.unpacked_bytes += out.count

    def _take(self, tar: _FrameTar, info: tarfile.TarInfo, name: str, number: int, staging: _Staging) -> None:
        """`Importer._take_listed`, hashing on this worker's thread; state changes under the lock."""
        member = _listed_member(self._listed, info, name)
        state = self.state
        if name in fmt.LAYOUT_MEMBERS:
            data = _verified_layout_file(tar, info, name, member)
            with self._lock:
                state.layout[name] = data
            return
        digest = member.digest
        store = self.importer.registry.store
        present = store.stat(digest) is not None or staging.has(digest)
        out: IO[bytes] | None = None
        tmp = staging.root / "tmp" / f"{digest.encoded}.{number}"  # frames run at once: a name of their own
        try:
            if not present:
                out = tmp.open("wb")
            hasher = digest.hasher()
            view = self._buffer()
            while n := tar.readinto_data(view):
                chunk = view[:n]
                hasher.update(chunk)
                if out is not None:
                    out.write(chunk)
            actual = Digest(digest.algorithm, hasher.hexdigest())
            if actual != digest:
                raise BundleRefused("DIGEST_MISMATCH", f"member {name} has digest {actual}, expected {digest}")
            if out is not None:
                staging.commit(out, tmp, digest)  # closes `out` once fsynced
                out = None
        except OSError as exc:
            raise BundleRefused("DISK_FULL" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "STORAGE",
                                f"could not stage member {name}: {exc.strerror}") from None
        finally:
            if out is not None:
                out.close()
                tmp.unlink(missing_ok=True)
        with self._lock:
            if not name.startswith(fmt.BLOB_PREFIX):
                state.files[name] = digest
            if present:
                state.reused_blobs += 1
            else:
                state.new_blobs += 1
                state.bytes_written += info.size
            state.sizes[digest] = info.size
