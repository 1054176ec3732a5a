"""Files and .tgz charts in a format-2 bundle, end to end: `bundle build --file/--chart` with the real CLI,
`bundle import` into a running appliance, then real clients: the oras library pulls the file and the chart,
requests downloads the file over plain HTTP (whole, by Range, conditional) through the nginx front.

helm is not installed here (Debian bookworm does not package it), so the chart is checked the way helm
reads it: the manifest's config and layer media types, Chart.yaml in the config, and the .tgz bytes
pulled back with oras.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import oras.client
import pytest
import requests
import zstandard

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold, manifest_of
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.images import OciLayout

API = "/api/cargohold/v1"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
FILE_TYPE = "application/vnd.cargohold.file.v1"
IMAGE = "docker.io/cargotest/files-app:1.0"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _chart(path: Path, name: str, version: str) -> Path:
    chart_yaml = f"apiVersion: v2\nname: {name}\nversion: {version}\ndescription: a test chart\n".encode()
    with tarfile.open(path, "w:gz") as tar:
        for member, data in ((f"{name}/Chart.yaml", chart_yaml), (f"{name}/values.yaml", b"replicas: 1\n")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _build(tmp: Path, *extra: str | Path) -> Path:
    lay = OciLayout(tmp / "oci")
    lay.add_image([40_000], seed=7, ref=IMAGE)
    if not (tmp / "signing.pem").exists():
        cargohold("keys", "generate", tmp / "signing", "--type", "ecdsa-p256")
    out = tmp / "site.tar.zst"
    cargohold("bundle", "build", "--name", "site", "--version", "2", "--layout", lay.root, *extra,
              "--sign-key", tmp / "signing.pem", "-o", out)
    return out


def _import(app: Appliance, tmp: Path, bundle: Path, check: bool = True) -> dict[str, object]:
    cargohold("keys", "add", tmp / "signing.pub.pem", "--data-dir", app.data_dir, check=False)
    proc = cargohold("bundle", "import", bundle, "--data-dir", app.data_dir, "--json", "--quiet", check=check)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"stderr": proc.stderr}


def _oras(app: Appliance) -> oras.client.OrasClient:
    c = oras.client.OrasClient(hostname=app.host, insecure=True, auth_backend="basic")
    c.auth.set_basic_auth(*app.admin)
    return c


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, bytes]:
    """An ISO-like file: 3 MB of random bytes (the streaming path is the same whatever the size)."""
    data = os.urandom(3_000_000)
    path = tmp_path / "installer.iso"
    path.write_bytes(data)
    return path, data


def _definition(tmp: Path, name: str, file_digest: str, file_size: int | None = None) -> Path:
    """A definition needing the image, the .tgz chart (served by the appliance itself) and the ISO."""
    doc = simple_definition(name, [IMAGE])
    pack = doc["profiles"][0]["packs"][0]
    pack["charts"] = [{"name": "edge-app", "version": "0.3.1+build1"}]
    pack["content"]["files"] = [{"name": "installer.iso", "digest": file_digest,
                                 **({"size": file_size} if file_size is not None else {})}]
    return build_archive(tmp / f"{name}.tgz", doc)


def _check(app: Appliance, name: str) -> dict[str, object]:
    proc = cargohold("clusterdef", "check", name, "--json", "--data-dir", app.data_dir, check=False)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_file_and_chart_travel_and_are_served_over_oci_and_http(
        tmp_path: Path, appliance_factory: Callable[..., Appliance], payload: tuple[Path, bytes]) -> None:
    iso, data = payload
    chart = _chart(tmp_path / "edge-app-0.3.1.tgz", "edge-app", "0.3.1+build1")
    definition = _definition(tmp_path, "edge-files", sha256(data), len(data))
    bundle = _build(tmp_path, "--file", f"{iso}=installer.iso:1.0", "--chart", chart,
                    "--cluster-definition", definition)
    doc = manifest_of(bundle)
    assert doc["formatVersion"] == 2 and doc["mediaType"] == "application/vnd.cargohold.bundle.v2+json"
    assert [(f["name"], f["version"], f["repository"], f["tag"], f["digest"], f["size"]) for f in doc["files"]] == [
        ("installer.iso", "1.0", "files/installer.iso", "1.0", sha256(data), len(data))]
    assert [(c["name"], c["version"], c["repository"], c["tag"], c["digest"]) for c in doc["charts"]] == [
        ("edge-app", "0.3.1+build1", "edge-app", "0.3.1_build1", sha256(chart.read_bytes()))]

    app = appliance_factory()
    report = _import(app, tmp_path, bundle)
    assert {(i["repository"], i["tag"]) for i in report["images"]} == {  # type: ignore[union-attr]
        ("spectro-images/docker.io/cargotest/files-app", "1.0"),
        ("spectro-images/files/installer.iso", "1.0"), ("spectro-images/edge-app", "0.3.1_build1")}

    # The definition's check: the image, the chart and the file are each present, so the cluster is READY.
    result = _check(app, "edge-files")
    assert result["ready"] is True, result
    findings = {(f["kind"], f["reference"]): (f["finding"], f["repository"])  # type: ignore[index]
                for f in result["findings"]}  # type: ignore[attr-defined]
    assert findings == {
        ("image", IMAGE): ("present", "spectro-images/docker.io/cargotest/files-app"),
        ("chart", "edge-app:0.3.1_build1"): ("present", "spectro-images/edge-app"),
        ("file", f"installer.iso@{sha256(data)}"): ("present", "spectro-images/files/installer.iso")}

    # oras writes the file back under its name, byte for byte.
    out = tmp_path / "pulled"
    pulled = _oras(app).pull(target=f"{app.host}/spectro-images/files/installer.iso:1.0", outdir=str(out))
    assert [Path(p).name for p in pulled] == ["installer.iso"]
    assert (out / "installer.iso").read_bytes() == data
    manifest = requests.get(f"{app.url}/v2/spectro-images/files/installer.iso/manifests/1.0", auth=app.admin,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).json()
    assert manifest["artifactType"] == FILE_TYPE
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"

    # The chart is the artifact helm push makes: helm's config (Chart.yaml as JSON) and content layer.
    resp = requests.get(f"{app.url}/v2/spectro-images/edge-app/manifests/0.3.1_build1", auth=app.admin,
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert resp.status_code == 200, resp.text
    chart_manifest = resp.json()
    assert chart_manifest["config"]["mediaType"] == HELM_CONFIG
    assert [layer["mediaType"] for layer in chart_manifest["layers"]] == [HELM_LAYER]
    config = requests.get(f"{app.url}/v2/spectro-images/edge-app/blobs/{chart_manifest['config']['digest']}",
                          auth=app.admin, timeout=10).json()
    assert (config["name"], config["version"], config["apiVersion"]) == ("edge-app", "0.3.1+build1", "v2")
    chart_out = tmp_path / "chart"
    pulled = _oras(app).pull(target=f"{app.host}/spectro-images/edge-app:0.3.1_build1", outdir=str(chart_out))
    assert len(pulled) == 1 and Path(pulled[0]).read_bytes() == chart.read_bytes()

    # Plain HTTP: listed, downloadable whole and by range, anonymously (the default project is public).
    listed = requests.get(f"{app.url}{API}/files", timeout=10).json()["files"]
    assert [(f["name"], f["version"], f["digest"], f["size"], f["repository"]) for f in listed] == [
        ("installer.iso", "1.0", sha256(data), len(data), "spectro-images/files/installer.iso")]
    for spec in ("installer.iso", "installer.iso:1.0", sha256(data)):
        whole = requests.get(f"{app.url}{API}/files/{spec}", timeout=30)
        assert whole.status_code == 200 and whole.content == data, spec
    assert whole.headers["Content-Disposition"] == 'attachment; filename="installer.iso"'
    assert whole.headers["Docker-Content-Digest"] == sha256(data)
    assert whole.headers["Digest"] == "sha-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = requests.get(f"{app.url}{API}/files/installer.iso:1.0", headers={"Range": "bytes=1000000-1999999"},
                        timeout=30)
    assert part.status_code == 206 and part.content == data[1_000_000:2_000_000]
    assert part.headers["Content-Range"] == f"bytes 1000000-1999999/{len(data)}"
    tail = requests.get(f"{app.url}{API}/files/installer.iso", headers={"Range": "bytes=-10"}, timeout=30)
    assert tail.status_code == 206 and tail.content == data[-10:]
    bad = requests.get(f"{app.url}{API}/files/installer.iso", headers={"Range": f"bytes={len(data) + 5}-"},
                       timeout=10)
    assert bad.status_code == 416 and bad.json()["errors"][0]["code"] == "RANGE_INVALID"
    cached = requests.get(f"{app.url}{API}/files/installer.iso", headers={"If-None-Match": f'"{sha256(data)}"'},
                          timeout=10)
    assert cached.status_code == 304 and not cached.content
    missing = requests.get(f"{app.url}{API}/files/installer.iso:9.9", timeout=10)
    assert missing.status_code == 404 and "installer.iso with version 9.9" in missing.json()["errors"][0]["message"]


def _tampered(bundle: Path, target: str, out: Path) -> Path:
    """The bundle with one byte of member `target` flipped (same size: only the digest can tell)."""
    raw = io.BytesIO()
    with zstandard.ZstdDecompressor().stream_reader(bundle.open("rb"), read_across_frames=True) as reader:
        raw.write(reader.read())
    raw.seek(0)
    new = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="r:") as src, tarfile.open(fileobj=new, mode="w:", format=tarfile.PAX_FORMAT) \
            as dst:
        for info in src:
            f = src.extractfile(info)
            body = f.read() if f else b""
            if info.name == target:
                body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
            dst.addfile(info, io.BytesIO(body))
    out.write_bytes(zstandard.ZstdCompressor().compress(new.getvalue()))
    return out


def test_a_file_changed_in_the_bundle_is_refused_and_nothing_is_visible(
        tmp_path: Path, appliance_factory: Callable[..., Appliance], payload: tuple[Path, bytes]) -> None:
    iso, data = payload
    bundle = _build(tmp_path, "--file", f"{iso}=installer.iso:1.0")
    target = "blobs/sha256/" + hashlib.sha256(data).hexdigest()
    app = appliance_factory()
    refused = _import(app, tmp_path, _tampered(bundle, target, tmp_path / "bad.tar.zst"), check=False)
    assert "stderr" in refused and target in str(refused["stderr"]) and "digest" in str(refused["stderr"])
    assert requests.get(f"{app.url}{API}/files", timeout=10).json() == {"files": []}
    assert requests.get(f"{app.url}{API}/files/installer.iso", timeout=10).status_code == 404
    tags = requests.get(f"{app.url}/v2/spectro-images/files/installer.iso/tags/list", auth=app.admin, timeout=10)
    assert tags.status_code == 404
    assert not list((app.data_dir / "blobs").rglob(hashlib.sha256(data).hexdigest()))
    # The untouched bundle still imports.
    _import(app, tmp_path, bundle)
    assert requests.get(f"{app.url}{API}/files/installer.iso", timeout=30).content == data


def test_image_only_build_stays_format_1(tmp_path: Path) -> None:
    """The builder writes the lowest version that expresses the bundle: a site not yet upgraded reads it."""
    doc = manifest_of(_build(tmp_path))
    assert doc["formatVersion"] == 1 and doc["mediaType"] == "application/vnd.cargohold.bundle.v1+json"
    assert "files" not in doc


def test_a_new_file_version_is_staged_diffed_promoted_and_gc_reclaims_only_the_old_bytes(
        tmp_path: Path, appliance_factory: Callable[..., Appliance], payload: tuple[Path, bytes]) -> None:
    """Files follow the release rules images do: staged tag, diff, promotion, GC by retention, scrub."""
    iso, first = payload
    app = appliance_factory()
    r1 = _import(app, tmp_path, _build(tmp_path, "--file", f"{iso}=installer.iso:1.0"))["release"]
    cargohold("release", "promote", str(r1["id"]), "--data-dir", app.data_dir)  # type: ignore[index]
    second = os.urandom(2_000_000)
    iso.write_bytes(second)  # the same name and version, other bytes: the tag is staged, not moved
    (tmp_path / "site.tar.zst").unlink()
    r2 = _import(app, tmp_path, _build(tmp_path, "--file", f"{iso}=installer.iso:1.0"))["release"]
    assert r2["pendingTags"] == ["spectro-images/files/installer.iso:1.0"]  # type: ignore[index]
    assert requests.get(f"{app.url}{API}/files/installer.iso:1.0", timeout=30).content == first

    diff = requests.get(f"{app.url}{API}/releases/{r2['id']}/diff?from={r1['id']}",  # type: ignore[index]
                        auth=app.admin, timeout=10).json()
    changed = {(c["repository"], c["tag"]): (c["from"], c["to"]) for c in diff["images"]["changed"]}
    file_change = changed[("spectro-images/files/installer.iso", "1.0")]
    assert file_change[0] != file_change[1]
    assert diff["bytes"]["new"] >= len(second)

    cargohold("release", "promote", str(r2["id"]), "--data-dir", app.data_dir)  # type: ignore[index]
    assert requests.get(f"{app.url}{API}/files/installer.iso:1.0", timeout=30).content == second
    gc = json.loads(cargohold("gc", "--retain", "1", "--grace", "0", "--json", "--data-dir", app.data_dir).stdout)
    removed = {b["digest"] for b in gc["blobsRemoved"]}
    assert sha256(first) in removed and sha256(second) not in removed
    assert requests.get(f"{app.url}{API}/files/installer.iso", timeout=30).content == second
    out = tmp_path / "pulled"
    _oras(app).pull(target=f"{app.host}/spectro-images/files/installer.iso:1.0", outdir=str(out))
    assert (out / "installer.iso").read_bytes() == second
    scrub = json.loads(cargohold("scrub", "--json", "--data-dir", app.data_dir).stdout)
    assert scrub["ok"] is True and scrub["checked"] >= 3

    # A flipped byte on disk is what scrub is for: it names the file's blob.
    blob = next((app.data_dir / "blobs").rglob(hashlib.sha256(second).hexdigest()))
    raw = bytearray(blob.read_bytes())
    raw[5] ^= 1
    blob.write_bytes(bytes(raw))
    scrub = json.loads(cargohold("scrub", "--json", "--data-dir", app.data_dir, check=False).stdout)
    assert scrub["ok"] is False and sha256(second) in json.dumps(scrub)


def test_check_reports_a_missing_or_different_file_and_a_missing_chart(
        tmp_path: Path, appliance_factory: Callable[..., Appliance], payload: tuple[Path, bytes]) -> None:
    iso, data = payload
    other = sha256(b"another build of the installer")
    app = appliance_factory()
    # Only the image and a definition needing more: the build refuses, naming exactly the chart and the file.
    definition = _definition(tmp_path, "edge-need", other)
    with pytest.raises(AssertionError, match=r"failed \(3\)") as refused:  # exit 3: incomplete, nothing written
        _build(tmp_path, "--cluster-definition", definition, "--json")
    assert not (tmp_path / "site.tar.zst").exists()
    report = str(refused.value)
    findings = json.loads(report[report.index("{"):report.rindex("}") + 1])["findings"]
    assert sorted((f["kind"], f["code"]) for f in findings) == [("chart", "repository_missing"),
                                                                 ("file", "repository_missing")]
    # Shipped anyway (--allow-incomplete), the site's check finds the same.
    _import(app, tmp_path, _build(tmp_path, "--cluster-definition", definition, "--allow-incomplete"))
    result = _check(app, "edge-need")
    assert result["ready"] is False
    by_kind = {f["kind"]: f for f in result["findings"]}  # type: ignore[attr-defined]
    assert by_kind["image"]["finding"] == "present"
    assert by_kind["chart"]["finding"] == "repository_missing"
    assert by_kind["file"]["finding"] == "repository_missing" and "installer.iso" in by_kind["file"]["detail"]

    # The file is now here, but with other bytes than the definition pins.
    (tmp_path / "site.tar.zst").unlink()
    _import(app, tmp_path, _build(tmp_path, "--file", f"{iso}=installer.iso:1.0"))
    by_kind = {f["kind"]: f for f in _check(app, "edge-need")["findings"]}  # type: ignore[attr-defined]
    assert by_kind["file"]["finding"] == "digest_mismatch"
    assert other in by_kind["file"]["detail"] and sha256(data) in by_kind["file"]["detail"]


def test_a_definition_file_requirement_is_validated(tmp_path: Path) -> None:
    bad = _definition(tmp_path, "edge-bad", "sha256:abc")
    proc = cargohold("bundle", "build", "--name", "x", "--version", "1", "--cluster-definition", bad, "--no-sign",
                     "-o", tmp_path / "x.tar.zst", check=False)
    assert proc.returncode != 0 and "content.files[0]" in proc.stderr and "sha256:abc" in proc.stderr
    assert not (tmp_path / "x.tar.zst").exists()


def test_downloads_need_pull_access_when_the_project_is_private(
        tmp_path: Path, appliance_factory: Callable[..., Appliance], payload: tuple[Path, bytes]) -> None:
    iso, data = payload
    app = appliance_factory()
    _import(app, tmp_path, _build(tmp_path, "--file", f"{iso}=installer.iso:1.0"))
    made_private = requests.put(f"{app.url}/api/v2.0/projects/spectro-images", auth=app.admin, timeout=10,
                                json={"metadata": {"public": "false"}})
    assert made_private.status_code == 200
    anonymous = requests.get(f"{app.url}{API}/files/installer.iso", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "Bearer" in anonymous.headers["WWW-Authenticate"]
    assert requests.get(f"{app.url}{API}/files", timeout=10).json() == {"files": []}
    assert requests.get(f"{app.url}{API}/files/nothing-here.bin", timeout=10).status_code == 404
    wrong = requests.get(f"{app.url}{API}/files/installer.iso", auth=("admin", "wrong-password"), timeout=10)
    assert wrong.status_code == 401
    admin = requests.get(f"{app.url}{API}/files/installer.iso", auth=app.admin, timeout=30)
    assert admin.status_code == 200 and admin.content == data
    assert [f["name"] for f in requests.get(f"{app.url}{API}/files", auth=app.admin, timeout=10).json()["files"]] \
        == ["installer.iso"]


def test_bad_files_and_charts_fail_the_build_clearly_and_leave_no_output(tmp_path: Path) -> None:
    (tmp_path / "ok.bin").write_bytes(b"x")
    out = tmp_path / "x.tar.zst"
    cases = [
        (("--file", str(tmp_path / "absent.iso")), "absent.iso does not exist or is not a regular file"),
        (("--file", str(tmp_path)), "is not a regular file"),
        (("--file", f"{tmp_path / 'ok.bin'}=../x.bin"), "file name '../x.bin' must be 1-255 letters"),
        (("--file", f"{tmp_path / 'ok.bin'}=ok.bin:1/2"), "version '1/2' cannot be an OCI tag"),
        (("--file", f"{tmp_path / 'ok.bin'}=___"), "gives no usable repository name"),
        (("--chart", str(_chart(tmp_path / "Bad.tgz", "Bad_Chart", "1.0"))), "chart name 'Bad_Chart' cannot be"),
        (("--files-file", str(tmp_path / "nope.txt")), "cannot read --files-file"),
    ]
    for args, message in cases:
        proc = cargohold("bundle", "build", "--name", "x", "--version", "1", *args, "--no-sign", "-o", out,
                         check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not out.exists() and not list(tmp_path.glob("x.tar.zst*"))
    listing = tmp_path / "files.txt"
    listing.write_text(f"# the site's files\n{tmp_path / 'ok.bin'}=ok.bin:2\n\n")
    cargohold("bundle", "build", "--name", "x", "--version", "1", "--files-file", listing, "--no-sign", "-o", out)
    assert [(f["name"], f["version"]) for f in manifest_of(out)["files"]] == [("ok.bin", "2")]
