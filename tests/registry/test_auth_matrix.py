"""The authorization matrix: every write endpoint, called as every kind of identity.

Each cell builds fresh resources as the admin, makes one call as the
identity, and checks the answer: allowed calls succeed with the endpoint's
status; denied ones answer 401 (no valid credentials) or 403 (valid but not
enough), and leave the resource exactly as it was.

The appliance here is its own (failed-login limits off, so the wrong-password
row is not turned into 429s by the rows before it). The expired robot is
made by moving its expiry into the past in SQLite, standing in for the
passing of time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.appliance import Appliance, start_appliance
from tests.pgengine import env_for, metadata
from tests.registry.harborapi import API, Harbor, RobotAccount
from tests.registry.v2client import V2, sha256

MEMBER_PASSWORD = "Member-Pass-1"


@dataclass
class World:
    appliance: Appliance
    v2: V2
    admin: Harbor
    project: str  # private project A
    identities: dict[str, tuple[str, str] | None]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("matrix") / "data"
    app = start_appliance(data, env={"CARGOHOLD_LOGIN_FAILURES_PER_USER": "0",
                                     "CARGOHOLD_LOGIN_FAILURES_PER_ADDRESS": "0"})
    try:
        admin = Harbor(app, app.admin)
        project = admin.create_project(public=False)
        other = admin.create_project(public=False)
        full = admin.project_robot(project, ("pull", "push", "delete"), "full")
        pusher = admin.project_robot(project, ("pull", "push"), "pusher")
        puller = admin.project_robot(project, ("pull",), "puller")
        stranger = admin.project_robot(other, ("pull", "push", "delete"), "stranger")
        expired = admin.project_robot(project, ("pull", "push", "delete"), "expired")
        disabled = admin.project_robot(project, ("pull", "push", "delete"), "disabled")
        r = admin("GET", f"/robots/{disabled.id}")
        assert admin("PUT", f"/robots/{disabled.id}", json={**r.json(), "disable": True}).status_code == 200
        with metadata(data) as db:
            db.execute("UPDATE robots SET expires_at = 1 WHERE id = ?", [expired.id])
        for user, role in (("dev", 2), ("guest", 3)):
            subprocess.run([sys.executable, "-m", "web.cli", "admin", "add-user", "--data-dir", str(data),
                            user], env={**os.environ, **env_for(["--data-dir", data]),
                                        "CARGOHOLD_NEW_PASSWORD": MEMBER_PASSWORD},
                           check=True, capture_output=True, cwd=Path(__file__).resolve().parents[2])
            r = admin("POST", f"/projects/{project}/members",
                      json={"role_id": role, "member_user": {"username": user}})
            assert r.status_code == 201, r.text
        identities: dict[str, tuple[str, str] | None] = {
            "admin": app.admin, "robot-full": full.auth, "robot-push": pusher.auth,
            "developer": ("dev", MEMBER_PASSWORD),
            "robot-pull": puller.auth, "guest": ("guest", MEMBER_PASSWORD), "robot-other-project": stranger.auth,
            "robot-expired": expired.auth, "robot-disabled": disabled.auth, "wrong-password": ("admin", "Wrong-pass-1"),
            "anonymous": None,
        }
        yield World(app, V2(app), admin, project, identities)
    finally:
        app.stop()


# What each identity may do in project A: push, delete, and admin (system-level management).
MAY = {
    "admin": {"push", "delete", "admin"},
    "robot-full": {"push", "delete"},
    "robot-push": {"push"},
    "developer": {"push"},
    "robot-pull": set(),
    "guest": set(),
    "robot-other-project": set(),
    "robot-expired": set(),
    "robot-disabled": set(),
    "wrong-password": set(),
    "anonymous": set(),
}
UNAUTHENTICATED = {"robot-expired", "robot-disabled", "wrong-password", "anonymous"}


@dataclass(frozen=True)
class Case:
    """One write endpoint: what it needs, the call, its success status, and whether the state is unchanged."""

    needs: str
    prepare: Callable[[World], dict[str, str]]
    call: Callable[[World, dict[str, str], tuple[str, str] | None], requests.Response]
    status: int
    unchanged: Callable[[World, dict[str, str]], bool]


def _repo(w: World) -> str:
    return f"{w.project}/m{uuid.uuid4().hex[:10]}"


def _image(w: World) -> dict[str, str]:
    repo = _repo(w)
    pushed = w.v2.push_image(repo, "1")
    return {"repo": repo, "inner": repo.split("/", 1)[1], "digest": pushed.digest, "body": pushed.body.decode(),
            "type": pushed.media_type}


def _blob(w: World) -> dict[str, str]:
    repo = _repo(w)
    data = os.urandom(64)
    return {"repo": repo, "digest": w.v2.push_blob(repo, data)}


def _upload(w: World) -> dict[str, str]:
    repo = _repo(w)
    return {"repo": repo, "location": w.v2.start_upload(repo)}


def _project(w: World) -> dict[str, str]:
    return {"name": w.admin.create_project(public=False)}


def _robot(w: World) -> dict[str, str]:
    robot: RobotAccount = w.admin.project_robot(w.project, ("pull",))
    return {"id": str(robot.id), "name": robot.name, "secret": robot.secret}


def _labelled(w: World, attach: bool) -> dict[str, str]:
    """An image and a global label (on the image when `attach`)."""
    state = _image(w)
    r = w.admin("POST", "/labels", json={"name": f"l{uuid.uuid4().hex[:10]}", "scope": "g"})
    assert r.status_code == 201, r.text
    state["label"] = r.headers["Location"].rsplit("/", 1)[1]
    if attach:
        path = f"/projects/{w.project}/repositories/{state['inner']}/artifacts/1/labels"
        assert w.admin("POST", path, json={"id": int(state["label"])}).status_code == 200
    return state


def _label_ids(w: World, s: dict[str, str]) -> list[str]:
    art = w.admin("GET", f"/projects/{w.project}/repositories/{s['inner']}/artifacts/1").json()
    return [str(label["id"]) for label in art["labels"]]


def _req(w: World, auth: tuple[str, str] | None, method: str, path: str, **kw: object) -> requests.Response:
    return w.v2.request(method, path, auth=auth, **kw)


def _status(w: World, method: str, path: str) -> int:
    return w.v2.request(method, path).status_code


def _api(path: str) -> str:
    return f"{API}{path}"


def _art(s: dict[str, str], w: World, tail: str = "") -> str:
    return _api(f"/projects/{w.project}/repositories/{s['inner'].replace('/', '%252F')}/artifacts/1{tail}")


CASES: dict[str, Case] = {
    "v2 start upload": Case(
        "push", lambda w: {"repo": _repo(w)},
        lambda w, s, a: _req(w, a, "POST", f"/v2/{s['repo']}/blobs/uploads/"), 202,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/tags/list") == 404),
    "v2 monolithic blob upload": Case(
        "push", lambda w: {"repo": _repo(w)},
        lambda w, s, a: _req(w, a, "POST", f"/v2/{s['repo']}/blobs/uploads/", params={"digest": sha256(b"x" * 9)},
                             data=b"x" * 9), 201,
        lambda w, s: _status(w, "HEAD", f"/v2/{s['repo']}/blobs/{sha256(b'x' * 9)}") == 404),
    "v2 upload chunk": Case(
        "push", _upload, lambda w, s, a: _req(w, a, "PATCH", s["location"], data=b"abc"), 202,
        lambda w, s: w.v2.request("GET", s["location"]).headers.get("Range") == "0-0"),
    "v2 upload finish": Case(
        "push", _upload,
        lambda w, s, a: _req(w, a, "PUT", s["location"], params={"digest": sha256(b"fin" + s["repo"].encode())},
                             data=b"fin" + s["repo"].encode()), 201,
        lambda w, s: _status(w, "GET", s["location"]) == 204),
    "v2 upload cancel": Case(
        "push", _upload, lambda w, s, a: _req(w, a, "DELETE", s["location"]), 204,
        lambda w, s: _status(w, "GET", s["location"]) == 204),
    "v2 put manifest": Case(
        "push", _image,
        lambda w, s, a: _req(w, a, "PUT", f"/v2/{s['repo']}/manifests/2", data=s["body"].encode(),
                             headers={"Content-Type": s["type"]}), 201,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/manifests/2") == 404),
    "v2 delete manifest": Case(
        "delete", _image, lambda w, s, a: _req(w, a, "DELETE", f"/v2/{s['repo']}/manifests/{s['digest']}"), 202,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/manifests/1") == 200),
    "v2 delete tag": Case(
        "delete", _image, lambda w, s, a: _req(w, a, "DELETE", f"/v2/{s['repo']}/manifests/1"), 202,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/manifests/1") == 200),
    "v2 delete blob": Case(
        "delete", _blob, lambda w, s, a: _req(w, a, "DELETE", f"/v2/{s['repo']}/blobs/{s['digest']}"), 202,
        lambda w, s: _status(w, "HEAD", f"/v2/{s['repo']}/blobs/{s['digest']}") == 200),
    "api create project": Case(
        "admin", lambda w: {"name": f"n{uuid.uuid4().hex[:10]}"},
        lambda w, s, a: _req(w, a, "POST", _api("/projects"), json={"project_name": s["name"]}), 201,
        lambda w, s: w.admin("HEAD", f"/projects?project_name={s['name']}").status_code == 404),
    "api update project": Case(
        "admin", _project,
        lambda w, s, a: _req(w, a, "PUT", _api(f"/projects/{s['name']}"), json={"metadata": {"public": "true"}}),
        200, lambda w, s: w.admin("GET", f"/projects/{s['name']}").json()["metadata"]["public"] == "false"),
    "api delete project": Case(
        "admin", _project, lambda w, s, a: _req(w, a, "DELETE", _api(f"/projects/{s['name']}")), 200,
        lambda w, s: w.admin("GET", f"/projects/{s['name']}").status_code == 200),
    "api update repository": Case(
        "push", _image,
        lambda w, s, a: _req(w, a, "PUT", _api(f"/projects/{w.project}/repositories/"
                                               f"{s['inner'].replace('/', '%252F')}"), json={"description": "new"}),
        200, lambda w, s: w.admin("GET", f"/projects/{w.project}/repositories/"
                                         f"{s['inner'].replace('/', '%252F')}").json()["description"] == ""),
    "api delete repository": Case(
        "delete", _image,
        lambda w, s, a: _req(w, a, "DELETE", _api(f"/projects/{w.project}/repositories/"
                                                  f"{s['inner'].replace('/', '%252F')}")), 200,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/manifests/1") == 200),
    "api delete artifact": Case(
        "delete", _image, lambda w, s, a: _req(w, a, "DELETE", _art(s, w)), 200,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/manifests/{s['digest']}") == 200),
    "api create tag": Case(
        "push", _image, lambda w, s, a: _req(w, a, "POST", _art(s, w, "/tags"), json={"name": "t2"}), 201,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/manifests/t2") == 404),
    "api delete tag": Case(
        "delete", _image, lambda w, s, a: _req(w, a, "DELETE", _art(s, w, "/tags/1")), 200,
        lambda w, s: _status(w, "GET", f"/v2/{s['repo']}/manifests/1") == 200),
    "api create robot": Case(
        "admin", lambda w: {"name": f"c{uuid.uuid4().hex[:8]}"},
        lambda w, s, a: _req(w, a, "POST", _api("/robots"), json={
            "name": s["name"], "level": "project", "duration": -1, "permissions": [
                {"kind": "project", "namespace": w.project,
                 "access": [{"resource": "repository", "action": "pull"}]}]}), 201,
        lambda w, s: w.admin("GET", "/robots", params={"q": f"name=~{s['name']}"}).json() == []),
    "api update robot": Case(
        "admin", _robot,
        lambda w, s, a: _req(w, a, "PUT", _api(f"/robots/{s['id']}"), json={"description": "changed"}), 200,
        lambda w, s: w.admin("GET", f"/robots/{s['id']}").json()["description"] == ""),
    "api refresh robot secret": Case(
        "admin", _robot, lambda w, s, a: _req(w, a, "PATCH", _api(f"/robots/{s['id']}"), json={}), 200,
        lambda w, s: w.v2.request("GET", "/v2/", auth=(s["name"], s["secret"])).status_code == 200),
    "api delete robot": Case(
        "admin", _robot, lambda w, s, a: _req(w, a, "DELETE", _api(f"/robots/{s['id']}")), 200,
        lambda w, s: w.admin("GET", f"/robots/{s['id']}").status_code == 200),
    "api add artifact label": Case(
        "push", lambda w: _labelled(w, False),
        lambda w, s, a: _req(w, a, "POST", _art(s, w, "/labels"), json={"id": int(s["label"])}), 200,
        lambda w, s: _label_ids(w, s) == []),
    "api remove artifact label": Case(
        "push", lambda w: _labelled(w, True),
        lambda w, s, a: _req(w, a, "DELETE", _art(s, w, f"/labels/{s['label']}")), 200,
        lambda w, s: _label_ids(w, s) == [s["label"]]),
    "api copy artifact": Case(
        "push", lambda w: {**_image(w), "target": f"c{uuid.uuid4().hex[:10]}"},
        lambda w, s, a: _req(w, a, "POST", _api(f"/projects/{w.project}/repositories/{s['target']}/artifacts"),
                             params={"from": f"{s['repo']}:1"}), 201,
        lambda w, s: _status(w, "GET", f"/v2/{w.project}/{s['target']}/manifests/1") == 404),
    "api create project label": Case(
        "admin", lambda w: {"name": f"p{uuid.uuid4().hex[:10]}"},
        lambda w, s, a: _req(w, a, "POST", _api("/labels"), json={
            "name": s["name"], "scope": "p",
            "project_id": w.admin("GET", f"/projects/{w.project}").json()["project_id"]}), 201,
        lambda w, s: s["name"] not in str(w.admin("GET", "/labels", params={
            "scope": "p", "project_id": w.admin("GET", f"/projects/{w.project}").json()["project_id"],
            "page_size": 100}).json())),
    "api delete global label": Case(
        "admin", lambda w: _labelled(w, False),
        lambda w, s, a: _req(w, a, "DELETE", _api(f"/labels/{s['label']}")), 200,
        lambda w, s: w.admin("GET", f"/labels/{s['label']}").status_code == 200),
    "api add member": Case(
        "admin", _project,
        lambda w, s, a: _req(w, a, "POST", _api(f"/projects/{s['name']}/members"),
                             json={"role_id": 2, "member_user": {"username": "guest"}}), 201,
        lambda w, s: all(m["entity_name"] != "guest" for m in w.admin("GET", f"/projects/{s['name']}/members").json())),
}


@pytest.mark.parametrize("identity", list(MAY))
@pytest.mark.parametrize("case_name", list(CASES))
def test_write_endpoint(world: World, case_name: str, identity: str) -> None:
    case = CASES[case_name]
    state = case.prepare(world)
    r = case.call(world, state, world.identities[identity])
    if case.needs in MAY[identity]:
        assert r.status_code == case.status, f"{identity} should be allowed to {case_name}: {r.status_code} {r.text}"
        return
    expected = {401} if identity in UNAUTHENTICATED else {401, 403}
    assert r.status_code in expected, f"{identity} should be refused {case_name}: {r.status_code} {r.text}"
    assert r.json()["errors"][0]["code"] in ("UNAUTHORIZED", "DENIED", "FORBIDDEN"), r.text
    assert case.unchanged(world, state), f"{identity}'s refused {case_name} changed the state"


def test_every_write_is_in_the_audit_log_with_who_and_where(world: World) -> None:
    state = _image(world)
    full = world.identities["robot-full"]
    assert _req(world, full, "DELETE", _art(state, world, "/tags/1")).status_code == 200
    assert _req(world, full, "DELETE", f"/v2/{state['repo']}/manifests/{state['digest']}").status_code == 202
    entries = world.admin("GET", "/audit-logs", params={"page_size": 100}).json()
    mine = [(e["username"], e["operation"], e["resource_type"], e["resource"]) for e in entries
            if state["repo"] in e["resource"]]
    assert ("admin", "create", "artifact", f"{state['repo']}:1") in mine
    assert full is not None
    assert (full[0], "delete", "tag", f"{state['repo']}:1") in mine
    assert (full[0], "delete", "artifact", f"{state['repo']}@{state['digest']}") in mine
    assert all(e["source_ip"] == "127.0.0.1" and e["op_time"].endswith("Z") for e in entries)
    puller = world.identities["robot-pull"]
    assert puller is not None
    refused = [e for e in entries if e["username"] in ("anonymous", "guest", puller[0])]
    assert refused == [], "a refused call reached the audit log"
