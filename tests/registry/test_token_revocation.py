"""Bearer tokens stop working the moment the account they were issued to may no longer use them.

A token lives `token_expiry_seconds` (30 minutes by default); without these
checks a robot an operator disabled, refreshed or cut back because its secret
leaked kept pushing until every token it had already fetched ran out. Each
test captures a token the way a client gets it (from /service/token, with
Basic credentials), changes the account, and replays the token on /v2/.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives import serialization

from registry.dbengine import PostgresDatabase
from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.pgengine import metadata
from tests.registry.conftest import SourceImages, require, run
from tests.registry.harborapi import Harbor, RobotAccount, errors, token_claims

# The order of P-256's base point (see tests/registry/test_tokens.py).
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Long and mixed, so that it passes any password policy the CLI enforces.
MEMBER_PASSWORD = "Member-Passw0rd-for-revocation-tests"


def _token(appliance: Appliance, auth: tuple[str, str] | None, *scopes: str) -> str:
    r = requests.get(f"{appliance.url}/service/token", params={"service": "harbor-registry", "scope": list(scopes)},
                     auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _bearer(appliance: Appliance, robot: RobotAccount | tuple[str, str], repository: str) -> dict[str, str]:
    auth = robot.auth if isinstance(robot, RobotAccount) else robot
    token = _token(appliance, auth, f"repository:{repository}:pull,push")
    granted = token_claims(token)["access"]
    assert granted == [{"type": "repository", "name": repository, "actions": ["pull", "push"]}], granted
    return {"Authorization": f"Bearer {token}"}


def _tags(appliance: Appliance, repository: str, headers: dict[str, str]) -> requests.Response:
    return requests.get(f"{appliance.url}/v2/{repository}/tags/list", headers=headers, timeout=30)


def _refused(r: requests.Response, *words: str) -> None:
    """A 401 in the OCI error shape with a challenge, whose message says why (each of `words`)."""
    assert r.status_code == 401, (r.status_code, r.text)
    assert errors(r) == ["UNAUTHORIZED"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
    message = r.json()["errors"][0]["message"]
    for word in words:
        assert word in message, message


def _user(appliance: Appliance, admin: Harbor, project: str, role: int) -> tuple[tuple[str, str], int]:
    """A new user (through the real CLI) who is a member of `project` with `role`: (credentials, member id)."""
    name = f"u{uuid.uuid4().hex[:8]}"
    cargohold("admin", "add-user", "--data-dir", appliance.data_dir, name,
              env={"CARGOHOLD_NEW_PASSWORD": MEMBER_PASSWORD})
    r = admin("POST", f"/projects/{project}/members", json={"role_id": role, "member_user": {"username": name}})
    assert r.status_code == 201, r.text
    member_id = int(r.headers["Location"].rsplit("/", 1)[1])
    return (name, MEMBER_PASSWORD), member_id


def _push_start(appliance: Appliance, repository: str, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{appliance.url}/v2/{repository}/blobs/uploads/", headers=headers, timeout=30)


def test_a_token_of_a_disabled_robot_is_refused_and_works_again_once_re_enabled(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    robot = admin.project_robot(project, ("pull", "push"))
    repository = f"{project}/img"
    bearer = _bearer(appliance, robot, repository)
    assert _push_start(appliance, repository, bearer).status_code == 202
    shown = admin("GET", f"/robots/{robot.id}").json()
    assert admin("PUT", f"/robots/{robot.id}", json={**shown, "disable": True}).status_code == 200

    r = _push_start(appliance, repository, bearer)
    assert r.status_code == 401 and errors(r) == ["UNAUTHORIZED"]
    assert "disabled" in r.json()["errors"][0]["message"]
    r = requests.get(f"{appliance.url}/v2/{repository}/tags/list", headers=bearer, timeout=30)
    assert r.status_code == 401

    assert admin("PUT", f"/robots/{robot.id}", json={**shown, "disable": False}).status_code == 200
    assert _push_start(appliance, repository, bearer).status_code == 202


def test_a_token_of_a_deleted_robot_is_refused(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    robot = admin.project_robot(project, ("pull", "push"))
    repository = f"{project}/img"
    bearer = _bearer(appliance, robot, repository)
    assert _push_start(appliance, repository, bearer).status_code == 202
    assert admin("DELETE", f"/robots/{robot.id}").status_code == 200
    r = _push_start(appliance, repository, bearer)
    assert r.status_code == 401 and "no longer exists" in r.json()["errors"][0]["message"]


def test_a_token_from_before_a_secret_refresh_is_refused(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    robot = admin.project_robot(project, ("pull", "push"))
    repository = f"{project}/img"
    bearer = _bearer(appliance, robot, repository)
    assert _push_start(appliance, repository, bearer).status_code == 202
    r = admin("PATCH", f"/robots/{robot.id}", json={})
    assert r.status_code == 200, r.text
    _refused(_push_start(appliance, repository, bearer), "secret", robot.name)
    _refused(_tags(appliance, repository, bearer))
    # A token fetched with the new secret works.
    fresh = _bearer(appliance, (robot.name, r.json()["secret"]), repository)
    assert _push_start(appliance, repository, fresh).status_code == 202


def test_a_deleted_robots_token_is_refused_also_when_a_new_robot_takes_its_name(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    short = f"r{uuid.uuid4().hex[:8]}"
    robot = admin.project_robot(project, ("pull", "push"), name=short)
    repository = f"{project}/img"
    bearer = _bearer(appliance, robot, repository)
    assert _push_start(appliance, repository, bearer).status_code == 202
    assert admin("DELETE", f"/robots/{robot.id}").status_code == 200
    successor = admin.project_robot(project, ("pull", "push"), name=short)
    assert successor.name == robot.name
    _refused(_push_start(appliance, repository, bearer), robot.name)
    _refused(_tags(appliance, repository, bearer))
    assert _push_start(appliance, repository, _bearer(appliance, successor, repository)).status_code == 202


def test_a_token_grants_no_more_than_its_robot_may_do_now(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    robot = admin.project_robot(project, ("pull", "push"))
    repository = f"{project}/img"
    bearer = _bearer(appliance, robot, repository)
    assert _push_start(appliance, repository, bearer).status_code == 202
    shown = admin("GET", f"/robots/{robot.id}").json()
    pull_only = [{"kind": "project", "namespace": project, "access": [{"resource": "repository", "action": "pull"}]}]
    assert admin("PUT", f"/robots/{robot.id}", json={**shown, "permissions": pull_only}).status_code == 200
    _refused(_push_start(appliance, repository, bearer), "no longer", "push")
    assert _tags(appliance, repository, bearer).status_code == 404  # pull is still held: the repository is empty


def test_a_removed_or_downgraded_members_token_loses_the_access_at_once(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    repository = f"{project}/img"
    developer, _ = _user(appliance, admin, project, 2)
    guest, guest_member = _user(appliance, admin, project, 2)
    dev_bearer = _bearer(appliance, developer, repository)
    guest_bearer = _bearer(appliance, guest, repository)
    for bearer in (dev_bearer, guest_bearer):
        assert _push_start(appliance, repository, bearer).status_code == 202
    # Downgraded to guest (pull only): the push the token names is refused, its pull still works.
    assert admin("PUT", f"/projects/{project}/members/{guest_member}", json={"role_id": 3}).status_code == 200
    _refused(_push_start(appliance, repository, guest_bearer), "no longer", "push")
    assert _tags(appliance, repository, guest_bearer).status_code == 404
    # Removed from the project: nothing.
    assert admin("DELETE", f"/projects/{project}/members/{guest_member}").status_code == 200
    _refused(_tags(appliance, repository, guest_bearer), "no longer", "pull")
    assert _push_start(appliance, repository, dev_bearer).status_code == 202  # the other member is untouched


def test_a_token_from_before_a_password_change_is_refused(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    repository = f"{project}/img"
    user, _ = _user(appliance, admin, project, 2)
    bearer = _bearer(appliance, user, repository)
    assert _push_start(appliance, repository, bearer).status_code == 202
    # The same password again: what counts is that it was set anew (a leaked token goes with the old one).
    cargohold("admin", "set-password", "--data-dir", appliance.data_dir, "--username", user[0],
              env={"CARGOHOLD_NEW_PASSWORD": MEMBER_PASSWORD})
    _refused(_push_start(appliance, repository, bearer), "password", user[0])
    _refused(_tags(appliance, repository, bearer))
    assert _push_start(appliance, repository, _bearer(appliance, user, repository)).status_code == 202


def test_an_anonymous_token_stops_pulling_once_the_project_is_private(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=True)
    repository = f"{project}/img"
    token = _token(appliance, None, f"repository:{repository}:pull")
    bearer = {"Authorization": f"Bearer {token}"}
    assert _tags(appliance, repository, bearer).status_code == 404
    r = admin("PUT", f"/projects/{project}", json={"metadata": {"public": "false"}})
    assert r.status_code == 200, r.text
    _refused(_tags(appliance, repository, bearer), "anonymous", "no longer")


def _signing_key_pem(appliance: Appliance) -> bytes:
    """The appliance's token-signing key: keys/ beside SQLite, the shared_secrets table with PostgreSQL."""
    with metadata(appliance.data_dir) as db:
        if isinstance(db, PostgresDatabase):
            row = db.execute("SELECT value FROM shared_secrets WHERE name = 'token-signing-key.pem'").fetchone()
            return bytes(row[0])
    return (appliance.data_dir / "keys" / "token-signing-key.pem").read_bytes()


def test_a_token_that_does_not_name_its_account_is_refused(appliance: Appliance) -> None:
    """A token in the old shape (no holder claim), signed with the appliance's own key: issued before an upgrade."""
    key = serialization.load_pem_private_key(_signing_key_pem(appliance), password=None)
    now = int(time.time())
    old = jwt.encode({"iss": "harbor-token-issuer", "sub": "admin", "aud": "harbor-registry", "iat": now,
                      "nbf": now - 5, "exp": now + 600, "jti": uuid.uuid4().hex,
                      "access": [{"type": "registry", "name": "catalog", "actions": ["*"]}]},
                     key, algorithm="ES256")  # type: ignore[arg-type]
    # In the one spelling the appliance accepts (low s), so that only the missing claim can be refused.
    head, _, sig = old.rpartition(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    s = int.from_bytes(raw[32:], "big")
    if s > P256_N // 2:
        low = base64.urlsafe_b64encode(raw[:32] + (P256_N - s).to_bytes(32, "big")).rstrip(b"=").decode()
        old = f"{head}.{low}"
    r = requests.get(f"{appliance.url}/v2/_catalog", headers={"Authorization": f"Bearer {old}"}, timeout=30)
    _refused(r, "new one")


def test_skopeo_replaying_a_captured_token_is_refused_after_the_secret_refresh(
        appliance: Appliance, source: SourceImages, tmp_path: Path) -> None:
    """skopeo itself presents the captured token (--registry-token): the refusal is what a real client sees."""
    require("skopeo")
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    robot = admin.project_robot(project, ("pull", "push"))
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    ref = f"docker://{appliance.host}/{project}/img:1"
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", robot.creds, f"oci:{source.path}:multi:1", ref,
        env=env)
    token = _token(appliance, robot.auth, f"repository:{project}/img:pull")
    inspect = ("skopeo", "inspect", "--raw", "--tls-verify=false", "--registry-token", token, ref)
    manifest = json.loads(run(*inspect, env=env).stdout)
    assert manifest == json.loads(source.layout.read(source.image))
    assert admin("PATCH", f"/robots/{robot.id}", json={}).status_code == 200
    refused = run(*inspect, env=env, check=False)
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr, refused.stderr
