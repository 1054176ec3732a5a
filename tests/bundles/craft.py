"""Write bundle files by hand, per bundles/format.py, for the import tests.

Independent of the build side on purpose: the import tests must not trust
the builder to produce what the format says, and they need to write
archives no honest builder would (links, devices, `..`, duplicates,
wrong sizes, bombs). `standard_entries` gives the members of a correct
bundle for an OCI layout; tests alter that list, then `write_bundle` tars
and compresses it with tarfile + zstandard.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from bundles import format as fmt
from bundles import keys
from registry.digest import Digest
from tests.layouts import sha256_file


@dataclass
class Entry:
    """One tar member: its header and where its bytes come from (bytes, a file, or a generator)."""

    info: tarfile.TarInfo
    data: bytes | Path | None = None
    # Writes the member's bytes to a file object itself (for large generated members such as bombs).
    writer: Callable[[io.RawIOBase], None] | None = field(default=None, repr=False)

    @classmethod
    def file(cls, name: str, data: bytes | Path, size: int | None = None) -> Entry:
        info = tarfile.TarInfo(name)
        info.size = size if size is not None else (len(data) if isinstance(data, bytes) else data.stat().st_size)
        info.mtime = 0
        info.mode = 0o644
        return cls(info, data)

    @classmethod
    def special(cls, name: str, kind: bytes, linkname: str = "") -> Entry:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.mtime = 0
        return cls(info)


def layout_files(root: Path) -> list[tuple[str, Path]]:
    """The members of an OCI layout directory, in bundle order (oci-layout, index.json, blobs)."""
    out = [("oci-layout", root / "oci-layout"), ("index.json", root / "index.json")]
    for algo in sorted((root / "blobs").iterdir()):
        for blob in sorted(algo.iterdir()):
            out.append((f"blobs/{algo.name}/{blob.name}", blob))
    return out


def make_manifest(root: Path, name: str = "test-bundle", version: str = "1.0.0",
                  extra: list[tuple[str, Path]] | None = None, omit: frozenset[str] = frozenset(),
                  base: dict[str, str] | None = None, external: list[tuple[str, int]] | None = None,
                  charts: list[fmt.FileEntry] | None = None,
                  definitions: list[fmt.FileEntry] | None = None) -> tuple[fmt.BundleManifest, list[tuple[str, Path]]]:
    """The bundle manifest for a layout (minus `omit`ted blob members, plus `extra` files)."""
    files = [(n, p) for n, p in layout_files(root) if n not in omit] + list(extra or [])
    members = tuple(fmt.Member(n, p.stat().st_size, Digest.parse(sha256_file(p))) for n, p in files)
    index = json.loads((root / "index.json").read_text())
    images = tuple(
        fmt.ImageEntry(e["annotations"][fmt.REF_NAME_ANNOTATION], Digest.parse(e["digest"]), e["mediaType"], e["size"])
        for e in index["manifests"] if fmt.REF_NAME_ANNOTATION in e.get("annotations", {}))
    manifest = fmt.BundleManifest(
        name=name, version=version, created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        platforms=("linux/amd64",), images=images, members=members,
        charts=tuple(charts or ()), cluster_definitions=tuple(definitions or ()), base=base,
        external_blobs=tuple(fmt.ExternalBlob(Digest.parse(d), s) for d, s in (external or [])))
    return manifest, files


def standard_entries(root: Path, key: keys.PrivateKey | None, algorithm: str | None = None,
                     **manifest_args: object) -> list[Entry]:
    """Members of a correct bundle of the layout at `root`, signed with `key` (unsigned if None)."""
    manifest, files = make_manifest(root, **manifest_args)  # type: ignore[arg-type]
    body = manifest.encode()
    entries = [Entry.file(fmt.MANIFEST_MEMBER, body)]
    if key is not None:
        sig = keys.sign(key, body, algorithm)
        entries.append(Entry.file(fmt.SIGNATURE_MEMBER, json.dumps(sig.to_json()).encode()))
    entries += [Entry.file(n, p) for n, p in files]
    return entries


def write_bundle(out: Path, entries: list[Entry], level: int = 3, tar_format: int = tarfile.PAX_FORMAT) -> Path:
    """Tar `entries` (PAX unless told) through a zstd compressor into `out`."""
    cctx = zstandard.ZstdCompressor(level=level)
    with out.open("wb") as raw, cctx.stream_writer(raw, closefd=False) as zw, \
            tarfile.open(fileobj=zw, mode="w|", format=tar_format) as tar:
        for e in entries:
            if e.writer is not None:
                _add_generated(tar, e)
            elif isinstance(e.data, Path):
                with e.data.open("rb") as f:
                    tar.addfile(e.info, f)
            elif isinstance(e.data, bytes):
                tar.addfile(e.info, io.BytesIO(e.data))
            else:
                tar.addfile(e.info)
    return out


def _add_generated(tar: tarfile.TarFile, e: Entry) -> None:
    """Add a member whose bytes a writer produces, without holding them in memory."""
    assert e.writer is not None
    tar.addfile(e.info)  # header only (size set), then the data and padding by hand
    assert tar.fileobj is not None
    written = _Counter(tar.fileobj)
    e.writer(written)  # type: ignore[arg-type]
    assert written.n == e.info.size, (written.n, e.info.size)
    pad = (-e.info.size) % tarfile.BLOCKSIZE
    tar.fileobj.write(b"\0" * pad)
    tar.offset += e.info.size + pad


class _Counter:
    def __init__(self, f: object) -> None:
        self.f = f
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        self.f.write(data)  # type: ignore[attr-defined]
        return len(data)


def resigned(entries: list[Entry], key: keys.PrivateKey, manifest: fmt.BundleManifest) -> list[Entry]:
    """`entries` with the manifest member replaced by `manifest` and signed again (a consistent forgery
    needs the key; tests use this to build bundles that are signed yet malicious)."""
    body = manifest.encode()
    out = [Entry.file(fmt.MANIFEST_MEMBER, body),
           Entry.file(fmt.SIGNATURE_MEMBER, json.dumps(keys.sign(key, body).to_json()).encode())]
    return out + [e for e in entries if e.info.name not in (fmt.MANIFEST_MEMBER, fmt.SIGNATURE_MEMBER)]


def manifest_of(entries: list[Entry]) -> fmt.BundleManifest:
    data = next(e.data for e in entries if e.info.name == fmt.MANIFEST_MEMBER)
    assert isinstance(data, bytes)
    return fmt.BundleManifest.decode(data)


def with_members(manifest: fmt.BundleManifest, members: list[fmt.Member]) -> fmt.BundleManifest:
    return replace(manifest, members=tuple(members))
