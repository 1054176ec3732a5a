"""`cargohold bundle build` from OCI layouts: format, signature, platform filter, split, delta, errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bundles import keys
from bundles.format import BundleManifest
from tests.bundles.buildutil import ROOT, cargohold, extract, manifest_of, read_members, skopeo_digest
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.images import OciLayout

NGINX = "docker.io/library/nginx:1.25"
MULTI = "quay.io/org/multi:2"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OciLayout:
    lay = OciLayout(tmp_path_factory.mktemp("layout") / "oci")
    lay.add_image([40_000, 3_000], seed=1, ref=NGINX)
    lay.add_multiarch([20_000], ref=MULTI, seed=2)
    return lay


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One key pair per type, made by `cargohold keys generate`."""
    d = tmp_path_factory.mktemp("keys")
    for kind in keys.KEY_TYPES:
        cargohold("keys", "generate", d / kind, "--type", kind, *(["--bits", "2048"] if kind == "rsa" else []))
    return d


def build(out: Path, *args: str | Path, key: Path | None = None, check: bool = True,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    sign = ["--sign-key", key] if key else ["--no-sign"]
    return cargohold("bundle", "build", "--name", "site-a", "--version", "1.0", *args, *sign, "-o", out,
                     check=check, env=env)


def index_entries(layout_dir: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((layout_dir / "index.json").read_text())
    return {e["annotations"]["org.opencontainers.image.ref.name"]: e for e in index["manifests"]}


def test_bundle_is_a_signed_manifest_then_an_oci_layout(tmp_path: Path, layout: OciLayout, keydir: Path) -> None:
    out = tmp_path / "b.tar.zst"
    build(out, "--layout", layout.root, key=keydir / "ed25519.pem")
    assert out.exists() and not list(tmp_path.glob("*.tmp"))
    members = list(read_members(out))
    assert [m.name for m in members[:4]] == ["cargohold-bundle.json", "cargohold-bundle.sig", "oci-layout",
                                             "index.json"]
    manifest = BundleManifest.decode(members[0].data or b"")
    # The manifest lists every member after the signature, with its real size and sha256, and nothing else.
    listed = {m.path: (m.size, m.digest.encoded) for m in manifest.members}
    actual = {m.name: (m.size, m.sha256) for m in members[2:]}
    assert listed == actual
    assert [m.path for m in manifest.members] == [m.name for m in members[2:]]
    # Every blob of the source layout travels, named by digest.
    source_blobs = {p.name for p in (layout.root / "blobs" / "sha256").iterdir()}
    assert {n.rsplit("/", 1)[1] for n in actual if n.startswith("blobs/")} == source_blobs
    assert {i.reference: str(i.digest) for i in manifest.images} == {
        ref: e["digest"] for ref, e in index_entries(layout.root).items()}
    assert set(manifest.platforms) == {"linux/amd64", "linux/arm64"}

    # zstd -dc | tar -x gives a layout that umoci and skopeo read as it is.
    out_dir = extract(out, tmp_path / "x")
    listed_refs = subprocess.run(["umoci", "ls", "--layout", out_dir], capture_output=True, text=True, check=True)
    assert set(listed_refs.stdout.split()) == {NGINX, MULTI}
    for image in manifest.images:
        assert skopeo_digest(f"oci:{out_dir}:{image.reference}") == str(image.digest)
    subprocess.run(["skopeo", "copy", "--all", f"oci:{out_dir}:{MULTI}", f"oci:{tmp_path / 'copy'}:m"],
                   check=True, capture_output=True)
    # ... and so does the oras library: it validates the layout and walks each image to its blobs.
    from oras.layout.layout import Layout

    oras_layout = Layout(str(out_dir))
    walked: set[str] = set()
    for image in manifest.images:
        blobs = oras_layout.get_ordered_blobs(tag=image.reference)
        assert blobs[-1] == str(image.digest) and all(oras_layout.blob_exists(d) for d in blobs)
        walked |= set(blobs)
    assert {d.split(":")[1] for d in walked} == source_blobs


@pytest.mark.parametrize("kind", keys.KEY_TYPES)
def test_embedded_signature_verifies_with_the_key_and_no_other(tmp_path: Path, layout: OciLayout, keydir: Path,
                                                               kind: str) -> None:
    out = tmp_path / "b.tar.zst"
    build(out, "--layout", f"{layout.root}:{NGINX}", key=keydir / f"{kind}.pem")
    first, second = list(read_members(out))[:2]
    assert second.name == "cargohold-bundle.sig"
    signature = keys.Signature.from_json(json.loads(second.data or b""))
    public = keys.load_public((keydir / f"{kind}.pub.pem").read_bytes())
    keys.verify(public, signature, first.data or b"")
    assert signature.key_id == keys.key_id(public)
    other_kind = "ed25519" if kind != "ed25519" else "rsa"
    other = keys.load_public((keydir / f"{other_kind}.pub.pem").read_bytes())
    with pytest.raises(keys.SignatureError):
        keys.verify(other, signature, first.data or b"")
    same_type_other_key = keys.generate(kind, 2048)
    forged = keys.Signature(signature.algorithm, keys.key_id(same_type_other_key), signature.value)
    with pytest.raises(keys.SignatureError):
        keys.verify(keys.public_half(same_type_other_key), forged, first.data or b"")
    with pytest.raises(keys.SignatureError):
        keys.verify(public, signature, (first.data or b"") + b" ")


def test_platform_filter_rewrites_the_index(tmp_path: Path, layout: OciLayout, keydir: Path) -> None:
    out = tmp_path / "arm.tar.zst"
    build(out, "--layout", f"{layout.root}:{MULTI}", "--platform", "linux/arm64", key=keydir / "ecdsa-p256.pem")
    manifest = manifest_of(out)
    original = index_entries(layout.root)[MULTI]
    image: dict[str, Any] = manifest["images"][0]
    assert len(manifest["images"]) == 1
    assert image["reference"] == MULTI and image["digest"] != original["digest"]
    assert manifest["platforms"] == ["linux/arm64"]
    out_dir = extract(out, tmp_path / "x")
    entry = index_entries(out_dir)[MULTI]
    assert entry["digest"] == image["digest"]
    assert entry["annotations"]["io.cargohold.bundle.original-digest"] == original["digest"]
    index = json.loads((out_dir / "blobs" / "sha256" / image["digest"].split(":")[1]).read_bytes())
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["arm64"]
    upstream = json.loads(layout.blob_path(original["digest"]).read_bytes())
    amd64 = next(m for m in upstream["manifests"] if m["platform"]["architecture"] == "amd64")
    arm64 = next(m for m in upstream["manifests"] if m["platform"]["architecture"] == "arm64")
    assert index["manifests"][0]["digest"] == arm64["digest"]
    assert not (out_dir / "blobs" / "sha256" / amd64["digest"].split(":")[1]).exists()
    # The per-platform manifest is byte-identical to upstream; skopeo reads the filtered index.
    assert skopeo_digest(f"oci:{out_dir}:{MULTI}") == image["digest"]
    subprocess.run(["skopeo", "copy", "--all", f"oci:{out_dir}:{MULTI}", f"oci:{tmp_path / 'copy'}:m"],
                   check=True, capture_output=True)

    # A platform nobody has, and a single-platform image of another platform, fail clearly.
    bad = build(tmp_path / "s390x.tar.zst", "--layout", f"{layout.root}:{MULTI}", "--platform", "linux/s390x",
                key=keydir / "ecdsa-p256.pem", check=False)
    assert bad.returncode != 0 and "no manifest for linux/s390x" in bad.stderr and "linux/amd64" in bad.stderr
    bad = build(tmp_path / "single.tar.zst", "--layout", layout.root, "--platform", "linux/arm64",
                key=keydir / "ecdsa-p256.pem", check=False)
    assert bad.returncode != 0 and f"{NGINX} is a single linux/amd64 image" in bad.stderr
    pinned = f"quay.io/org/multi@{original['digest']}"
    bad = build(tmp_path / "pinned.tar.zst", "--layout", f"{layout.root}:{MULTI}={pinned}", "--platform",
                "linux/arm64", key=keydir / "ecdsa-p256.pem", check=False)
    assert bad.returncode != 0 and "is pinned by digest" in bad.stderr
    assert not list(tmp_path.glob("s390x*")) and not list(tmp_path.glob("single*"))
    assert not list(tmp_path.glob("pinned*"))


def test_platform_filter_matches_variants_as_the_readiness_check_does(tmp_path: Path, keydir: Path) -> None:
    """``--platform linux/arm/v7`` keeps an arm entry that names no variant (arm means arm/v7 to runtimes and to
    `clusterdef check`), and ``linux/arm64/v8`` keeps a variant-less arm64 one."""
    lay = OciLayout(tmp_path / "oci")
    lay.add_multiarch([5_000], ref=MULTI, seed=7, platforms=("linux/amd64", "linux/arm", "linux/arm64"))
    for wanted, arch in (("linux/arm/v7", "arm"), ("linux/arm64/v8", "arm64")):
        out = tmp_path / f"{arch}.tar.zst"
        build(out, "--layout", f"{lay.root}:{MULTI}", "--platform", wanted, key=keydir / "ecdsa-p256.pem")
        image = manifest_of(out)["images"][0]
        index = json.loads((extract(out, tmp_path / f"x-{arch}") / "blobs" / "sha256" /
                            image["digest"].split(":")[1]).read_bytes())
        assert [m["platform"]["architecture"] for m in index["manifests"]] == [arch]
    bad = build(tmp_path / "v6.tar.zst", "--layout", f"{lay.root}:{MULTI}", "--platform", "linux/arm/v6",
                key=keydir / "ecdsa-p256.pem", check=False)
    assert bad.returncode != 0 and "no manifest for linux/arm/v6" in bad.stderr


def test_split_parts_concatenate_to_the_same_bundle(tmp_path: Path, layout: OciLayout, keydir: Path) -> None:
    # Ed25519 signatures and a fixed time make two builds of the same content byte-identical.
    env = {"SOURCE_DATE_EPOCH": "1767225600"}
    whole = tmp_path / "whole.tar.zst"
    build(whole, "--layout", layout.root, "--threads", "2", key=keydir / "ed25519.pem", env=env)
    split = tmp_path / "split.tar.zst"
    build(split, "--layout", layout.root, "--threads", "2", "--split", "8K", key=keydir / "ed25519.pem", env=env)
    parts = sorted(tmp_path.glob("split.tar.zst.part*"))
    assert not split.exists() and len(parts) > 3
    assert [p.name for p in parts] == [f"split.tar.zst.part{i:03d}" for i in range(len(parts))]
    assert all(p.stat().st_size == 8192 for p in parts[:-1]) and 0 < parts[-1].stat().st_size <= 8192
    assert b"".join(p.read_bytes() for p in parts) == whole.read_bytes()
    assert [m.name for m in read_members(*parts)] == [m.name for m in read_members(whole)]

    # Rebuilding with bigger parts leaves no stale higher-numbered part behind.
    build(split, "--layout", layout.root, "--threads", "2", "--split", "64K", key=keydir / "ed25519.pem", env=env)
    parts = sorted(tmp_path.glob("split.tar.zst.part*"))
    assert len(parts) == (whole.stat().st_size + 65535) // 65536
    assert b"".join(p.read_bytes() for p in parts) == whole.read_bytes()

    # A split bundle serves as a delta's base, named by FILE (only parts exist) or by its first part.
    for base in (split, parts[0]):
        delta = tmp_path / "delta.tar.zst"
        build(delta, "--layout", layout.root, "--base", base, key=keydir / "ed25519.pem")
        doc = manifest_of(delta)
        assert doc["base"] == {"name": "site-a", "version": "1.0"} and doc["externalBlobs"]
        assert _blob_members(delta) == _manifest_blobs(layout.root)
    bad = build(tmp_path / "x.tar.zst", "--layout", layout.root, "--base", parts[1], key=keydir / "ed25519.pem",
                check=False)
    assert bad.returncode != 0 and "give the first part" in bad.stderr


def _blob_members(bundle: Path) -> set[str]:
    return {m.name.rsplit("/", 1)[1] for m in read_members(bundle) if m.name.startswith("blobs/")}


def _manifest_blobs(layout_dir: Path) -> set[str]:
    out = set()
    for p in (layout_dir / "blobs" / "sha256").iterdir():
        try:
            doc = json.loads(p.read_bytes())
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(doc, dict) and ("layers" in doc or "manifests" in doc):
            out.add(p.name)
    return out


def test_delta_over_an_earlier_bundle_leaves_out_exactly_its_blobs(tmp_path: Path, keydir: Path) -> None:
    lay = OciLayout(tmp_path / "oci")
    lay.add_image([30_000, 5_000], seed=7, ref="docker.io/acme/app:1")
    base = tmp_path / "base.tar.zst"
    build(base, "--layout", lay.root, key=keydir / "ecdsa-p384.pem")
    # v2 shares the first two layers with v1 (same seed and sizes) and adds one.
    lay.add_image([30_000, 5_000, 7_000], seed=7, ref="docker.io/acme/app:2")
    full = tmp_path / "full.tar.zst"
    build(full, "--layout", lay.root, key=keydir / "ecdsa-p384.pem")
    delta = tmp_path / "delta.tar.zst"
    build(delta, "--layout", lay.root, "--base", base, key=keydir / "ecdsa-p384.pem")

    base_blobs, full_blobs, delta_blobs = _blob_members(base), _blob_members(full), _blob_members(delta)
    manifests = _manifest_blobs(lay.root)
    left_out = (base_blobs - manifests) & full_blobs
    assert left_out and delta_blobs == full_blobs - left_out
    assert manifests <= delta_blobs  # manifests always travel
    doc = manifest_of(delta)
    assert doc["base"] == {"name": "site-a", "version": "1.0"}
    assert {b["digest"].split(":")[1] for b in doc["externalBlobs"]} == left_out
    sizes = {p.name: p.stat().st_size for p in (lay.root / "blobs" / "sha256").iterdir()}
    assert all(b["size"] == sizes[b["digest"].split(":")[1]] for b in doc["externalBlobs"])
    assert len(doc["images"]) == 2

    # A delta over the delta still knows the first base's blobs (they were external to it).
    delta2 = tmp_path / "delta2.tar.zst"
    build(delta2, "--layout", lay.root, "--base", delta, key=keydir / "ecdsa-p384.pem")
    assert _blob_members(delta2) == manifests

    bad = build(tmp_path / "x.tar.zst", "--layout", lay.root, "--base", tmp_path / "nope.tar.zst",
                key=keydir / "ecdsa-p384.pem", check=False)
    assert bad.returncode != 0 and "nope.tar.zst does not exist" in bad.stderr


def test_tgz_charts_become_oci_artifacts_and_cluster_definitions_are_members(
        tmp_path: Path, layout: OciLayout, keydir: Path) -> None:
    chart = tmp_path / "mychart-0.3.1.tgz"
    with tarfile.open(chart, "w:gz") as tar:
        data = b"apiVersion: v2\nname: mychart\nversion: 0.3.1\n"
        info = tarfile.TarInfo("mychart/Chart.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    definition = build_archive(tmp_path / "edge-def.tgz", simple_definition("edge", [NGINX]))
    out = tmp_path / "b.tar.zst"
    build(out, "--layout", f"{layout.root}:{NGINX}", "--chart", chart, "--cluster-definition", definition,
          key=keydir / "rsa.pem")
    members = {m.name: m for m in read_members(out)}
    # Format 2: the .tgz is the content layer of a Helm OCI chart artifact in the layout, not a charts/ member.
    chart_sha = hashlib.sha256(chart.read_bytes()).hexdigest()
    assert not any(name.startswith("charts/") for name in members)
    assert members[f"blobs/sha256/{chart_sha}"].sha256 == chart_sha
    assert members["cluster-definitions/edge-def.tgz"].sha256 == hashlib.sha256(definition.read_bytes()).hexdigest()
    doc = manifest_of(out)
    assert doc["formatVersion"] == 2
    [entry] = doc["charts"]
    assert {k: entry[k] for k in ("name", "version", "repository", "tag", "digest", "size", "mediaType")} == {
        "name": "mychart", "version": "0.3.1", "repository": "mychart", "tag": "0.3.1",
        "digest": f"sha256:{chart_sha}", "size": chart.stat().st_size,
        "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip"}
    index = json.loads(members["index.json"].data or b"")
    assert {"digest": entry["manifestDigest"], "ref": "mychart:0.3.1"} in [
        {"digest": e["digest"], "ref": e["annotations"]["org.opencontainers.image.ref.name"]}
        for e in index["manifests"]]
    chart_manifest = json.loads(members["blobs/sha256/" + entry["manifestDigest"].split(":")[1]].data or b"")
    assert chart_manifest["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    assert doc["clusterDefinitions"] == [{"name": "edge", "version": "1.0.0",
                                          "path": "cluster-definitions/edge-def.tgz"}]

    not_a_chart = tmp_path / "junk.tgz"
    not_a_chart.write_bytes(b"not gzip")
    bad = build(tmp_path / "c.tar.zst", "--chart", not_a_chart, key=keydir / "rsa.pem", check=False)
    assert bad.returncode != 0 and "junk.tgz is not a gzip tar archive" in bad.stderr
    bad_def = build_archive(tmp_path / "bad-def.tgz", {"name": "x"})
    bad = build(tmp_path / "c.tar.zst", "--cluster-definition", bad_def, key=keydir / "rsa.pem", check=False)
    assert bad.returncode != 0 and "cluster definition" in bad.stderr and "bad-def.tgz" in bad.stderr
    assert not (tmp_path / "c.tar.zst").exists()


def test_bad_input_fails_clearly_and_leaves_no_output(tmp_path: Path, layout: OciLayout, keydir: Path) -> None:
    out = tmp_path / "b.tar.zst"

    def fails(*args: str | Path, key: Path | None = keydir / "ed25519.pem") -> str:
        proc = build(out, *args, key=key, check=False)
        assert proc.returncode != 0
        assert not out.exists() and not list(tmp_path.glob("b.tar.zst*")), "a failed build left output"
        assert "Traceback" not in proc.stderr
        return proc.stderr

    assert "layout /nonexistent does not exist" in fails("--layout", "/nonexistent")
    assert "has no image tagged 'redis:7'" in fails("--layout", f"{layout.root}:redis:7")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    assert "--sign-key" in fails("--layout", layout.root, key=garbage)
    weak = tmp_path / "weak.pem"
    from cryptography.hazmat.primitives.asymmetric import rsa
    weak.write_bytes(keys.private_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    assert "at least 2048" in fails("--layout", layout.root, key=weak)
    proc = cargohold("bundle", "build", "--name", "n", "--version", "1", "--layout", layout.root, "-o", out,
                     check=False)
    assert proc.returncode != 0 and "--no-sign" in proc.stderr
    assert "nothing to bundle" in fails()

    # A damaged blob in the layout (right size, wrong bytes) is caught while it is copied.
    damaged = OciLayout(tmp_path / "damaged")
    image = damaged.add_image([10_000], seed=3, ref="docker.io/acme/d:1")
    manifest = json.loads(damaged.read(image))
    layer = damaged.blob_path(manifest["layers"][0]["digest"])
    data = bytearray(layer.read_bytes())
    data[100] ^= 0xFF
    layer.write_bytes(bytes(data))
    assert "do not match" in fails("--layout", damaged.root)

    # Unsigned only on request, with a warning and no signature member.
    proc = build(out, "--layout", f"{layout.root}:{NGINX}")
    assert "UNSIGNED" in proc.stderr
    assert [m.name for m in read_members(out)][:2] == ["cargohold-bundle.json", "oci-layout"]


def test_layout_ref_can_be_recorded_under_a_full_reference(tmp_path: Path, keydir: Path) -> None:
    lay = OciLayout(tmp_path / "oci")
    lay.add_image([1_000], seed=9, ref="1.0")  # as `skopeo copy ... oci:DIR:1.0` names it
    out = tmp_path / "b.tar.zst"
    bad = build(out, "--layout", lay.root, key=keydir / "ed25519.pem", check=False)
    assert bad.returncode != 0 and "'1.0' is a bare tag" in bad.stderr and not out.exists()
    build(out, "--layout", f"{lay.root}:1.0=ghcr.io/acme/tool:1.0", key=keydir / "ed25519.pem")
    assert [i["reference"] for i in manifest_of(out)["images"]] == ["ghcr.io/acme/tool:1.0"]


def test_memory_stays_flat_for_a_large_blob(tmp_path: Path) -> None:
    """A 192 MiB layer goes through a build whose peak RSS stays far below its size."""
    lay = OciLayout(tmp_path / "oci")
    blob_path = tmp_path / "big.tmp"
    h = hashlib.sha256()
    with blob_path.open("wb") as f:
        for _ in range(192):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    digest = f"sha256:{h.hexdigest()}"
    os.replace(blob_path, lay.blob_path(digest))
    config = lay.add_blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [digest]}}).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = lay.add_blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config.descriptor(),
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest,
                    "size": 192 << 20}]}).encode(), "application/vnd.oci.image.manifest.v1+json")
    lay.tag(manifest, "docker.io/acme/big:1")
    out = tmp_path / "big.tar.zst"
    proc = subprocess.run(["/usr/bin/time", "-f", "maxrss=%M", sys.executable, "-m", "web.cli", "bundle", "build",
                           "--name", "big", "--version", "1", "--no-sign", "--layout", str(lay.root), "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    max_rss_kib = int(proc.stderr.rsplit("maxrss=", 1)[1].split()[0])
    assert max_rss_kib < 120 * 1024, f"peak RSS {max_rss_kib} KiB for a 192 MiB blob"
    members = {m.name: m for m in read_members(out)}
    assert members[f"blobs/sha256/{h.hexdigest()}"].size == 192 << 20


def test_a_bundle_a_site_would_refuse_unparsed_is_not_written(tmp_path: Path, layout: OciLayout,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A real index.json over the format's caps needs ~45,000 images; the same check with the caps shrunk (in
    # this process) shows the builder refuses before writing, naming the member and the cap.
    from bundles import build as build_module
    from bundles.build import BuildError, BundleBuilder
    from registry.boundedjson import JsonLimits

    monkeypatch.setattr(build_module, "LAYOUT_LIMITS", JsonLimits(max_bytes=1 << 20, max_depth=16,
                                                                  max_containers=2, max_elements=600_000))
    out = tmp_path / "too-many.tar.zst"
    with BundleBuilder("x", "1", work_dir=tmp_path) as builder:
        builder.add_layout(layout.root)
        with pytest.raises(BuildError, match=r"index\.json holds \d+ objects and arrays, more than the 2 allowed"):
            builder.write(out, None)
    assert not out.exists() and not list(tmp_path.glob("too-many*"))
