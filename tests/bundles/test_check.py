"""Readiness checks against the real appliance, loaded with skopeo from real OCI layouts.

Each test gets its own upstream host name (``<uuid>.example.com``) and
images with their own seeds, so no blob is shared with another test: the
blob-missing case deletes a file from the shared appliance's store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bundles import keys
from bundles.clusterdef_trust import detached_signature
from tests.appliance import Appliance
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.images import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Blob, OciLayout, layer_bytes
from tests.pgengine import env_for
from tests.web.uiutil import signed_in

API = "/api/cargohold/v1"
PROJECT = "spectro-images"


def skopeo_copy(appliance: Appliance, layout: Path, ref: str, dest: str, tmp_path: Path) -> None:
    """Push one image (or a whole index, --all) from a layout to the appliance under `dest`."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    proc = subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", appliance.creds,
                           f"oci:{layout}:{ref}", f"docker://{appliance.host}/{dest}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


@dataclass
class Site:
    """Images pushed for one test: original reference -> what the layout holds."""

    domain: str
    layout: OciLayout
    blobs: dict[str, Blob]

    def local(self, ref: str) -> str:
        """The local repository:tag of an original reference under this site's domain."""
        return f"{PROJECT}/{ref}"


def seed_base() -> int:
    return uuid.uuid4().int % 10_000_000


@pytest.fixture
def site(appliance: Appliance, tmp_path: Path) -> Site:
    """Five images under a fresh domain: two single-platform, three two-platform indexes."""
    domain = f"u{uuid.uuid4().hex[:10]}.example.com"
    layout = OciLayout(tmp_path / "layout")
    base = seed_base()
    blobs = {
        f"{domain}/apps/one:1.0": layout.add_image([3_000, 1_000], seed=base + 1, ref="one"),
        f"{domain}/apps/two:2.0": layout.add_image([2_000], seed=base + 2, ref="two"),
        f"{domain}/multi/a:1": layout.add_multiarch([1_500], ref="ma", seed=base + 3),
        f"{domain}/multi/b:1": layout.add_multiarch([1_200], ref="mb", seed=base + 4),
        f"{domain}/multi/c:1": layout.add_multiarch([1_100], ref="mc", seed=base + 5),
    }
    for (ref, _), layout_ref in zip(blobs.items(), ["one", "two", "ma", "mb", "mc"], strict=True):
        skopeo_copy(appliance, layout.root, layout_ref, f"{PROJECT}/{ref}", tmp_path)
    return Site(domain, layout, blobs)


def upload(appliance: Appliance, archive: Path, key: keys.PrivateKey) -> requests.Response:
    """Upload a definition with a detached signature by `key` (the appliance must trust it: `trusted`)."""
    with archive.open("rb") as f:
        return requests.post(f"{appliance.url}{API}/cluster-definitions", auth=appliance.admin,
                             files={"file": (archive.name, f, "application/gzip"),
                                    "signature": ("d.sig", detached_signature(archive, key))}, timeout=30)


def check(appliance: Appliance, name: str) -> dict[str, Any]:
    r = requests.post(f"{appliance.url}{API}/cluster-definitions/{name}/checks", auth=appliance.admin, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def not_present(result: dict[str, Any]) -> dict[str, str]:
    return {f["reference"]: f["finding"] for f in result["findings"] if f["finding"] != "present"}


def layout_size(layout: OciLayout, digest: str, arches: tuple[str, ...]) -> int:
    """Bytes of a manifest or index (only the given architectures' children) and everything it references."""
    data = layout.blob_path(digest).read_bytes()
    doc = json.loads(data)
    total = len(data)
    if "manifests" in doc:
        for m in doc["manifests"]:
            if m["platform"]["architecture"] in arches:
                total += layout_size(layout, m["digest"], arches)
        return total
    return total + int(doc["config"]["size"]) + sum(int(layer["size"]) for layer in doc["layers"])


def test_all_present_is_ready_then_each_defect_is_exactly_its_finding(trusted: Appliance, site: Site,
                                                                     tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    appliance = trusted
    refs = list(site.blobs)
    name = f"site-{site.domain.split('.')[0]}"
    # amd64: what the single-platform images are built for (and one entry of each index).
    definition = simple_definition(name, refs, architectures=("amd64",),
                                   variables=[{"name": "vip", "required": True, "format": "ipv4"},
                                              {"name": "dns", "required": True, "default": "10.0.0.10"}])
    r = upload(appliance, build_archive(tmp_path / "d.tgz", definition), ec_key)
    assert r.status_code == 201, r.text
    assert r.json()["images"] == 5

    ready = check(appliance, name)
    assert ready["ready"] is True, not_present(ready)
    assert ready["counts"] == {"present": 5, "repository_missing": 0, "tag_missing": 0, "digest_mismatch": 0,
                               "platform_missing": 0, "blob_missing": 0}
    expected_bytes = sum(layout_size(site.layout, b.digest, ("amd64",)) for b in site.blobs.values())
    assert ready["bytes"] == {"required": expected_bytes, "present": expected_bytes, "missing": 0,
                              "imagesOfUnknownSize": 0}
    assert ready["requiredVariables"] == [{"profile": "infra", "name": "vip", "format": "ipv4"}]
    one, two, ma, mb, mc = refs

    # 1. Remove one tag: DELETE by tag untags, the manifest stays.
    d = requests.delete(f"{appliance.url}/v2/{PROJECT}/{one.replace(':1.0', '')}/manifests/1.0",
                        auth=appliance.admin, timeout=10)
    assert d.status_code == 202, d.text
    assert not_present(check(appliance, name)) == {one: "tag_missing"}

    # 2. Remove one blob: a layer file of `two` vanishes from the store (disk loss, a bad restore).
    manifest = json.loads(site.layout.read(site.blobs[two]))
    layer = manifest["layers"][0]["digest"]
    blob_file = appliance.data_dir / "blobs" / "sha256" / layer[7:9] / layer[7:]
    assert blob_file.exists()
    blob_file.unlink()
    result = check(appliance, name)
    assert not_present(result) == {one: "tag_missing", two: "blob_missing"}
    two_finding = next(f for f in result["findings"] if f["reference"] == two)
    assert two_finding["missing"] == [layer]
    assert two_finding["missingBytes"] == manifest["layers"][0]["size"]
    assert result["bytes"]["missing"] == manifest["layers"][0]["size"]

    # 2b. A blob unlinked from the repository (DELETE /v2/<name>/blobs/<digest>) is missing too.
    index = json.loads(site.layout.read(site.blobs[mc]))
    amd_child = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    amd_layer = json.loads(site.layout.blob_path(amd_child["digest"]).read_bytes())["layers"][0]["digest"]
    d = requests.delete(f"{appliance.url}/v2/{PROJECT}/{mc.split(':')[0]}/blobs/{amd_layer}",
                        auth=appliance.admin, timeout=10)
    assert d.status_code == 202, d.text
    result = check(appliance, name)
    assert not_present(result) == {one: "tag_missing", two: "blob_missing", mc: "blob_missing"}
    assert next(f for f in result["findings"] if f["reference"] == mc)["missing"] == [amd_layer]

    # 3. Remove one platform: `ma` is re-tagged to an index that lacks amd64.
    arm = next(m for m in json.loads(site.layout.read(site.blobs[ma]))["manifests"]
               if m["platform"]["architecture"] == "arm64")
    arm_blob = Blob(arm["mediaType"], arm["digest"], arm["size"])
    site.layout.add_index([(arm_blob, "arm64", "linux")], ref="ma-arm64-only")
    skopeo_copy(appliance, site.layout.root, "ma-arm64-only", f"{PROJECT}/{ma}", tmp_path)
    result = check(appliance, name)
    assert not_present(result) == {one: "tag_missing", two: "blob_missing", mc: "blob_missing",
                                   ma: "platform_missing"}
    ma_finding = next(f for f in result["findings"] if f["reference"] == ma)
    assert ma_finding["missing"] == ["amd64"] and ma_finding["platforms"] == ["linux/arm64"]
    assert result["ready"] is False
    assert result["counts"]["present"] == 1

    # Past checks are kept, newest first.
    history = requests.get(f"{appliance.url}{API}/cluster-definitions/{name}/checks", auth=appliance.admin,
                           timeout=10).json()["checks"]
    assert [c["ready"] for c in history] == [False, False, False, False, True]
    kept = requests.get(f"{appliance.url}{API}/cluster-definitions/{name}/checks/{history[-1]['id']}",
                        auth=appliance.admin, timeout=10).json()
    assert kept["ready"] is True and kept["counts"]["present"] == 5

    # The old readiness page address sends you to the UI's page, which (signed in) says the same,
    # with no external assets.
    old = requests.get(f"{appliance.url}/ui/cluster-definitions/{name}", timeout=10, allow_redirects=False)
    assert old.status_code == 302 and old.headers["Location"].endswith(f"/ui/definitions/{name}")
    session, _ = signed_in(appliance)
    page = session.get(f"{appliance.url}/ui/cluster-definitions/{name}", timeout=10)
    assert page.url == f"{appliance.url}/ui/definitions/{name}"
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'id="verdict">NOT READY<' in page.text and "platform_missing" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert mb in page.text


def test_pinned_digest_mismatch_and_missing_repository(trusted: Appliance, site: Site, tmp_path: Path,
                                                       ec_key: keys.PrivateKey) -> None:
    appliance = trusted
    one, two, ma, _, _ = list(site.blobs)
    other = site.blobs[two].digest
    pinned_wrong = f"{one}@{other}"  # tag one:1.0 serves another manifest than the pinned one
    pinned_right = f"{two}@{other}"
    by_digest_only = f"{one.split(':')[0]}@sha256:{'0' * 64}"
    absent = f"{site.domain}/nowhere/app:1"
    untagged_but_stored = f"{two.split(':')[0]}:no-such-tag@{other}"  # pulled by digest: present
    neither = f"{two.split(':')[0]}:no-such-tag@sha256:{'1' * 64}"
    name = f"pin-{site.domain.split('.')[0]}"
    definition = simple_definition(name, [pinned_wrong, pinned_right, by_digest_only, absent, ma,
                                          untagged_but_stored, neither])
    assert upload(appliance, build_archive(tmp_path / "d.tgz", definition), ec_key).status_code == 201
    result = check(appliance, name)
    assert not_present(result) == {pinned_wrong: "digest_mismatch", by_digest_only: "digest_mismatch",
                                   absent: "repository_missing", neither: "tag_missing"}
    assert result["counts"]["present"] == 3
    wrong = next(f for f in result["findings"] if f["reference"] == pinned_wrong)
    assert wrong["digest"] == site.blobs[one].digest and other in wrong["detail"]
    assert result["bytes"]["imagesOfUnknownSize"] == 4
    # amd64 only (the default architecture): the two-platform index is present
    assert result["architectures"] == ["amd64"]


def test_upload_refusals_leave_the_store_unchanged(trusted: Appliance, tmp_path: Path,
                                                   ec_key: keys.PrivateKey) -> None:
    appliance = trusted
    before = requests.get(f"{appliance.url}{API}/cluster-definitions", auth=appliance.admin, timeout=10).json()
    bad = simple_definition("refused-def", ["nginx:1"])
    bad["profiles"].append({**bad["profiles"][0], "name": "second-infra", "packs": []})
    archive = build_archive(tmp_path / "bad.tgz", bad)
    r = upload(appliance, archive, ec_key)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DEFINITION_INVALID"
    assert "at most one infrastructure profile" in r.json()["errors"][0]["message"]

    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not gzip at all")
    r = upload(appliance, junk, ec_key)
    assert r.status_code == 400 and "gzip" in r.json()["errors"][0]["message"]

    with archive.open("rb") as f:
        anonymous = requests.post(f"{appliance.url}{API}/cluster-definitions", files={"file": f}, timeout=10)
    # the appliance's one challenge, as on /v2/: Bearer, sending clients to the token service
    assert anonymous.status_code == 401 and anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert anonymous.headers["WWW-Authenticate"] == (
        f'Bearer realm="{appliance.url}/service/token",service="harbor-registry"')
    chunked = requests.post(f"{appliance.url}{API}/cluster-definitions", auth=appliance.admin,
                            data=iter([archive.read_bytes()]), timeout=10)  # a generator body goes chunked
    assert chunked.status_code == 411 and chunked.json()["errors"][0]["code"] == "LENGTH_REQUIRED"
    wrong_field = requests.post(f"{appliance.url}{API}/cluster-definitions", auth=appliance.admin,
                                files={"other": b"x"}, timeout=10)
    assert wrong_field.status_code == 400 and "'file'" in wrong_field.json()["errors"][0]["message"]
    assert requests.get(f"{appliance.url}{API}/cluster-definitions", auth=appliance.admin,
                        timeout=10).json() == before
    missing = requests.post(f"{appliance.url}{API}/cluster-definitions/no-such/checks", auth=appliance.admin,
                            timeout=10)
    assert missing.status_code == 404 and "no-such" in missing.json()["errors"][0]["message"]


def test_cli_import_check_and_list(trusted: Appliance, site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    appliance = trusted
    one, two, *_ = list(site.blobs)
    name = f"cli-{site.domain.split('.')[0]}"
    archive = build_archive(tmp_path / "d.tgz", simple_definition(name, [one, two, f"{site.domain}/gone/x:1"]))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "web.cli", *args, "--data-dir", str(appliance.data_dir)],
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                              env={**os.environ, **env_for(["--data-dir", appliance.data_dir])})

    signature = tmp_path / "d.tgz.sig"
    signature.write_bytes(detached_signature(archive, ec_key))
    imported = cli("clusterdef", "import", str(archive), "--signature", str(signature))
    assert imported.returncode == 0, imported.stderr
    assert (f"imported {name} 1.0.0: 1 profiles, 1 packs, 3 images; signed by {keys.key_id(ec_key)}"
            in imported.stdout)
    assert name in cli("clusterdef", "list").stdout
    table = cli("clusterdef", "check", name)
    assert table.returncode == 1  # not ready
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "FINDING", "PLATFORMS", "DETAIL"]
    assert any(line.startswith(f"{site.domain}/gone/x:1") and "repository_missing" in line for line in lines)
    assert any(line.startswith(one) and line.split()[1:3] == ["present", "linux/amd64"] for line in lines)
    assert f"{name}: NOT READY (3 images: present 2, repository_missing 1;" in table.stdout
    as_json = cli("clusterdef", "check", name, "--json")
    assert json.loads(as_json.stdout)["counts"]["present"] == 2
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"nope")
    refused = cli("clusterdef", "import", str(bad))
    assert refused.returncode != 0 and "not a readable gzip-compressed tar" in refused.stderr


def test_images_from_a_registry_with_a_port_are_found_where_they_nest(trusted: Appliance, tmp_path: Path,
                                                                      ec_key: keys.PrivateKey) -> None:
    """``host:5000/apps/one:1`` is checked against ``spectro-images/host_5000/apps/one`` and found present."""
    appliance = trusted
    host = f"u{uuid.uuid4().hex[:10]}.example.com"
    layout = OciLayout(tmp_path / "layout")
    base = seed_base()
    appliance = trusted
    one = layout.add_image([2_000], seed=base, ref="one")
    local = layout.add_image([1_000], seed=base + 1, ref="local")
    skopeo_copy(appliance, layout.root, "one", f"{PROJECT}/{host}_5000/apps/one:1", tmp_path)
    skopeo_copy(appliance, layout.root, "local", f"{PROJECT}/localhost_5000/app-{host}:1", tmp_path)
    present, by_localhost = f"{host}:5000/apps/one:1", f"localhost:5000/app-{host}:1"
    other_port, absent = f"{host}:5001/apps/one:1", f"{host}:5000/gone/x:1"
    name = f"port-{host.split('.')[0]}"
    definition = simple_definition(name, [present, by_localhost, other_port, absent])
    assert upload(appliance, build_archive(tmp_path / "d.tgz", definition), ec_key).status_code == 201
    result = check(appliance, name)
    assert not_present(result) == {other_port: "repository_missing", absent: "repository_missing"}
    found = {f["reference"]: f for f in result["findings"]}
    assert found[present]["repository"] == f"{PROJECT}/{host}_5000/apps/one"
    assert found[present]["digest"] == one.digest
    assert found[by_localhost]["digest"] == local.digest
    assert found[other_port]["repository"] == f"{PROJECT}/{host}_5001/apps/one"
    # An IPv6 literal host cannot be nested: the definition is refused at upload, naming why.
    ipv6 = simple_definition(f"v6-{host.split('.')[0]}", ["[fd00::1]:5000/apps/one:1"])
    refused = upload(appliance, build_archive(tmp_path / "v6.tgz", ipv6), ec_key)
    assert refused.status_code == 400 and "IPv6 literal hosts are not supported" in refused.text, refused.text


def image_for(layout: OciLayout, platform: str, seed: int, ref: str) -> Blob:
    """A single-platform image whose config names `platform` (``os/arch[/variant]``), tagged `ref`."""
    os_name, arch, *variant = platform.split("/")
    layer = layout.add_blob(layer_bytes(1_000, seed), OCI_LAYER)
    config: dict[str, Any] = {"architecture": arch, "os": os_name, "rootfs": {"type": "layers", "diff_ids": []},
                              "config": {"Labels": {"seed": str(seed)}}}
    if variant:
        config["variant"] = variant[0]
    config_blob = layout.add_blob(json.dumps(config).encode(), OCI_CONFIG)
    manifest = layout.add_blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                           "config": config_blob.descriptor(),
                                           "layers": [layer.descriptor()]}).encode(), OCI_MANIFEST)
    layout.tag(manifest, ref)  # no platform on the layout's entry: only the config says what it is
    return manifest


def index_for(layout: OciLayout, platforms: list[str], seed: int, ref: str) -> Blob:
    """An index with one image per platform (entries with os, architecture and variant), tagged `ref`."""
    entries = []
    for i, platform in enumerate(platforms):
        os_name, arch, *variant = platform.split("/")
        child = image_for(layout, platform, seed * 100 + i, f"{ref}-child-{i}")
        entries.append(child.descriptor(platform={"os": os_name, "architecture": arch,
                                                  **({"variant": variant[0]} if variant else {})}))
    # An attestation entry, as buildx writes one: unknown/unknown is no platform of the image.
    attestation = layout.add_blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                              "config": layout.add_blob(b"{}", "application/vnd.oci.empty.v1+json")
                                              .descriptor(), "layers": []}).encode(), OCI_MANIFEST)
    entries.append(attestation.descriptor(platform={"os": "unknown", "architecture": "unknown"},
                                          annotations={"vnd.docker.reference.type": "attestation-manifest"}))
    index = layout.add_blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode(),
                            OCI_INDEX)
    layout.tag(index, ref)
    return index


def test_single_platform_images_and_indexes_must_run_on_the_clusters_architectures(
        trusted: Appliance, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """An amd64-only image is not present for an arm64 cluster: its config says so, and the finding shows it."""
    appliance = trusted
    domain = f"u{uuid.uuid4().hex[:10]}.example.com"
    layout = OciLayout(tmp_path / "layout")
    base = seed_base()
    images = {
        "amd-only": image_for(layout, "linux/amd64", base + 1, "amd-only"),
        "arm64": image_for(layout, "linux/arm64", base + 2, "arm64"),
        "arm64-v8": image_for(layout, "linux/arm64/v8", base + 3, "arm64-v8"),
        "arm-v7": image_for(layout, "linux/arm/v7", base + 4, "arm-v7"),
        "windows-arm64": image_for(layout, "windows/arm64", base + 5, "windows-arm64"),
        "idx-no-arm64": index_for(layout, ["linux/amd64", "linux/s390x"], base + 6, "idx-no-arm64"),
        "idx-arm64-v8": index_for(layout, ["linux/amd64", "linux/arm64/v8"], base + 7, "idx-arm64-v8"),
    }
    refs = {}
    for name in images:
        refs[name] = f"{domain}/apps/{name}:1"
        skopeo_copy(appliance, layout.root, name, f"{PROJECT}/{refs[name]}", tmp_path)

    def checked(arches: tuple[str, ...], names: list[str]) -> dict[str, dict[str, Any]]:
        definition = f"arch-{uuid.uuid4().hex[:10]}"
        r = upload(appliance, build_archive(tmp_path / f"{definition}.tgz",
                                            simple_definition(definition, [refs[n] for n in names],
                                                              architectures=arches)), ec_key)
        assert r.status_code == 201, r.text
        result = check(appliance, definition)
        by_name = {n: next(f for f in result["findings"] if f["reference"] == refs[n]) for n in names}
        assert result["ready"] is all(f["finding"] == "present" for f in by_name.values())
        return by_name

    found = checked(("arm64",), list(images))
    assert {n: f["finding"] for n, f in found.items()} == {
        "amd-only": "platform_missing", "arm64": "present", "arm64-v8": "present", "arm-v7": "platform_missing",
        "windows-arm64": "platform_missing", "idx-no-arm64": "platform_missing", "idx-arm64-v8": "present"}
    amd = found["amd-only"]
    assert amd["platforms"] == ["linux/amd64"] and amd["missing"] == ["arm64"]
    assert amd["digest"] == images["amd-only"].digest
    assert "linux/amd64" in amd["detail"] and "linux/arm64" in amd["detail"]
    assert found["windows-arm64"]["platforms"] == ["windows/arm64"]
    assert found["arm64-v8"]["platforms"] == ["linux/arm64/v8"]
    idx = found["idx-no-arm64"]
    assert idx["platforms"] == ["linux/amd64", "linux/s390x"] and idx["missing"] == ["arm64"]
    assert "linux/amd64, linux/s390x" in idx["detail"]
    assert found["idx-arm64-v8"]["platforms"] == ["linux/amd64", "linux/arm64/v8"]

    # arm64/v8 is arm64: the variant-less image and the v8 index entry serve it; amd64 still does not.
    found = checked(("arm64/v8",), ["arm64", "arm64-v8", "idx-arm64-v8", "amd-only"])
    assert {n: f["finding"] for n, f in found.items()} == {
        "arm64": "present", "arm64-v8": "present", "idx-arm64-v8": "present", "amd-only": "platform_missing"}

    # A two-architecture cluster: the single-platform image lacks the other one; the full index is present.
    found = checked(("amd64", "arm64"), ["amd-only", "idx-arm64-v8", "idx-no-arm64"])
    assert found["amd-only"]["finding"] == "platform_missing" and found["amd-only"]["missing"] == ["arm64"]
    assert found["idx-arm64-v8"]["finding"] == "present"
    assert found["idx-no-arm64"]["missing"] == ["arm64"]

    # An amd64 cluster: the amd64 image is present, and says what it is built for.
    found = checked(("amd64",), ["amd-only"])
    assert found["amd-only"]["finding"] == "present" and found["amd-only"]["platforms"] == ["linux/amd64"]
