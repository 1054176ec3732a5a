"""Discarding a release that will not be promoted: its content leaves the retention, live tags stay.

One appliance (gunicorn on loopback) driven with the HTTP API (requests),
the `cargohold` CLI and skopeo pulls over the v1/v2 site of
tests.bundles.releases_util: v2 moves a:1.0 and b:1.0 (pending while
staged) and brings the new tag d:1.0 (published at import).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bundles import keys
from tests.appliance import Appliance
from tests.bundles.conftest import cli, skopeo_pull
from tests.bundles.releases_util import Site, blob_sizes, import_release, release_api, trust
from tests.layouts import layout_closure
from tests.pgengine import metadata
from tests.registry.harborapi import Harbor


def _snapshot(app: Appliance) -> tuple[list[Any], ...]:
    """Everything a refused discard must leave as it was: releases, their rows, tags, blobs."""
    with metadata(app.data_dir) as conn:
        return tuple(conn.execute(sql).fetchall() for sql in (
            "SELECT id, state, promoted_at, previous_id FROM releases ORDER BY id",
            "SELECT release_id, reference, digest, tag FROM release_images ORDER BY 1, 2",
            "SELECT release_id, path FROM release_files ORDER BY 1, 2",
            "SELECT release_id, name FROM release_definitions ORDER BY 1, 2",
            "SELECT repository_id, name, digest FROM tags ORDER BY 1, 2",
            "SELECT digest FROM blobs ORDER BY 1"))


def _release_audit(app: Appliance) -> list[tuple[str, str, str]]:
    with metadata(app.data_dir) as conn:
        return conn.execute("SELECT username, operation, resource FROM audit_logs WHERE resource_type = 'release' "
                            "ORDER BY id").fetchall()


def _dry_gc(app: Appliance) -> dict[str, Any]:
    r = release_api(app, "POST", "/gc", json={"dryRun": True, "retain": 1, "grace": "0"})
    assert r.status_code == 200, r.text
    return dict(r.json())




def test_discard_a_staged_release_frees_its_content_and_refuses_the_promoted_and_rollback_target(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    r1 = import_release(app, site.v1)
    assert release_api(app, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    r2 = import_release(app, site.v2)
    assert r2["pendingTags"] == sorted([f"{site.repo('a')}:1.0", f"{site.repo('b')}:1.0"])

    # While v2 is staged the retention keeps it: nothing of v2 is reclaimable.
    v1_blobs, v2_blobs = blob_sizes(site.v1_layout), blob_sizes(site.v2_layout)
    before = _dry_gc(app)
    assert before["blobsRemoved"] == [] and before["manifestsRemoved"] == []

    # The promoted release is refused, with the reason, and nothing changes.
    snap = _snapshot(app)
    refused = release_api(app, "DELETE", f"/releases/{r1['id']}")
    assert refused.status_code == 409, refused.text
    err = refused.json()["errors"][0]
    assert err["code"] == "PROMOTED" and "is promoted and cannot be discarded" in err["message"]
    assert _snapshot(app) == snap

    # A project robot (pull/push/delete in the project) may not discard; neither may an anonymous caller.
    robot = Harbor(app, app.admin).project_robot("spectro-images", ("pull", "push", "delete"))
    denied = release_api(app, "DELETE", f"/releases/{r2['id']}", auth=robot.auth)
    assert denied.status_code == 403 and "may not discard releases" in denied.json()["errors"][0]["message"]
    assert release_api(app, "DELETE", f"/releases/{r2['id']}", auth=None).status_code == 401
    bad = release_api(app, "DELETE", f"/releases/{r2['id']}", json={"reason": 7})
    assert bad.status_code == 400 and "reason must be a string" in bad.json()["errors"][0]["message"]
    assert release_api(app, "DELETE", "/releases/99").status_code == 404
    assert _snapshot(app) == snap

    # Discard staged v2: its rows go, the row stays as "discarded", the live tags still serve v1.
    out = release_api(app, "DELETE", f"/releases/{r2['id']}", json={"reason": "superseded by 2.0.1 upstream"})
    assert out.status_code == 200, out.text
    assert out.json()["release"]["state"] == "discarded" and out.json()["was"] == "staged"
    assert out.json()["imagesDropped"] == 4
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a") == site.digests["a1"]
    assert skopeo_pull(app, site.refs["b"], tmp_path / "b") == site.digests["b1"]
    assert skopeo_pull(app, site.refs["d"], tmp_path / "d") == site.digests["d"]  # published at import: stays
    listed = {r["id"]: r["state"] for r in release_api(app, "GET", "/releases").json()["releases"]}
    assert listed == {r1["id"]: "promoted", r2["id"]: "discarded"}
    cli_list = cli("release", "list", "--data-dir", str(app.data_dir)).stdout
    assert "discarded" in cli_list
    shown = release_api(app, "GET", f"/releases/{r2['id']}").json()
    assert shown["images"] == [] and shown["files"] == [] and shown["clusterDefinitions"] == []
    again = release_api(app, "DELETE", f"/releases/{r2['id']}")
    assert again.status_code == 409 and "already discarded" in again.json()["errors"][0]["message"]
    promote = release_api(app, "POST", f"/releases/{r2['id']}/promote")
    assert promote.status_code == 409 and "was discarded" in promote.json()["errors"][0]["message"]

    # GC with retention 1 now lists exactly v2's content that no tag keeps: A2, B2 and their own blobs, and
    # v2's definition archive. d:1.0's content stays (tagged), C is v1's too.
    d_closure = layout_closure(site.v2_layout.root, site.digests["d"])
    v2_only = {dg: s for dg, s in v2_blobs.items() if dg not in v1_blobs and dg not in d_closure}
    v2_only[site.v2_definition_digest] = (tmp_path / "edge-v2.tgz").stat().st_size
    dry = _dry_gc(app)
    assert {b["digest"] for b in dry["blobsRemoved"]} == set(v2_only)
    assert dry["bytesReclaimed"] == sum(v2_only.values())
    assert {(m["repository"], m["digest"]) for m in dry["manifestsRemoved"]} == {
        (site.repo("a"), site.digests["a2"]), (site.repo("b"), site.digests["b2"])}
    assert dry["keptReleases"] == [r1["id"]]
    audit = _release_audit(app)
    assert audit[-1] == ("admin", "delete", f"discard release {r2['id']} edge-site 2.0.0 (was staged): "
                                            "superseded by 2.0.1 upstream")

    # Importing the same bundle again stages it again; once promoted, v1 is the rollback target: refused.
    r2b = import_release(app, site.v2)
    assert r2b["id"] == r2["id"]
    assert release_api(app, "GET", f"/releases/{r2['id']}").json()["state"] == "staged"
    cli("release", "promote", str(r2["id"]), "--data-dir", str(app.data_dir))
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a2") == site.digests["a2"]
    snap = _snapshot(app)
    proc = cli("release", "discard", str(r1["id"]), "--data-dir", str(app.data_dir), check=False)
    assert proc.returncode == 1 and f"rollback of release {r2['id']} would restore" in proc.stderr
    target = release_api(app, "DELETE", f"/releases/{r1['id']}")
    assert target.status_code == 409 and target.json()["errors"][0]["code"] == "ROLLBACK_TARGET"
    assert _snapshot(app) == snap
    assert release_api(app, "POST", "/releases/rollback").status_code == 200  # still possible: v1 was kept
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a3") == site.digests["a1"]


def test_a_superseded_release_further_back_can_be_discarded_and_is_then_never_a_rollback_target(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    from tests.bundles import craft

    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    r1 = import_release(app, site.v1)
    assert release_api(app, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    r2 = import_release(app, site.v2)
    assert release_api(app, "POST", f"/releases/{r2['id']}/promote").status_code == 200
    # v3 brings v1's images back under a new version (no definitions): promoting it makes v2 the rollback target.
    v3 = craft.write_bundle(tmp_path / "v3.tar.zst", craft.standard_entries(
        site.v1_layout.root, ec_key, name="edge-site", version="1.0.2"))
    r3 = import_release(app, v3)
    assert release_api(app, "POST", f"/releases/{r3['id']}/promote").status_code == 200
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a3") == site.digests["a1"]

    refused = release_api(app, "DELETE", f"/releases/{r2['id']}")
    assert refused.status_code == 409 and refused.json()["errors"][0]["code"] == "ROLLBACK_TARGET"
    out = cli("release", "discard", str(r1["id"]), "--reason", "too old", "--data-dir", str(app.data_dir))
    assert f"discarded release {r1['id']} (edge-site 1.0.0, was superseded)" in out.stdout
    assert _release_audit(app)[-1][1:] == ("delete", f"discard release {r1['id']} edge-site 1.0.0 (was superseded): "
                                                     "too old")

    # Rolling back once returns to v2; v2 was promoted after v1, which is gone: a second rollback is refused.
    assert release_api(app, "POST", "/releases/rollback").status_code == 200
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a2") == site.digests["a2"]
    snap = _snapshot(app)
    again = release_api(app, "POST", "/releases/rollback")
    assert again.status_code == 409, again.text
    assert again.json()["errors"][0]["code"] == "DISCARDED" and "was discarded" in again.json()["errors"][0]["message"]
    assert _snapshot(app) == snap
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a2b") == site.digests["a2"]
