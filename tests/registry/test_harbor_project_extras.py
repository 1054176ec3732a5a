"""Harbor's project metadata, _deletable, project-wide artifacts and project logs, on the real appliance.

harborapi's HarborAsyncClient is the independent client (Harbor's models);
requests checks exact statuses and bodies. ``public`` set through the
metadata API changes who may pull, and ``enable_content_trust_cosign`` set
there switches the content-trust pull policy, as the project API does.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from harborapi import HarborAsyncClient
from harborapi.models import ProjectMetadata

from tests.appliance import Appliance
from tests.registry.harborapi import Harbor
from tests.registry.v2client import V2

PASSWORD = "Project-extras-Passw0rd"


def _client(appliance: Appliance, auth: tuple[str, str] | None = None) -> HarborAsyncClient:
    auth = auth or appliance.admin
    return HarborAsyncClient(url=f"{appliance.url}/api/v2.0", username=auth[0], secret=auth[1])


@pytest.fixture
def admin(appliance: Appliance) -> Harbor:
    return Harbor(appliance, appliance.admin)


def _user(admin: Harbor, project: str | None = None, role: int | None = None) -> tuple[str, str]:
    name = f"m{uuid.uuid4().hex[:10]}"
    assert admin("POST", "/users", json={"username": name, "password": PASSWORD}).status_code == 201
    if project is not None:
        assert admin("POST", f"/projects/{project}/members",
                     json={"role_id": role, "member_user": {"username": name}}).status_code == 201
    return name, PASSWORD


def test_metadata_round_trip_through_harborapi(appliance: Appliance, admin: Harbor) -> None:
    project = admin.create_project()

    async def round_trip() -> tuple[ProjectMetadata, dict[str, Any], ProjectMetadata]:
        client = _client(appliance)
        await client.set_project_metadata(project, ProjectMetadata(auto_scan="true", severity="high",
                                                                   prevent_vul="false", public="true"))
        first = await client.get_project_metadata(project)
        entry = await client.get_project_metadata_entry(project, "auto_scan")
        await client.update_project_metadata_entry(project, "auto_scan", {"auto_scan": "false"})
        await client.delete_project_metadata_entry(project, "severity")
        return first, entry, await client.get_project_metadata(project)

    first, entry, after = asyncio.run(round_trip())
    assert (first.auto_scan, first.severity, first.prevent_vul, first.public) == ("true", "high", "false", "true")
    assert entry == {"auto_scan": "true"}
    assert (after.auto_scan, after.severity, after.public) == ("false", None, "true")
    # The project itself shows the same metadata.
    assert admin("GET", f"/projects/{project}").json()["metadata"] == {"public": "true", "auto_scan": "false",
                                                                      "prevent_vul": "false"}


def test_metadata_exact_shapes_and_refusals(admin: Harbor) -> None:
    project = admin.create_project()
    r = admin("GET", f"/projects/{project}/metadatas/")  # Harbor's own path has the trailing slash
    assert r.status_code == 200 and r.json() == {"public": "false"}
    assert admin("POST", f"/projects/{project}/metadatas/", json={"reuse_sys_cve_allowlist": "true"}).status_code \
        == 200
    assert admin("GET", f"/projects/{project}/metadatas/reuse_sys_cve_allowlist").json() == {
        "reuse_sys_cve_allowlist": "true"}
    before = admin("GET", f"/projects/{project}/metadatas").json()
    cases = [("POST", "/metadatas", {"auto_scan": "yes"}, 400, '"true" or "false"'),
             ("POST", "/metadatas", {"colour": "blue"}, 400, "unknown project metadata"),
             ("POST", "/metadatas", {"severity": "apocalyptic"}, 400, "severity must be one of"),
             ("POST", "/metadatas", ["public"], 400, "object"),
             ("PUT", "/metadatas/auto_scan", {"public": "true"}, 400, "exactly the key"),
             ("PUT", "/metadatas/auto_scan", {"auto_scan": 1}, 400, '"true" or "false"'),
             ("GET", "/metadatas/auto_scan", None, 404, "has no metadata"),
             ("DELETE", "/metadatas/auto_scan", None, 404, "has no metadata")]
    for method, path, body, status, fragment in cases:
        r = admin(method, f"/projects/{project}{path}", json=body)
        assert r.status_code == status, (method, path, body, r.text)
        assert fragment in r.json()["errors"][0]["message"], (method, path, body, r.text)
    assert admin("GET", f"/projects/{project}/metadatas").json() == before
    assert admin("GET", "/projects/no-such-project-x/metadatas").status_code == 404


def test_public_metadata_is_the_real_visibility(appliance: Appliance, admin: Harbor) -> None:
    project = admin.create_project(public=False)
    V2(appliance).push_image(f"{project}/app", "1")
    anonymous = V2(appliance, auth=False)
    assert anonymous.request("GET", f"/v2/{project}/app/manifests/1").status_code == 401
    assert admin("PUT", f"/projects/{project}/metadatas/public", json={"public": "true"}).status_code == 200
    assert anonymous.request("GET", f"/v2/{project}/app/manifests/1").status_code == 200
    assert admin("GET", f"/projects/{project}").json()["metadata"]["public"] == "true"
    # Deleting `public` makes the project private again (Harbor: no key, not public).
    assert admin("DELETE", f"/projects/{project}/metadatas/public").status_code == 200
    assert anonymous.request("GET", f"/v2/{project}/app/manifests/1").status_code == 401


def test_content_trust_set_through_metadata_guards_pulls(appliance: Appliance, admin: Harbor) -> None:
    project = admin.create_project(public=True)
    V2(appliance).push_image(f"{project}/app", "1")
    v2 = V2(appliance)
    assert v2.request("GET", f"/v2/{project}/app/manifests/1").status_code == 200
    assert admin("POST", f"/projects/{project}/metadatas",
                 json={"enable_content_trust_cosign": "true"}).status_code == 200
    r = v2.request("GET", f"/v2/{project}/app/manifests/1")
    assert r.status_code == 412 and r.json()["errors"][0]["code"] == "PROJECT_POLICY_VIOLATION", r.text
    assert admin("DELETE", f"/projects/{project}/metadatas/enable_content_trust_cosign").status_code == 200
    assert v2.request("GET", f"/v2/{project}/app/manifests/1").status_code == 200


def test_only_project_administrators_change_metadata(appliance: Appliance, admin: Harbor) -> None:
    project = admin.create_project()
    developer = Harbor(appliance, _user(admin, project, 2))
    assert developer("GET", f"/projects/{project}/metadatas").status_code == 200
    assert developer("POST", f"/projects/{project}/metadatas", json={"auto_scan": "true"}).status_code == 403
    assert developer("DELETE", f"/projects/{project}/metadatas/public").status_code == 403
    stranger = Harbor(appliance, _user(admin))
    assert stranger("GET", f"/projects/{project}/metadatas").status_code == 403
    assert Harbor(appliance, None)("GET", f"/projects/{project}/metadatas").status_code == 401
    project_admin = Harbor(appliance, _user(admin, project, 1))
    assert project_admin("PUT", f"/projects/{project}/metadatas/auto_scan",
                         json={"auto_scan": "true"}).status_code == 200


def test_deletable(appliance: Appliance, admin: Harbor) -> None:
    project = admin.create_project()

    async def check() -> tuple[bool | None, str | None]:
        found = await _client(appliance).get_project_deletable(project)
        return found.deletable, found.message

    assert asyncio.run(check()) == (True, "")
    V2(appliance).push_image(f"{project}/app", "1")
    r = admin("GET", f"/projects/{project}/_deletable")
    assert r.status_code == 200 and r.json() == {"deletable": False, "message": "the project contains repositories"}
    assert admin("DELETE", f"/projects/{project}").status_code == 412  # and the delete agrees
    r = admin("GET", "/projects/spectro-images/_deletable")
    assert r.json()["deletable"] is False and "default project" in r.json()["message"]
    guest = Harbor(appliance, _user(admin, project, 3))
    assert guest("GET", f"/projects/{project}/_deletable").status_code == 403


def test_project_artifacts_across_repositories(appliance: Appliance, admin: Harbor) -> None:
    project = admin.create_project()
    v2 = V2(appliance)
    a1 = v2.push_image(f"{project}/team/a", "1", seed=b"a1")
    a2 = v2.push_image(f"{project}/team/a", "2", seed=b"a2")
    b1 = v2.push_image(f"{project}/b", "1", seed=b"b1")
    r = admin("GET", f"/projects/{project}/artifacts", params={"page_size": 2})
    assert r.status_code == 200 and r.headers["X-Total-Count"] == "3", r.text
    assert 'rel="next"' in r.headers["Link"]
    everything = admin("GET", f"/projects/{project}/artifacts", params={"page_size": 10}).json()
    assert {(a["repository_name"], a["digest"]) for a in everything} == {
        (f"{project}/team/a", a1.digest), (f"{project}/team/a", a2.digest), (f"{project}/b", b1.digest)}
    assert [a["push_time"] for a in everything] == sorted((a["push_time"] for a in everything), reverse=True)
    assert all(a["tags"] for a in everything)
    latest = admin("GET", f"/projects/{project}/artifacts", params={"latest": "true"}).json()
    assert {(a["repository_name"], a["digest"]) for a in latest} == {(f"{project}/team/a", a2.digest),
                                                                    (f"{project}/b", b1.digest)}
    tagged = admin("GET", f"/projects/{project}/artifacts", params={"q": "tags=2"}).json()
    assert [a["digest"] for a in tagged] == [a2.digest]
    by_repo = admin("GET", f"/projects/{project}/artifacts", params={"q": "repository_name=b"}).json()
    assert [a["digest"] for a in by_repo] == [b1.digest]
    assert admin("GET", f"/projects/{project}/artifacts", params={"q": "colour=blue"}).status_code == 400

    async def through_harborapi() -> list[Any]:
        return await _client(appliance).get_project_artifacts(project, with_tag=True)

    assert {a.digest for a in asyncio.run(through_harborapi())} == {a1.digest, a2.digest, b1.digest}
    stranger = Harbor(appliance, _user(admin))
    assert stranger("GET", f"/projects/{project}/artifacts").status_code == 403


def test_project_logs(appliance: Appliance, admin: Harbor) -> None:
    project = admin.create_project()
    other = admin.create_project()
    V2(appliance).push_image(f"{project}/app", "1")
    V2(appliance).push_image(f"{other}/app", "1")
    assert admin("POST", f"/projects/{project}/metadatas", json={"auto_scan": "true"}).status_code == 200
    r = admin("GET", f"/projects/{project}/logs", params={"page_size": 100})
    assert r.status_code == 200, r.text
    entries = r.json()
    resources = {e["resource"] for e in entries}
    assert project in resources and f"{project}/app:1" in resources and f"{project}:auto_scan" in resources
    assert not any(other in e["resource"] for e in entries)
    assert set(entries[0]) >= {"id", "username", "resource", "resource_type", "operation", "op_time"}
    only_artifacts = admin("GET", f"/projects/{project}/logs", params={"q": "resource_type=artifact"}).json()
    assert [e["resource"] for e in only_artifacts] == [f"{project}/app:1"]

    async def through_harborapi() -> list[Any]:
        return await _client(appliance).get_project_logs(project)

    assert {e.resource for e in asyncio.run(through_harborapi())} == resources
    maintainer = Harbor(appliance, _user(admin, project, 4))
    assert maintainer("GET", f"/projects/{project}/logs").status_code == 200
    developer = Harbor(appliance, _user(admin, project, 2))
    assert developer("GET", f"/projects/{project}/logs").status_code == 403
