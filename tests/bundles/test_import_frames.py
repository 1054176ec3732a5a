"""Bundles with independent zstd frames and a frame index: verified in parallel, refused cleanly when they lie.

Bundles are written by the real builder (`BundleBuilder.write`, with small
frames so a small layout spans many; the CLI test uses the default size) and
imported by the real import core over real data directories, as in
test_import_refusals; one test runs the CLI end to end, one SIGKILLs it.
Every refusal is checked to leave the data directory exactly as it was.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from bundles import frames, keys
from bundles.build import BundleBuilder
from bundles.importer import BundleRefused
from tests.bundles.buildutil import read_members
from tests.bundles.conftest import Site, big_layout, cli, make_site, snapshot, unique_layout
from tests.bundles.test_import_crash import _kill_mid_import, _rows
from tests.layouts import sha256_file

CREATED = datetime(2026, 11, 1, tzinfo=UTC)
SMALL_FRAMES = 64 << 10  # the test layout's 200 kB layers each end a frame: about a dozen frames


@dataclass(frozen=True)
class World:
    site: Site
    refs: list[str]
    framed: Path
    v1: Path
    tmp: Path
    key: keys.PrivateKey


def build(layout: Path, out: Path, key: keys.PrivateKey, frame_size: int | None,
          split: int | None = None) -> list[Path]:
    with BundleBuilder("frames-test", "1", work_dir=out.parent, created=CREATED) as builder:
        builder.add_layout(layout)
        return list(builder.write(out, key, frame_size=frame_size, split=split).files)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ec_key: keys.PrivateKey) -> World:
    tmp = tmp_path_factory.mktemp("frames")
    site = make_site(tmp / "data", ec_key)
    layout, refs = unique_layout(tmp / "layout", images=3)
    framed, v1 = tmp / "framed.tar.zst", tmp / "v1.tar.zst"
    build(layout.root, framed, ec_key, SMALL_FRAMES)
    build(layout.root, v1, ec_key, None)
    return World(site, refs, framed, v1, tmp, ec_key)


def index_of(bundle: Path) -> frames.FrameIndex:
    index = frames.read_index([bundle], [bundle.stat().st_size])
    assert index is not None
    return index


def frame_members(bundle: Path, frame: frames.Frame) -> list[str]:
    """The tar members that start in `frame` (decompressed on its own: frames are independent)."""
    with bundle.open("rb") as f:
        f.seek(frame.offset)
        data = zstandard.ZstdDecompressor().decompressobj().decompress(f.read(frame.size))
    assert len(data) == frame.usize
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        return [info.name for info in tar]


def with_index(world: World, rows_change: Callable[[list[list[int]]], list[list[int]]] | None = None,
               raw: bytes | None = None) -> Path:
    """A copy of the framed bundle whose index is rewritten by `rows_change`, or replaced by `raw` bytes."""
    index = index_of(world.framed)
    rows = [[f.offset, f.size, f.uoffset, f.usize] for f in index.frames]
    out = world.tmp / f"{uuid.uuid4().hex[:8]}.tar.zst"
    with world.framed.open("rb") as src, out.open("wb") as dst:
        dst.write(src.read(index.data_end))
        dst.write(raw if raw is not None else frames.encode(rows_change(rows) if rows_change else rows))
    return out


def refused(world: World, bundle: Path, code: str, fragment: str) -> BundleRefused:
    before = snapshot(world.site.paths.root)
    with pytest.raises(BundleRefused) as info:
        world.site.importer().run(bundle)
    assert info.value.code == code, info.value.message
    assert fragment in info.value.message, info.value.message
    assert snapshot(world.site.paths.root) == before
    for ref in world.refs:
        assert world.site.registry.repository_id("spectro-images/" + ref.rsplit(":", 1)[0]) is None
    return info.value


# -- the format --------------------------------------------------------------------------------------------------


def test_frames_tile_the_file_and_frame_0_is_the_manifest_and_signature(world: World) -> None:
    index = index_of(world.framed)
    assert len(index.frames) >= 6
    assert frame_members(world.framed, index.frames[0]) == ["cargohold-bundle.json", "cargohold-bundle.sig"]
    assert index.data_end + 8 + len(json.dumps({})) < world.framed.stat().st_size
    assert frames.read_index([world.v1], [world.v1.stat().st_size]) is None
    # The same members either way (ECDSA signatures differ from one signing to the next): frames change how
    # the tar is compressed, not what it holds.
    members = [[(m.name, m.size, m.sha256) for m in read_members(b) if m.name != "cargohold-bundle.sig"]
               for b in (world.framed, world.v1)]
    assert members[0] == members[1] and len(members[0]) > 6


def test_zstd_and_tar_still_read_a_framed_bundle(world: World) -> None:
    listed = subprocess.run(f"zstd -dc '{world.framed}' | tar -tf -", shell=True, capture_output=True, text=True,
                            check=True, executable="/bin/bash")
    assert listed.stderr == ""
    members = listed.stdout.split()
    assert members[:4] == ["cargohold-bundle.json", "cargohold-bundle.sig", "oci-layout", "index.json"]
    assert members == subprocess.run(f"zstd -dc '{world.v1}' | tar -tf -", shell=True, capture_output=True,
                                     text=True, check=True, executable="/bin/bash").stdout.split()


def test_framed_and_v1_bundles_import_identically(world: World, tmp_path: Path) -> None:
    sites = {name: make_site(tmp_path / name, world.key) for name in ("framed", "v1")}
    reports = {name: sites[name].importer().run(bundle) for name, bundle in
               (("framed", world.framed), ("v1", world.v1))}
    assert reports["framed"]["verification"]["mode"] == "parallel"
    assert reports["framed"]["verification"]["frames"] == len(index_of(world.framed).frames)
    assert reports["v1"]["verification"] == {"mode": "sequential", "frames": 1}
    assert reports["framed"]["images"] == reports["v1"]["images"]
    assert reports["framed"]["blobs"] == reports["v1"]["blobs"]
    assert reports["framed"]["bytesRead"] == world.framed.stat().st_size
    assert reports["framed"]["bytesUnpacked"] == reports["v1"]["bytesUnpacked"]
    assert reports["framed"]["bytesWritten"] == reports["v1"]["bytesWritten"]
    shots = {name: snapshot(site.paths.root) for name, site in sites.items()}
    assert shots["framed"]["tables"] == shots["v1"]["tables"]
    assert [f[:2] for f in shots["framed"]["files"]] == [f[:2] for f in shots["v1"]["files"]]  # type: ignore[index]
    for f in (tmp_path / "framed" / "blobs").rglob("*"):
        if f.is_file():
            assert sha256_file(f) == f"sha256:{f.name}"
    assert shots["framed"]["staging"] == []


def test_split_bundle_with_frames_imports_in_parallel(world: World, tmp_path: Path) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=2)
    parts = build(layout.root, tmp_path / "split.tar.zst", world.key, SMALL_FRAMES, split=150_000)
    assert len(parts) >= 3 and parts[0].name.endswith(".part000")
    site = make_site(tmp_path / "data", world.key)
    report = site.importer().run(parts[0])
    assert report["parts"] == len(parts)
    assert report["verification"]["mode"] == "parallel" and report["verification"]["frames"] > len(parts)
    for ref in refs:
        assert site.registry.repository_id("spectro-images/" + ref.rsplit(":", 1)[0]) is not None


# -- damage ------------------------------------------------------------------------------------------------------


def test_a_flipped_byte_inside_any_frame_is_refused_naming_its_member(world: World) -> None:
    index = index_of(world.framed)
    data = world.framed.read_bytes()
    tried = 0
    for frame in index.frames[1:]:
        members = frame_members(world.framed, frame)
        if not any(m.startswith("blobs/") for m in members):
            continue
        damaged = bytearray(data)
        damaged[frame.offset + frame.size // 2] ^= 0x40
        bundle = world.tmp / f"flip-{frame.number}.tar.zst"
        bundle.write_bytes(damaged)
        before = snapshot(world.site.paths.root)
        with pytest.raises(BundleRefused) as info:
            world.site.importer().run(bundle)
        assert info.value.code in ("DIGEST_MISMATCH", "FORMAT"), info.value.message
        assert any(f"member {m}" in info.value.message for m in members), (members, info.value.message)
        assert snapshot(world.site.paths.root) == before
        tried += 1
    assert tried >= 5


def test_truncated_framed_bundle_is_refused(world: World) -> None:
    index = index_of(world.framed)
    data = world.framed.read_bytes()
    for cut in (index.frames[3].offset + 100, len(data) - 5):
        bundle = world.tmp / f"cut-{cut}.tar.zst"
        bundle.write_bytes(data[:cut])
        refused(world, bundle, "TRUNCATED", "truncated")


# -- an index that lies ------------------------------------------------------------------------------------------


def _shift(rows: list[list[int]], i: int, delta: int) -> list[list[int]]:
    """Frame i one `delta` longer (unpacked), every later frame moved along: still contiguous."""
    rows[i][3] += delta
    for row in rows[i + 1:]:
        row[2] += delta
    return rows


@pytest.mark.parametrize(("change", "code", "fragment"), [
    # Overlapping and gapped compressed ranges, a range past the end of the data.
    (lambda r: [r[0], [r[1][0], r[1][1] + 10, *r[1][2:]], *r[2:]], "FORMAT", "overlap or leave a gap"),
    (lambda r: [r[0], [r[1][0] + 1, *r[1][1:]], *r[2:]], "FORMAT", "overlap or leave a gap"),
    (lambda r: [*r[:-1], [r[-1][0], r[-1][1] + 1000, *r[-1][2:]]], "FORMAT", "beyond the data"),
    (lambda r: r[:-1], "FORMAT", "bytes precede it"),
    (lambda r: [], "FORMAT", "bytes precede it"),
    # Unpacked sizes that do not match what the frames hold.
    (lambda r: _shift(r, 2, 512), "FORMAT", "before the"),
    (lambda r: _shift(r, 2, -512), "FORMAT", "runs past the end of frame 2"),
    (lambda r: _shift(r, 1, 10 ** 12), "FORMAT", "the signed manifest's members take at most"),
    # Boundaries that do not fall on frames: two frames as one, a frame cut in two.
    (lambda r: [r[0], [r[1][0], r[1][1] + r[2][1], r[1][2], r[1][3] + r[2][3]], *r[3:]], "FORMAT",
     "not exactly one complete zstd frame"),
    (lambda r: [r[0], [r[1][0], r[1][1] - 50, r[1][2], r[1][3]], [r[2][0] - 50, r[2][1] + 50, *r[2][2:]], *r[3:]],
     None, "the frame index"),
    # Frame 0 must be the manifest and signature alone.
    (lambda r: [[0, r[0][1] + r[1][1], 0, r[0][3] + r[1][3]], *r[2:]], "FORMAT", "frame 0 holds more than"),
    (lambda r: _shift(r, 0, 17 << 20), "FORMAT", "frame 0 of the frame index claims"),
])
def test_a_frame_index_that_lies_is_refused(world: World, change: Callable[[list[list[int]]], list[list[int]]],
                                            code: str | None, fragment: str) -> None:
    bundle = with_index(world, change)
    if code is None:  # the cut falls inside zstd data: a damaged frame, or one that ends early
        before = snapshot(world.site.paths.root)
        with pytest.raises(BundleRefused) as info:
            world.site.importer().run(bundle)
        assert info.value.code in ("FORMAT", "TRUNCATED") and fragment in info.value.message, info.value.message
        assert snapshot(world.site.paths.root) == before
    else:
        refused(world, bundle, code, fragment)


def test_a_malformed_frame_index_is_refused_unread(world: World) -> None:
    body = b'{"mediaType":"x","frames":[]}'
    refused(world, with_index(world, raw=frames.encode([])[:8] + body + len(body).to_bytes(8, "little")
                              + frames.TRAILER_MAGIC), "FORMAT", "skippable frame")
    # A trailer claiming gigabytes of index: refused from its 16 bytes, nothing else read.
    refused(world, with_index(world, raw=(1 << 40).to_bytes(8, "little") + frames.TRAILER_MAGIC), "FORMAT",
            "the frame index claims")
    import struct
    bad = b'{"mediaType":"application/vnd.cargohold.bundle.frames.v1+json","frames":[[0,1,0,"x"]]}'
    payload = bad + len(bad).to_bytes(8, "little") + frames.TRAILER_MAGIC
    refused(world, with_index(world, raw=struct.pack("<II", frames.SKIPPABLE_MAGIC, len(payload)) + payload),
            "FORMAT", "not four non-negative integers")


# -- the CLI, end to end, and a crash ------------------------------------------------------------------------------


def test_cli_build_writes_frames_and_import_verifies_them_in_parallel(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, ref = big_layout(tmp_path / "layout", layers=12, layer_size=4 << 20)
    key = tmp_path / "k.pem"
    key.write_bytes(keys.private_pem(ec_key))
    pub = tmp_path / "k.pub"
    pub.write_bytes(keys.public_pem(ec_key))
    bundle = tmp_path / "b.tar.zst"
    cli("bundle", "build", "--name", "b", "--version", "1", "--layout", str(layout.root), "--sign-key", str(key),
        "-o", str(bundle))
    assert len(index_of(bundle).frames) == 3  # manifest + signature, 32 MiB of layers, the rest
    data = tmp_path / "data"
    cli("keys", "add", str(pub), "--data-dir", str(data))
    report = json.loads(cli("bundle", "import", str(bundle), "--data-dir", str(data), "--json").stdout)
    assert report["verification"]["mode"] == "parallel"
    assert report["blobs"]["new"] == 14
    assert report["images"][0]["reference"] == ref
    v1 = tmp_path / "v1.tar.zst"
    cli("bundle", "build", "--name", "b", "--version", "1", "--layout", str(layout.root), "--sign-key", str(key),
        "--no-frame-index", "-o", str(v1))
    assert frames.read_index([v1], [v1.stat().st_size]) is None


def test_sigkill_mid_parallel_import_then_import_again_completes(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, ref = big_layout(tmp_path / "layout", layers=24, layer_size=4 << 20)
    bundle = tmp_path / "big.tar.zst"
    build(layout.root, bundle, ec_key, 8 << 20)
    data = tmp_path / "data"
    pub = tmp_path / "ec.pub"
    pub.write_bytes(keys.public_pem(ec_key))
    cli("keys", "add", str(pub), "--data-dir", str(data))

    staged = _kill_mid_import(bundle, data, staged_at_least=2)
    assert len(staged) >= 2
    assert _rows(data, "SELECT name FROM repositories") == [] and _rows(data, "SELECT * FROM tags") == []
    assert not [p for p in (data / "blobs").rglob("*") if p.is_file()]
    for hex_ in staged:  # what was staged is verified content
        assert sha256_file(next((data / "imports" / "staging").glob(f"*/sha256/{hex_}"))) == f"sha256:{hex_}"

    report = json.loads(cli("bundle", "import", str(bundle), "--data-dir", str(data), "--json").stdout)
    assert report["verification"]["mode"] == "parallel"
    total = len(list((layout.root / "blobs" / "sha256").iterdir()))
    assert report["blobs"]["new"] + report["blobs"]["reused"] == total
    assert report["blobs"]["reused"] >= len(staged)
    for hex_, (inode, mtime) in staged.items():
        stored = data / "blobs" / "sha256" / hex_[:2] / hex_
        assert stored.stat().st_ino == inode and stored.stat().st_mtime_ns == mtime, f"blob {hex_} was rewritten"
    files = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    assert len(files) == total and all(sha256_file(f) == f"sha256:{f.name}" for f in files)
    assert report["images"][0]["reference"] == ref
    assert not list((data / "imports" / "staging").iterdir())
    shutil.rmtree(data)


def test_a_detached_signature_still_hashes_the_whole_file_first(world: World, tmp_path: Path,
                                                               rsa_key: keys.PrivateKey) -> None:
    """A detached signature covers the compressed file, index included: checked on a first read, then one stream."""
    pem = tmp_path / "ec.pem"
    pem.write_bytes(keys.private_pem(world.key))
    sig = tmp_path / "framed.sig"
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(pem), "-out", str(sig), str(world.framed)], check=True)
    site = make_site(tmp_path / "data", world.key)
    report = site.importer().run(world.framed, sig.read_bytes())
    assert report["verification"]["mode"] == "sequential"
    assert [s["kind"] for s in report["signatures"]] == ["embedded", "detached"]
    # A detached signature by a key the site does not trust: refused on that first read, nothing staged.
    other = tmp_path / "rsa.pem"
    other.write_bytes(keys.private_pem(rsa_key))
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(other), "-out", str(sig), str(world.framed)],
                   check=True)
    before = snapshot(world.site.paths.root)
    with pytest.raises(BundleRefused) as info:
        world.site.importer().run(world.framed, sig.read_bytes())
    assert info.value.code == "SIGNATURE" and "detached signature does not verify" in info.value.message
    assert snapshot(world.site.paths.root) == before


def test_an_unsigned_framed_bundle_is_refused_by_default_and_imported_in_parallel_when_allowed(
        world: World, tmp_path: Path) -> None:
    layout, _ = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = tmp_path / "unsigned.tar.zst"
    with BundleBuilder("frames-test", "1", work_dir=tmp_path, created=CREATED) as builder:
        builder.add_layout(layout.root)
        builder.write(bundle, None, frame_size=SMALL_FRAMES)
    assert frame_members(bundle, index_of(bundle).frames[0]) == ["cargohold-bundle.json"]
    refused(world, bundle, "UNSIGNED", "unsigned bundles are refused by policy")
    report = make_site(tmp_path / "data").importer(allow_unsigned=True).run(bundle)
    assert report["verification"]["mode"] == "parallel" and report["unsigned"] is True
