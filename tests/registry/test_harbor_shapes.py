"""Harbor's shapes on the served operations: harborapi's models, never-null arrays, sizes, extra_attrs, content types.

Every served read is checked against the harborapi model of the same
operation (generated from Harbor's swagger.yaml) in strict JSON mode, with
arrays and objects never ``null`` (`tests.registry.harbor_models`); every
served write that answers without a body answers without a ``Content-Type``,
as Harbor does (never ``text/html``), which harborapi relies on. Immutable
tag rules (served since issue 11) are driven through harborapi end to end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import requests
from harborapi import HarborAsyncClient
from harborapi.models import (
    Accessory,
    Artifact,
    AuditLog,
    GeneralInfo,
    ImmutableRule,
    ImmutableSelector,
    OverallHealthStatus,
    Project,
    ProjectMemberEntity,
    ProjectSummary,
    Repository,
    Robot,
    Search,
    Statistic,
    SystemInfo,
    Tag,
    UserResp,
)

from tests.appliance import Appliance
from tests.registry.harbor_models import conforms, conforms_list
from tests.registry.harborapi import Harbor, encode_repo
from tests.registry.v2client import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, V2, canonical, descriptor

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def client(app: Appliance) -> HarborAsyncClient:
    return HarborAsyncClient(url=f"{app.url}/api/v2.0", username=app.admin[0], secret=app.admin[1])


def push_described_image(v2: V2, repo: str, tag: str) -> tuple[bytes, bytes, list[bytes]]:
    """An image whose config has author, created and a runtime config; (manifest, config, layers)."""
    config = canonical({"architecture": "arm64", "os": "linux", "created": "2024-05-01T10:00:00Z",
                        "config": {"Env": ["PATH=/bin"], "Cmd": ["/app"],
                                   "Labels": {"org.opencontainers.image.authors": "site team"}},
                        "rootfs": {"type": "layers", "diff_ids": []}})
    layers = [b"first layer" * 100, b"second" * 333]
    v2.push_blob(repo, config)
    for layer in layers:
        v2.push_blob(repo, layer)
    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                          "layers": [descriptor(OCI_LAYER, layer) for layer in layers]})
    v2.put_manifest(repo, tag, manifest, OCI_MANIFEST)
    return manifest, config, layers


def test_artifact_size_and_extra_attrs_as_harbor_computes_them(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project()
    v2 = V2(appliance)
    manifest, config, layers = push_described_image(v2, f"{project}/described", "1")
    art = admin("GET", f"/projects/{project}/repositories/described/artifacts/1").json()
    assert art["size"] == len(manifest) + len(config) + sum(len(x) for x in layers)
    assert art["extra_attrs"] == {"architecture": "arm64", "os": "linux", "author": "site team",
                                  "created": "2024-05-01T10:00:00Z",
                                  "config": {"Env": ["PATH=/bin"], "Cmd": ["/app"],
                                             "Labels": {"org.opencontainers.image.authors": "site team"}}}
    conforms(Artifact, art)
    # a layer listed twice counts twice, as Harbor adds up the manifest's descriptors
    twice = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                       "layers": [descriptor(OCI_LAYER, layers[0]), descriptor(OCI_LAYER, layers[0])]})
    v2.put_manifest(f"{project}/described", "twice", twice, OCI_MANIFEST)
    art = admin("GET", f"/projects/{project}/repositories/described/artifacts/twice").json()
    assert art["size"] == len(twice) + len(config) + 2 * len(layers[0])
    # an index: its own bytes plus its children's sizes (Harbor's abstractor)
    amd = v2.push_image(f"{project}/multi", None, seed=b"a")
    arm = v2.push_image(f"{project}/multi", None, seed=b"b", platform="linux/arm64")
    index = v2.push_index(f"{project}/multi", [(amd, "linux/amd64"), (arm, "linux/arm64")], tag="1")
    base = f"/projects/{project}/repositories/multi/artifacts"
    sizes = {d: admin("GET", f"{base}/{d}").json()["size"] for d in (amd.digest, arm.digest)}
    assert all(size > 1000 for size in sizes.values())  # each child: manifest + config + a 1000-byte layer
    listed = admin("GET", base).json()
    assert listed[0]["size"] == len(index.body) + sum(sizes.values())
    assert listed[0]["extra_attrs"] == {} and listed[0]["references"][0]["urls"] == []
    conforms_list(Artifact, listed)


def test_served_reads_validate_against_harborapis_models(appliance: Appliance) -> None:
    admin, anon = Harbor(appliance, appliance.admin), Harbor(appliance)
    project = admin.create_project(public=True)
    v2 = V2(appliance)
    image = v2.push_image(f"{project}/team/app", "1")
    v2.push_image(f"{project}/team/app", None, seed=b"sig", extra={
        "artifactType": "application/vnd.example.signature",
        "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.body)}})
    repo = f"/projects/{project}/repositories/{encode_repo('team/app')}"
    untagged = v2.push_image(f"{project}/team/app", None, seed=b"untagged")
    checks: list[tuple[type[Any], str, dict[str, str], bool]] = [
        (GeneralInfo, "/systeminfo", {}, False), (SystemInfo, "/systeminfo/volumes", {}, False),
        (OverallHealthStatus, "/health", {}, False), (UserResp, "/users/current", {}, False),
        (Statistic, "/statistics", {}, False), (Search, "/search", {"q": project}, False),
        (Project, "/projects", {}, True), (Project, f"/projects/{project}", {}, False),
        (ProjectSummary, f"/projects/{project}/summary", {}, False),
        (ProjectMemberEntity, f"/projects/{project}/members", {}, True),
        (Repository, "/repositories", {}, True), (Repository, f"/projects/{project}/repositories", {}, True),
        (Repository, repo, {}, False),
        (Artifact, f"{repo}/artifacts", {"with_tag": "true", "with_accessory": "true", "with_label": "true"}, True),
        (Artifact, f"{repo}/artifacts/1", {"with_accessory": "true"}, False),
        (Artifact, f"{repo}/artifacts/{untagged.digest}", {"with_tag": "true"}, False),
        (Accessory, f"{repo}/artifacts/1/accessories", {}, True), (Tag, f"{repo}/artifacts/1/tags", {}, True),
        (ImmutableRule, f"/projects/{project}/immutabletagrules", {}, True),
        (Robot, "/robots", {}, True), (AuditLog, "/audit-logs", {}, True),
    ]
    for model, path, params, many in checks:
        r = admin("GET", path, params=params)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", (path, r.status_code)
        try:
            (conforms_list if many else conforms)(model, r.json())
        except Exception as exc:  # name the operation
            raise AssertionError(f"GET {path}: {exc}") from exc
    # the artifact without tags still has arrays, never null; a project seen anonymously has no roles: []
    bare = admin("GET", f"{repo}/artifacts/{untagged.digest}", params={"with_tag": "true",
                                                                       "with_accessory": "true"}).json()
    assert bare["tags"] == [] and bare["accessories"] == [] and bare["labels"] == [] and bare["references"] == []
    assert bare["annotations"] == {} and bare["pull_time"] == "0001-01-01T00:00:00.000Z"
    shown = anon("GET", f"/projects/{project}").json()
    assert shown["current_user_role_ids"] == [] and "registry_id" not in shown
    conforms(Project, shown)


def test_empty_successes_carry_no_html_content_type(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project()
    v2 = V2(appliance)
    image = v2.push_image(f"{project}/app", "1")
    repo = f"/projects/{project}/repositories/app"
    rule = {"tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": "9"}],
            "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}]}}

    def empty(r: requests.Response, status: int) -> requests.Response:
        assert r.status_code == status and r.content == b"", (r.request.method, r.request.url, r.status_code, r.text)
        assert "Content-Type" not in r.headers, (r.request.method, r.request.url, r.headers["Content-Type"])
        return r

    empty(admin("PUT", f"/projects/{project}", json={"metadata": {"public": "false"}}), 200)
    empty(admin("PUT", repo, json={"description": "d"}), 200)
    empty(admin("POST", f"{repo}/artifacts/1/tags", json={"name": "two"}), 201)
    empty(admin("DELETE", f"{repo}/artifacts/1/tags/two"), 200)
    rule_id = empty(admin("POST", f"/projects/{project}/immutabletagrules", json=rule), 201
                    ).headers["Location"].rsplit("/", 1)[1]
    empty(admin("PUT", f"/projects/{project}/immutabletagrules/{rule_id}", json={"disabled": True}), 200)
    empty(admin("DELETE", f"/projects/{project}/immutabletagrules/{rule_id}"), 200)
    robot = admin.project_robot(project, ("pull",))
    shown = admin("GET", f"/robots/{robot.id}").json()
    empty(admin("PUT", f"/robots/{robot.id}", json={**shown, "description": "x"}), 200)
    empty(admin("DELETE", f"/robots/{robot.id}"), 200)
    empty(admin("HEAD", "/projects", params={"project_name": project}), 200)
    empty(admin("DELETE", f"{repo}/artifacts/{image.digest}"), 200)
    empty(admin("DELETE", repo), 200)
    empty(admin("DELETE", f"/projects/{project}"), 200)


def test_immutable_tag_rules_through_harborapi(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project()
    V2(appliance).push_image(f"{project}/app", "1.0")

    async def scenario() -> None:
        c = client(appliance)
        rule = ImmutableRule(tag_selectors=[ImmutableSelector(kind="doublestar", decoration="matches", pattern="1.*")],
                             scope_selectors={"repository": [ImmutableSelector(kind="doublestar",
                                                                               decoration="repoMatches",
                                                                               pattern="**")]})
        location = await c.create_project_immutable_tag_rule(project, rule)
        rule_id = int(location.rsplit("/", 1)[1])
        rules = await c.get_project_immutable_tag_rules(project)
        assert [r.id for r in rules] == [rule_id] and rules[0].action == "immutable"
        assert rules[0].tag_selectors and rules[0].tag_selectors[0].pattern == "1.*"
        tags = await c.get_artifact_tags(project, "app", "1.0")
        assert tags[0].immutable is True
        await c.enable_project_immutable_tagrule(project, rule_id, False)
        assert (await c.get_project_immutable_tag_rules(project))[0].disabled is True
        assert (await c.get_artifact_tags(project, "app", "1.0"))[0].immutable is False
        await c.enable_project_immutable_tagrule(project, rule_id, True)
        changed = rule.model_copy(update={"tag_selectors": [ImmutableSelector(kind="doublestar",
                                                                               decoration="matches", pattern="2.*")]})
        await c.update_project_immutable_tag_rule(project, rule_id, changed)
        assert (await c.get_project_immutable_tag_rules(project))[0].tag_selectors[0].pattern == "2.*"  # type: ignore[index]
        await c.delete_project_immutable_tag_rule(project, rule_id)
        assert await c.get_project_immutable_tag_rules(project) == []

    run(scenario())
    listed = admin("GET", f"/projects/{project}/immutabletagrules").json()
    assert listed == []


@pytest.mark.parametrize("body", [b"{}", b""])
def test_copy_artifact_takes_no_body(appliance: Appliance, body: bytes) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project()
    V2(appliance).push_image(f"{project}/src", "1")
    r = admin("POST", f"/projects/{project}/repositories/dst/artifacts", params={"from": f"{project}/src:1"},
              data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201 and json.loads(admin("GET", f"/projects/{project}/repositories/dst/artifacts/1"
                                                      ).text)["tags"][0]["name"] == "1"
