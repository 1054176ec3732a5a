"""Bearer tokens stop working when the account they were issued to is disabled, expires or is deleted.

A token lives `token_expiry_seconds` (30 minutes by default); without this
check a robot an operator disabled because its secret leaked kept pushing
until every token it had already fetched ran out.
"""

from __future__ import annotations

import requests

from tests.appliance import Appliance
from tests.registry.harborapi import Harbor, RobotAccount, errors


def _bearer(appliance: Appliance, robot: RobotAccount, repository: str) -> dict[str, str]:
    r = requests.get(f"{appliance.url}/service/token",
                     params={"service": "harbor-registry", "scope": f"repository:{repository}:pull,push"},
                     auth=robot.auth, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


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
