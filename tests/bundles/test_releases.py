"""The upgrade sequence end to end: import v1 and promote; import v2 (a tag moves: staged); diff; promote;
roll back; garbage collection with retention 1 and a running cluster.

Each test runs its own appliance (gunicorn on loopback) and drives it with
the `cargohold` CLI, the HTTP API (requests) and skopeo pulls. The running
cluster is a stand-in: no Kubernetes API server can run on these test
machines, so tests.bundles.fakekube serves ``GET /api/v1/pods`` in the
real API's JSON shape and the real kubernetes client reads it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from bundles import keys
from tests.appliance import Appliance
from tests.bundles.conftest import assert_pulled_identical, cli, skopeo_pull
from tests.bundles.fakekube import fake_kube, pod, write_kubeconfig
from tests.bundles.releases_util import API, Site, blob_sizes, import_release, release_api, trust
from tests.layouts import layout_closure
from tests.pgengine import metadata


def _pull(app: Appliance, ref: str, tmp: Path, name: str) -> str:
    return skopeo_pull(app, ref, tmp / name)


def _audit(app: Appliance) -> list[tuple[str, str]]:
    with metadata(app.data_dir) as conn:
        return conn.execute("SELECT username, resource FROM audit_logs WHERE resource_type = 'release' "
                            "ORDER BY id").fetchall()




def test_upgrade_sequence_stage_diff_promote_rollback_and_gc(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    a, b, d = site.refs["a"], site.refs["b"], site.refs["d"]

    # 1. import v1 and promote it: pulls get v1.
    r1 = import_release(app, site.v1)
    assert r1["pendingTags"] == []  # every tag is new: published at import
    promoted = release_api(app, "POST", f"/releases/{r1['id']}/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["release"]["state"] == "promoted" and promoted.json()["previous"] is None
    got = _pull(app, a, tmp_path, "p1-a")
    assert got == site.digests["a1"]
    assert assert_pulled_identical(tmp_path / "p1-a", site.v1_layout.root, got) == 4

    # 2. import v2, which moves a:1.0 and b:1.0: they stay on v1 until promotion; the new d:1.0 is published.
    r2 = import_release(app, site.v2)
    assert r2["pendingTags"] == sorted([f"{site.repo('a')}:1.0", f"{site.repo('b')}:1.0"])
    assert _pull(app, a, tmp_path, "p2-a") == site.digests["a1"]
    assert _pull(app, b, tmp_path, "p2-b") == site.digests["b1"]
    assert _pull(app, d, tmp_path, "p2-d") == site.digests["d"]
    shown = release_api(app, "GET", f"/releases/{r2['id']}").json()
    assert shown["state"] == "staged" and shown["keyId"] == keys.key_id(ec_key)
    assert {(i["repository"], i["pending"]) for i in shown["images"]} == {
        (site.repo("a"), True), (site.repo("b"), True), (site.repo("c"), False), (site.repo("d"), False)}
    # The definition of the same name stays v1's until promotion.
    live = requests.get(f"{app.url}{API}/cluster-definitions/{site.definition}", auth=app.admin, timeout=30)
    assert live.json()["version"] == "1.0.0"

    # The diff is exact: CLI and HTTP agree.
    diff = release_api(app, "GET", f"/releases/{r2['id']}/diff", params={"from": r1["id"]}).json()
    cli_diff = json.loads(cli("release", "diff", str(r1["id"]), str(r2["id"]), "--json",
                              "--data-dir", str(app.data_dir)).stdout)
    assert cli_diff["images"] == diff["images"] and cli_diff["bytes"] == diff["bytes"]
    assert [(i["repository"], i["tag"], i["digest"]) for i in diff["images"]["added"]] == \
        [(site.repo("d"), "1.0", site.digests["d"])]
    assert diff["images"]["removed"] == []
    assert [(i["repository"], i["from"], i["to"]) for i in diff["images"]["changed"]] == [
        (site.repo("a"), site.digests["a1"], site.digests["a2"]),
        (site.repo("b"), site.digests["b1"], site.digests["b2"])]
    assert diff["images"]["unchanged"] == 1
    v1_blobs, v2_blobs = blob_sizes(site.v1_layout), blob_sizes(site.v2_layout)
    new_blobs = {dg: s for dg, s in v2_blobs.items() if dg not in v1_blobs}
    definition_v2 = (tmp_path / "edge-v2.tgz").stat().st_size
    assert diff["bytes"]["new"] == sum(new_blobs.values()) + definition_v2
    assert diff["bytes"]["newBlobs"] == len(new_blobs) + 1
    [changed] = diff["clusterDefinitions"]["changed"]
    assert (changed["name"], changed["from"], changed["to"]) == (site.definition, "1.0.0", "2.0.0")
    assert changed["packs"]["changed"] == [{"profile": "infra", "pack": "base", "from": "1.0.0", "to": "1.1.0"}]
    assert [v["name"] for v in changed["variables"]["added"]] == ["ntp"]
    assert [(v["name"], v["from"], v["to"]) for v in changed["variables"]["changed"]] == [("region", "eu", "us")]

    # The check looks at the staged tags: v2's definition pins a:1.0 to A2, which the live tag does not serve.
    live_check = requests.post(f"{app.url}{API}/cluster-definitions/{site.definition}/checks", auth=app.admin,
                               timeout=30).json()
    assert live_check["ready"] is True  # still v1's definition
    staged_check = release_api(app, "POST", f"/releases/{r2['id']}/check").json()
    assert staged_check["ready"] is True, staged_check

    # 3. promote v2: pulls get v2.
    out = cli("release", "promote", str(r2["id"]), "--data-dir", str(app.data_dir), "--json")
    assert json.loads(out.stdout)["tagsMoved"] == 2
    got = _pull(app, a, tmp_path, "p3-a")
    assert got == site.digests["a2"]
    assert assert_pulled_identical(tmp_path / "p3-a", site.v2_layout.root, got) == 4
    assert _pull(app, b, tmp_path, "p3-b") == site.digests["b2"]
    assert release_api(app, "GET", f"/releases/{r1['id']}").json()["state"] == "superseded"
    live = requests.get(f"{app.url}{API}/cluster-definitions/{site.definition}", auth=app.admin, timeout=30)
    assert live.json()["version"] == "2.0.0"

    # 4. roll back: pulls get v1 again; d:1.0 (only v2 brought it) stays.
    back = release_api(app, "POST", "/releases/rollback")
    assert back.status_code == 200, back.text
    assert back.json()["release"]["id"] == r1["id"] and back.json()["rolledBack"]["state"] == "rolled-back"
    got = _pull(app, a, tmp_path, "p4-a")
    assert got == site.digests["a1"]
    assert assert_pulled_identical(tmp_path / "p4-a", site.v1_layout.root, got) == 4
    assert _pull(app, b, tmp_path, "p4-b") == site.digests["b1"]
    assert _pull(app, d, tmp_path, "p4-d") == site.digests["d"]
    audit = _audit(app)
    assert [r for _, r in audit] == [
        f"promote release {r1['id']} edge-site 1.0.0", f"promote release {r2['id']} edge-site 2.0.0",
        f"roll back release {r2['id']} edge-site 2.0.0 to release {r1['id']} edge-site 1.0.0"]
    assert audit[0][0] == "admin" and audit[1][0].endswith("(cli)")

    # GC after promoting v2 again with retention 1. Dry run, no cluster configured: exactly what only v1 used
    # (A1's and B1's manifests, configs and layers, and v1's definition archive) would go.
    assert release_api(app, "POST", f"/releases/{r2['id']}/promote").status_code == 200
    v1_only = {dg: s for dg, s in v1_blobs.items() if dg not in v2_blobs}
    v1_only[site.v1_definition_digest] = (tmp_path / "edge-v1.tgz").stat().st_size
    dry = json.loads(cli("gc", "--dry-run", "--retain", "1", "--grace", "0", "--json",
                         "--data-dir", str(app.data_dir)).stdout)
    assert {bl["digest"] for bl in dry["blobsRemoved"]} == set(v1_only)
    assert dry["bytesReclaimed"] == sum(v1_only.values())
    assert {(m["repository"], m["digest"]) for m in dry["manifestsRemoved"]} == {
        (site.repo("a"), site.digests["a1"]), (site.repo("b"), site.digests["b1"])}
    assert any("in-use protection is off" in w for w in dry["warnings"])
    assert _pull(app, site.by_digest("b", "b1"), tmp_path, "dry-b1") == site.digests["b1"]  # nothing changed

    # The real run, with a running cluster still on A1 (by imageID) and on c:1.0 (by tag through the appliance).
    a1_only = {dg for dg in v1_only if dg in layout_closure(site.v1_layout.root, site.digests["a1"])}
    pods = [pod("web", "default", [f"{app.host}/spectro-images/{a}"],
                [f"{app.host}/{site.repo('a')}@{site.digests['a1']}"]),
            pod("db", "prod", [f"{app.host}/{site.repo('c')}:1.0"], [])]
    with fake_kube(pods) as kube:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url)
        report = release_api(app, "GET", "/disk").json()
        assert {r["id"] for r in report["releases"]} == {r1["id"], r2["id"]}
        assert report["volume"]["free"] > 0
        gc = json.loads(cli("gc", "--retain", "1", "--grace", "0", "--kubeconfig", str(kubeconfig), "--json",
                            "--data-dir", str(app.data_dir)).stdout)
        assert kube.requests, "the kubernetes client never asked the API"
    assert gc["cluster"]["reachable"] is True and gc["cluster"]["pods"] == 2
    assert site.digests["a1"] in gc["cluster"]["protectedDigests"]
    assert site.digests["c"] in gc["cluster"]["protectedDigests"]
    assert {bl["digest"] for bl in gc["blobsRemoved"]} == set(v1_only) - a1_only
    assert gc["bytesReclaimed"] == sum(s for dg, s in v1_only.items() if dg not in a1_only)
    assert [(m["repository"], m["digest"]) for m in gc["manifestsRemoved"]] == [(site.repo("b"), site.digests["b1"])]
    got = _pull(app, site.by_digest("a", "a1"), tmp_path, "gc-a1")
    assert assert_pulled_identical(tmp_path / "gc-a1", site.v1_layout.root, got) == 4
    with pytest.raises(AssertionError, match=r"manifest unknown|MANIFEST_UNKNOWN|not known"):
        _pull(app, site.by_digest("b", "b1"), tmp_path, "gc-b1")
    for key in "abcd":
        got = _pull(app, site.refs[key], tmp_path, f"gc-{key}")
        assert assert_pulled_identical(tmp_path / f"gc-{key}", site.v2_layout.root, got) >= 3

    # Rolling back to v1 now would point b:1.0 at content that is gone: refused, nothing changes.
    refused = release_api(app, "POST", "/releases/rollback")
    assert refused.status_code == 409 and refused.json()["errors"][0]["code"] == "CONTENT_MISSING"
    assert _pull(app, b, tmp_path, "after-refused-b") == site.digests["b2"]


def test_promotion_is_refused_when_the_check_fails_unless_forced_with_a_reason(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    from bundles import format as fmt
    from tests.bundles import craft
    from tests.bundles.clusterdefs import build_archive, simple_definition

    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    r1 = import_release(app, site.v1)
    assert release_api(app, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    # A bundle whose definition needs an image nobody brought.
    missing = site.refs["a"].replace("rel-a", "rel-missing")
    archive = build_archive(tmp_path / "broken.tgz", simple_definition(site.definition, [site.refs["c"], missing]))
    member = "cluster-definitions/broken.tgz"
    bundle = craft.write_bundle(tmp_path / "broken.tar.zst", craft.standard_entries(
        site.v1_layout.root, ec_key, name="edge-site", version="1.0.1", extra=[(member, archive)],
        definitions=[fmt.FileEntry("edge", "1.0.1", member)]))
    r3 = import_release(app, bundle)

    refused = release_api(app, "POST", f"/releases/{r3['id']}/promote")
    assert refused.status_code == 409, refused.text
    err = refused.json()["errors"][0]
    assert err["code"] == "NOT_READY" and "1 image(s) not present" in err["message"]
    assert release_api(app, "GET", f"/releases/{r3['id']}").json()["state"] == "staged"
    proc = cli("release", "promote", str(r3["id"]), "--data-dir", str(app.data_dir), check=False)
    assert proc.returncode == 1 and "not ready, promotion refused" in proc.stderr

    no_reason = release_api(app, "POST", f"/releases/{r3['id']}/promote", json={"force": True})
    assert no_reason.status_code == 400 and "needs a reason" in no_reason.json()["errors"][0]["message"]
    bad = release_api(app, "POST", f"/releases/{r3['id']}/promote", json={"force": "yes"})
    assert bad.status_code == 400
    guest = requests.post(f"{app.url}{API}/releases/{r3['id']}/promote", timeout=30)
    assert guest.status_code == 401

    forced = release_api(app, "POST", f"/releases/{r3['id']}/promote",
                  json={"force": True, "reason": "hotfix window, image arrives tomorrow"})
    assert forced.status_code == 200, forced.text
    shown = release_api(app, "GET", f"/releases/{r3['id']}").json()
    assert shown["state"] == "promoted" and shown["forced"] is True
    assert shown["reason"] == "hotfix window, image arrives tomorrow"
    assert release_api(app, "GET", f"/releases/{r1['id']}").json()["state"] == "superseded"
    assert _audit(app)[-1][1] == (f"promote release {r3['id']} edge-site 1.0.1 "
                                  "(forced: hotfix window, image arrives tomorrow)")
    listing = cli("release", "list", "--data-dir", str(app.data_dir)).stdout
    assert "promoted (forced)" in listing and "superseded" in listing


def test_gc_refuses_when_the_configured_cluster_is_unreachable(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    import_release(app, site.v1)
    with fake_kube([]) as kube:
        url = kube.url
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)  # the server is gone: connection refused
    with metadata(app.data_dir) as db:
        before = db.execute("SELECT COUNT(*) FROM blobs").fetchone()
    proc = cli("gc", "--retain", "1", "--grace", "0", "--kubeconfig", str(kubeconfig),
               "--data-dir", str(app.data_dir), check=False)
    assert proc.returncode == 1
    assert "the cluster cannot be reached" in proc.stderr and "Nothing was collected" in proc.stderr
    assert "--ignore-cluster" in proc.stderr
    with metadata(app.data_dir) as db:
        after = db.execute("SELECT COUNT(*) FROM blobs").fetchone()
    assert before == after
    forced = cli("gc", "--retain", "1", "--grace", "0", "--kubeconfig", str(kubeconfig), "--ignore-cluster",
                 "--data-dir", str(app.data_dir), "--json")
    assert "WARNING: the cluster cannot be reached" in forced.stderr
    assert json.loads(forced.stdout)["cluster"]["reachable"] is False


def test_release_endpoints_need_credentials_and_name_bad_input(
        appliance_factory: Callable[..., Appliance], tmp_path: Path) -> None:
    app = appliance_factory()
    assert requests.get(f"{app.url}{API}/releases", timeout=30).status_code == 401
    assert release_api(app, "GET", "/releases").json() == {"releases": []}
    missing = release_api(app, "GET", "/releases/99")
    assert missing.status_code == 404 and missing.json()["errors"][0]["message"] == "no release 99"
    bad = release_api(app, "GET", "/releases/abc")
    assert bad.status_code == 400 and "not a release id" in bad.json()["errors"][0]["message"]
    nothing = release_api(app, "POST", "/releases/rollback")
    assert nothing.status_code == 409 and "nothing to roll back" in nothing.json()["errors"][0]["message"]
    gc = release_api(app, "POST", "/gc", json={"retain": 0})
    assert gc.status_code == 400 and "retain" in gc.json()["errors"][0]["message"]
    gc = release_api(app, "POST", "/gc", json={"grace": "soon"})
    assert gc.status_code == 400 and "soon" in gc.json()["errors"][0]["message"]
    gc = release_api(app, "POST", "/gc", data="[1]", headers={"Content-Type": "application/json"})
    assert gc.status_code == 400 and "JSON object" in gc.json()["errors"][0]["message"]
    gc = release_api(app, "POST", "/gc", data=b"\xff not json")
    assert gc.status_code == 400
    gc = release_api(app, "POST", "/gc", data=b" " * (80 << 10))
    assert gc.status_code == 413 and "at most 65536 bytes" in gc.json()["errors"][0]["message"]
    dry = release_api(app, "POST", "/gc", json={"dryRun": True})
    assert dry.status_code == 200 and dry.json()["dryRun"] is True
    disk = release_api(app, "GET", "/disk").json()
    assert disk["volume"]["free"] > 0 and disk["releases"] == []
    proc = subprocess.run(["df", "-B1", "--output=avail", str(app.data_dir)], capture_output=True, text=True)
    if proc.returncode == 0:
        avail = int(proc.stdout.split()[-1])
        assert abs(avail - disk["volume"]["free"]) < 64 << 20  # the same volume, read moments apart
