"""The bundle and cluster-definition APIs on the Harbor access model, against the real server.

Who may do what (bundles.api_access): imports and definition changes need a
system administrator (the admin user or a system robot with the system
permission); reads need a signed-in principal that may pull from the default
project. Credentials are Basic or Bearer, failed logins count toward the shared
rate limit, refusals answer 401 (Bearer challenge) / 403 / 429 in Harbor's
shape, and every write is in GET /api/v2.0/audit-logs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bundles import keys
from bundles.clusterdef_trust import detached_signature
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.bundles.conftest import unique_layout
from tests.registry.harborapi import Harbor, RobotAccount

BUNDLES = "/api/v1"
DEFS = "/api/cargohold/v1"
SYSTEM_ADMIN = [{"kind": "system", "namespace": "/", "access": [{"resource": "*", "action": "*"}]}]
LIMITS = {"CARGOHOLD_LOGIN_FAILURES_PER_USER": "3", "CARGOHOLD_LOGIN_FAILURES_PER_ADDRESS": "20",
          "CARGOHOLD_LOGIN_LOCKOUT_SECONDS": "30"}


def _robot(app: Appliance, level: str, permissions: list[dict[str, Any]]) -> RobotAccount:
    return Harbor(app, app.admin).create_robot(f"b{uuid.uuid4().hex[:10]}", level, permissions)


def _project_robot(app: Appliance, project: str = "spectro-images") -> RobotAccount:
    return Harbor(app, app.admin).project_robot(project, ("pull", "push", "delete"))


def _audit(app: Appliance, username: str) -> list[tuple[str, str, str]]:
    r = requests.get(f"{app.url}/api/v2.0/audit-logs", params={"q": f"username={username}", "page_size": "100"},
                     auth=app.admin, timeout=30)
    assert r.status_code == 200, r.text
    return [(e["operation"], e["resource_type"], e["resource"]) for e in r.json()]


def _upload(app: Appliance, bundle: Path, auth: Any) -> requests.Response:
    with bundle.open("rb") as f:
        return requests.post(f"{app.url}{BUNDLES}/bundles", files={"uploadFile": (bundle.name, f)}, auth=auth,
                             timeout=60)


def _wait_done(app: Appliance, url: str, auth: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job = requests.get(f"{app.url}{url}", auth=auth, timeout=10)
        assert job.status_code == 200, job.text
        body = dict(job.json())
        if body["state"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _code(r: requests.Response) -> str:
    return str(r.json()["errors"][0]["code"])


def test_a_system_admin_robot_imports_a_project_robot_cannot_and_both_writes_are_audited(
        trusted: Appliance, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, _refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    system = _robot(trusted, "system", SYSTEM_ADMIN)
    project = _project_robot(trusted)
    # a system robot with every project permission, but not the system one, is no administrator either
    everywhere = _robot(trusted, "system", [{"kind": "project", "namespace": "*",
                                             "access": [{"resource": "*", "action": "*"}]}])

    for robot in (project, everywhere):
        refused = _upload(trusted, bundle, robot.auth)
        assert refused.status_code == 403 and _code(refused) == "FORBIDDEN", refused.text
        assert robot.name in refused.json()["errors"][0]["message"]
        by_path = requests.post(f"{trusted.url}{BUNDLES}/bundles/import", json={"path": bundle.name},
                                auth=robot.auth, timeout=10)
        assert by_path.status_code == 403 and _code(by_path) == "FORBIDDEN"
        # reading needs pull on the default project, which both hold
        assert requests.get(f"{trusted.url}{BUNDLES}/imports", auth=robot.auth, timeout=10).status_code == 200
        assert _audit(trusted, robot.name) == []

    accepted = _upload(trusted, bundle, system.auth)
    assert accepted.status_code == 202, accepted.text
    job_url = accepted.json()["jobUrl"]
    job = _wait_done(trusted, job_url, project.auth)  # a reader follows the job the administrator started
    assert job["state"] == "done", job
    entries = _audit(trusted, system.name)
    assert len(entries) == 2, entries
    (op1, type1, import_resource), (op2, type2, stored_name) = entries  # newest first
    assert (op1, type1, op2, type2) == ("create", "import", "create", "bundle")
    assert stored_name.endswith("-b.tar.zst")
    assert import_resource == f"{job['id']}:{stored_name}"


def test_bearer_tokens_read_but_never_import(trusted: Appliance, tmp_path: Path) -> None:
    token = requests.get(f"{trusted.url}/service/token", params={
        "service": "harbor-registry", "scope": "repository:spectro-images/anything:pull,push"},
        auth=trusted.admin, timeout=10).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{trusted.url}{BUNDLES}/imports", headers=bearer, timeout=10).status_code == 200
    assert requests.get(f"{trusted.url}{DEFS}/cluster-definitions", headers=bearer, timeout=10).status_code == 200
    # even the admin's token: tokens carry repository scopes, not the system permission
    refused = requests.post(f"{trusted.url}{BUNDLES}/bundles/import", json={"path": "x.tar.zst"}, headers=bearer,
                            timeout=10)
    assert refused.status_code == 403 and "repository access only" in refused.json()["errors"][0]["message"]
    forged = requests.get(f"{trusted.url}{BUNDLES}/imports", headers={"Authorization": f"Bearer {token}x"},
                          timeout=10)
    assert forged.status_code == 401 and _code(forged) == "UNAUTHORIZED"
    assert forged.headers["WWW-Authenticate"].startswith(f'Bearer realm="{trusted.url}/service/token"')
    # an anonymous caller's token signs nobody in
    anonymous_token = requests.get(f"{trusted.url}/service/token", params={
        "service": "harbor-registry", "scope": "repository:spectro-images/anything:pull"}, timeout=10).json()["token"]
    anonymous = requests.get(f"{trusted.url}{BUNDLES}/imports",
                             headers={"Authorization": f"Bearer {anonymous_token}"}, timeout=10)
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers


def test_cluster_definition_changes_need_a_system_admin_and_are_audited(trusted: Appliance, tmp_path: Path,
                                                                       ec_key: keys.PrivateKey) -> None:
    appliance = trusted
    name = f"acl-{uuid.uuid4().hex[:8]}"
    archive = build_archive(tmp_path / "d.tgz", simple_definition(name, ["nginx:1"]))
    signature = detached_signature(archive, ec_key)  # by a key the appliance trusts
    system = _robot(appliance, "system", SYSTEM_ADMIN)
    project = _project_robot(appliance)

    def post_definition(auth: Any) -> requests.Response:
        with archive.open("rb") as f:
            return requests.post(f"{appliance.url}{DEFS}/cluster-definitions", auth=auth,
                                 files={"file": (archive.name, f, "application/gzip"),
                                        "signature": ("d.tgz.sig", signature)}, timeout=30)

    before = requests.get(f"{appliance.url}{DEFS}/cluster-definitions", auth=project.auth, timeout=10)
    assert before.status_code == 200
    refused = post_definition(project.auth)
    assert refused.status_code == 403 and _code(refused) == "FORBIDDEN"
    wrong = post_definition((system.name, "Wrong-secret-1"))
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert requests.get(f"{appliance.url}{DEFS}/cluster-definitions", auth=project.auth,
                        timeout=10).json() == before.json()

    created = post_definition(system.auth)
    assert created.status_code == 201, created.text
    version = created.json()["version"]
    # any signed-in principal with pull on the default project reads definitions and checks
    one = requests.get(f"{appliance.url}{DEFS}/cluster-definitions/{name}", auth=project.auth, timeout=10)
    assert one.status_code == 200 and one.json()["name"] == name
    assert requests.get(f"{appliance.url}{DEFS}/cluster-definitions/{name}", timeout=10).status_code == 401
    assert requests.post(f"{appliance.url}{DEFS}/cluster-definitions/{name}/checks", auth=project.auth,
                         timeout=30).status_code == 403
    checked = requests.post(f"{appliance.url}{DEFS}/cluster-definitions/{name}/checks", auth=system.auth,
                            timeout=30)
    assert checked.status_code == 201, checked.text
    check_id = checked.json()["id"]
    history = requests.get(f"{appliance.url}{DEFS}/cluster-definitions/{name}/checks/{check_id}",
                           auth=project.auth, timeout=10)
    assert history.status_code == 200
    assert requests.delete(f"{appliance.url}{DEFS}/cluster-definitions/{name}", auth=project.auth,
                           timeout=10).status_code == 403
    deleted = requests.delete(f"{appliance.url}{DEFS}/cluster-definitions/{name}", auth=system.auth, timeout=10)
    assert deleted.status_code == 204

    assert _audit(appliance, system.name) == [  # newest first
        ("delete", "cluster-definition", name),
        ("create", "check", f"{name}/checks/{check_id}"),
        ("create", "cluster-definition", f"{name}:{version}"),
    ]
    assert _audit(appliance, project.name) == []  # refusals are not writes


def test_wrong_passwords_on_these_apis_count_toward_the_login_rate_limit(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env=LIMITS)
    # distinct wrong passwords for one user, spread over both APIs (and fresh connections, so both workers)
    urls = [f"{BUNDLES}/imports", f"{DEFS}/cluster-definitions", f"{BUNDLES}/imports/none"]
    codes = [requests.get(f"{app.url}{url}", auth=("admin", f"guess-{i}"), timeout=30,
                          headers={"Connection": "close"}).status_code for i, url in enumerate(urls)]
    assert codes == [401, 401, 401]
    for url in (f"{BUNDLES}/imports", f"{DEFS}/cluster-definitions"):
        locked = requests.get(f"{app.url}{url}", auth=app.admin, timeout=30)  # the right password, too
        assert locked.status_code == 429 and _code(locked) == "TOO_MANY_REQUESTS"
        assert 1 <= int(locked.headers["Retry-After"]) <= 30
    upload = requests.post(f"{app.url}{BUNDLES}/bundles/import", json={"path": "x.tar.zst"}, auth=app.admin,
                           timeout=30)
    assert upload.status_code == 429
    # the same limiter as the registry: the lock holds on /v2/ as well
    assert requests.get(f"{app.url}/v2/", auth=app.admin, timeout=30).status_code == 429


def test_a_private_default_project_limits_readers_to_those_who_may_pull(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    harbor = Harbor(app, app.admin)
    other = harbor.create_project()
    outsider = harbor.project_robot(other, ("pull", "push"))
    insider = _project_robot(app)
    assert requests.get(f"{app.url}{BUNDLES}/imports", auth=outsider.auth, timeout=10).status_code == 200
    made_private = harbor("PUT", "/projects/spectro-images", json={"metadata": {"public": "false"}})
    assert made_private.status_code == 200, made_private.text
    for url in (f"{BUNDLES}/imports", f"{DEFS}/cluster-definitions"):
        refused = requests.get(f"{app.url}{url}", auth=outsider.auth, timeout=10)
        assert refused.status_code == 403 and "pull on project spectro-images" in refused.json()["errors"][0]["message"]
        assert requests.get(f"{app.url}{url}", auth=insider.auth, timeout=10).status_code == 200
        assert requests.get(f"{app.url}{url}", auth=app.admin, timeout=10).status_code == 200
