"""Helpers for bundle build tests: run the real CLI, read bundles back member by member."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from tests.pgengine import env_for

ROOT = Path(__file__).resolve().parents[2]


def cargohold(*args: str | Path, check: bool = True, env: dict[str, str] | None = None,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cargohold ARGS` (python -m web.cli) and return the finished process."""
    proc = subprocess.run([sys.executable, "-m", "web.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env_for(args), **(env or {})}, input=input, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"cargohold {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass(frozen=True)
class TarMember:
    name: str
    size: int
    sha256: str
    data: bytes | None  # kept for small JSON members only


def read_members(*files: Path, keep_under: int = 1 << 16) -> Iterator[TarMember]:
    """The members of a zstd tar (the concatenation of `files`), hashing each as it streams."""
    def chunks() -> Iterator[bytes]:
        for f in files:
            with f.open("rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

    # read_across_frames: a bundle is several independent zstd frames (and a skippable frame index).
    reader = zstandard.ZstdDecompressor().stream_reader(_Iter(chunks()), read_across_frames=True)  # type: ignore[arg-type]
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for info in tar:
            f = tar.extractfile(info)
            h, size, kept = hashlib.sha256(), 0, b""
            while f is not None and (block := f.read(1 << 20)):
                h.update(block)
                size += len(block)
                if info.size < keep_under:
                    kept += block
            yield TarMember(info.name, size, h.hexdigest(), kept if info.size < keep_under else None)


class _Iter:
    """A read() file over an iterator of byte chunks."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self.it, self.buf = it, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.it)
            except StopIteration:
                break
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def manifest_of(bundle: Path) -> dict[str, Any]:
    first = next(read_members(bundle))
    assert first.name == "cargohold-bundle.json" and first.data is not None
    return json.loads(first.data)  # type: ignore[no-any-return]


def extract(bundle: Path, target: Path) -> Path:
    """`zstd -dc BUNDLE | tar -x -C TARGET`, as an operator would."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(f"zstd -dc '{bundle}' | tar -x -C '{target}'", shell=True, check=True)
    return target


def skopeo_digest(transport_ref: str, *extra: str) -> str:
    """The digest of what skopeo reads at `transport_ref` (manifest bytes as stored)."""
    raw = subprocess.run(["skopeo", "inspect", "--raw", *extra, transport_ref], capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()
