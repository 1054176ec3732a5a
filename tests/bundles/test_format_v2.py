"""Bundle format 2: the manifest's files and chart artifacts (decode, versioning), and the importer refusing
a signed bundle whose description of a file disagrees with the artifact it carries, leaving the store as it was.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bundles import format as fmt
from bundles import keys
from bundles.importer import BundleRefused
from tests.bundles import craft
from tests.bundles.buildutil import cargohold
from tests.bundles.conftest import make_site, snapshot


def _doc(**file_fields: Any) -> dict[str, Any]:
    entry = {"name": "installer.iso", "version": "1.0", "repository": "files/installer.iso", "tag": "1.0",
             "digest": "sha256:" + "a" * 64, "size": 10, "mediaType": "application/octet-stream",
             "manifestDigest": "sha256:" + "b" * 64, "manifestSize": 700, **file_fields}
    return {"mediaType": fmt.MEDIA_TYPE_V2, "formatVersion": 2, "name": "n", "version": "1",
            "created": "2026-12-01T00:00:00Z", "platforms": [], "images": [], "members": [], "files": [entry]}


def test_a_manifest_with_files_is_version_2_and_round_trips() -> None:
    manifest = fmt.BundleManifest.decode(json.dumps(_doc()).encode())
    assert manifest.format_version == 2 and [f.ref_name for f in manifest.files] == ["files/installer.iso:1.0"]
    again = fmt.BundleManifest.decode(manifest.encode())
    assert again == manifest and json.loads(manifest.encode())["mediaType"] == fmt.MEDIA_TYPE_V2
    plain = replace(manifest, files=())
    assert json.loads(plain.encode())["formatVersion"] == 1 and "files" not in json.loads(plain.encode())


@pytest.mark.parametrize(("change", "message"), [
    ({"repository": "Files/Installer.ISO"}, "files[0].repository 'Files/Installer.ISO' is not a valid repository"),
    ({"tag": "1.0+x"}, "files[0].tag '1.0+x' is not a valid tag"),
    ({"name": "../etc/passwd"}, "files[0].name must be a file name"),
    ({"digest": "sha256:xyz"}, "files[0].digest"),
    ({"size": -1}, "files[0].size must be a non-negative integer"),
    ({"manifestDigest": None}, "files[0].manifestDigest"),
])
def test_bad_file_entries_are_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(fmt.FormatError) as info:
        fmt.BundleManifest.decode(json.dumps(_doc(**change)).encode())
    assert message in str(info.value)


def test_versions_and_media_types_must_agree_and_duplicates_are_refused() -> None:
    doc = _doc()
    doc["formatVersion"] = 1
    with pytest.raises(fmt.FormatError, match=r"mediaType must be application/vnd\.cargohold\.bundle\.v1"):
        fmt.BundleManifest.decode(json.dumps(doc).encode())
    doc["formatVersion"] = 3
    with pytest.raises(fmt.FormatError, match=r"formatVersion 3 is not supported .* versions 1 and 2"):
        fmt.BundleManifest.decode(json.dumps(doc).encode())
    doc = _doc()
    doc["charts"] = [dict(doc["files"][0], name="x")]
    with pytest.raises(fmt.FormatError, match=r"files/installer\.iso:1\.0 is listed twice"):
        fmt.BundleManifest.decode(json.dumps(doc).encode())


def _entries(bundle: Path) -> list[craft.Entry]:
    data = zstandard.ZstdDecompressor().stream_reader(bundle.open("rb"), read_across_frames=True).read()
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            f = tar.extractfile(info)
            out.append(craft.Entry.file(info.name, f.read() if f else b""))
    return out


@pytest.mark.parametrize(("change", "fragment"), [
    ({"name": "other.iso"}, "its layer's org.opencontainers.image.title"),
    ({"media_type": "application/x-iso9660-image"}, "the bundle manifest says"),
    ({"tag": "2.0"}, "index.json has no entry named files/installer.iso:2.0"),
])
def test_a_signed_bundle_describing_a_file_wrongly_is_refused(
        tmp_path: Path, ec_key: keys.PrivateKey, change: dict[str, str], fragment: str) -> None:
    (tmp_path / "k.pem").write_bytes(keys.private_pem(ec_key))
    iso = tmp_path / "installer.iso"
    iso.write_bytes(os.urandom(50_000))
    bundle = tmp_path / "b.tar.zst"
    cargohold("bundle", "build", "--name", "n", "--version", "1", "--file", f"{iso}=installer.iso:1.0",
              "--sign-key", tmp_path / "k.pem", "-o", bundle)
    entries = _entries(bundle)
    manifest = craft.manifest_of(entries)
    forged = replace(manifest, files=(replace(manifest.files[0], **change),))  # signed by the trusted key
    bad = craft.write_bundle(tmp_path / "bad.tar.zst", craft.resigned(entries, ec_key, forged))
    site = make_site(tmp_path / "site", ec_key)
    before = snapshot(site.paths.root)
    with pytest.raises(BundleRefused) as info:
        site.importer().run(bad)
    assert info.value.code == "FORMAT" and fragment in info.value.message
    assert snapshot(site.paths.root) == before
    site.importer().run(bundle)  # the honest bundle imports
    assert snapshot(site.paths.root) != before


def test_an_image_mapped_onto_a_files_tag_is_refused(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """A mapping rule that would publish an image where the same bundle publishes a file: refused, not
    one silently replacing the other."""
    from registry.names import parse_mapping_rules
    from tests.images import OciLayout

    (tmp_path / "k.pem").write_bytes(keys.private_pem(ec_key))
    lay = OciLayout(tmp_path / "oci")
    lay.add_image([1000], seed=3, ref="docker.io/cargotest/installer.iso:1.0")
    iso = tmp_path / "installer.iso"
    iso.write_bytes(os.urandom(5000))
    bundle = tmp_path / "b.tar.zst"
    cargohold("bundle", "build", "--name", "n", "--version", "1", "--layout", lay.root, "--file",
              f"{iso}=installer.iso:1.0", "--sign-key", tmp_path / "k.pem", "-o", bundle)
    site = make_site(tmp_path / "site", ec_key)
    before = snapshot(site.paths.root)
    with pytest.raises(BundleRefused) as info:
        site.importer(mapping_rules=parse_mapping_rules("docker.io/cargotest=files")).run(bundle)
    assert info.value.code == "FORMAT" and "spectro-images/files/installer.iso:1.0" in info.value.message
    assert snapshot(site.paths.root) == before
    site.importer().run(bundle)  # without the rule, both are published side by side
