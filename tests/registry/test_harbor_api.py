"""The Harbor-compatible /api/v2.0 on the real appliance: shapes, conventions and the robot lifecycle."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.appliance import Appliance
from tests.registry.harborapi import API, Harbor, encode_repo, errors, token_claims
from tests.registry.v2client import OCI_INDEX, V2, sha256


@pytest.fixture
def admin(appliance: Appliance) -> Harbor:
    return Harbor(appliance, appliance.admin)


@pytest.fixture
def anon(appliance: Appliance) -> Harbor:
    return Harbor(appliance)


# -- system -----------------------------------------------------------------------------


def test_ping_health_systeminfo(admin: Harbor, anon: Harbor, appliance: Appliance) -> None:
    r = anon("GET", "/ping")
    assert r.status_code == 200 and r.text == "Pong"
    health = anon("GET", "/health").json()
    assert health["status"] == "healthy"
    assert {c["name"] for c in health["components"]} == {"core", "database", "registry", "disk"}
    info = anon("GET", "/systeminfo").json()
    assert info["auth_mode"] == "db_auth" and info["registry_url"] == appliance.host
    assert info["project_creation_restriction"] == "adminonly"
    volumes = admin("GET", "/systeminfo/volumes").json()["storage"][0]
    assert volumes["total"] >= volumes["free"] > 0
    assert anon("GET", "/systeminfo/volumes").status_code == 401


def test_current_user(admin: Harbor, anon: Harbor) -> None:
    me = admin("GET", "/users/current").json()
    assert me["username"] == "admin" and me["sysadmin_flag"] is True and isinstance(me["user_id"], int)
    assert "password" not in str(me).lower()
    r = anon("GET", "/users/current")
    assert r.status_code == 401 and errors(r) == ["UNAUTHORIZED"]


def test_unknown_endpoints_and_methods_answer_in_harbors_error_shape(admin: Harbor) -> None:
    r = admin("GET", "/no/such/thing")
    assert r.status_code == 404 and errors(r) == ["NOT_FOUND"]
    r = admin("PATCH", "/projects")
    assert r.status_code == 405 and errors(r) == ["METHOD_NOT_ALLOWED"]
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    r = admin("GET", "/projects", params={"page_size": "lots"})
    assert r.status_code == 400 and "page_size" in r.json()["errors"][0]["message"]
    r = admin("POST", "/projects", data="not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and errors(r) == ["BAD_REQUEST"]


# -- projects ---------------------------------------------------------------------------------


def test_default_project_exists_and_is_public(anon: Harbor, appliance: Appliance) -> None:
    r = anon("GET", "/projects/spectro-images", headers={"X-Is-Resource-Name": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["public"] == "true"
    assert anon("HEAD", "/projects", params={"project_name": "spectro-images"}).status_code == 200


def test_project_create_get_head_update_delete(admin: Harbor, anon: Harbor) -> None:
    name = f"proj-{uuid.uuid4().hex[:8]}"
    r = admin("POST", "/projects", json={"project_name": name, "metadata": {"public": "false"}})
    assert r.status_code == 201, r.text
    location = r.headers["Location"]
    assert location.startswith(f"{API}/projects/")
    project_id = int(location.rsplit("/", 1)[1])
    by_id = admin("GET", f"/projects/{project_id}").json()
    by_name = admin("GET", f"/projects/{name}", headers={"X-Is-Resource-Name": "true"}).json()
    assert by_id["name"] == by_name["name"] == name and by_id["project_id"] == project_id
    assert by_id["metadata"] == {"public": "false"}
    assert admin("HEAD", "/projects", params={"project_name": name}).status_code == 200
    assert admin("HEAD", "/projects", params={"project_name": name + "x"}).status_code == 404
    # private: anonymous sees neither it nor its details
    assert anon("GET", f"/projects/{name}").status_code == 401
    assert name not in [p["name"] for p in anon("GET", "/projects", params={"page_size": 100}).json()]
    dup = admin("POST", "/projects", json={"project_name": name})
    assert dup.status_code == 409 and errors(dup) == ["CONFLICT"]
    bad = admin("POST", "/projects", json={"project_name": "Bad Name!"})
    assert bad.status_code == 400 and "invalid project name" in bad.json()["errors"][0]["message"]
    assert admin("PUT", f"/projects/{name}", json={"metadata": {"public": "true"}}).status_code == 200
    assert anon("GET", f"/projects/{name}").json()["metadata"]["public"] == "true"
    summary = admin("GET", f"/projects/{name}/summary").json()
    assert summary["repo_count"] == 0 and summary["project_admin_count"] == 1
    assert admin("DELETE", f"/projects/{name}").status_code == 200
    assert admin("GET", f"/projects/{name}").status_code == 404


def test_project_with_repositories_and_default_project_cannot_be_deleted(admin: Harbor, appliance: Appliance) -> None:
    name = admin.create_project()
    V2(appliance).push_image(f"{name}/app", "1")
    r = admin("DELETE", f"/projects/{name}")
    assert r.status_code == 412 and errors(r) == ["PRECONDITION"]
    r = admin("DELETE", "/projects/spectro-images")
    assert r.status_code == 412
    assert admin("GET", "/projects/spectro-images").status_code == 200


def test_project_list_paging_and_q(admin: Harbor) -> None:
    tag = uuid.uuid4().hex[:6]
    names = sorted(admin.create_project(f"page-{tag}-{i}") for i in range(3))
    r = admin("GET", "/projects", params={"q": f"name=~page-{tag}", "page_size": 2})
    assert r.status_code == 200
    assert r.headers["X-Total-Count"] == "3"
    assert [p["name"] for p in r.json()] == names[:2]
    assert 'rel="next"' in r.headers["Link"] and "page=2" in r.headers["Link"]
    nxt = admin("GET", r.headers["Link"].split(">")[0].lstrip("<"))
    assert [p["name"] for p in nxt.json()] == names[2:]
    assert 'rel="prev"' in nxt.headers["Link"] and 'rel="next"' not in nxt.headers["Link"]
    exact = admin("GET", "/projects", params={"q": f"name={names[1]}"})
    assert [p["name"] for p in exact.json()] == [names[1]]
    assert admin("GET", "/projects", params={"q": "owner=me"}).status_code == 400


# -- repositories and artifacts ---------------------------------------------------------------


@pytest.fixture
def pushed(admin: Harbor, appliance: Appliance) -> tuple[str, str, str]:
    """(project, repository inside it, digest) of an image tagged 1 in a fresh public project."""
    project = admin.create_project(public=True)
    inner = f"team/app{uuid.uuid4().hex[:6]}"
    image = V2(appliance).push_image(f"{project}/{inner}", "1")
    return project, inner, image.digest


def test_repositories_list_get_update_delete(admin: Harbor, anon: Harbor, pushed: tuple[str, str, str],
                                             appliance: Appliance) -> None:
    project, inner, _ = pushed
    listed = admin("GET", f"/projects/{project}/repositories")
    assert listed.headers["X-Total-Count"] == "1"
    repo = listed.json()[0]
    assert repo["name"] == f"{project}/{inner}" and repo["artifact_count"] == 1
    everywhere = admin("GET", "/repositories", params={"q": f"name=~{project}", "page_size": 100}).json()
    assert [r["name"] for r in everywhere] == [f"{project}/{inner}"]
    path = f"/projects/{project}/repositories/{encode_repo(inner)}"
    assert admin("GET", path).json()["id"] == repo["id"]
    assert admin("PUT", path, json={"description": "the app"}).status_code == 200
    assert anon("GET", path).json()["description"] == "the app"
    assert anon("PUT", path, json={"description": "vandal"}).status_code == 401
    assert admin("DELETE", path).status_code == 200
    assert admin("GET", path).status_code == 404
    assert requests.get(f"{appliance.url}/v2/{project}/{inner}/manifests/1", timeout=30).status_code == 404


def test_artifacts_tags_and_accessories(admin: Harbor, pushed: tuple[str, str, str], appliance: Appliance) -> None:
    project, inner, digest = pushed
    base = f"/projects/{project}/repositories/{encode_repo(inner)}/artifacts"
    listed = admin("GET", base, params={"with_tag": "true"})
    assert listed.headers["X-Total-Count"] == "1"
    art = listed.json()[0]
    assert art["digest"] == digest and art["type"] == "IMAGE" and [t["name"] for t in art["tags"]] == ["1"]
    assert admin("GET", f"{base}/1").json()["digest"] == digest
    assert admin("GET", f"{base}/{digest}").json()["tags"][0]["name"] == "1"
    assert admin("GET", f"{base}/nope").status_code == 404
    assert admin("GET", f"{base}/sha256:{'0' * 64}").status_code == 404
    assert admin("GET", f"{base}/sha256:zz").status_code == 400
    # tags
    r = admin("POST", f"{base}/{digest}/tags", json={"name": "stable"})
    assert r.status_code == 201 and r.headers["Location"].endswith("/tags/stable")
    assert admin("POST", f"{base}/{digest}/tags", json={"name": "stable"}).status_code == 409
    assert admin("POST", f"{base}/{digest}/tags", json={"name": "-bad"}).status_code == 400
    assert sorted(t["name"] for t in admin("GET", f"{base}/{digest}/tags").json()) == ["1", "stable"]
    assert requests.get(f"{appliance.url}/v2/{project}/{inner}/manifests/stable", timeout=30).status_code == 200
    assert admin("DELETE", f"{base}/{digest}/tags/stable").status_code == 200
    assert admin("DELETE", f"{base}/{digest}/tags/stable").status_code == 404
    # an OCI referrer is listed as an accessory, not as an artifact
    v2 = V2(appliance)
    referrer = v2.push_image(f"{project}/{inner}", None, seed=b"sig", extra={
        "artifactType": "application/vnd.example.signature",
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                    "size": len(requests.get(f"{appliance.url}/v2/{project}/{inner}/manifests/1", timeout=30,
                                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
                                .content)}})
    acc = admin("GET", f"{base}/1/accessories").json()
    assert [a["digest"] for a in acc] == [referrer.digest] and acc[0]["subject_artifact_digest"] == digest
    assert admin("GET", base).headers["X-Total-Count"] == "1"
    with_acc = admin("GET", f"{base}/1", params={"with_accessory": "true"}).json()
    assert with_acc["accessories"][0]["digest"] == referrer.digest
    # delete the artifact: its tags go with it
    assert admin("DELETE", f"{base}/1").status_code == 200
    assert requests.get(f"{appliance.url}/v2/{project}/{inner}/manifests/{digest}", timeout=30).status_code == 404


def test_index_children_are_references_and_cannot_be_deleted_alone(admin: Harbor, appliance: Appliance) -> None:
    project = admin.create_project()
    v2 = V2(appliance)
    repo = f"{project}/multi"
    amd = v2.push_image(repo, None, seed=b"a")
    arm = v2.push_image(repo, None, seed=b"b", platform="linux/arm64")
    index = v2.push_index(repo, [(amd, "linux/amd64"), (arm, "linux/arm64")], tag="1")
    base = f"/projects/{project}/repositories/multi/artifacts"
    listed = admin("GET", base).json()
    assert [a["digest"] for a in listed] == [index.digest]
    assert listed[0]["manifest_media_type"] == OCI_INDEX
    assert {r["child_digest"] for r in listed[0]["references"]} == {amd.digest, arm.digest}
    r = admin("DELETE", f"{base}/{amd.digest}")
    assert r.status_code == 412 and errors(r) == ["PRECONDITION"]
    assert admin("DELETE", f"{base}/1").status_code == 200
    assert admin("DELETE", f"{base}/{amd.digest}").status_code == 200


# -- robots -----------------------------------------------------------------------------------


def test_robot_lifecycle_secret_once_disable_refresh_delete(admin: Harbor, appliance: Appliance) -> None:
    project = admin.create_project()
    r = admin("POST", "/robots", json={
        "name": "ci", "description": "builds", "level": "project", "duration": 30,
        "permissions": [{"kind": "project", "namespace": project,
                         "access": [{"resource": "repository", "action": "pull"},
                                    {"resource": "repository", "action": "push"}]}]})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == f"robot${project}+ci" and len(created["secret"]) >= 32
    assert r.headers["Location"] == f"{API}/robots/{created['id']}"
    assert created["expires_at"] > 0
    auth = (created["name"], created["secret"])

    def v2_status() -> int:
        return requests.get(f"{appliance.url}/v2/", auth=auth, timeout=30).status_code

    assert v2_status() == 200
    shown = admin("GET", f"/robots/{created['id']}").json()
    assert "secret" not in shown and shown["level"] == "project" and shown["disable"] is False
    assert admin("POST", "/robots", json={**{k: v for k, v in shown.items() if k != "name"}, "name": "ci"}
                 ).status_code == 409
    listed = admin("GET", "/robots", params={"q": f"name=~{project}"}).json()
    assert [x["id"] for x in listed] == [created["id"]]
    # disable, then enable again
    assert admin("PUT", f"/robots/{created['id']}", json={**shown, "disable": True}).status_code == 200
    assert v2_status() == 401
    assert admin("PUT", f"/robots/{created['id']}", json={**shown, "disable": False}).status_code == 200
    assert v2_status() == 200
    # refresh: the old secret stops working at once, the new one works
    new = admin("PATCH", f"/robots/{created['id']}", json={}).json()["secret"]
    assert new != created["secret"] and v2_status() == 401
    assert requests.get(f"{appliance.url}/v2/", auth=(created["name"], new), timeout=30).status_code == 200
    weak = admin("PATCH", f"/robots/{created['id']}", json={"secret": "short"})
    assert weak.status_code == 400
    assert admin("DELETE", f"/robots/{created['id']}").status_code == 200
    assert requests.get(f"{appliance.url}/v2/", auth=(created["name"], new), timeout=30).status_code == 401
    assert admin("GET", f"/robots/{created['id']}").status_code == 404


def test_robot_validation(admin: Harbor) -> None:
    project = admin.create_project()
    pull = [{"resource": "repository", "action": "pull"}]
    for body, needle in (
        ({"name": "x", "level": "project", "duration": -1,
          "permissions": [{"kind": "project", "namespace": "nosuchproject", "access": pull}]}, "does not exist"),
        ({"name": "x", "level": "project", "duration": -1,
          "permissions": [{"kind": "project", "namespace": "*", "access": pull}]}, "every project"),
        ({"name": "Bad$Name", "level": "system", "duration": -1,
          "permissions": [{"kind": "project", "namespace": project, "access": pull}]}, "invalid robot name"),
        ({"name": "x", "level": "system", "duration": 0,
          "permissions": [{"kind": "project", "namespace": project, "access": pull}]}, "duration"),
        ({"name": "x", "level": "system", "duration": -1,
          "permissions": [{"kind": "project", "namespace": project,
                           "access": [{"resource": "repository", "action": "fly"}]}]}, "unsupported access"),
    ):
        r = admin("POST", "/robots", json=body)
        assert r.status_code in (400, 404), r.text
        assert needle in r.json()["errors"][0]["message"], r.text


def test_system_robot_with_admin_permission_and_one_over_all_projects(admin: Harbor, appliance: Appliance) -> None:
    sysadmin = admin.create_robot(f"ops{uuid.uuid4().hex[:6]}", "system", [
        {"kind": "system", "namespace": "/", "access": [{"resource": "*", "action": "*"}]}])
    assert sysadmin.name.startswith("robot$ops")
    r = requests.get(f"{appliance.url}/v2/_catalog", auth=sysadmin.auth, timeout=30)
    assert r.status_code == 200
    assert Harbor(appliance, sysadmin.auth).create_project()
    reader = admin.create_robot(f"all{uuid.uuid4().hex[:6]}", "system", [
        {"kind": "project", "namespace": "*", "access": [{"resource": "repository", "action": "pull"}]}])
    private = admin.create_project(public=False)
    V2(appliance).push_image(f"{private}/x", "1")
    assert requests.get(f"{appliance.url}/v2/{private}/x/manifests/1", auth=reader.auth,
                        timeout=30).status_code == 200
    assert requests.get(f"{appliance.url}/v2/_catalog", auth=reader.auth, timeout=30).status_code == 403
    assert requests.post(f"{appliance.url}/v2/{private}/x/blobs/uploads/", auth=reader.auth,
                         timeout=30).status_code == 403


# -- statistics, search, audit log ----------------------------------------------------------


def test_statistics_and_search(admin: Harbor, anon: Harbor, pushed: tuple[str, str, str]) -> None:
    project, inner, _ = pushed
    stats = admin("GET", "/statistics").json()
    assert stats["total_project_count"] >= 2 and stats["total_repo_count"] >= 1
    assert stats["total_storage_consumption"] > 0
    assert anon("GET", "/statistics").status_code == 401
    found = anon("GET", "/search", params={"q": inner.split("/")[-1]}).json()
    assert [r["repository_name"] for r in found["repository"]] == [f"{project}/{inner}"]
    assert found["repository"][0]["project_public"] is True
    assert anon("GET", "/search").status_code == 400


def test_catalog_is_admin_only(appliance: Appliance, admin: Harbor) -> None:
    assert requests.get(f"{appliance.url}/v2/_catalog", auth=appliance.admin, timeout=30).status_code == 200
    r = requests.get(f"{appliance.url}/v2/_catalog", timeout=30)
    assert r.status_code == 401 and 'scope="registry:catalog:*"' in r.headers["WWW-Authenticate"]
    robot = admin.project_robot("spectro-images", ("pull", "push", "delete"))
    assert requests.get(f"{appliance.url}/v2/_catalog", auth=robot.auth, timeout=30).status_code == 403


def test_audit_log_records_api_writes(admin: Harbor, anon: Harbor) -> None:
    name = admin.create_project()
    admin("PUT", f"/projects/{name}", json={"metadata": {"public": "true"}})
    entries = admin("GET", "/audit-logs", params={"q": f"resource={name}", "page_size": 10})
    assert entries.status_code == 200 and int(entries.headers["X-Total-Count"]) == 2
    assert [(e["operation"], e["resource_type"], e["username"]) for e in entries.json()] == [
        ("update", "project", "admin"), ("create", "project", "admin")]
    assert all(e["source_ip"] == "127.0.0.1" for e in entries.json())
    assert anon("GET", "/audit-logs").status_code == 401


def test_digest_is_not_mistaken_for_tag_in_v2_audit(admin: Harbor, appliance: Appliance) -> None:
    project = admin.create_project()
    v2 = V2(appliance)
    blob = v2.push_blob(f"{project}/b", b"blob-bytes")
    assert blob == sha256(b"blob-bytes")
    assert v2.request("DELETE", f"/v2/{project}/b/blobs/{blob}").status_code == 202
    entries = admin("GET", "/audit-logs", params={"q": f"resource=~{project}/b@"}).json()
    assert [(e["operation"], e["resource_type"], e["resource"]) for e in entries] == [
        ("delete", "blob", f"{project}/b@{blob}")]


def test_deleting_a_project_removes_its_robots_and_system_grants(admin: Harbor, appliance: Appliance) -> None:
    name = admin.create_project(public=False)
    project_robot = admin.project_robot(name, ("pull",))
    system_robot = admin.create_robot(f"sys{uuid.uuid4().hex[:6]}", "system", [
        {"kind": "project", "namespace": name, "access": [{"resource": "repository", "action": "pull"}]}])
    token = requests.get(f"{appliance.url}/service/token", auth=system_robot.auth, timeout=30,
                         params={"scope": f"repository:{name}/x:pull"}).json()["token"]
    assert token_claims(token)["access"] == [{"type": "repository", "name": f"{name}/x", "actions": ["pull"]}]
    assert admin("DELETE", f"/projects/{name}").status_code == 200
    assert admin("GET", f"/robots/{project_robot.id}").status_code == 404
    assert requests.get(f"{appliance.url}/v2/", auth=project_robot.auth, timeout=30).status_code == 401
    admin.create_project(name, public=False)  # same name again: the old grant must not come back
    token = requests.get(f"{appliance.url}/service/token", auth=system_robot.auth, timeout=30,
                         params={"scope": f"repository:{name}/x:pull"}).json()["token"]
    assert token_claims(token)["access"] == []
