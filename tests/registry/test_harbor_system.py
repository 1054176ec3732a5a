"""Harbor's /systeminfo/getcert, /configurations, /permissions and copy artifact, on the real appliance.

Driven with `harborapi` (HarborAsyncClient, validating with its pydantic
models) and requests for exact status codes, headers and error bodies; the
copies are then pulled over /v2/ to show they are real.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from harborapi import HarborAsyncClient
from harborapi.exceptions import BadRequest, Forbidden, NotFound, Unauthorized
from harborapi.models import Configurations, ConfigurationsResponse, Permissions

from tests.appliance import Appliance
from tests.pgengine import env_for
from tests.registry.harbor_models import conforms
from tests.registry.harborapi import Harbor, errors
from tests.registry.v2client import OCI_MANIFEST, V2

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Member-pass-1"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def client(app: Appliance, auth: tuple[str, str] | None = None) -> HarborAsyncClient:
    username, secret = auth or app.admin
    return HarborAsyncClient(url=f"{app.url}/api/v2.0", username=username, secret=secret, verify=False)


def add_user(app: Appliance, name: str) -> tuple[str, str]:
    subprocess.run([sys.executable, "-m", "web.cli", "admin", "add-user", "--data-dir", str(app.data_dir), name],
                   env={**os.environ, **env_for(["--data-dir", app.data_dir]), "CARGOHOLD_NEW_PASSWORD": PASSWORD},
                   check=True, capture_output=True, cwd=ROOT)
    return name, PASSWORD


# -- /systeminfo/getcert -----------------------------------------------------------------------


def test_getcert_is_the_generated_ca_as_a_download(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory("--tls", scheme="https")
    ca = (app.data_dir / "tls" / "ca.crt").read_bytes()
    cert = run(client(app).get_system_certificate())
    assert cert.response.status_code == 200 and bytes(cert) == ca
    assert cert.content_type == "application/octet-stream"
    assert "attachment" in cert.headers["Content-Disposition"] and "ca.crt" in cert.headers["Content-Disposition"]
    # anyone may fetch it (a host that does not trust the appliance yet has no credentials for it)
    r = requests.get(f"{app.url}/api/v2.0/systeminfo/getcert", verify=False, timeout=30)
    assert r.status_code == 200 and r.content == ca
    assert requests.get(f"{app.url}/api/v2.0/systeminfo", verify=False, timeout=30).json()["has_ca_root"] is True


def test_getcert_without_a_ca_is_harbors_404_not_a_certificate(appliance: Appliance) -> None:
    cert = run(client(appliance).get_system_certificate())
    # harborapi hands back the response as it came: what tells it apart from a certificate is the status and type
    assert cert.response.status_code == 404 and cert.content_type == "application/json"
    assert b"BEGIN CERTIFICATE" not in bytes(cert)
    body = json.loads(bytes(cert))
    assert body["errors"][0]["code"] == "NOT_FOUND" and "CA" in body["errors"][0]["message"]
    assert requests.get(f"{appliance.url}/api/v2.0/systeminfo", timeout=30).json()["has_ca_root"] is False


# -- /configurations, /permissions ---------------------------------------------------------------


def test_configurations_are_the_read_only_subset_that_maps_to_the_appliance(appliance: Appliance) -> None:
    config = run(client(appliance).get_config())
    assert isinstance(config, ConfigurationsResponse)
    assert config.auth_mode is not None and config.auth_mode.value == "db_auth"
    assert config.self_registration is not None and config.self_registration.value is False
    assert config.project_creation_restriction is not None and config.project_creation_restriction.value == "adminonly"
    assert config.token_expiration is not None and config.token_expiration.value == 30  # 1800 s, in minutes
    assert config.read_only is not None and config.read_only.value is False
    admin = Harbor(appliance, appliance.admin)
    body = admin("GET", "/configurations").json()
    conforms(ConfigurationsResponse, body, exact=True)
    assert all(item["editable"] is False for item in body.values())
    assert not any(key.startswith(("ldap_", "oidc_", "uaa_", "http_authproxy_")) for key in body)
    # writes change nothing and say which keys, whether the appliance has them or not
    with pytest.raises(BadRequest) as refused:
        run(client(appliance).update_config(Configurations(self_registration=True)))
    assert "self_registration" in str(refused.value)
    r = admin("PUT", "/configurations", json={"ldap_url": "ldap://x", "read_only": True})
    assert r.status_code == 400 and errors(r) == ["BAD_REQUEST"]
    message = r.json()["errors"][0]["message"]
    assert "ldap_url" in message and "read_only" in message and "nothing was changed" in message
    assert admin("GET", "/configurations").json() == body
    assert admin("PUT", "/configurations", json={}).status_code == 400
    assert Harbor(appliance)("GET", "/configurations").status_code == 401


def test_permissions_list_what_robots_can_be_granted(appliance: Appliance) -> None:
    perms = run(client(appliance).get_permissions())
    assert isinstance(perms, Permissions) and perms.system and perms.project
    admin = Harbor(appliance, appliance.admin)
    body = admin("GET", "/permissions").json()
    conforms(Permissions, body, exact=True)
    project = {(p["resource"], p["action"]) for p in body["project"]}
    assert {("repository", "pull"), ("repository", "push"), ("artifact", "delete")} <= project
    # every listed permission is one a robot can really be given
    name = admin.create_project()
    for resource, action in sorted(project):
        r = admin("POST", "/robots", json={"name": f"p{abs(hash((resource, action))) % 10**8}", "level": "project",
                                           "duration": -1, "permissions": [{"kind": "project", "namespace": name,
                                           "access": [{"resource": resource, "action": action}]}]})
        assert r.status_code == 201, (resource, action, r.text)
    assert Harbor(appliance)("GET", "/permissions").status_code == 401


# -- copy artifact -------------------------------------------------------------------------------


def test_copy_artifact_with_harborapi_then_pull_it(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    source, target = admin.create_project(), admin.create_project()
    v2 = V2(appliance)
    image = v2.push_image(f"{source}/app", "1.0")
    assert admin("POST", f"/projects/{source}/repositories/app/artifacts/{image.digest}/tags",
                 json={"name": "stable"}).status_code == 201
    signature = v2.push_image(f"{source}/app", None, seed=b"sig", extra={
        "artifactType": "application/vnd.example.signature",
        "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.body)}})
    location = run(client(appliance).copy_artifact(target, "team/app", f"{source}/app:1.0"))
    assert location.endswith(f"/artifacts/{image.digest}") and f"/projects/{target}/repositories/" in location
    copied = admin("GET", f"/projects/{target}/repositories/team%252Fapp/artifacts/1.0",
                   params={"with_accessory": "true"}).json()
    assert copied["digest"] == image.digest
    assert sorted(t["name"] for t in copied["tags"]) == ["1.0", "stable"]  # as Harbor: all the artifact's tags
    assert [a["digest"] for a in copied["accessories"]] == [signature.digest]
    # the copy is served over /v2/, blobs and all
    r = v2.request("GET", f"/v2/{target}/team/app/manifests/stable", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == image.body
    for blob in [json.loads(image.body)["config"], *json.loads(image.body)["layers"]]:
        got = v2.request("GET", f"/v2/{target}/team/app/blobs/{blob['digest']}")
        assert got.status_code == 200 and len(got.content) == blob["size"]
    # copying again is not an error (Harbor then only ensures the tags); by digest too
    run(client(appliance).copy_artifact(target, "team/app", f"{source}/app@{image.digest}"))
    r = admin("POST", f"/projects/{target}/repositories/team%252Fapp/artifacts",
              params={"from": f"{source}/app@{image.digest}"})
    assert r.status_code == 201 and r.content == b"" and "Content-Type" not in r.headers
    audit = admin("GET", "/audit-logs", params={"q": f"resource=~{target}/team/app", "page_size": 100}).json()
    assert any("copied from" in e["resource"] for e in audit)


def test_copy_an_index_copies_its_platforms(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    source, target = admin.create_project(), admin.create_project()
    v2 = V2(appliance)
    amd = v2.push_image(f"{source}/multi", None, seed=b"a")
    arm = v2.push_image(f"{source}/multi", None, seed=b"b", platform="linux/arm64")
    index = v2.push_index(f"{source}/multi", [(amd, "linux/amd64"), (arm, "linux/arm64")], tag="2")
    r = admin("POST", f"/projects/{target}/repositories/multi/artifacts", params={"from": f"{source}/multi:2"})
    assert r.status_code == 201, r.text
    listed = admin("GET", f"/projects/{target}/repositories/multi/artifacts").json()
    assert [a["digest"] for a in listed] == [index.digest]
    assert {x["child_digest"] for x in listed[0]["references"]} == {amd.digest, arm.digest}
    for child in (amd, arm):
        assert v2.request("GET", f"/v2/{target}/multi/manifests/{child.digest}").status_code == 200


def test_copy_needs_pull_on_the_source_and_push_on_the_target(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    source, target = admin.create_project(public=False), admin.create_project(public=False)
    V2(appliance).push_image(f"{source}/app", "1")
    copier = add_user(appliance, f"copier{source[-6:]}")
    path, params = f"/projects/{target}/repositories/app/artifacts", {"from": f"{source}/app:1"}
    as_copier = admin.as_(copier)
    r = as_copier("POST", path, params=params)
    assert r.status_code == 403 and errors(r) == ["FORBIDDEN"] and "pull" in r.json()["errors"][0]["message"]
    assert admin("POST", f"/projects/{source}/members",
                 json={"role_id": 3, "member_user": {"username": copier[0]}}).status_code == 201  # guest: pull
    r = as_copier("POST", path, params=params)
    assert r.status_code == 403 and "push" in r.json()["errors"][0]["message"]
    assert admin("POST", f"/projects/{target}/members",
                 json={"role_id": 2, "member_user": {"username": copier[0]}}).status_code == 201  # developer: push
    with pytest.raises(Unauthorized):
        run(client(appliance, (copier[0], "Wrong-pass-1")).copy_artifact(target, "app", f"{source}/app:1"))
    run(client(appliance, copier).copy_artifact(target, "app", f"{source}/app:1"))
    assert admin("GET", f"{path}/1").status_code == 200
    assert Harbor(appliance)("POST", path, params=params).status_code == 401


def test_copy_honours_protected_tags_and_refuses_bad_sources(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    source, target = admin.create_project(), admin.create_project()
    v2 = V2(appliance)
    v2.push_image(f"{source}/app", "1", seed=b"new")
    old = v2.push_image(f"{target}/app", "1", seed=b"old")
    rule = {"tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": "1"}],
            "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}]}}
    assert admin("POST", f"/projects/{target}/immutabletagrules", json=rule).status_code == 201
    path = f"/projects/{target}/repositories/app/artifacts"
    r = admin("POST", path, params={"from": f"{source}/app:1"})
    assert r.status_code == 412 and errors(r) == ["PRECONDITION"], r.text
    # nothing changed: the tag still points at the old image, and the new one was not added
    assert admin("GET", f"{path}/1").json()["digest"] == old.digest
    assert admin("GET", path).headers["X-Total-Count"] == "1"
    for source_ref, status in (("", 400), (f"{source}/app", 400), ("app:1", 400), (f"{source}/app@sha256:zz", 400),
                               (f"{source}/app:-bad", 400), (f"{source}/app:nope", 404),
                               (f"{source}/none:1", 404), (f"{source}/app@sha256:{'0' * 64}", 404)):
        r = admin("POST", path, params={"from": source_ref} if source_ref else {})
        assert r.status_code == status and r.json()["errors"], (source_ref, r.status_code, r.text)
    with pytest.raises(NotFound):
        run(client(appliance).copy_artifact(target, "app", f"{source}/app:nope"))
    r = admin("POST", "/projects/no-such-project/repositories/app/artifacts", params={"from": f"{source}/app:1"})
    assert r.status_code == 404
    with pytest.raises(Forbidden):
        run(client(appliance, add_user(appliance, f"nobody{target[-6:]}")).copy_artifact(
            target, "app", f"{source}/app:1"))
