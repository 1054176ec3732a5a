"""Harbor's tag retention (/api/v2.0/retentions*) against the real server, driven by `harborapi` (an
independent client whose pydantic models check the shapes) and requests for refusals.

latestPushedK and always, with tag and repository selectors; a dry run reports what would go and changes
nothing; a run removes the tags no rule keeps, never a promoted release's tag (the log names the release);
garbage collection then reclaims the untagged content.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from harborapi import HarborAsyncClient
from harborapi.exceptions import NotFound
from harborapi.models import (
    ProjectReq,
    RetentionPolicy,
    RetentionPolicyScope,
    RetentionRule,
    RetentionRuleTrigger,
    RetentionSelector,
)

from tests.appliance import Appliance, restart_on
from tests.bundles.buildutil import cargohold
from tests.pgengine import metadata
from tests.registry.v2client import V2
from tests.web.uiutil import build_bundle, signing_key

API = "/api/v2.0"
QUIET = {"CARGOHOLD_GC_SCHEDULE": "off", "CARGOHOLD_SCRUB_SCHEDULE": "off", "CARGOHOLD_EXPIRE_SCHEDULE": "off"}


def _rule(template: str, pattern: str = "**", count: int | None = None, repos: str = "**") -> RetentionRule:
    return RetentionRule(action="retain", template=template, disabled=False,
                         params={"latestPushedK": count} if count is not None else {},
                         tag_selectors=[RetentionSelector(kind="doublestar", decoration="matches", pattern=pattern)],
                         scope_selectors={"repository": [RetentionSelector(kind="doublestar", decoration="repoMatches",
                                                                           pattern=repos)]})


def _policy(project_id: int, *rules: RetentionRule) -> RetentionPolicy:
    return RetentionPolicy(algorithm="or", rules=list(rules),
                           trigger=RetentionRuleTrigger(kind="Schedule", settings={"cron": ""}),
                           scope=RetentionPolicyScope(level="project", ref=project_id))


def _tags(app: Appliance, repo: str) -> list[str]:
    r = requests.get(f"{app.url}/v2/{repo}/tags/list", auth=app.admin, timeout=10)
    assert r.status_code == 200, r.text
    return sorted(r.json()["tags"] or [])


def test_retention_keeps_the_latest_and_never_a_released_tag(appliance_factory: Callable[..., Appliance],
                                                              tmp_path: Path) -> None:
    app = appliance_factory(env=QUIET)
    private, public = signing_key(tmp_path)
    cargohold("keys", "add", public, "--data-dir", app.data_dir)
    bundle, _ = build_bundle(tmp_path, private, "ret", "1", {"docker.io/cargotest/ret:1": 20_000}, seed=7300)
    release = json.loads(cargohold("bundle", "import", bundle, "--data-dir", app.data_dir, "--json",
                                   "--quiet").stdout)["release"]
    cargohold("release", "promote", str(release["id"]), "--data-dir", app.data_dir)
    repo = "spectro-images/docker.io/cargotest/ret"
    v2 = V2(app)
    dropped = v2.push_image(repo, tag="2", seed=b"ret-2")
    v2.push_image(repo, tag="3", seed=b"ret-3")
    r = requests.post(f"{app.url}{API}/projects", json={"project_name": "team", "metadata": {"public": "false"}},
                      auth=app.admin, timeout=10)
    assert r.status_code == 201, r.text
    for tag in ("a", "b", "keep-me", "c"):  # pushed in this order: c is the latest
        v2.push_image("team/app", tag=tag, seed=f"team-{tag}".encode())
    asyncio.run(_scenario(app, repo, dropped.digest))


async def _scenario(app: Appliance, repo: str, dropped: str) -> None:
    client = HarborAsyncClient(url=f"{app.url}{API}", username=app.admin[0], secret=app.admin[1], timeout=30)
    default = await client.get_project("spectro-images")
    assert default.project_id is not None

    metadata = await client.get_retention_metadata()
    assert [t.rule_template for t in metadata.templates or []] == ["latestPushedK", "always"]

    location = await client.create_retention_policy(_policy(default.project_id, _rule("latestPushedK", count=1)))
    policy_id = int(location.rsplit("/", 1)[-1])
    got = await client.get_retention_policy(policy_id)
    assert got.scope is not None and got.scope.ref == default.project_id
    assert got.rules is not None and got.rules[0].params == {"latestPushedK": 1}

    # Dry run: what would go is reported, nothing goes.
    await client.start_retention_execution(policy_id, dry_run=True)
    executions = await client.get_retention_executions(policy_id)
    assert len(executions) == 1 and executions[0].dry_run is True and executions[0].status == "Success"
    tasks = await client.get_retention_tasks(policy_id, executions[0].id or 0)
    assert [(t.repository, t.total, t.retained) for t in tasks] == [(repo, 3, 2)]
    log = await client.get_retention_execution_task_log(policy_id, executions[0].id or 0, tasks[0].id or 0)
    assert f"would remove tag {repo}:2" in log and f"kept {repo}:1: protected by" in log and "release" in log
    assert _tags(app, repo) == ["1", "2", "3"]

    # The run: the latest stays, the released tag stays, the other goes; GC then reclaims its image.
    location = await client.start_retention_execution(policy_id, dry_run=False)
    execution_id = int(location.rsplit("/", 1)[-1])
    tasks = await client.get_retention_tasks(policy_id, execution_id)
    assert [(t.repository, t.total, t.retained, t.status) for t in tasks] == [(repo, 3, 2, "Success")]
    assert _tags(app, repo) == ["1", "3"]
    gc = requests.post(f"{app.url}/api/cargohold/v1/gc", json={"grace": "0"}, auth=app.admin, timeout=60)
    assert gc.status_code == 200, gc.text
    assert dropped in [m["digest"] for m in gc.json()["manifestsRemoved"]]
    assert V2(app).request("GET", f"/v2/{repo}/manifests/1").status_code == 200

    # A second project: "always" for keep-* or the latest one; one policy per project.
    team = await client.get_project("team")
    assert team.project_id is not None
    location = await client.create_retention_policy(_policy(team.project_id, _rule("always", "keep-*"),
                                                            _rule("latestPushedK", count=1)))
    team_policy = int(location.rsplit("/", 1)[-1])
    again = requests.post(f"{app.url}{API}/retentions", auth=app.admin, timeout=10,
                          json=_policy(team.project_id, _rule("always")).model_dump(mode="json", exclude_none=True))
    assert again.status_code == 409 and again.json()["errors"][0]["code"] == "CONFLICT"
    await client.update_retention_policy(team_policy, _policy(team.project_id, _rule("always", "keep-*"),
                                                              _rule("latestPushedK", count=1, repos="app")))
    await client.start_retention_execution(team_policy, dry_run=False)
    assert _tags(app, "team/app") == ["c", "keep-me"]

    # Refusals name the problem and change nothing.
    for body, words in (
            (_policy(team.project_id, _rule("nDaysSinceLastPush")), "not supported; supported: latestPushedK"),
            (_policy(team.project_id, _rule("latestPushedK")), "latestPushedK needs params"),
            (_policy(team.project_id, _rule("always", "{a")), "not a supported doublestar pattern"),
            (_policy(999_999, _rule("always")), "not the id of a project")):
        r = requests.put(f"{app.url}{API}/retentions/{team_policy}", auth=app.admin, timeout=10,
                         json=body.model_dump(mode="json", exclude_none=True))
        assert r.status_code == 400 and words in r.json()["errors"][0]["message"], (words, r.text)
    kept = await client.get_retention_policy(team_policy)
    assert kept.rules is not None and kept.rules[1].scope_selectors is not None
    assert kept.rules[1].scope_selectors["repository"][0].pattern == "app"
    assert requests.get(f"{app.url}{API}/retentions/{team_policy}", timeout=10).status_code == 401
    await client.delete_retention_policy(team_policy)
    assert requests.get(f"{app.url}{API}/retentions/{team_policy}", auth=app.admin, timeout=10).status_code == 404


def test_odd_input_never_answers_5xx(appliance_factory: Callable[..., Appliance]) -> None:
    appliance = appliance_factory(env=QUIET)  # its own: odd input may set a schedule or start a collection
    odd: list[object] = [None, [], "x", 0, 10 ** 30, -1, True, {"a": {"b": [1]}}, "\u0000", "x" * 5000]
    bodies: list[object] = [*odd, {"scope": {"level": "project", "ref": 10 ** 30}},
                            {"scope": {"level": "project", "ref": 1}, "rules": odd},
                            {"scope": {"level": "project", "ref": 1}, "trigger": {"settings": "x"}},
                            {"scope": {"level": "project", "ref": 1}, "trigger": "x"}]
    bodies += [{"scope": {"level": "project", "ref": 1},
                "rules": [{"template": "latestPushedK", "params": {"latestPushedK": v}, "priority": v,
                           "tag_selectors": v, "scope_selectors": v}]} for v in odd]
    params: list[object] = [None, {"dry_run": 1}, {"workers": 10 ** 30}]
    bodies += [{"schedule": {"type": t, "cron": c}, "parameters": p}
               for t in ("Custom", "Manual", None) for c in odd[:6] for p in params]
    paths = ["/retentions", "/retentions/1", "/retentions/1/executions", "/system/gc/schedule"]
    answers = set()
    for path in paths:
        for body in bodies:
            for method in ("POST", "PUT"):
                r = requests.request(method, f"{appliance.url}{API}{path}", json=body, auth=appliance.admin,
                                     timeout=10)
                assert r.status_code < 500, (method, path, body, r.text)
                answers.add(r.status_code)
    for path in ("/system/gc?page=99999999999999999999", "/system/gc?page_size=0", "/system/gc/1" + "0" * 40,
                 "/retentions/1/executions?page=10000000000000", "/retentions/99999999999999999999",
                 "/retentions/1/executions/99999999999999999999/tasks", "/system/gc/1/log"):
        r = requests.get(f"{appliance.url}{API}{path}", auth=appliance.admin, timeout=10)
        assert r.status_code < 500, (path, r.text)
    assert 400 in answers


def test_project_metadata_names_its_retention_policy(appliance_factory: Callable[..., Appliance]) -> None:
    """Harbor sets the project's metadata retention_id when a policy is created and drops it with the policy:
    harborapi's get_project_retention_id reads it from the project."""
    app = appliance_factory(env=QUIET)
    r = requests.post(f"{app.url}{API}/projects", json={"project_name": "kept", "metadata": {"public": "false"}},
                      auth=app.admin, timeout=10)
    assert r.status_code == 201, r.text
    asyncio.run(_retention_id(app))


async def _retention_id(app: Appliance) -> None:
    client = HarborAsyncClient(url=f"{app.url}{API}", username=app.admin[0], secret=app.admin[1], timeout=30)
    project = await client.get_project("kept")
    assert project.project_id is not None
    with pytest.raises(NotFound, match="does not have a retention ID"):  # harborapi: no policy, no metadata
        await client.get_project_retention_id("kept")
    location = await client.create_retention_policy(_policy(project.project_id, _rule("always")))
    policy_id = int(location.rsplit("/", 1)[-1])
    assert await client.get_project_retention_id("kept") == policy_id
    assert await client.get_project_retention_id(project.project_id) == policy_id
    metadata = requests.get(f"{app.url}{API}/projects/kept/metadatas", auth=app.admin, timeout=10).json()
    assert metadata["retention_id"] == str(policy_id)  # a string, as Harbor stores every metadata value
    # Harbor's clients echo the whole metadata back when they update a project: accepted, nothing changes.
    await client.update_project("kept", ProjectReq(metadata=(await client.get_project("kept")).metadata))
    assert await client.get_project_retention_id("kept") == policy_id
    # Only the retention API sets it: a metadata write naming it is refused, naming why.
    r = requests.post(f"{app.url}{API}/projects/kept/metadatas", json={"retention_id": "7"}, auth=app.admin,
                      timeout=10)
    assert r.status_code == 400 and "set by the retention API" in r.json()["errors"][0]["message"], r.text
    assert await client.get_project_retention_id("kept") == policy_id
    await client.delete_retention_policy(policy_id)
    with pytest.raises(NotFound, match="does not have a retention ID"):
        await client.get_project_retention_id("kept")
    assert "retention_id" not in requests.get(f"{app.url}{API}/projects/kept/metadatas", auth=app.admin,
                                              timeout=10).json()


def test_policies_from_before_get_their_retention_id(appliance_factory: Callable[..., Appliance]) -> None:
    """A policy created before the appliance set retention_id gets it from the upgrade (migration m010)."""
    app = appliance_factory(env=QUIET)
    project_id = requests.get(f"{app.url}{API}/projects/spectro-images", auth=app.admin, timeout=10).json()[
        "project_id"]
    r = requests.post(f"{app.url}{API}/retentions", auth=app.admin, timeout=10,
                      json=_policy(project_id, _rule("always")).model_dump(mode="json", exclude_none=True))
    assert r.status_code == 201, r.text
    policy_id = int(r.headers["Location"].rsplit("/", 1)[-1])
    app.stop()
    # As the older version left it: the policy, no metadata key, the migration not yet applied.
    with metadata(app.data_dir) as db:
        assert db.execute("DELETE FROM project_metadata WHERE name = 'retention_id'").rowcount == 1
        assert db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm010_retention_id'").rowcount == 1
    again = restart_on(app)
    try:
        client = HarborAsyncClient(url=f"{again.url}{API}", username=again.admin[0], secret=again.admin[1],
                                   timeout=30)
        assert asyncio.run(client.get_project_retention_id("spectro-images")) == policy_id
    finally:
        again.stop()


@pytest.mark.sqlite_only  # SQLite gives a deleted project's id out again; PostgreSQL's identity columns never do
def test_a_deleted_projects_policy_never_applies_to_a_project_given_its_id(
        appliance_factory: Callable[..., Appliance]) -> None:
    """Deleting a project leaves no policy in force: SQLite gives the deleted (highest) id to the next project,
    which starts with no policy and may create its own."""
    app = appliance_factory(env=QUIET)

    def project(name: str) -> int:
        r = requests.post(f"{app.url}{API}/projects", json={"project_name": name}, auth=app.admin, timeout=10)
        assert r.status_code == 201, r.text
        return int(requests.get(f"{app.url}{API}/projects/{name}", auth=app.admin, timeout=10).json()["project_id"])

    old_id = project("gone")
    r = requests.post(f"{app.url}{API}/retentions", auth=app.admin, timeout=10,
                      json=_policy(old_id, _rule("always")).model_dump(mode="json", exclude_none=True))
    assert r.status_code == 201, r.text
    old_policy = int(r.headers["Location"].rsplit("/", 1)[-1])
    assert requests.delete(f"{app.url}{API}/projects/gone", auth=app.admin, timeout=10).status_code == 200
    new_id = project("fresh")
    assert new_id == old_id  # the situation under test: the id was given out again
    assert requests.get(f"{app.url}{API}/retentions/{old_policy}", auth=app.admin, timeout=10).status_code == 404
    assert "retention_id" not in requests.get(f"{app.url}{API}/projects/fresh/metadatas", auth=app.admin,
                                              timeout=10).json()
    r = requests.post(f"{app.url}{API}/retentions", auth=app.admin, timeout=10,
                      json=_policy(new_id, _rule("latestPushedK", count=1)).model_dump(mode="json", exclude_none=True))
    assert r.status_code == 201, r.text
    policy = requests.get(r.headers["Location"] if r.headers["Location"].startswith("http") else
                          f"{app.url}{r.headers['Location']}", auth=app.admin, timeout=10).json()
    assert policy["scope"]["ref"] == new_id and policy["rules"][0]["template"] == "latestPushedK"

