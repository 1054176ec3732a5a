"""The frame index of a bundle: where its independent zstd frames lie, so an importer can verify them in parallel.

The builder cuts the compressed stream into independent zstd frames at tar
member boundaries: frame 0 holds exactly the bundle manifest and its
signature, every later frame a run of whole members of about `FRAME_TARGET`
uncompressed bytes (a larger member gets a frame of its own size). After the
last frame it appends the index as a zstd *skippable* frame, which
`zstd -dc` (and every zstd reader) passes over, so the file is still one
valid ``.tar.zst`` stream:

    [frame 0: manifest, signature][frame 1: members ...] ... [frame N][skippable frame: index]

The skippable frame (magic ``0x184D2A5E``) holds the index as JSON, then the
JSON's length (8 bytes, little-endian) and the 8 bytes ``CHFRIDX1``, so a
reader finds it from the last 16 bytes of the file without reading anything
else. The index is independent of the manifest's ``formatVersion``: a reader
that finds no index reads the file as one stream, as before.

The index is *not* signed and not trusted: it only says where to cut the
file. A reader checks that the frames tile the file exactly (`read_index`),
that each range decompresses as exactly one frame of exactly the size the
index gives, and that each frame ends at a member boundary; the members'
bytes are checked against the signed manifest as always. docs/bundle-format.md
describes the same thing in prose.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from registry import boundedjson

MEDIA_TYPE = "application/vnd.cargohold.bundle.frames.v1+json"
SKIPPABLE_MAGIC = 0x184D2A5E
TRAILER_MAGIC = b"CHFRIDX1"
TRAILER_BYTES = 16  # JSON length (8) + TRAILER_MAGIC (8)
FRAME_TARGET = 32 << 20  # uncompressed bytes per frame: a few dozen frames per GiB keep 2-4 workers busy
MAX_FRAMES = 200_000
MAX_INDEX_BYTES = 8 << 20  # ~40 bytes a frame
INDEX_LIMITS = boundedjson.JsonLimits(max_bytes=MAX_INDEX_BYTES, max_depth=4, max_containers=MAX_FRAMES + 2,
                                      max_elements=5 * MAX_FRAMES + 4)


def max_compressed(usize: int) -> int:
    """The most bytes a zstd frame of `usize` content can take (raw blocks, headers, checksum), with margin."""
    return usize + usize // 1024 + 1024


class FrameIndexError(ValueError):
    """The frame index is malformed or does not describe the file; the message says how."""


@dataclass(frozen=True)
class Frame:
    """One independent zstd frame: its compressed byte range in the file and its uncompressed range in the tar."""

    number: int
    offset: int
    size: int
    uoffset: int
    usize: int


@dataclass(frozen=True)
class FrameIndex:
    """The frames of a bundle, in order; they cover the file from byte 0 to `data_end` (where the index starts)."""

    frames: tuple[Frame, ...]
    data_end: int

    @property
    def unpacked(self) -> int:
        return sum(f.usize for f in self.frames)


def encode(frames: Sequence[tuple[int, int, int, int]]) -> bytes:
    """The skippable frame that records `frames` ((offset, size, uoffset, usize) each)."""
    doc = {"mediaType": MEDIA_TYPE, "frames": [list(f) for f in frames]}
    body = json.dumps(doc, separators=(",", ":")).encode()
    payload = body + struct.pack("<Q", len(body)) + TRAILER_MAGIC
    return struct.pack("<II", SKIPPABLE_MAGIC, len(payload)) + payload


class Span:
    """Reads the byte range [start, end) of the concatenation of `parts` (a split bundle's parts, or one file)."""

    def __init__(self, parts: Sequence[Path], sizes: Sequence[int], start: int, end: int) -> None:
        self.parts, self.sizes = parts, sizes
        self.pos, self.end = start, end
        self._file: IO[bytes] | None = None
        self._part = -1
        self._part_end = 0

    def read(self, n: int = -1) -> bytes:
        left = self.end - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        if self._file is None or self.pos >= self._part_end:
            self._open()
        assert self._file is not None
        data = self._file.read(min(n, self._part_end - self.pos))
        if not data:
            raise FrameIndexError(f"the file ends at byte {self.pos}, before the frame index says it does")
        self.pos += len(data)
        return data

    def _open(self) -> None:
        self.close()
        start = 0
        for i, size in enumerate(self.sizes):
            if self.pos < start + size:
                self._part, self._part_end = i, start + size
                self._file = self.parts[i].open("rb")
                self._file.seek(self.pos - start)
                return
            start += size
        raise FrameIndexError(f"byte {self.pos} is beyond the end of the file")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_at(parts: Sequence[Path], sizes: Sequence[int], start: int, n: int) -> bytes:
    span = Span(parts, sizes, start, start + n)
    try:
        out = []
        while chunk := span.read(1 << 20):
            out.append(chunk)
        return b"".join(out)
    finally:
        span.close()


def read_index(parts: Sequence[Path], sizes: Sequence[int]) -> FrameIndex | None:
    """The frame index at the end of the file, None when it has none; raises FrameIndexError when it lies.

    Reads at most `MAX_INDEX_BYTES` + 24 bytes from the end of the file,
    whatever the index claims; checks that the frames tile the file with no
    gap or overlap, start at byte 0 and end where the index begins.
    """
    total = sum(sizes)
    if total < TRAILER_BYTES + 8:
        return None
    trailer = _read_at(parts, sizes, total - TRAILER_BYTES, TRAILER_BYTES)
    if trailer[8:] != TRAILER_MAGIC:
        return None
    (length,) = struct.unpack("<Q", trailer[:8])
    if length > MAX_INDEX_BYTES or length + TRAILER_BYTES + 8 > total:
        raise FrameIndexError(f"the frame index claims {length} bytes: more than the file holds or the "
                              f"{MAX_INDEX_BYTES} allowed")
    start = total - TRAILER_BYTES - length - 8
    magic, size = struct.unpack("<II", _read_at(parts, sizes, start, 8))
    if magic != SKIPPABLE_MAGIC or size != length + TRAILER_BYTES:
        raise FrameIndexError("the frame index is not a well-formed zstd skippable frame at the end of the file")
    try:
        doc = boundedjson.loads(_read_at(parts, sizes, start + 8, length), "frame index", INDEX_LIMITS)
    except boundedjson.JsonRefused as exc:
        raise FrameIndexError(exc.message) from None
    if not isinstance(doc, dict) or doc.get("mediaType") != MEDIA_TYPE or not isinstance(doc.get("frames"), list):
        raise FrameIndexError(f"the frame index is not a {MEDIA_TYPE} object with a frames list")
    frames: list[Frame] = []
    offset = uoffset = 0
    for i, entry in enumerate(doc["frames"]):
        if not (isinstance(entry, list) and len(entry) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry)):
            raise FrameIndexError(f"frame {i} of the frame index is not four non-negative integers")
        frame = Frame(i, *entry)
        if frame.offset != offset or frame.uoffset != uoffset:
            raise FrameIndexError(f"frame {i} of the frame index starts at byte {frame.offset} (unpacked "
                                  f"{frame.uoffset}), not where frame {i - 1} ends ({offset}, unpacked {uoffset}): "
                                  "frames overlap or leave a gap")
        if frame.size == 0 or frame.usize == 0 or frame.size > max_compressed(frame.usize):
            raise FrameIndexError(f"frame {i} of the frame index has {frame.size} compressed bytes for "
                                  f"{frame.usize} unpacked: not a possible zstd frame")
        offset, uoffset = offset + frame.size, uoffset + frame.usize
        if offset > start:
            raise FrameIndexError(f"frame {i} of the frame index ends at byte {offset}, beyond the data "
                                  f"({start} bytes before the index)")
        frames.append(frame)
    if not frames or offset != start:
        raise FrameIndexError(f"the frames of the frame index cover {offset} bytes, but {start} bytes precede it")
    return FrameIndex(tuple(frames), start)
