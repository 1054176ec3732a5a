"""Every way a bundle must be refused, each leaving the data directory exactly as it was.

These drive the import core (`bundles.importer.Importer`) in-process over a
real data directory (real SQLite, real blob store) that already holds an
imported bundle, so "nothing changed" is checked against a store with
content. The end-to-end path (CLI, server, skopeo) is in test_import_e2e.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import zstandard

from bundles import format as fmt
from bundles import keys
from bundles.importer import BundleRefused
from registry.digest import Digest
from tests.bundles import craft
from tests.bundles.conftest import Site, make_site, snapshot, unique_layout
from tests.images import OciLayout


@dataclass(frozen=True)
class World:
    site: Site
    layout: OciLayout
    refs: list[str]
    tmp: Path
    key: keys.PrivateKey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ec_key: keys.PrivateKey) -> World:
    tmp = tmp_path_factory.mktemp("refusals")
    site = make_site(tmp / "data", ec_key)
    first, _ = unique_layout(tmp / "first", images=1, multiarch=False)
    site.importer().run(craft.write_bundle(tmp / "first.tar.zst", craft.standard_entries(first.root, ec_key)))
    layout, refs = unique_layout(tmp / "layout")
    return World(site, layout, refs, tmp, ec_key)


def _write(world: World, entries: list[craft.Entry]) -> Path:
    return craft.write_bundle(world.tmp / f"{uuid.uuid4().hex[:8]}.tar.zst", entries)


def refused(world: World, bundle: Path, code: str, fragment: str, signature: bytes | None = None,
            **policy: object) -> BundleRefused:
    """Import `bundle`; assert it is refused with `code` and a message containing `fragment`, changing nothing."""
    before = snapshot(world.site.paths.root)
    with pytest.raises(BundleRefused) as info:
        world.site.importer(**policy).run(bundle, signature)
    assert info.value.code == code, info.value.message
    assert fragment in info.value.message, info.value.message
    assert snapshot(world.site.paths.root) == before
    for ref in world.refs:  # none of the bundle's images became visible
        repo = "spectro-images/" + ref.rsplit(":", 1)[0]
        assert world.site.registry.repository_id(repo) is None
    return info.value


def _entries(world: World) -> list[craft.Entry]:
    return craft.standard_entries(world.layout.root, world.key)


def _largest_blob(entries: list[craft.Entry]) -> int:
    blobs = [i for i, e in enumerate(entries) if e.info.name.startswith("blobs/")]
    return max(blobs, key=lambda i: entries[i].info.size)


def test_byte_flipped_in_a_blob(world: World) -> None:
    entries = _entries(world)
    i = _largest_blob(entries)
    path = entries[i].data
    assert isinstance(path, Path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    entries[i] = craft.Entry.file(entries[i].info.name, bytes(data))
    refused(world, _write(world, entries), "DIGEST_MISMATCH", entries[i].info.name)


def test_manifest_changed_after_signing(world: World) -> None:
    entries = _entries(world)
    body = entries[0].data
    assert isinstance(body, bytes) and b'"version": "1.0.0"' in body
    entries[0] = craft.Entry.file(fmt.MANIFEST_MEMBER, body.replace(b'"version": "1.0.0"', b'"version": "1.0.1"'))
    refused(world, _write(world, entries), "SIGNATURE", "does not match")


def test_byte_flipped_anywhere_in_the_manifest(world: World) -> None:
    entries = _entries(world)
    body = bytearray(entries[0].data)  # type: ignore[arg-type]
    body[len(body) // 3] ^= 0x01
    entries[0] = craft.Entry.file(fmt.MANIFEST_MEMBER, bytes(body))
    before = snapshot(world.site.paths.root)
    with pytest.raises(BundleRefused) as info:
        world.site.importer().run(_write(world, entries))
    assert info.value.code in ("SIGNATURE", "FORMAT"), info.value.message
    assert snapshot(world.site.paths.root) == before


def test_byte_flipped_in_the_signature(world: World) -> None:
    entries = _entries(world)
    doc = json.loads(entries[1].data)  # type: ignore[arg-type]
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[len(raw) // 2] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    entries[1] = craft.Entry.file(fmt.SIGNATURE_MEMBER, json.dumps(doc).encode())
    refused(world, _write(world, entries), "SIGNATURE", "does not match")


def test_signed_by_an_untrusted_key(world: World) -> None:
    stranger = keys.generate("ed25519")
    bundle = _write(world, craft.standard_entries(world.layout.root, stranger))
    error = refused(world, bundle, "SIGNATURE", keys.key_id(stranger))
    assert "does not trust" in error.message


def test_key_removed_from_the_trust_store_is_no_longer_accepted(world: World, tmp_path: Path) -> None:
    key = keys.generate("ecdsa-p384")
    site = make_site(tmp_path / "data", key)
    site.trust.remove(keys.key_id(key))
    bundle = _write(world, craft.standard_entries(world.layout.root, key))
    with pytest.raises(BundleRefused, match="does not trust"):
        site.importer().run(bundle)


def test_unsigned_refused_by_default_and_accepted_when_the_policy_allows(world: World, tmp_path: Path) -> None:
    bundle = _write(world, craft.standard_entries(world.layout.root, None))
    refused(world, bundle, "UNSIGNED", "unsigned bundles are refused by policy")
    site = make_site(tmp_path / "data")
    report = site.importer(allow_unsigned=True).run(bundle)
    assert report["unsigned"] is True and report["keyId"] is None
    assert sorted(i["reference"] for i in report["images"]) == sorted(world.refs)


def test_truncated_in_the_middle(world: World) -> None:
    bundle = _write(world, _entries(world))
    data = bundle.read_bytes()
    bundle.write_bytes(data[: int(len(data) * 0.6)])
    refused(world, bundle, "TRUNCATED", "")


def test_truncated_by_a_few_bytes(world: World) -> None:
    bundle = _write(world, _entries(world))
    data = bundle.read_bytes()
    bundle.write_bytes(data[:-3])
    refused(world, bundle, "TRUNCATED", "truncated")


def test_truncated_where_every_member_is_intact(world: World) -> None:
    # A second zstd frame holding only more tar padding, cut short: every member decompresses intact and
    # tar sees a clean end, so only the zstd frame structure shows that the file is short.
    bundle = _write(world, _entries(world))
    tail = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(b"\0" * 4096)
    bundle.write_bytes(bundle.read_bytes() + tail[:-2])
    refused(world, bundle, "TRUNCATED", "middle of a zstd frame")


def test_member_listed_but_missing(world: World) -> None:
    entries = _entries(world)
    del entries[_largest_blob(entries)]
    refused(world, _write(world, entries), "TRUNCATED", "listed in the bundle manifest is missing")


def test_not_a_zstd_file(world: World) -> None:
    bundle = world.tmp / "plain.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.add(world.layout.root / "index.json", "index.json")
    refused(world, bundle, "FORMAT", "zstd")


def _with_extra(world: World, extra: craft.Entry, at: int = 4) -> Path:
    entries = _entries(world)
    entries.insert(at, extra)
    return _write(world, entries)


def test_absolute_path(world: World) -> None:
    refused(world, _with_extra(world, craft.Entry.file("/etc/cargohold-evil", b"x")), "UNSAFE_MEMBER", "absolute")


def test_dot_dot_path(world: World) -> None:
    refused(world, _with_extra(world, craft.Entry.file("blobs/../../evil", b"x")), "UNSAFE_MEMBER", "'..'")


def test_symlink(world: World) -> None:
    link = craft.Entry.special("blobs/sha256/" + "a" * 64, tarfile.SYMTYPE, "/etc/passwd")
    refused(world, _with_extra(world, link), "UNSAFE_MEMBER", "symbolic link")


def test_hard_link(world: World) -> None:
    entries = _entries(world)
    link = craft.Entry.special("blobs/sha256/" + "b" * 64, tarfile.LNKTYPE, entries[3].info.name)
    refused(world, _with_extra(world, link, at=5), "UNSAFE_MEMBER", "hard link")


@pytest.mark.parametrize("kind,word", [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"),
                                       (tarfile.FIFOTYPE, "fifo")])
def test_device_and_fifo(world: World, kind: bytes, word: str) -> None:
    refused(world, _with_extra(world, craft.Entry.special("charts/null", kind)), "UNSAFE_MEMBER", word)


def test_duplicate_member(world: World) -> None:
    entries = _entries(world)
    i = _largest_blob(entries)
    entries.append(entries[i])
    refused(world, _write(world, entries), "UNSAFE_MEMBER", "appears twice")


def test_member_not_listed(world: World) -> None:
    data = b"not in the manifest"
    extra = craft.Entry.file(f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data)
    refused(world, _with_extra(world, extra), "UNLISTED_MEMBER", "not listed")


def test_second_manifest_member_is_refused(world: World) -> None:
    entries = _entries(world)
    entries.append(entries[0])
    refused(world, _write(world, entries), "UNSAFE_MEMBER", "appears twice")


def test_size_mismatch(world: World) -> None:
    # A signed manifest whose listed size disagrees with the member (a broken builder, or a forged one).
    entries = _entries(world)
    manifest = craft.manifest_of(entries)
    i = _largest_blob(entries)
    name = entries[i].info.name
    members = [replace(m, size=m.size + 1) if m.path == name else m for m in manifest.members]
    bundle = _write(world, craft.resigned(entries, world.key, craft.with_members(manifest, members)))
    refused(world, bundle, "SIZE_MISMATCH", name)


def test_digest_mismatch_of_a_listed_member(world: World) -> None:
    entries = _entries(world)
    manifest = craft.manifest_of(entries)
    wrong = Digest("sha256", hashlib.sha256(b"something else").hexdigest())
    members = [replace(m, digest=wrong) if m.path == "index.json" else m for m in manifest.members]
    bundle = _write(world, craft.resigned(entries, world.key, craft.with_members(manifest, members)))
    refused(world, bundle, "DIGEST_MISMATCH", "index.json")


def _zeros_entry(size: int, name: str | None = None) -> tuple[craft.Entry, fmt.Member]:
    h = hashlib.sha256()
    block = b"\0" * (1 << 20)
    for _ in range(size // len(block)):
        h.update(block)
    digest = Digest("sha256", h.hexdigest())
    path = name or f"blobs/sha256/{digest.encoded}"
    info = tarfile.TarInfo(path)
    info.size = size

    def writer(f: object) -> None:
        for _ in range(size // len(block)):
            f.write(block)  # type: ignore[attr-defined]

    return craft.Entry(info, writer=writer), fmt.Member(path, size, digest)


def _signed_with_extra(world: World, entry: craft.Entry, member: fmt.Member) -> Path:
    entries = _entries(world)
    manifest = craft.manifest_of(entries)
    signed = craft.resigned(entries, world.key, craft.with_members(manifest, [*manifest.members, member]))
    return _write(world, [*signed, entry])


def test_decompression_ratio_bomb(world: World) -> None:
    entry, member = _zeros_entry(48 << 20)
    bundle = _signed_with_extra(world, entry, member)
    assert bundle.stat().st_size < 2 << 20  # 48 MiB of zeros compress to almost nothing
    refused(world, bundle, "LIMIT", "decompression bomb", max_ratio=10)


def test_total_unpacked_size_limit(world: World) -> None:
    refused(world, _write(world, _entries(world)), "LIMIT", "bundle_max_unpacked_bytes", max_unpacked_bytes=200_000)


def test_bundle_file_size_limit(world: World) -> None:
    refused(world, _write(world, _entries(world)), "LIMIT", "bundle_max_bytes", max_bytes=10_000)


def test_not_enough_disk_by_reserve(world: World) -> None:
    # A reserve larger than any disk: other processes change the free space, so "exactly free" would be flaky.
    assert shutil.disk_usage(world.site.paths.root).free < 1 << 60
    refused(world, _write(world, _entries(world)), "DISK_FULL", "not enough free disk", reserve_bytes=1 << 60)


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (a real small filesystem); skipped where mounting is not permitted."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=True)  # something still holds a file open there


def test_not_enough_disk_on_a_small_volume(world: World, tiny_volume: Path, tmp_path: Path) -> None:
    site = make_site(tiny_volume / "data", world.key)
    layout, _ = unique_layout(tmp_path / "big", images=1, layer_sizes=(10 << 20,), multiarch=False)
    bundle = craft.write_bundle(tmp_path / "big.tar.zst", craft.standard_entries(layout.root, world.key))
    before = snapshot(site.paths.root)
    with pytest.raises(BundleRefused) as info:
        site.importer(reserve_bytes=0).run(bundle)
    assert info.value.code == "DISK_FULL", info.value.message
    assert "the bundle needs" in info.value.message
    assert snapshot(site.paths.root) == before
    site.registry.db.close()  # this thread's cached connection holds the volume busy


def test_image_content_missing(world: World) -> None:
    index = json.loads((world.layout.root / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    doc = json.loads(world.layout.blob_path(manifest_digest).read_bytes())
    layer = doc["layers"][0]["digest"]
    bundle = _write(world, craft.standard_entries(world.layout.root, world.key,
                                                  omit=frozenset({f"blobs/sha256/{layer.split(':')[1]}"})))
    refused(world, bundle, "MISSING_CONTENT", layer)


def test_delta_bundle_without_its_base(world: World, tmp_path: Path) -> None:
    index = json.loads((world.layout.root / "index.json").read_text())
    doc = json.loads(world.layout.blob_path(index["manifests"][0]["digest"]).read_bytes())
    layer = doc["layers"][0]
    name = f"blobs/sha256/{layer['digest'].split(':')[1]}"
    entries = craft.standard_entries(world.layout.root, world.key, omit=frozenset({name}),
                                     base={"name": "site-base", "version": "2026.1"},
                                     external=[(layer["digest"], layer["size"])])
    error = refused(world, _write(world, entries), "MISSING_BASE", "site-base 2026.1")
    assert layer["digest"] in error.message


def test_detached_signature_required_for_plain_layout(world: World) -> None:
    entries = [e for e in _entries(world) if e.info.name not in (fmt.MANIFEST_MEMBER, fmt.SIGNATURE_MEMBER)]
    refused(world, _write(world, entries), "UNSIGNED", "no detached signature")


def test_garbage_signature_file(world: World) -> None:
    bundle = _write(world, _entries(world))
    refused(world, bundle, "SIGNATURE", "empty", signature=b"")


def test_extended_header_claiming_too_many_bytes_is_refused_before_it_is_read(world: World) -> None:
    # tarfile would read the claimed pax header whole into memory; capped (bundles.tarheaders), the
    # bundle is refused at the header.
    from tests.bundles.test_tar_headers import extended_header_bomb

    bundle = world.tmp / f"{uuid.uuid4().hex[:8]}.tar.zst"
    bundle.write_bytes(zstandard.ZstdCompressor().compress(extended_header_bomb(8 << 20)))
    refused(world, bundle, "FORMAT", "extended header (pax or GNU long name) of 8388608 bytes")
