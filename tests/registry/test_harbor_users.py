"""Harbor's user API on the real appliance: list, search, create, get, update, delete, password, sysadmin, permissions.

harborapi's HarborAsyncClient drives every operation as an independent
client (its pydantic models are Harbor's swagger); requests checks exact
statuses and bodies. The same password policy applies as on the command
line, a deleted user's tokens stop working, and nobody deletes themselves
or the last administrator.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from harborapi import HarborAsyncClient
from harborapi.exceptions import BadRequest, Forbidden, NotFound
from harborapi.models import UserCreationReq, UserProfile, UserResp

from tests.appliance import Appliance
from tests.pgengine import env_for
from tests.registry.harborapi import Harbor

PASSWORD = "Users-API-Passw0rd-ok"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _client(appliance: Appliance, auth: tuple[str, str]) -> HarborAsyncClient:
    return HarborAsyncClient(url=f"{appliance.url}/api/v2.0", username=auth[0], secret=auth[1])


def _name() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


def _create(admin: Harbor, username: str, password: str = PASSWORD, **profile: str) -> int:
    r = admin("POST", "/users", json={"username": username, "password": password, **profile})
    assert r.status_code == 201, r.text
    assert r.headers["Location"].startswith("/api/v2.0/users/")
    return int(r.headers["Location"].rsplit("/", 1)[1])


@pytest.fixture
def admin(appliance: Appliance) -> Harbor:
    return Harbor(appliance, appliance.admin)


def test_the_whole_user_lifecycle_through_harborapi(appliance: Appliance, admin: Harbor) -> None:
    username = _name()

    async def lifecycle() -> dict[str, Any]:
        client = _client(appliance, appliance.admin)
        location = await client.create_user(UserCreationReq(username=username, password=PASSWORD,
                                                            email=f"{username}@example.org", realname="Ada",
                                                            comment="field tech"))
        user_id = int(location.rsplit("/", 1)[1])
        got = await client.get_user(user_id)
        by_name = await client.get_user_by_username(username)  # /users/search, then /users/{id}
        listed = await client.get_users(query=f"username={username}")
        await client.update_user(user_id, UserProfile(email=f"{username}@example.net", realname="Ada L.",
                                                      comment=""))
        updated = await client.get_user(user_id)
        await client.set_user_admin(user_id, True)
        promoted = await client.get_user(user_id)
        await client.set_user_password(user_id, new_password="Another-Passw0rd-for-ada")
        await client.set_user_admin(user_id, False)
        own = _client(appliance, (username, "Another-Passw0rd-for-ada"))
        current = await own.get_current_user()
        await client.delete_user(user_id)
        try:
            await client.get_user(user_id)
            gone = False
        except NotFound:
            gone = True
        return {"id": user_id, "got": got, "by_name": by_name, "listed": listed, "updated": updated,
                "promoted": promoted, "current": current, "gone": gone}

    out = asyncio.run(lifecycle())
    got: UserResp = out["got"]
    assert (got.user_id, got.username, got.email, got.realname, got.comment, got.sysadmin_flag) == (
        out["id"], username, f"{username}@example.org", "Ada", "field tech", False)
    assert got.creation_time is not None and got.update_time is not None
    assert out["by_name"].user_id == out["id"]
    assert [u.username for u in out["listed"]] == [username]
    assert (out["updated"].email, out["updated"].realname, out["updated"].comment) == (
        f"{username}@example.net", "Ada L.", "")
    assert out["promoted"].sysadmin_flag is True
    assert out["current"].username == username and out["current"].sysadmin_flag is False
    assert out["gone"]


def test_exact_shapes_and_paging(appliance: Appliance, admin: Harbor) -> None:
    stem = f"page{uuid.uuid4().hex[:6]}"
    ids = [_create(admin, f"{stem}-{i}") for i in range(3)]
    r = admin("GET", "/users", params={"q": f"username=~{stem}", "page_size": 2})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.headers["X-Total-Count"] == "3" and 'rel="next"' in r.headers["Link"]
    first = r.json()[0]
    assert set(first) == {"user_id", "username", "email", "realname", "comment", "sysadmin_flag",
                          "admin_role_in_auth", "creation_time", "update_time"}
    assert [u["user_id"] for u in r.json()] == ids[:2]
    r = admin("GET", "/users/search", params={"username": stem})
    assert r.status_code == 200 and r.json() == [{"user_id": i, "username": f"{stem}-{n}"}
                                                 for n, i in enumerate(ids)]
    assert admin("GET", "/users/search").status_code == 400
    password_free = {k: v for k, v in admin("GET", f"/users/{ids[0]}").json().items() if "pass" in k}
    assert password_free == {}


@pytest.mark.parametrize("password, fragment", [
    ("short-1A", "too short"),
    ("aaaaaaaaaaaaaaaa", "one character repeated"),
])
def test_the_api_applies_the_appliance_password_policy(admin: Harbor, password: str, fragment: str) -> None:
    username = _name()
    r = admin("POST", "/users", json={"username": username, "password": password})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["code"] == "BAD_REQUEST"
    assert fragment in r.json()["errors"][0]["message"]
    assert password not in r.text  # the refusal never quotes the password
    assert admin("GET", "/users/search", params={"username": username}).json() == []


def test_password_equal_to_the_name_is_refused_on_change_too(admin: Harbor) -> None:
    username = "policy" + uuid.uuid4().hex[:10]
    user_id = _create(admin, username)
    r = admin("PUT", f"/users/{user_id}/password", json={"new_password": username})
    assert r.status_code == 400 and "user name" in r.json()["errors"][0]["message"], r.text


def test_create_refusals(admin: Harbor) -> None:
    username = _name()
    _create(admin, username, email=f"{username}@example.org")
    cases = [({"username": username, "password": PASSWORD}, 409, "already exists"),
             ({"username": _name(), "password": PASSWORD, "email": f"{username}@EXAMPLE.org"}, 409, "email"),
             ({"username": "robot$x", "password": PASSWORD}, 400, "invalid username"),
             ({"username": _name()}, 400, "password is required"),
             ({"username": _name(), "password": PASSWORD, "email": "not-an-address"}, 400, "email"),
             ({"password": PASSWORD}, 400, "username is required")]
    for body, status, fragment in cases:
        r = admin("POST", "/users", json=body)
        assert r.status_code == status, (body, r.text)
        assert fragment in r.json()["errors"][0]["message"], (body, r.text)


def test_own_password_needs_the_old_one_an_admin_does_not(appliance: Appliance, admin: Harbor) -> None:
    username = _name()
    user_id = _create(admin, username)
    me = Harbor(appliance, (username, PASSWORD))
    r = me("PUT", f"/users/{user_id}/password", json={"new_password": "Brand-new-Passw0rd-1"})
    assert r.status_code == 400 and "old_password" in r.json()["errors"][0]["message"]
    r = me("PUT", f"/users/{user_id}/password", json={"old_password": "Wrong-Passw0rd-xyz",
                                                      "new_password": "Brand-new-Passw0rd-1"})
    assert r.status_code == 403, r.text
    r = me("PUT", f"/users/{user_id}/password", json={"old_password": PASSWORD, "new_password": PASSWORD})
    assert r.status_code == 400, r.text

    async def change_own() -> None:
        await _client(appliance, (username, PASSWORD)).set_user_password(
            user_id, new_password="Brand-new-Passw0rd-1", old_password=PASSWORD)

    asyncio.run(change_own())
    assert me("GET", "/users/current").status_code == 401  # the old password no longer works
    me = Harbor(appliance, (username, "Brand-new-Passw0rd-1"))
    assert me("GET", "/users/current").json()["username"] == username
    # An administrator sets another user's password without knowing the old one.
    assert admin("PUT", f"/users/{user_id}/password", json={"new_password": "Admin-set-Passw0rd-2"}).status_code == 200
    assert Harbor(appliance, (username, "Admin-set-Passw0rd-2"))("GET", "/users/current").status_code == 200


def test_users_see_and_change_only_themselves(appliance: Appliance, admin: Harbor) -> None:
    alice, bob = _name(), _name()
    alice_id, bob_id = _create(admin, alice), _create(admin, bob)
    as_alice = Harbor(appliance, (alice, PASSWORD))
    assert as_alice("GET", f"/users/{alice_id}").status_code == 200
    assert as_alice("PUT", f"/users/{alice_id}", json={"realname": "Alice"}).status_code == 200
    assert as_alice("GET", f"/users/{alice_id}").json()["realname"] == "Alice"
    for method, path, body in (("GET", f"/users/{bob_id}", None), ("PUT", f"/users/{bob_id}", {"realname": "x"}),
                               ("PUT", f"/users/{bob_id}/password", {"new_password": "Taken-over-Passw0rd"}),
                               ("DELETE", f"/users/{bob_id}", None), ("GET", "/users", None),
                               ("POST", "/users", {"username": _name(), "password": PASSWORD}),
                               ("PUT", f"/users/{alice_id}/sysadmin", {"sysadmin_flag": True})):
        r = as_alice(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
    assert as_alice("GET", "/users/search", params={"username": bob}).json() == [{"user_id": bob_id,
                                                                                  "username": bob}]
    anonymous = Harbor(appliance, None)
    assert anonymous("GET", "/users/search", params={"username": bob}).status_code == 401
    assert anonymous("GET", "/users/current").status_code == 401

    async def forbidden_through_harborapi() -> bool:
        try:
            await _client(appliance, (alice, PASSWORD)).get_users()
        except Forbidden:
            return True
        return False

    assert asyncio.run(forbidden_through_harborapi())


def test_deleting_a_user_revokes_its_tokens_and_memberships(appliance: Appliance, admin: Harbor) -> None:
    username = _name()
    user_id = _create(admin, username)
    project = admin.create_project()
    assert admin("POST", f"/projects/{project}/members",
                 json={"role_id": 2, "member_user": {"username": username}}).status_code == 201
    r = requests.get(f"{appliance.url}/service/token", auth=(username, PASSWORD), timeout=30,
                     params={"service": "harbor-registry", "scope": f"repository:{project}/app:pull,push"})
    token = r.json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{appliance.url}/v2/{project}/app/tags/list", headers=bearer, timeout=30).status_code == 404
    assert admin("DELETE", f"/users/{user_id}").status_code == 200
    r = requests.get(f"{appliance.url}/v2/{project}/app/tags/list", headers=bearer, timeout=30)
    assert r.status_code == 401 and "no longer exists" in r.json()["errors"][0]["message"], r.text
    members = admin("GET", f"/projects/{project}/members").json()
    assert [m["entity_name"] for m in members] == ["admin"]  # the creator; the deleted user is gone
    assert Harbor(appliance, (username, PASSWORD))("GET", "/users/current").status_code == 401
    assert admin("DELETE", f"/users/{user_id}").status_code == 404
    # The name is free again, for a new account that inherits nothing.
    _create(admin, username)
    assert [m["entity_name"] for m in admin("GET", f"/projects/{project}/members").json()] == ["admin"]


def test_nobody_deletes_themselves_or_the_last_administrator(appliance_factory: Callable[..., Appliance]) -> None:
    appliance = appliance_factory()  # its own: exactly one administrator to begin with
    admin = Harbor(appliance, appliance.admin)
    me = admin("GET", "/users/current").json()
    r = admin("DELETE", f"/users/{me['user_id']}")
    assert r.status_code == 412 and "your own account" in r.json()["errors"][0]["message"], r.text
    r = admin("PUT", f"/users/{me['user_id']}/sysadmin", json={"sysadmin_flag": False})
    assert r.status_code == 412 and "last system administrator" in r.json()["errors"][0]["message"], r.text
    other = _name()
    other_id = _create(admin, other)
    assert admin("PUT", f"/users/{other_id}/sysadmin", json={"sysadmin_flag": True}).status_code == 200
    as_other = Harbor(appliance, (other, PASSWORD))
    # Two administrators: the other one may demote admin, and then cannot demote or delete the last one.
    assert as_other("PUT", f"/users/{me['user_id']}/sysadmin", json={"sysadmin_flag": False}).status_code == 200
    assert admin("GET", "/users").status_code == 403  # admin is an ordinary user now
    r = as_other("PUT", f"/users/{other_id}/sysadmin", json={"sysadmin_flag": False})
    assert r.status_code == 412 and "last system administrator" in r.json()["errors"][0]["message"], r.text
    assert as_other("PUT", f"/users/{me['user_id']}/sysadmin", json={"sysadmin_flag": True}).status_code == 200
    assert admin("PUT", f"/users/{other_id}/sysadmin", json={"sysadmin_flag": "yes"}).status_code == 400
    assert admin("DELETE", f"/users/{other_id}").status_code == 200
    assert [u["username"] for u in admin("GET", "/users").json()] == ["admin"]


def test_cli_and_api_are_one_user_service(appliance: Appliance, admin: Harbor) -> None:
    import subprocess

    username = _name()
    proc = subprocess.run([sys.executable, "-m", "web.cli", "admin", "add-user", username, "--data-dir",
                           str(appliance.data_dir), "--password-file", "-"], input=PASSWORD, text=True,
                          capture_output=True, cwd=REPO_ROOT, timeout=60,
                          env={**os.environ, **env_for(["--data-dir", appliance.data_dir])})
    assert proc.returncode == 0, proc.stderr
    found = admin("GET", "/users/search", params={"username": username}).json()
    assert [u["username"] for u in found] == [username]
    # A name the API created is taken for the CLI too, with the same words.
    api_user = _name()
    _create(admin, api_user)
    proc = subprocess.run([sys.executable, "-m", "web.cli", "admin", "add-user", api_user, "--data-dir",
                           str(appliance.data_dir), "--password-file", "-"], input=PASSWORD, text=True,
                          capture_output=True, cwd=REPO_ROOT, timeout=60,
                          env={**os.environ, **env_for(["--data-dir", appliance.data_dir])})
    assert proc.returncode == 1 and "already exists" in proc.stderr, proc.stderr


def test_current_user_permissions(appliance: Appliance, admin: Harbor) -> None:
    username = _name()
    _create(admin, username)
    project = admin.create_project()
    r = admin("GET", f"/projects/{project}")
    project_id = r.json()["project_id"]
    assert admin("POST", f"/projects/{project}/members",
                 json={"role_id": 2, "member_user": {"username": username}}).status_code == 201
    me = Harbor(appliance, (username, PASSWORD))
    r = me("GET", "/users/current/permissions", params={"scope": f"/project/{project_id}", "relative": "true"})
    assert r.status_code == 200, r.text
    granted = {(p["resource"], p["action"]) for p in r.json()}
    assert ("repository", "pull") in granted and ("repository", "push") in granted
    assert ("repository", "delete") not in granted and ("member", "create") not in granted
    r = me("GET", "/users/current/permissions", params={"scope": f"/project/{project_id}"})
    assert {p["resource"] for p in r.json()} >= {f"/project/{project_id}/repository"}
    system = {(p["resource"], p["action"]) for p in admin("GET", "/users/current/permissions",
                                                           params={"scope": "/system", "relative": "true"}).json()}
    assert ("user", "create") in system and ("quota", "update") in system
    mine = {(p["resource"], p["action"]) for p in me("GET", "/users/current/permissions",
                                                      params={"relative": "true"}).json()}
    assert ("user", "create") not in mine
    assert me("GET", "/users/current/permissions", params={"scope": "/nowhere"}).status_code == 400

    async def through_harborapi() -> list[Any]:
        return await _client(appliance, (username, PASSWORD)).get_current_user_permissions(
            scope=f"/project/{project_id}", relative=True)

    assert {(p.resource, p.action) for p in asyncio.run(through_harborapi())} == granted


def test_bad_input_changes_nothing(admin: Harbor) -> None:
    username = _name()
    user_id = _create(admin, username, email=f"{username}@example.org")
    before = admin("GET", f"/users/{user_id}").json()
    for body in ({"email": "nope"}, {"email": 5}, {"realname": "x" * 300}, {"comment": "a\nb"}):
        r = admin("PUT", f"/users/{user_id}", json=body)
        assert r.status_code == 400, (body, r.text)
    assert admin("GET", f"/users/{user_id}").json() == before
    assert admin("GET", "/users/abc").status_code == 404
    assert admin("PUT", "/users/99999999/password", json={"new_password": "Whatever-Passw0rd-1"}).status_code == 404

    async def bad_request_through_harborapi() -> bool:
        client = HarborAsyncClient(url=admin.appliance.url + "/api/v2.0", username=admin.appliance.admin[0],
                                   secret=admin.appliance.admin[1])
        try:
            await client.create_user(UserCreationReq(username=_name(), password="short"))
        except BadRequest:
            return True
        return False

    assert asyncio.run(bad_request_through_harborapi())
