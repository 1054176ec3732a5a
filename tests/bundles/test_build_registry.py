"""`cargohold bundle build` pulling from a real registry (the appliance), and `inventory export`."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.appliance import Appliance, free_port
from tests.bundles.buildutil import cargohold, extract, manifest_of, read_members, skopeo_digest
from tests.images import OciLayout
from tests.pgengine import data_paths


def push(appliance: Appliance, layout: Path, ref: str, target: str) -> None:
    subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", appliance.creds,
                    f"oci:{layout}:{ref}", f"docker://{appliance.host}/{target}"], check=True, capture_output=True)


@pytest.fixture
def pushed(appliance: Appliance, tmp_path: Path) -> tuple[OciLayout, dict[str, str]]:
    """A single-arch and a multi-arch image pushed to the appliance: {registry ref: layout ref}."""
    lay = OciLayout(tmp_path / "src")
    lay.add_image([50_000, 2_000], seed=21, ref="app:1")
    lay.add_multiarch([8_000], ref="multi:1", seed=22)
    # A private project: pulls need credentials, so the build goes through the Bearer token flow.
    project = f"p{uuid.uuid4().hex[:10]}"
    created = requests.post(f"{appliance.url}/api/v2.0/projects", auth=appliance.admin, timeout=10,
                            json={"project_name": project, "metadata": {"public": "false"}})
    assert created.status_code == 201, created.text
    base = f"{project}/test"
    refs = {f"{appliance.host}/{base}/app:1": "app:1", f"{appliance.host}/{base}/multi:1": "multi:1"}
    for target, ref in refs.items():
        push(appliance, lay.root, ref, target.split("/", 1)[1])
    return lay, refs


def _layout_digest(lay: OciLayout, ref: str) -> str:
    index = json.loads((lay.root / "index.json").read_text())
    return str(next(e["digest"] for e in index["manifests"]
                    if e["annotations"]["org.opencontainers.image.ref.name"] == ref))


def test_build_from_registry_by_reference_and_list_file(appliance: Appliance, tmp_path: Path,
                                                        pushed: tuple[OciLayout, dict[str, str]]) -> None:
    lay, refs = pushed
    (app_ref, multi_ref) = refs
    repo, tag = app_ref.split("/", 1)[1].rsplit(":", 1)
    challenge = requests.get(f"{appliance.url}/v2/{repo}/manifests/{tag}", timeout=10)
    assert challenge.status_code == 401 and challenge.headers["WWW-Authenticate"].startswith("Bearer ")
    out = tmp_path / "b.tar.zst"
    cargohold("bundle", "build", "--name", "n", "--version", "1", "--no-sign", "--registry-insecure",
              "--registry-creds", appliance.creds, "--image", f"{app_ref}=docker.io/acme/app:1",
              "--image", multi_ref, "-o", out)
    doc = manifest_of(out)
    images = {i["reference"]: i["digest"] for i in doc["images"]}
    # Pulled content is the pushed content, byte for byte: the digests are the layout's.
    assert images == {"docker.io/acme/app:1": _layout_digest(lay, "app:1"), multi_ref: _layout_digest(lay, "multi:1")}
    out_dir = extract(out, tmp_path / "x")
    assert skopeo_digest(f"oci:{out_dir}:docker.io/acme/app:1") == images["docker.io/acme/app:1"]
    subprocess.run(["skopeo", "copy", "--all", f"oci:{out_dir}:{multi_ref}", f"oci:{tmp_path / 'copy'}:m"],
                   check=True, capture_output=True)
    # No spool directory is left beside the output.
    assert not list(tmp_path.glob(".cargohold-build-*"))

    listing = tmp_path / "images.txt"
    listing.write_text(f"# what site A runs\n\n{app_ref}   # the app\n{multi_ref}\n")
    out2 = tmp_path / "list.tar.zst"
    cargohold("bundle", "build", "--name", "n", "--version", "1", "--no-sign", "--registry-insecure",
              "--registry-creds", appliance.creds, "--images-file", listing, "--platform", "linux/amd64",
              "-o", out2)
    doc2 = manifest_of(out2)
    images2 = {i["reference"]: i["digest"] for i in doc2["images"]}
    assert images2[app_ref] == images["docker.io/acme/app:1"]
    assert images2[multi_ref] != images[multi_ref]  # filtered to one platform: a new index
    assert doc2["platforms"] == ["linux/amd64"]
    blobs = {m.name for m in read_members(out2) if m.name.startswith("blobs/")}
    assert len(blobs) < len({m.name for m in read_members(out) if m.name.startswith("blobs/")})


def test_registry_errors_are_clear(appliance: Appliance, tmp_path: Path,
                                   pushed: tuple[OciLayout, dict[str, str]]) -> None:
    _, refs = pushed
    app_ref = next(iter(refs))
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "b.tar.zst"

    def fails(*args: str) -> str:
        proc = cargohold("bundle", "build", "--name", "n", "--version", "1", "--no-sign", *args, "-o", out,
                         check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert not list(outdir.iterdir()), "a failed build left files behind"
        return proc.stderr

    port = free_port()
    assert f"registry 127.0.0.1:{port} is unreachable" in fails("--registry-insecure",
                                                                "--image", f"127.0.0.1:{port}/a/b:1")
    assert "refused access" in fails("--registry-insecure", "--image", app_ref)  # private, and no credentials
    wrong = fails("--registry-insecure", "--registry-creds", "admin:wrong-password", "--image", app_ref)
    assert "refused" in wrong and "wrong-password" not in wrong
    missing = app_ref.replace("app:1", "nothere:1")
    assert "not found in registry" in fails("--registry-insecure", "--registry-creds", appliance.creds,
                                            "--image", missing)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{app_ref}\n{missing}\n")
    assert f"{listing}:2:" in fails("--registry-insecure", "--registry-creds", appliance.creds,
                                    "--images-file", str(listing))
    assert "invalid image reference" in fails("--image", "UPPER/Case:1")

    # A layer the registry lost is found while the layers download in parallel; nothing is left behind.
    lay, _ = pushed
    repo = app_ref.split("/", 1)[1].rsplit(":", 1)[0]
    manifest = json.loads(lay.blob_path(_layout_digest(lay, "app:1")).read_bytes())
    layer = manifest["layers"][0]["digest"]
    deleted = requests.delete(f"{appliance.url}/v2/{repo}/blobs/{layer}", auth=appliance.admin, timeout=10)
    assert deleted.status_code == 202, deleted.text
    error = fails("--registry-insecure", "--registry-creds", appliance.creds, "--image", app_ref)
    assert f"blob {layer}" in error and "not found" in error


def test_inventory_export_lists_every_blob_and_feeds_a_delta(appliance: Appliance, tmp_path: Path,
                                                             pushed: tuple[OciLayout, dict[str, str]]) -> None:
    lay, refs = pushed
    inv = tmp_path / "site.json"
    cargohold("inventory", "export", "--data-dir", appliance.data_dir, "--name", "site-a", "-o", inv)
    doc = json.loads(inv.read_text())
    assert doc["mediaType"] == "application/vnd.cargohold.inventory.v1+json" and doc["name"] == "site-a"
    held = {b["digest"]: b["size"] for b in doc["blobs"]}
    on_disk = {f"sha256:{p.name}": p.stat().st_size for p in (lay.root / "blobs" / "sha256").iterdir()}
    assert on_disk.items() <= held.items()  # every pushed blob (manifests too) with its size
    repos = {r["name"]: r["tags"] for r in doc["repositories"]}
    app_repo = next(iter(refs)).split("/", 1)[1].rsplit(":", 1)[0]
    assert repos[app_repo] == {"1": _layout_digest(lay, "app:1")}

    # A delta over the inventory leaves out every layer/config the site holds, and only those.
    lay.add_image([50_000, 2_000, 9_000], seed=21, ref="app:2")
    out = tmp_path / "delta.tar.zst"
    cargohold("bundle", "build", "--name", "n", "--version", "2", "--no-sign", "--layout",
              f"{lay.root}:app:2=docker.io/acme/app:2", "--base", inv, "-o", out)
    manifest = manifest_of(out)
    assert manifest["base"] == {"name": "site-a", "version": doc["created"]}
    external = {b["digest"] for b in manifest["externalBlobs"]}
    carried = {m.name.replace("blobs/sha256/", "sha256:") for m in read_members(out) if m.name.startswith("blobs/")}
    app2 = json.loads(lay.blob_path(_layout_digest(lay, "app:2")).read_bytes())
    needed = {app2["config"]["digest"], *(layer["digest"] for layer in app2["layers"])}
    assert external == needed & held.keys() and len(external) == 2  # the two shared layers
    assert carried == (needed - held.keys()) | {_layout_digest(lay, "app:2")}

    proc = cargohold("inventory", "export", "--data-dir", tmp_path / "empty", "-o", tmp_path / "x.json",
                     check=False)
    missing = "no such directory" if data_paths(tmp_path / "empty").database_url else "no cargohold.db"
    assert proc.returncode != 0 and f"holds no cargohold appliance ({missing})" in proc.stderr
    assert not (tmp_path / "empty").exists() and not (tmp_path / "x.json").exists()


def test_oci_chart_artifact_is_pulled_like_an_image(appliance: Appliance, tmp_path: Path) -> None:
    lay = OciLayout(tmp_path / "chart")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        data = b"apiVersion: v2\nname: demo\nversion: 1.2.3\n"
        info = tarfile.TarInfo("demo/Chart.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = lay.add_blob(raw.getvalue(), "application/vnd.cncf.helm.chart.content.v1.tar+gzip")
    config = lay.add_blob(json.dumps({"name": "demo", "version": "1.2.3", "apiVersion": "v2"}).encode(),
                          "application/vnd.cncf.helm.config.v1+json")
    manifest = lay.add_blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                        "config": config.descriptor(), "layers": [layer.descriptor()]}).encode(),
                            "application/vnd.oci.image.manifest.v1+json")
    lay.tag(manifest, "demo:1.2.3")
    target = f"spectro-images/test/c{uuid.uuid4().hex[:10]}/demo:1.2.3"
    push(appliance, lay.root, "demo:1.2.3", target)

    out = tmp_path / "b.tar.zst"
    cargohold("bundle", "build", "--name", "n", "--version", "1", "--no-sign", "--registry-insecure",
              "--registry-creds", appliance.creds, "--chart", f"oci://{appliance.host}/{target}", "-o", out)
    doc = manifest_of(out)
    assert [(i["reference"], i["digest"]) for i in doc["images"]] == [(f"{appliance.host}/{target}",
                                                                       manifest.digest)]
    names = {m.name for m in read_members(out)}
    assert {f"blobs/sha256/{b.digest.split(':')[1]}" for b in (layer, config, manifest)} <= names


def test_https_registry_with_a_private_ca(appliance_factory: Callable[..., Appliance], tmp_path: Path) -> None:
    app = appliance_factory("--tls", scheme="https")
    ca = tmp_path / "ca.crt"
    ca.write_text(cargohold("tls", "ca", "--data-dir", app.data_dir).stdout)
    lay = OciLayout(tmp_path / "src")
    lay.add_image([5_000], seed=51, ref="tls:1")
    subprocess.run(["skopeo", "copy", "--dest-cert-dir", str(_certs_dir(tmp_path, ca)), "--dest-creds", app.creds,
                    f"oci:{lay.root}:tls:1", f"docker://{app.host}/spectro-images/tls/app:1"],
                   check=True, capture_output=True)
    out = tmp_path / "out" / "b.tar.zst"
    out.parent.mkdir()
    args = ("bundle", "build", "--name", "n", "--version", "1", "--no-sign", "--registry-creds", app.creds,
            "--image", f"{app.host}/spectro-images/tls/app:1=docker.io/acme/tls:1", "-o", out)
    refused = cargohold(*args, check=False)
    assert refused.returncode != 0 and "TLS verification failed" in refused.stderr and "--registry-ca" in refused.stderr
    assert not list(out.parent.iterdir())
    cargohold(*args[:2], "--registry-ca", ca, *args[2:])
    assert [i["digest"] for i in manifest_of(out)["images"]] == [_layout_digest(lay, "tls:1")]


def _certs_dir(tmp_path: Path, ca: Path) -> Path:
    d = tmp_path / "certs.d"
    d.mkdir(exist_ok=True)
    (d / "ca.crt").write_bytes(ca.read_bytes())
    return d
