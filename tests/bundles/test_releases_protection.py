"""Released tags are protected: a promoted release's tags move only by promote or rollback.

The real appliance (gunicorn on loopback) is driven with skopeo (copy onto a
released tag, delete by digest), plain /v2/ requests as a robot, the Harbor
API's artifact, tag and repository deletes, the tag-override API and CLI,
and the release API. Each refusal must name the release and leave the tag
where it was.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests

from bundles import keys
from tests.appliance import Appliance
from tests.bundles.conftest import cli
from tests.bundles.releases_util import API, Site, import_release, release_api, trust
from tests.pgengine import metadata
from tests.registry.harborapi import Harbor, encode_repo


def _skopeo(app: Appliance, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp / "auth.json")}
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, env=env, timeout=180)


def _copy(app: Appliance, tmp: Path, src: str, dest: str) -> subprocess.CompletedProcess[str]:
    """skopeo copy between two repositories of the appliance, as the admin (a system administrator)."""
    return _skopeo(app, tmp, "copy", "--retry-times", "0", "--src-tls-verify=false", "--dest-tls-verify=false",
                   "--dest-creds", app.creds, f"docker://{app.host}/{src}", f"docker://{app.host}/{dest}")


def _tag_digest(app: Appliance, repo: str, tag: str) -> str | None:
    r = requests.head(f"{app.url}/v2/{repo}/manifests/{tag}", auth=app.admin, timeout=30,
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def _audit(app: Appliance, resource_type: str) -> list[tuple[str, str, str]]:
    with metadata(app.data_dir) as conn:
        return conn.execute("SELECT username, operation, resource FROM audit_logs WHERE resource_type = ? "
                            "ORDER BY id", [resource_type]).fetchall()


def test_a_promoted_release_tag_is_refused_to_pushes_and_deletes_and_moves_by_promote_or_override(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    repo_a, repo_b = site.repo("a"), site.repo("b")
    a1, b1 = site.digests["a1"], site.digests["b1"]
    r1 = import_release(app, site.v1)
    assert release_api(app, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    owner = f"promoted release {r1['id']}"

    # The hole: skopeo copy of another image onto a released tag replaced it silently. Now refused, naming
    # the release, and the tag still points at the release's digest.
    copied = _copy(app, tmp_path, f"{repo_b}:1.0", f"{repo_a}:1.0")
    assert copied.returncode != 0, copied.stdout
    assert owner in copied.stderr and f"{repo_a}:1.0" in copied.stderr, copied.stderr
    assert "promote or" in copied.stderr or "promoting or rolling back" in copied.stderr, copied.stderr
    assert _tag_digest(app, repo_a, "1.0") == a1

    # The same refusal in the wire format: 412 with the OCI code DENIED and the release in the detail.
    body = requests.get(f"{app.url}/v2/{repo_b}/manifests/1.0", auth=app.admin, timeout=30,
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    put = requests.put(f"{app.url}/v2/{repo_a}/manifests/1.0", data=body.content, auth=app.admin, timeout=30,
                       headers={"Content-Type": body.headers["Content-Type"]})
    assert put.status_code == 412, put.text
    error = put.json()["errors"][0]
    assert error["code"] == "DENIED" and owner in error["message"]
    assert error["detail"]["tag"] == "1.0" and error["detail"]["protectedBy"][0].startswith(f"{owner} (")

    # A robot with push and delete on the project is refused the same way (anyone is).
    robot = Harbor(app, app.admin).project_robot("spectro-images", ("pull", "push", "delete"))
    put = requests.put(f"{app.url}/v2/{repo_a}/manifests/1.0", data=body.content, auth=robot.auth, timeout=30,
                       headers={"Content-Type": body.headers["Content-Type"]})
    assert put.status_code == 412 and owner in put.text, put.text

    # Pushing the digest the tag already has is no change: it succeeds (clients re-push what they copy).
    same = _copy(app, tmp_path, f"{repo_a}@{a1}", f"{repo_a}:1.0")
    assert same.returncode == 0, same.stderr
    assert _tag_digest(app, repo_a, "1.0") == a1

    # A released tag must not vanish either: /v2/ tag and digest deletes, skopeo delete, Harbor's deletes.
    for method, path in (("DELETE", f"/v2/{repo_a}/manifests/1.0"), ("DELETE", f"/v2/{repo_a}/manifests/{a1}")):
        r = requests.request(method, f"{app.url}{path}", auth=app.admin, timeout=30)
        assert r.status_code == 412 and r.json()["errors"][0]["code"] == "DENIED", (path, r.text)
    deleted = _skopeo(app, tmp_path, "delete", "--tls-verify=false", "--creds", app.creds,
                      f"docker://{app.host}/{repo_a}@{a1}")
    assert deleted.returncode != 0 and owner in deleted.stderr, deleted.stderr
    harbor = Harbor(app, app.admin)
    project, inner = repo_a.split("/", 1)
    base = f"/projects/{project}/repositories/{encode_repo(inner)}"
    for path in (f"{base}/artifacts/{a1}", f"{base}/artifacts/1.0/tags/1.0", base):
        r = harbor("DELETE", path)
        assert r.status_code == 412, (path, r.text)
        assert r.json()["errors"][0]["code"] == "PRECONDITION" and owner in r.json()["errors"][0]["message"]
    listed = harbor("GET", f"{base}/artifacts/1.0/tags")
    assert [(t["name"], t["immutable"]) for t in listed.json()] == [("1.0", True)]
    assert _tag_digest(app, repo_a, "1.0") == a1

    # The override: a system administrator, with a reason, for one change of one tag; audited.
    grant = release_api(app, "POST", "/tag-overrides", auth=robot.auth,
                        json={"repository": repo_a, "tag": "1.0", "reason": "hotfix"})
    assert grant.status_code == 403, grant.text
    grant = release_api(app, "POST", "/tag-overrides", json={"repository": repo_a, "tag": "1.0"})
    assert grant.status_code == 400 and "reason" in grant.text, grant.text
    grant = release_api(app, "POST", "/tag-overrides", json={"repository": repo_b + "x", "tag": "1.0",
                                                             "reason": "x"})
    assert grant.status_code == 404, grant.text
    grant = release_api(app, "POST", "/tag-overrides",
                        json={"repository": repo_a, "tag": "1.0", "reason": "hotfix INC-42"})
    assert grant.status_code == 201, grant.text
    assert grant.json()["grantedBy"] == "admin" and grant.json()["usedAt"] is None
    moved = _copy(app, tmp_path, f"{repo_b}:1.0", f"{repo_a}:1.0")
    assert moved.returncode == 0, moved.stderr
    assert _tag_digest(app, repo_a, "1.0") == b1
    # One shot: the next move is refused again.
    again = _copy(app, tmp_path, f"{repo_a}@{a1}", f"{repo_a}:1.0")
    assert again.returncode != 0 and owner in again.stderr, again.stderr
    assert _tag_digest(app, repo_a, "1.0") == b1
    tag_audit = _audit(app, "tag")
    assert any(u == "admin" and op == "create" and "override" in res and "hotfix INC-42" in res
               for u, op, res in tag_audit), tag_audit
    assert any(u == "admin" and op == "update" and "override" in res and "used" in res and b1 in res
               for u, op, res in tag_audit), tag_audit
    listed_grants = release_api(app, "GET", "/tag-overrides").json()["overrides"]
    assert listed_grants[0]["usedAt"] is not None and listed_grants[0]["reason"] == "hotfix INC-42"

    # The CLI grants too (the operator on the box); a tag nothing protects needs no override.
    out = cli("tag", "override", f"{repo_a}:1.0", "--reason", "restore after hotfix", "--data-dir",
              str(app.data_dir))
    assert "one push or delete" in out.stdout
    assert _copy(app, tmp_path, f"{repo_a}@{a1}", f"{repo_a}:1.0").returncode == 0
    assert _tag_digest(app, repo_a, "1.0") == a1
    refused = cli("tag", "override", f"{repo_a}:nope", "--reason", "x", "--data-dir", str(app.data_dir),
                  check=False)
    assert refused.returncode != 0 and "does not exist" in refused.stderr and "Traceback" not in refused.stderr

    # Promote and rollback still move the protected tags, and ownership follows the promoted release.
    r2 = import_release(app, site.v2)
    assert release_api(app, "POST", f"/releases/{r2['id']}/promote").status_code == 200
    assert _tag_digest(app, repo_a, "1.0") == site.digests["a2"]
    refused_v2 = _copy(app, tmp_path, f"{repo_b}:1.0", f"{repo_a}:1.0")
    assert f"promoted release {r2['id']}" in refused_v2.stderr, refused_v2.stderr
    assert release_api(app, "POST", "/releases/rollback").status_code == 200
    assert _tag_digest(app, repo_a, "1.0") == a1
    # d:1.0 only the rolled-back v2 carried: no promoted release owns it, so it is an ordinary tag again.
    repo_d = site.repo("d")
    assert _copy(app, tmp_path, f"{repo_b}:1.0", f"{repo_d}:1.0").returncode == 0
    assert _tag_digest(app, repo_d, "1.0") == _tag_digest(app, repo_b, "1.0")
    assert "Traceback" not in app.log()


def test_override_requests_name_bad_input(appliance_factory: Callable[..., Appliance], site: Site,
                                          tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    r1 = import_release(app, site.v1)
    repo_a = site.repo("a")
    # Before promotion nothing owns the tag: an override is refused as unnecessary.
    r = release_api(app, "POST", "/tag-overrides", json={"repository": repo_a, "tag": "1.0", "reason": "x"})
    assert r.status_code == 409 and "not protected" in r.text, r.text
    assert release_api(app, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    for body, needle in (({"repository": repo_a, "tag": "1.0", "reason": "x", "ttlSeconds": 0}, "ttlSeconds"),
                         ({"repository": repo_a, "tag": "1.0", "reason": "x", "ttlSeconds": "9"}, "ttlSeconds"),
                         ({"repository": repo_a, "reason": "x"}, "tag are required"),
                         ({"repository": repo_a, "tag": "1.0", "reason": "   "}, "reason")):
        r = release_api(app, "POST", "/tag-overrides", json=body)
        assert r.status_code == 400 and needle in r.json()["errors"][0]["message"], (body, r.text)
    r = requests.post(f"{app.url}{API}/tag-overrides", data=b"[", auth=app.admin, timeout=30)
    assert r.status_code == 400, r.text
    r = requests.post(f"{app.url}{API}/tag-overrides", json={"repository": repo_a, "tag": "1.0", "reason": "x"},
                      timeout=30)
    assert r.status_code == 401, r.text
