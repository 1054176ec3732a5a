"""Labels through Harbor's API on the real appliance, driven by `harborapi` (an independent client) and requests.

harborapi's HarborAsyncClient validates every answer with its pydantic
models (generated from Harbor's swagger.yaml); `tests.registry.harbor_models`
adds strict types and never-null arrays. requests checks the exact status
codes, headers and error bodies harborapi does not show.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from harborapi import HarborAsyncClient
from harborapi.exceptions import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from harborapi.models import Artifact, Label

from tests.appliance import Appliance, start_appliance
from tests.pgengine import env_for
from tests.registry.harbor_models import conforms, conforms_list
from tests.registry.harborapi import Harbor, errors
from tests.registry.v2client import V2

T = TypeVar("T")
PASSWORD = "Member-pass-1"
ROOT = Path(__file__).resolve().parents[2]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass(frozen=True)
class World:
    app: Appliance
    project: str  # private, with members dev (developer), maint (maintainer), guest (guest)
    project_id: int
    other: str  # another private project nobody but the admin is in
    other_id: int
    digest: str  # project/app:1

    def client(self, who: str = "admin") -> HarborAsyncClient:
        username, secret = self.app.admin if who == "admin" else (who, PASSWORD)
        return HarborAsyncClient(url=f"{self.app.url}/api/v2.0", username=username, secret=secret)

    def http(self, who: str | None = "admin") -> Harbor:
        return Harbor(self.app, None if who is None else self.app.admin if who == "admin" else (who, PASSWORD))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("labels") / "data"
    app = start_appliance(data)
    try:
        admin = Harbor(app, app.admin)
        project = admin.create_project(public=False)
        other = admin.create_project(public=False)
        for user, role in (("dev", 2), ("maint", 4), ("guest", 3)):
            subprocess.run([sys.executable, "-m", "web.cli", "admin", "add-user", "--data-dir", str(data), user],
                           env={**os.environ, **env_for(["--data-dir", data]), "CARGOHOLD_NEW_PASSWORD": PASSWORD},
                           check=True, capture_output=True,
                           cwd=ROOT)
            r = admin("POST", f"/projects/{project}/members", json={"role_id": role, "member_user": {"username": user}})
            assert r.status_code == 201, r.text
        pushed = V2(app).push_image(f"{project}/app", "1")
        yield World(app, project, admin("GET", f"/projects/{project}").json()["project_id"], other,
                    admin("GET", f"/projects/{other}").json()["project_id"], pushed.digest)
    finally:
        app.stop()


def label_id(location: str) -> int:
    return int(location.rsplit("/", 1)[1])


def test_global_labels_lifecycle_with_harborapi(world: World) -> None:
    async def scenario() -> None:
        client = world.client()
        location = await client.create_label(Label(name="release", description="shipped", color="#61717D", scope="g"))
        assert location.startswith("/api/v2.0/labels/")
        lid = label_id(location)
        label = await client.get_label(lid)
        assert (label.name, label.description, label.color, label.scope, label.project_id) == (
            "release", "shipped", "#61717D", "g", 0)
        listed = await client.get_labels(scope="g")
        assert [x.id for x in listed] == [lid]
        assert [x.id for x in await client.get_labels(scope="g", name="elea")] == [lid]  # name is fuzzy
        assert await client.get_labels(scope="g", name="nomatch") == []
        await client.update_label(lid, Label(name="released", description="shipped to sites", color="#00AA00"))
        changed = await client.get_label(lid)
        assert (changed.name, changed.description, changed.color) == ("released", "shipped to sites", "#00AA00")
        assert changed.update_time is not None and changed.creation_time is not None
        # names are unique per scope
        with pytest.raises(Conflict):
            await client.create_label(Label(name="released", scope="g"))
        await client.delete_label(lid)
        with pytest.raises(NotFound):
            await client.get_label(lid)

    run(scenario())


def test_label_answers_have_harbors_shape_and_status_codes(world: World) -> None:
    admin = world.http()
    r = admin("POST", "/labels", json={"name": "shape", "scope": "g", "color": "#FF0000"})
    assert r.status_code == 201 and r.content == b"" and "Content-Type" not in r.headers
    lid = label_id(r.headers["Location"])
    got = admin("GET", f"/labels/{lid}")
    assert got.status_code == 200 and got.headers["Content-Type"] == "application/json"
    conforms(Label, got.json(), exact=True)
    listed = admin("GET", "/labels", params={"scope": "g", "page_size": 1})
    assert listed.headers["X-Total-Count"] == "1"
    conforms_list(Label, listed.json(), exact=True)
    r = admin("PUT", f"/labels/{lid}", json={"color": "#00FF00"})
    assert r.status_code == 200 and r.content == b"" and "Content-Type" not in r.headers
    assert admin("GET", f"/labels/{lid}").json()["name"] == "shape"  # fields left out keep their value
    # bad input names the problem and changes nothing
    for body, word in (({"scope": "g"}, "name"), ({"name": "", "scope": "g"}, "name"),
                       ({"name": "x", "scope": "q"}, "scope"), ({"name": "x", "scope": "p"}, "project_id"),
                       ({"name": "x", "scope": "g", "color": "red; x"}, "color"),
                       ({"name": "x" * 129, "scope": "g"}, "name")):
        r = admin("POST", "/labels", json=body)
        assert r.status_code == 400 and errors(r) == ["BAD_REQUEST"] and word in r.json()["errors"][0]["message"], \
            (body, r.text)
    r = admin("POST", "/labels", json={"name": "x", "scope": "p", "project_id": 999999})
    assert r.status_code == 404 and errors(r) == ["NOT_FOUND"]
    for params in ({}, {"scope": "x"}, {"scope": "p"}, {"scope": "p", "project_id": "abc"}):
        r = admin("GET", "/labels", params=params)
        assert r.status_code == 400 and errors(r) == ["BAD_REQUEST"], (params, r.text)
    assert admin("GET", "/labels", params={"scope": "g"}).headers["X-Total-Count"] == "1"
    for path in ("/labels/0", "/labels/abc", "/labels/999999"):
        assert admin("GET", path).status_code == 404
    assert admin("DELETE", f"/labels/{lid}").status_code == 200
    assert admin("DELETE", f"/labels/{lid}").status_code == 404
    audit = admin("GET", "/audit-logs", params={"q": "resource_type=label", "page_size": 100}).json()
    assert {(e["operation"], e["resource"]) for e in audit} >= {("create", "shape (global)"),
                                                                 ("delete", "shape (global)")}


def test_project_labels_and_who_may_manage_them(world: World) -> None:
    body = {"name": "team-a", "scope": "p", "project_id": world.project_id}
    # Harbor: project admins and maintainers manage project labels; developers and guests read them.
    for who in ("dev", "guest"):
        r = world.http(who)("POST", "/labels", json=body)
        assert r.status_code == 403 and errors(r) == ["FORBIDDEN"], (who, r.text)
    assert world.http(None)("POST", "/labels", json=body).status_code == 401
    r = world.http("maint")("POST", "/labels", json=body)
    assert r.status_code == 201, r.text
    lid = label_id(r.headers["Location"])
    # the same name in another scope or project is another label; in the same project it is taken
    assert world.http()("POST", "/labels", json={**body, "project_id": world.other_id}).status_code == 201
    assert world.http()("POST", "/labels", json={"name": "team-a", "scope": "g"}).status_code == 201
    r = world.http()("POST", "/labels", json=body)
    assert r.status_code == 409 and errors(r) == ["CONFLICT"]

    async def reads() -> None:
        for who in ("dev", "guest", "maint"):
            found = await world.client(who).get_labels(scope="p", project_id=world.project_id)
            assert [x.name for x in found] == ["team-a"]
            assert (await world.client(who).get_label(lid)).project_id == world.project_id
        with pytest.raises(Forbidden):  # dev is no member of the other project
            await world.client("dev").get_labels(scope="p", project_id=world.other_id)
        with pytest.raises(Forbidden):  # only system administrators manage global labels
            await world.client("maint").create_label(Label(name="mine", scope="g"))
        with pytest.raises(Unauthorized):
            await HarborAsyncClient(url=f"{world.app.url}/api/v2.0", username="dev", secret="Wrong-pass-1"
                                    ).get_labels(scope="g")

    run(reads())
    assert world.http("dev")("PUT", f"/labels/{lid}", json={"name": "renamed"}).status_code == 403
    assert world.http("maint")("PUT", f"/labels/{lid}", json={"name": "team-b"}).status_code == 200
    assert world.http("guest")("DELETE", f"/labels/{lid}").status_code == 403
    assert world.http("maint")("DELETE", f"/labels/{lid}").status_code == 200


def test_labels_on_artifacts_with_harborapi(world: World) -> None:
    admin = world.http()
    glob = label_id(admin("POST", "/labels", json={"name": "approved", "scope": "g"}).headers["Location"])
    mine = label_id(admin("POST", "/labels", json={"name": "qa", "scope": "p", "project_id": world.project_id}
                          ).headers["Location"])
    theirs = label_id(admin("POST", "/labels", json={"name": "qa", "scope": "p", "project_id": world.other_id}
                            ).headers["Location"])

    async def scenario() -> None:
        dev = world.client("dev")  # Harbor lets developers label artifacts
        await dev.add_artifact_label(world.project, "app", "1", Label(id=glob))
        await dev.add_artifact_label(world.project, "app", world.digest, Label(id=mine))
        art = await dev.get_artifact(world.project, "app", "1", with_label=True)
        assert isinstance(art, Artifact) and [x.name for x in art.labels or []] == ["approved", "qa"]
        assert all(x.scope in ("g", "p") for x in art.labels or [])
        listed = await dev.get_artifacts(world.project, "app", with_label=True)
        assert [x.id for x in listed[0].labels or []] == [glob, mine]
        with pytest.raises(Conflict):  # already on it
            await dev.add_artifact_label(world.project, "app", "1", Label(id=glob))
        with pytest.raises(BadRequest):  # another project's label
            await dev.add_artifact_label(world.project, "app", "1", Label(id=theirs))
        with pytest.raises(NotFound):
            await dev.add_artifact_label(world.project, "app", "1", Label(id=987654))
        with pytest.raises(NotFound):
            await dev.add_artifact_label(world.project, "app", "no-such-tag", Label(id=glob))
        with pytest.raises(Forbidden):  # guests may not
            await world.client("guest").add_artifact_label(world.project, "app", "1", Label(id=glob))
        await dev.delete_artifact_label(world.project, "app", "1", mine)
        with pytest.raises(NotFound):
            await dev.delete_artifact_label(world.project, "app", "1", mine)
        art = await dev.get_artifact(world.project, "app", "1", with_label=True)
        assert [x.id for x in art.labels or []] == [glob]

    run(scenario())
    base = f"/projects/{world.project}/repositories/app/artifacts/1/labels"
    r = admin("POST", base, json={"id": mine})  # Harbor's addLabel: 200, no body, no Content-Type
    assert r.status_code == 200 and r.content == b"" and "Content-Type" not in r.headers
    r = admin("POST", base, json={"name": "qa"})
    assert r.status_code == 400 and "id" in r.json()["errors"][0]["message"]
    assert world.http(None)("POST", base, json={"id": glob}).status_code == 401
    assert admin("DELETE", f"{base}/{mine}").status_code == 200
    # deleting a label takes it off every artifact
    assert admin("DELETE", f"/labels/{glob}").status_code == 200
    art = admin("GET", f"/projects/{world.project}/repositories/app/artifacts/1").json()
    assert art["labels"] == []
    conforms(Artifact, art)


def test_labels_go_with_their_artifact_and_project(world: World) -> None:
    admin = world.http()
    project = admin.create_project(public=False)
    project_id = admin("GET", f"/projects/{project}").json()["project_id"]
    pushed = V2(world.app).push_image(f"{project}/gone", "1")
    lid = label_id(admin("POST", "/labels", json={"name": "doomed", "scope": "p", "project_id": project_id}
                         ).headers["Location"])
    base = f"/projects/{project}/repositories/gone/artifacts"
    assert admin("POST", f"{base}/1/labels", json={"id": lid}).status_code == 200
    v2 = V2(world.app)
    manifest = json.loads(pushed.body)
    blobs = [v2.request("GET", f"/v2/{project}/gone/blobs/{d['digest']}").content
             for d in [manifest["config"], *manifest["layers"]]]
    assert admin("DELETE", f"{base}/1").status_code == 200
    # the same manifest pushed again (its blobs too: deleting the artifact dropped the repository's links to
    # them, as Harbor does) is a new artifact, without the old one's labels
    for blob in blobs:
        v2.push_blob(f"{project}/gone", blob)
    v2.put_manifest(f"{project}/gone", "1", pushed.body, pushed.media_type)
    assert admin("GET", f"{base}/1").json()["labels"] == []
    assert admin("DELETE", f"/projects/{project}/repositories/gone").status_code == 200
    assert admin("DELETE", f"/projects/{project}").status_code == 200
    assert admin("GET", f"/labels/{lid}").status_code == 404
