"""`bundle build --cluster-definition`: resolve what the definitions need, check the bundle before writing.

Real builds through the CLI from OCI layouts (tests.images) and, for
`--from-registry` and the `--missing-out` round trip, from the real
appliance as the source registry; the import side through the real
`bundle import` / `bundle status` / `clusterdef check` commands.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from bundles.format import BundleManifest, FormatError
from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold, manifest_of
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.images import OciLayout

NGINX = "docker.io/library/nginx:1.25"
REDIS = "quay.io/acme/redis:7"
MULTI = "quay.io/acme/multi:2"
EXTRA = "ghcr.io/acme/extra:1"
INCOMPLETE = 3  # the documented exit status of a build refused as incomplete


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OciLayout:
    lay = OciLayout(tmp_path_factory.mktemp("layout") / "oci")
    lay.add_image([20_000], seed=61, ref=NGINX)
    lay.add_image([10_000], seed=62, ref=REDIS)
    lay.add_multiarch([5_000], ref=MULTI, seed=63)
    lay.add_image([3_000], seed=64, ref=EXTRA)
    return lay


def build(out: Path, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cargohold("bundle", "build", "--name", "site", "--version", "1", "--no-sign", *args, "-o", out,
                     check=check)


def definition(tmp_path: Path, images: list[str], architectures: tuple[str, ...] = ("amd64",),
               name: str = "edge") -> Path:
    return build_archive(tmp_path / f"{name}.tgz", simple_definition(name, images, architectures))


def refused(proc: subprocess.CompletedProcess[str], out: Path) -> None:
    """The build was refused as incomplete and nothing at all was written beside the output."""
    assert proc.returncode == INCOMPLETE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "nothing was written" in proc.stderr
    assert not out.exists() and not list(out.parent.glob(out.name + "*")), "an incomplete bundle was written"
    assert not list(out.parent.glob(".cargohold-build-*"))


def findings(proc: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    doc = json.loads(proc.stdout)
    return [(f["reference"], f["code"]) for f in doc["findings"]]


def test_a_definition_needing_an_image_the_build_lacks_is_refused_with_that_finding(
        tmp_path: Path, layout: OciLayout) -> None:
    edge = definition(tmp_path, [NGINX, REDIS])
    out = tmp_path / "b.tar.zst"
    proc = build(out, "--layout", f"{layout.root}:{NGINX}", "--cluster-definition", edge, "--json", check=False)
    refused(proc, out)
    assert findings(proc) == [(REDIS, "repository_missing")]
    doc = json.loads(proc.stdout)
    assert doc["written"] is False and doc["complete"] is False
    assert doc["findings"][0]["kind"] == "image" and doc["findings"][0]["definition"] == "edge 1.0.0"
    # The human table (stderr) has the check's columns and codes, one row per finding.
    table = [line for line in proc.stderr.splitlines() if line.startswith("edge 1.0.0")]
    assert len(table) == 1 and REDIS in table[0] and "repository_missing" in table[0]

    # Given what it lacks, the same build is written, exit 0, and says it is complete.
    proc = build(out, "--layout", f"{layout.root}:{NGINX},{REDIS}", "--cluster-definition", edge)
    assert out.exists() and "holds everything" in proc.stderr
    assert "incomplete" not in manifest_of(out)


def test_a_pinned_digest_the_bundle_does_not_carry_is_a_digest_mismatch(tmp_path: Path, layout: OciLayout) -> None:
    pinned = f"{NGINX}@sha256:{'ab' * 32}"
    out = tmp_path / "b.tar.zst"
    proc = build(out, "--layout", f"{layout.root}:{NGINX}", "--cluster-definition",
                 definition(tmp_path, [pinned]), "--json", check=False)
    refused(proc, out)
    assert findings(proc) == [(pinned, "digest_mismatch")]


def test_source_layout_gives_exactly_what_the_definition_needs(tmp_path: Path, layout: OciLayout) -> None:
    edge = definition(tmp_path, [NGINX, MULTI])
    out = tmp_path / "b.tar.zst"
    proc = build(out, "--source-layout", layout.root, "--cluster-definition", edge)
    # Only what the definition needs: the layout's other images stay behind.
    assert sorted(i["reference"] for i in manifest_of(out)["images"]) == [NGINX, MULTI]
    assert f"{NGINX} (from layout {layout.root})" in proc.stderr
    # Explicit images and the definition's needs: the union is packed.
    build(out, "--layout", f"{layout.root}:{EXTRA}", "--source-layout", layout.root, "--cluster-definition", edge)
    assert sorted(i["reference"] for i in manifest_of(out)["images"]) == sorted([NGINX, MULTI, EXTRA])


def test_platform_the_definition_needs_but_the_image_lacks_is_platform_missing(
        tmp_path: Path, layout: OciLayout) -> None:
    arm = definition(tmp_path, [MULTI, REDIS], architectures=("arm64",))
    out = tmp_path / "b.tar.zst"
    # --platform keeps only amd64 of the multi-arch index; redis is a single-platform amd64 image.
    proc = build(out, "--source-layout", layout.root, "--platform", "linux/amd64", "--cluster-definition", arm,
                 "--json", check=False)
    refused(proc, out)
    doc = json.loads(proc.stdout)
    by_ref = {f["reference"]: f for f in doc["findings"]}
    assert set(by_ref) == {MULTI, REDIS}
    assert by_ref[MULTI]["code"] == "platform_missing" and by_ref[MULTI]["platforms"] == ["linux/amd64"]
    assert by_ref[MULTI]["missing"] == ["arm64"]
    assert by_ref[REDIS]["code"] == "platform_missing" and by_ref[REDIS]["platforms"] == ["linux/amd64"]
    # Without the filter the index carries arm64: only the single-platform image is still missing.
    proc = build(out, "--source-layout", layout.root, "--cluster-definition", arm, "--json", check=False)
    refused(proc, out)
    assert findings(proc) == [(REDIS, "platform_missing")]


def test_allow_incomplete_is_recorded_and_shown_at_import(tmp_path: Path, layout: OciLayout) -> None:
    edge = definition(tmp_path, [NGINX, REDIS])
    out = tmp_path / "b.tar.zst"
    proc = build(out, "--layout", f"{layout.root}:{NGINX}", "--cluster-definition", edge, "--allow-incomplete")
    assert proc.returncode == 0 and out.exists() and "--allow-incomplete" in proc.stderr
    record = manifest_of(out)["incomplete"]
    assert [(f["reference"], f["code"], f["kind"]) for f in record["findings"]] == \
        [(REDIS, "repository_missing", "image")]

    site = tmp_path / "site"
    shown = cargohold("bundle", "import", out, "--data-dir", site, "--allow-unsigned", "--quiet")
    assert "INCOMPLETE" in shown.stdout and REDIS in shown.stdout and "repository_missing" in shown.stdout
    report = json.loads(cargohold("bundle", "import", out, "--data-dir", site, "--allow-unsigned", "--quiet",
                                  "--json").stdout)
    assert report["bundle"]["incomplete"] == record
    job = json.loads(cargohold("bundle", "status", report["jobId"], "--data-dir", site, "--json").stdout)
    assert job["report"]["bundle"]["incomplete"] == record
    status = cargohold("bundle", "status", report["jobId"], "--data-dir", site).stdout
    assert "INCOMPLETE" in status and REDIS in status
    listed = cargohold("bundle", "list", "--data-dir", site).stdout
    assert f"{report['jobId']}" in listed and "INCOMPLETE (1 finding(s))" in listed
    # The site's own check of the imported definition finds exactly what the build found.
    check = cargohold("clusterdef", "check", "edge", "--data-dir", site, "--json", check=False)
    assert check.returncode == 1
    site_findings = [(f["reference"], f["finding"]) for f in json.loads(check.stdout)["findings"]
                     if f["finding"] != "present"]
    assert site_findings == [(f["reference"], f["code"]) for f in record["findings"]]


def test_missing_out_lists_what_pulling_can_fix_and_comments_the_rest(tmp_path: Path, layout: OciLayout) -> None:
    gone = "ghcr.io/acme/gone:1"
    edge = definition(tmp_path, [NGINX, gone], architectures=("amd64", "arm64"))
    out, missing = tmp_path / "b.tar.zst", tmp_path / "missing.txt"
    proc = build(out, "--layout", f"{layout.root}:{NGINX}", "--cluster-definition", edge,
                 "--missing-out", missing, check=False)
    refused(proc, out)
    assert f"listed in {missing}" in proc.stderr
    lines = missing.read_text().splitlines()
    assert [line.split("#", 1)[0].strip() for line in lines if not line.startswith("#")] == [gone]
    # Pulling nginx again would not give it an arm64 image: a comment with the finding, for a person.
    assert any(line.startswith(f"# {NGINX}   # platform_missing:") for line in lines)


def test_short_names_in_a_layout_are_refused_or_mapped(tmp_path: Path) -> None:
    lay = OciLayout(tmp_path / "oci")
    lay.add_image([1_000], seed=71, ref="pause:3.9")  # as `skopeo copy ... oci:DIR:pause:3.9` names it
    out = tmp_path / "b.tar.zst"
    proc = build(out, "--layout", lay.root, check=False)
    assert proc.returncode == 1 and not out.exists() and "Traceback" not in proc.stderr
    assert "'pause:3.9' is a short name" in proc.stderr and "--default-registry" in proc.stderr
    proc = build(out, "--layout", f"{lay.root}:pause:3.9=pause:3.9", check=False)
    assert proc.returncode == 1 and "'pause:3.9' is a short name" in proc.stderr and not out.exists()

    build(out, "--layout", lay.root, "--default-registry", "registry.k8s.io")
    assert [i["reference"] for i in manifest_of(out)["images"]] == ["registry.k8s.io/pause:3.9"]
    build(out, "--layout", f"{lay.root}:pause:3.9=registry.k8s.io/pause:3.9")
    assert [i["reference"] for i in manifest_of(out)["images"]] == ["registry.k8s.io/pause:3.9"]
    # A source layout's short names match a definition's needs only under --default-registry.
    edge = definition(tmp_path, ["registry.k8s.io/pause:3.9"])
    fresh = tmp_path / "fresh.tar.zst"
    proc = build(fresh, "--source-layout", lay.root, "--cluster-definition", edge, "--json", check=False)
    refused(proc, fresh)
    assert "not matched (pause:3.9)" in proc.stderr
    # A refused build leaves an earlier bundle at the output path exactly as it was.
    before = out.read_bytes()
    proc = build(out, "--source-layout", lay.root, "--cluster-definition", edge, check=False)
    assert proc.returncode == INCOMPLETE and out.read_bytes() == before
    build(out, "--source-layout", lay.root, "--default-registry", "registry.k8s.io", "--cluster-definition", edge)
    assert [i["reference"] for i in manifest_of(out)["images"]] == ["registry.k8s.io/pause:3.9"]


def test_an_oci_chart_the_definition_needs_is_resolved_and_checked(tmp_path: Path) -> None:
    lay = OciLayout(tmp_path / "charts")
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
    chart = "ghcr.io/acme/charts/demo:1.2.3"
    lay.tag(manifest, chart)
    doc = simple_definition("charted", [], architectures=("arm64",))
    doc["profiles"][0]["packs"][0]["charts"] = [{"name": "demo", "version": "1.2.3",
                                                 "repository": "oci://ghcr.io/acme/charts"}]
    charted = build_archive(tmp_path / "charted.tgz", doc)
    out = tmp_path / "b.tar.zst"
    proc = build(out, "--cluster-definition", charted, "--json", check=False)
    refused(proc, out)
    [finding] = json.loads(proc.stdout)["findings"]
    assert (finding["kind"], finding["reference"], finding["code"]) == ("chart", chart, "repository_missing")
    # From a source layout it travels as an artifact; a chart runs on any architecture.
    build(out, "--source-layout", lay.root, "--cluster-definition", charted)
    assert [(i["reference"], i["digest"]) for i in manifest_of(out)["images"]] == [(chart, manifest.digest)]


def test_sources_without_a_definition_are_a_usage_error(tmp_path: Path, layout: OciLayout) -> None:
    proc = build(tmp_path / "b.tar.zst", "--source-layout", layout.root, check=False)
    assert proc.returncode == 2 and "--cluster-definition" in proc.stderr


def test_incomplete_record_is_optional_and_checked() -> None:
    base: dict[str, Any] = {"mediaType": "application/vnd.cargohold.bundle.v1+json", "formatVersion": 1,
                            "name": "n", "version": "1", "created": "2026-01-01T00:00:00Z", "platforms": [],
                            "images": [], "members": [], "totalSize": 0}
    assert BundleManifest.decode(json.dumps(base).encode()).incomplete is None
    record = {"findings": [{"definition": "edge 1.0.0", "kind": "image", "reference": REDIS,
                            "code": "repository_missing", "detail": "x"}]}
    decoded = BundleManifest.decode(json.dumps({**base, "incomplete": record}).encode())
    assert decoded.incomplete == record and json.loads(decoded.encode())["incomplete"] == record
    with pytest.raises(FormatError, match="incomplete"):
        BundleManifest.decode(json.dumps({**base, "incomplete": {"findings": [{"kind": 1}]}}).encode())


# -- from a registry (the appliance as the source) ---------------------------------------------------------------


def _private_project(appliance: Appliance) -> str:
    project = f"p{uuid.uuid4().hex[:10]}"
    created = requests.post(f"{appliance.url}/api/v2.0/projects", auth=appliance.admin, timeout=10,
                            json={"project_name": project, "metadata": {"public": "false"}})
    assert created.status_code == 201, created.text
    return project


def _push(appliance: Appliance, layout: Path, ref: str, target: str) -> None:
    subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", appliance.creds,
                    f"oci:{layout}:{ref}", f"docker://{appliance.host}/{target}"], check=True, capture_output=True)


def test_from_registry_pulls_what_the_definition_needs(appliance: Appliance, tmp_path: Path,
                                                       layout: OciLayout) -> None:
    project = _private_project(appliance)
    # A mirror keeps images under PREFIX/<original reference> (as a cargohold project does).
    _push(appliance, layout.root, NGINX, f"{project}/docker.io/library/nginx:1.25")
    _push(appliance, layout.root, MULTI, f"{project}/quay.io/acme/multi:2")
    edge = definition(tmp_path, [NGINX, MULTI, REDIS], architectures=("amd64", "arm64"))
    out, missing = tmp_path / "b.tar.zst", tmp_path / "missing.txt"
    registry = ["--registry-insecure", "--registry-creds", appliance.creds]
    proc = build(out, *registry, "--from-registry", f"{appliance.host}/{project}", "--cluster-definition", edge,
                 "--missing-out", missing, "--json", check=False)
    refused(proc, out)
    assert findings(proc) == [(NGINX, "platform_missing"), (REDIS, "repository_missing")]
    assert [ln for ln in missing.read_text().splitlines() if not ln.startswith("#")] == \
        [f"{REDIS}   # repository_missing (image, edge 1.0.0)"]

    # The amd64-only definition is complete from the registry alone; the bundle holds exactly its two images.
    amd = definition(tmp_path, [NGINX, MULTI], name="amd")
    proc = build(out, *registry, "--from-registry", f"{appliance.host}/{project}", "--cluster-definition", amd,
                 "--missing-out", missing, "--json")
    outcome = json.loads(proc.stdout)
    assert outcome["written"] is True and outcome["complete"] is True and outcome["findings"] == []
    assert outcome["files"] == [str(out)]
    assert [ln for ln in missing.read_text().splitlines() if not ln.startswith("#")] == []
    doc = manifest_of(out)
    assert sorted(i["reference"] for i in doc["images"]) == [NGINX, MULTI] and "incomplete" not in doc

    # A reference pinned by tag and digest is pulled by its digest and recorded as pinned; it imports and is READY.
    digest = next(i["digest"] for i in doc["images"] if i["reference"] == NGINX)
    pinned = definition(tmp_path, [f"{NGINX}@{digest}"], name="pinned")
    build(out, *registry, "--from-registry", f"{appliance.host}/{project}", "--cluster-definition", pinned)
    assert [(i["reference"], i["digest"]) for i in manifest_of(out)["images"]] == [(f"{NGINX}@{digest}", digest)]
    site = tmp_path / "site"
    cargohold("bundle", "import", out, "--data-dir", site, "--allow-unsigned", "--quiet")
    assert json.loads(cargohold("clusterdef", "check", "pinned", "--data-dir", site, "--json").stdout)["ready"]


def test_missing_out_round_trip_through_a_registry(appliance: Appliance, tmp_path: Path,
                                                  layout: OciLayout) -> None:
    project = _private_project(appliance)
    app, tool = f"{appliance.host}/{project}/app:1", f"{appliance.host}/{project}/tool:1"
    _push(appliance, layout.root, NGINX, f"{project}/app:1")
    _push(appliance, layout.root, REDIS, f"{project}/tool:1")
    edge = definition(tmp_path, [app, tool])
    out, missing = tmp_path / "b.tar.zst", tmp_path / "missing.txt"
    registry = ["--registry-insecure", "--registry-creds", appliance.creds]
    proc = build(out, *registry, "--image", app, "--cluster-definition", edge, "--missing-out", missing, check=False)
    refused(proc, out)
    # Fed straight back as an images file, the build completes.
    proc = build(out, *registry, "--image", app, "--images-file", missing, "--cluster-definition", edge)
    assert "holds everything" in proc.stderr
    assert sorted(i["reference"] for i in manifest_of(out)["images"]) == sorted([app, tool])
