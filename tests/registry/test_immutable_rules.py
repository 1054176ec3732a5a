"""Harbor's immutable tag rules (/api/v2.0/projects/{p}/immutabletagrules), enforced on real pushes and deletes.

Rules are written through the Harbor API on the real appliance and checked
with skopeo (a matching push refused with a message naming the rule, a
non-matching one accepted) and with /v2/ and Harbor deletes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.appliance import Appliance
from tests.pgengine import env_for
from tests.registry.conftest import require
from tests.registry.harborapi import Harbor, encode_repo
from tests.registry.v2client import V2

MEMBER_PASSWORD = "Member-pass-1"


def _rule(repo: str, tag: str, repo_decoration: str = "repoMatches", tag_decoration: str = "matches",
          **extra: Any) -> dict[str, Any]:
    return {"action": "immutable", "template": "immutable_template", "disabled": False, "priority": 0,
            "tag_selectors": [{"kind": "doublestar", "decoration": tag_decoration, "pattern": tag}],
            "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": repo_decoration,
                                                "pattern": repo}]}, **extra}


def _copy(app: Appliance, tmp: Path, src: str, dest: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp / "auth.json")}
    return subprocess.run(["skopeo", "copy", "--retry-times", "0", "--src-tls-verify=false",
                           "--dest-tls-verify=false", "--src-creds", app.creds, "--dest-creds", app.creds,
                           f"docker://{app.host}/{src}", f"docker://{app.host}/{dest}"],
                          capture_output=True, text=True, env=env, timeout=180)


def _digest(v2: V2, repo: str, tag: str) -> str | None:
    r = v2.request("HEAD", f"/v2/{repo}/manifests/{tag}",
                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def test_matching_tags_are_immutable_to_skopeo_and_deletes_and_rules_can_be_disabled_and_removed(
        appliance: Appliance, tmp_path: Path) -> None:
    require("skopeo")
    admin, v2 = Harbor(appliance, appliance.admin), V2(appliance)
    project = admin.create_project(public=False)
    app_repo, other_repo = f"{project}/docker.io/team/app", f"{project}/docker.io/team/other"
    v1 = v2.push_image(app_repo, "1.0", seed=b"v1").digest
    v2.push_image(app_repo, "dev", seed=b"dev")
    v2.push_image(other_repo, "1.0", seed=b"other")
    fresh = v2.push_image(f"{project}/src", "x", seed=b"fresh").digest  # what the copies try to put in place

    # Rules of repositories docker.io/** (relative to the project) and tags 1.* or 2.*.
    rules = f"/projects/{project}/immutabletagrules"
    created = admin("POST", rules, json=_rule("docker.io/team/{app,web}", "{1.*,2.*}"))
    assert created.status_code == 201, created.text
    rule_path = created.headers["Location"].removeprefix("/api/v2.0")
    listed = admin("GET", rules)
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "1"
    rule = listed.json()[0]
    assert rule["action"] == "immutable" and rule["template"] == "immutable_template" and not rule["disabled"]
    assert rule["tag_selectors"] == [{"kind": "doublestar", "decoration": "matches", "pattern": "{1.*,2.*}"}]
    assert rule["scope_selectors"]["repository"][0]["pattern"] == "docker.io/team/{app,web}"
    assert rule_path == f"/projects/{admin('GET', f'/projects/{project}').json()['project_id']}" \
                        f"/immutabletagrules/{rule['id']}"

    # A matching push is refused, naming the rule; the tag stays.
    refused = _copy(appliance, tmp_path, f"{project}/src:x", f"{app_repo}:1.0")
    assert refused.returncode != 0
    assert f"{app_repo}:1.0" in refused.stderr and f"immutable tag rule {rule['id']}" in refused.stderr, \
        refused.stderr
    assert _digest(v2, app_repo, "1.0") == v1
    # Non-matching tag, non-matching repository, and a matching tag's first push all go through.
    for dest in (f"{app_repo}:dev", f"{other_repo}:1.0", f"{app_repo}:2.5"):
        done = _copy(appliance, tmp_path, f"{project}/src:x", dest)
        assert done.returncode == 0, (dest, done.stderr)
        assert _digest(v2, *dest.rsplit(":", 1)) == fresh
    # ... and from then on that one is immutable too; re-pushing its own digest is no change and succeeds.
    assert _copy(appliance, tmp_path, f"{app_repo}@{v1}", f"{app_repo}:2.5").returncode != 0
    assert _copy(appliance, tmp_path, f"{project}/src:x", f"{app_repo}:2.5").returncode == 0

    # Deletes of an immutable tag, or of what it points at, are refused (412) on both APIs.
    for path in (f"/v2/{app_repo}/manifests/1.0", f"/v2/{app_repo}/manifests/{v1}"):
        r = v2.request("DELETE", path)
        assert r.status_code == 412 and r.json()["errors"][0]["code"] == "DENIED", (path, r.text)
    base = f"/projects/{project}/repositories/{encode_repo(app_repo.split('/', 1)[1])}"
    for path in (f"{base}/artifacts/1.0/tags/1.0", f"{base}/artifacts/{v1}", base):
        r = admin("DELETE", path)
        assert r.status_code == 412 and r.json()["errors"][0]["code"] == "PRECONDITION", (path, r.text)
        assert "immutable tag rule" in r.json()["errors"][0]["message"]
    # A tag the rule would select but that does not exist is simply unknown.
    assert v2.request("DELETE", f"/v2/{app_repo}/manifests/1.9").status_code == 404
    tags = admin("GET", f"{base}/artifacts/1.0/tags").json()
    assert [(t["name"], t["immutable"]) for t in tags] == [("1.0", True)]
    assert _digest(v2, app_repo, "1.0") == v1

    # Disabled, the rule protects nothing; enabled again, it does; deleted, it is gone.
    assert admin("PUT", rule_path, json={"disabled": True}).status_code == 200
    assert admin("GET", rules).json()[0]["disabled"] is True
    assert admin("GET", rules).json()[0]["tag_selectors"][0]["pattern"] == "{1.*,2.*}"  # the rest is kept
    assert _copy(appliance, tmp_path, f"{project}/src:x", f"{app_repo}:1.0").returncode == 0
    assert admin("PUT", rule_path, json={"disabled": False}).status_code == 200
    assert _copy(appliance, tmp_path, f"{app_repo}@{v1}", f"{app_repo}:1.0").returncode != 0
    assert admin("DELETE", rule_path).status_code == 200
    assert admin("GET", rules).json() == []
    assert _copy(appliance, tmp_path, f"{app_repo}@{v1}", f"{app_repo}:1.0").returncode == 0
    assert v2.request("DELETE", f"/v2/{app_repo}/manifests/dev").status_code == 202
    # The writes are audited.
    # (The appliance is shared with other tests, which may write rules of their own projects.)
    audit = admin("GET", "/audit-logs", params={"q": "resource_type=immutable-rule", "page_size": 100}).json()
    ours = [e["operation"] for e in audit if e["resource"].startswith(f"{project}: ")]
    assert ours == ["delete", "update", "update", "create"]


def test_excludes_decorations_and_double_star(appliance: Appliance) -> None:
    admin, v2 = Harbor(appliance, appliance.admin), V2(appliance)
    project = admin.create_project(public=False)
    # Every repository except under scratch/, every tag except latest.
    assert admin("POST", f"/projects/{project}/immutabletagrules",
                 json=_rule("scratch/**", "latest", "repoExcludes", "excludes")).status_code == 201
    for repo in ("a/b/c", "scratch/x/y"):
        v2.push_image(f"{project}/{repo}", "v1", seed=b"1")
        v2.push_image(f"{project}/{repo}", "latest", seed=b"1")
    body = v2.push_image(f"{project}/a/b/c", seed=b"2")
    # a/b/c:v1 is immutable; a/b/c:latest is excluded, and so is everything under scratch/.
    v2.put_manifest(f"{project}/a/b/c", "v1", body.body, body.media_type, expect=412)
    v2.put_manifest(f"{project}/a/b/c", "latest", body.body, body.media_type, expect=201)
    other = v2.push_image(f"{project}/scratch/x/y", seed=b"2")
    v2.put_manifest(f"{project}/scratch/x/y", "v1", other.body, other.media_type, expect=201)


@pytest.mark.parametrize(("body", "status", "needle"), [
    (_rule("**", "{a"), 400, "closing"),
    (_rule("**", "a}"), 400, "opening"),
    (_rule("**", "{a,{b}}"), 400, "nested"),
    (_rule("**", ""), 400, "non-empty"),
    (_rule("**", "x" * 300), 400, "at most"),
    (_rule("**", "1.*", tag_decoration="equals"), 400, "decoration"),
    (_rule("**", "1.*", repo_decoration="matches"), 400, "decoration"),
    (_rule("**", "1.*", action="retain"), 400, "action"),
    (_rule("**", "1.*", disabled="no"), 400, "disabled"),
    (_rule("**", "1.*", priority=-1), 400, "priority"),
    ({**_rule("**", "1.*"), "tag_selectors": []}, 400, "exactly one"),
    ({**_rule("**", "1.*"), "scope_selectors": {"namespace": []}}, 400, "scope_selectors"),
    ({**_rule("**", "1.*"), "tag_selectors": [{"kind": "regex", "decoration": "matches", "pattern": "x"}]}, 400,
     "doublestar"),
])
def test_bad_rules_are_refused_naming_the_problem(appliance: Appliance, body: dict[str, Any], status: int,
                                                  needle: str) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    r = admin("POST", f"/projects/{project}/immutabletagrules", json=body)
    assert r.status_code == status and needle in r.json()["errors"][0]["message"], r.text
    assert admin("GET", f"/projects/{project}/immutabletagrules").json() == []


def test_rules_need_a_project_administrator_and_name_conflicts(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    rules = f"/projects/{project}/immutabletagrules"
    user = f"dev{uuid.uuid4().hex[:6]}"
    subprocess.run([sys.executable, "-m", "web.cli", "admin", "add-user", "--data-dir", str(appliance.data_dir), user],
                    env={**os.environ, **env_for(["--data-dir", appliance.data_dir]),
                         "CARGOHOLD_NEW_PASSWORD": MEMBER_PASSWORD},
                   check=True, capture_output=True, cwd=Path(__file__).resolve().parents[2])
    assert admin("POST", f"/projects/{project}/members",
                 json={"role_id": 2, "member_user": {"username": user}}).status_code == 201
    developer = admin.as_((user, MEMBER_PASSWORD))
    robot = admin.project_robot(project, ("pull", "push", "delete"))
    for who, status in ((developer, 403), (admin.as_(robot.auth), 403), (admin.as_(None), 401)):
        r = who("POST", rules, json=_rule("**", "**"))
        assert r.status_code == status, r.text
    assert developer("GET", rules).status_code == 200  # members may read the rules
    created = admin("POST", rules, json=_rule("**", "**"))
    assert created.status_code == 201
    rule_path = created.headers["Location"].removeprefix("/api/v2.0")
    assert developer("PUT", rule_path, json={"disabled": True}).status_code == 403
    assert developer("DELETE", rule_path).status_code == 403
    again = admin("POST", rules, json=_rule("**", "**"))
    assert again.status_code == 409 and "same selectors" in again.text
    assert admin("PUT", f"{rules}/999999", json={"disabled": True}).status_code == 404
    assert admin("DELETE", f"{rules}/abc").status_code == 404
    assert admin("PUT", rule_path, json={"tag_selectors": "x"}).status_code == 400
    # A project with rules can still be deleted once empty; its rules go with it.
    assert admin("DELETE", f"/projects/{project}").status_code == 200


def test_content_an_immutable_tag_needs_cannot_be_deleted(appliance: Appliance) -> None:
    admin, v2 = Harbor(appliance, appliance.admin), V2(appliance)
    project = admin.create_project(public=False)
    repo = f"{project}/multi"
    amd, arm = v2.push_image(repo, seed=b"amd"), v2.push_image(repo, seed=b"arm", platform="linux/arm64")
    index = v2.push_index(repo, [(amd, "linux/amd64"), (arm, "linux/arm64")], tag="1.0")
    loose = v2.push_image(repo, "scratch", seed=b"loose")
    assert admin("POST", f"/projects/{project}/immutabletagrules", json=_rule("**", "1.*")).status_code == 201
    # A child of the immutable index, and a layer of that child, are what the tag needs.
    r = v2.request("DELETE", f"/v2/{repo}/manifests/{arm.digest}")
    assert r.status_code == 412 and "1.0" in r.json()["errors"][0]["message"], r.text
    layer = json.loads(arm.body)["layers"][0]["digest"]
    r = v2.request("DELETE", f"/v2/{repo}/blobs/{layer}")
    assert r.status_code == 412, r.text
    assert v2.request("GET", f"/v2/{repo}/blobs/{layer}").status_code == 200
    r = v2.request("HEAD", f"/v2/{repo}/manifests/1.0", headers={"Accept": index.media_type})
    assert r.headers["Docker-Content-Digest"] == index.digest
    # What no immutable tag needs still goes.
    assert v2.request("DELETE", f"/v2/{repo}/manifests/{loose.digest}").status_code == 202
