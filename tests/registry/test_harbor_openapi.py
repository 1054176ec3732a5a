"""Property-based run (schemathesis) against the OpenAPI document the appliance serves: no 5xx, no drift.

The schema is loaded from the running appliance's /api/v2.0/openapi.json, so
what is tested is what is served. Every operation gets generated requests
(valid and invalid parameters and bodies) as the admin, and a smaller round
anonymously; any answer of 500 or above fails, and so does any answer whose
body does not match the response schema the document declares for its
status, or whose content type is not the declared one (schemathesis'
response_schema_conformance and content_type_conformance): the served
document and the answers cannot drift apart. That the document's schemas are
Harbor's is `test_served_schemas_are_harbors` (field names and types against
harborapi's models, which are generated from Harbor's swagger.yaml: no
package ships the yaml itself). The appliance is its own, since generated
requests create and delete projects, robots and labels. Bounded to well
under two minutes; `-m slow` runs a longer version.
"""

from __future__ import annotations

import datetime
import os
import re
import time
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from schemathesis import checks
from schemathesis.core.failures import FailureGroup

from tests.appliance import Appliance, start_appliance

EXAMPLES = int(os.environ.get("CARGOHOLD_SCHEMATHESIS_EXAMPLES", "12"))
KNOWN = {"project_name_or_id": "fuzz", "repository_name": "app", "reference": "1", "tag_name": "1", "robot_id": 1,
         "mid": 1, "immutable_rule_id": 1, "label_id": 1,
         "user_id": 1, "quota_id": 1, "id": 1, "meta_name": "public",
         # GC runs and retention (policy `id`, execution `eid`, task `tid`): set by the fixture to what it created.
         "gc_id": 0, "eid": 0, "tid": 0}
# Query parameters a read needs to answer 200 in the explicit round (below).
EXPLICIT_QUERY = {"/search": {"q": "fuzz"}, "/labels": {"scope": "g"}, "/users/search": {"username": "admin"}}
EXPLICIT_STATUS = {"/systeminfo/getcert": 404}  # this appliance serves plain HTTP: no CA to hand out
# Answers whose shape the document must describe (schemathesis' own checks).
CONFORMANCE = [checks.response_schema_conformance, checks.content_type_conformance]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("schemathesis") / "data",
                          env={"CARGOHOLD_LOGIN_FAILURES_PER_USER": "0", "CARGOHOLD_LOGIN_FAILURES_PER_ADDRESS": "0",
                               # No scheduled collection: the explicit read of /system/gc/schedule then sees the
                               # schedule off, with no next run (a field left out, never null).
                               "CARGOHOLD_GC_SCHEDULE": "off"})
    # Something to find: a project with a repository, a tag and a robot.
    from tests.registry.harborapi import Harbor
    from tests.registry.v2client import V2

    admin = Harbor(app, app.admin)
    project = admin.create_project("fuzz", public=False)
    V2(app).push_image(f"{project}/app", "1")
    admin.project_robot(project, ("pull",), "fuzzbot")
    rule = {"tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": "9.*"}],
            "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}]}}
    assert admin("POST", f"/projects/{project}/immutabletagrules", json=rule).status_code == 201
    assert admin("POST", "/labels", json={"name": "fuzzed", "scope": "g"}).status_code == 201
    assert admin("POST", f"/projects/{project}/repositories/app/artifacts/1/labels", json={"id": 1}).status_code == 200
    _gc_and_retention(admin, project)
    yield app
    app.stop()


def _gc_and_retention(admin: Any, project: str) -> None:
    """One GC dry run (finished) and a retention policy of the project with one dry-run execution, in KNOWN."""
    r = admin("POST", "/system/gc/schedule", json={"schedule": {"type": "Manual"}, "parameters": {"dry_run": True}})
    assert r.status_code == 201, r.text
    KNOWN["gc_id"] = int(r.headers["Location"].rsplit("/", 1)[-1])
    deadline = time.monotonic() + 60
    while admin("GET", f"/system/gc/{KNOWN['gc_id']}").json()["job_status"] == "Running":
        assert time.monotonic() < deadline, "the GC dry run did not finish"
        time.sleep(0.2)
    project_id = admin("GET", f"/projects/{project}").json()["project_id"]
    keep_all = {"template": "always", "action": "retain", "params": {},
                "tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": "**"}],
                "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches",
                                                    "pattern": "**"}]}}
    r = admin("POST", "/retentions", json={"algorithm": "or", "rules": [keep_all],
                                           "trigger": {"kind": "Schedule", "settings": {"cron": ""}},
                                           "scope": {"level": "project", "ref": project_id}})
    assert r.status_code == 201, r.text
    KNOWN["id"] = int(r.headers["Location"].rsplit("/", 1)[-1])
    assert KNOWN["id"] == 1, "/quotas/{id} (project 1's quota) and /retentions/{id} share the KNOWN value"
    r = admin("POST", f"/retentions/{KNOWN['id']}/executions", json={"dry_run": True})
    assert r.status_code == 201, r.text
    KNOWN["eid"] = int(r.headers["Location"].rsplit("/", 1)[-1])
    tasks = admin("GET", f"/retentions/{KNOWN['id']}/executions/{KNOWN['eid']}/tasks").json()
    KNOWN["tid"] = tasks[0]["id"]


def _explicit_reads(app: Appliance, schema: Any, session: requests.Session) -> list[str]:
    """Every GET once, at resources that exist: a 200 whose body must match the document's schema."""
    failures: list[str] = []
    for operation in [result.ok() for result in schema.get_all_operations()]:
        if operation.method.upper() != "GET":
            continue
        names = re.findall(r"{(\w+)}", operation.path)
        case = operation.Case(path_parameters={name: KNOWN[name] for name in names},
                              query=EXPLICIT_QUERY.get(operation.path, {}))
        response = case.call(session=session, timeout=30)
        if response.status_code != EXPLICIT_STATUS.get(operation.path, 200):
            failures.append(f"GET {case.formatted_path} -> {response.status_code} {response.text[:200]}")
            continue
        try:
            case.validate_response(response, checks=CONFORMANCE)
        except FailureGroup as exc:
            failures.append(f"GET {case.formatted_path} -> {response.status_code}: {str(exc)[:600]}")
    return failures


def _run(app: Appliance, examples: int, auth: tuple[str, str] | None) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{app.url}/api/v2.0/openapi.json")
    session = requests.Session()
    if auth is not None:
        session.auth = auth
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 50, [op.label for op in operations]
    if auth is not None:
        failures += _explicit_reads(app, schema, session)
    for operation in operations:
        strategy = operation.as_strategy()

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy, data=st.data())
        def check(case: Any, data: Any) -> None:
            # Half the time, aim the path at resources that exist, so deep paths get past their 404s.
            if case.path_parameters and data.draw(st.booleans()):
                case.path_parameters = {k: KNOWN.get(k, v) for k, v in case.path_parameters.items()}
            response = case.call(session=session, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r} -> "
                                f"{response.status_code} {response.text[:200]}")
            try:
                case.validate_response(response, checks=CONFORMANCE)
            except FailureGroup as exc:  # schemathesis' failures for this answer; collect them all
                failures.append(f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: "
                                f"{str(exc)[:600]}")

        check()
    return failures


def test_no_server_errors_as_admin_or_anonymous(api: Appliance) -> None:
    started = time.monotonic()
    failures = _run(api, EXAMPLES, api.admin) + _run(api, max(3, EXAMPLES // 3), None)
    assert not failures, "\n".join(failures)
    log = api.log()
    assert "Traceback" not in log, log[-3000:]
    # The run really exercised the API: every operation got several generated requests.
    assert sum(1 for line in log.splitlines() if " /api/v2.0/" in line) > 50 * 5
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_no_server_errors_long_run(api: Appliance) -> None:
    failures = _run(api, 200, api.admin)
    assert not failures, "\n".join(failures)


# The served document's schemas against harborapi's models (generated from Harbor's swagger.yaml).
# Request-only shapes that Harbor's swagger spells with another model are mapped to that model.
HARBOR_MODELS = {"TagReq": "Tag", "RepositoryUpdate": "Repository", "Errors": "Errors",
                 # Harbor's user permission is `Permission` (the robot one here is RobotPermission); its
                 # metadata answers are a free string map, whose keys are ProjectMetadata's.
                 "UserPermission": "Permission", "ProjectMetadataMap": "ProjectMetadata"}
# Fields the appliance adds to Harbor's shapes, on purpose (docs/api.md says so).
EXTENSIONS = {("AuditLog", "source_ip"),  # where a write came from; Harbor's audit log has no such field
              ("GeneralInfo", "cargohold_version")}  # the appliance's own version beside harbor_version
_JSON_TYPES = {str: "string", int: "integer", bool: "boolean", float: "number", datetime.datetime: "string"}


def _json_type(annotation: Any) -> str:
    """The JSON type a pydantic annotation stands for."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _json_type(args[0]) if len(args) == 1 else "any"
    origin = typing.get_origin(annotation)
    if origin is list:
        return "array"
    if origin is dict or annotation is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "object"
    if origin is typing.Literal:
        return _JSON_TYPES.get(type(typing.get_args(annotation)[0]), "any")
    return _JSON_TYPES.get(annotation, "any")


def test_gc_and_retention_are_described(api: Appliance) -> None:
    """Harbor's GC and retention operations (served by bundles) are in the served document, with Harbor's names."""
    document = requests.get(f"{api.url}/api/v2.0/openapi.json", timeout=10).json()
    served = {(path, method) for path, ops in document["paths"].items() for method in ops}
    wanted = {("/system/gc", "get"), ("/system/gc/{gc_id}", "get"), ("/system/gc/{gc_id}/log", "get"),
              ("/system/gc/schedule", "get"), ("/system/gc/schedule", "post"), ("/system/gc/schedule", "put"),
              ("/retentions", "post"), ("/retentions/metadatas", "get"), ("/retentions/{id}", "get"),
              ("/retentions/{id}", "put"), ("/retentions/{id}", "delete"), ("/retentions/{id}/executions", "get"),
              ("/retentions/{id}/executions", "post"), ("/retentions/{id}/executions/{eid}/tasks", "get"),
              ("/retentions/{id}/executions/{eid}/tasks/{tid}", "get")}
    assert not wanted - served, sorted(wanted - served)
    schemas = set(document["components"]["schemas"])
    assert {"GCHistory", "Schedule", "ScheduleObj", "RetentionPolicy", "RetentionRule", "RetentionSelector",
            "RetentionExecution", "RetentionExecutionTask", "RetentionMetadata"} <= schemas
    project = document["components"]["schemas"]["Project"]["properties"]["metadata"]["properties"]
    assert "retention_id" in project


def test_served_schemas_are_harbors(api: Appliance) -> None:
    import harborapi.models as harbor

    # The served document: the registry's own operations and the sections other packages add (GC, retention).
    schemas = requests.get(f"{api.url}/api/v2.0/openapi.json", timeout=10).json()["components"]["schemas"]
    problems = []
    for name, schema in schemas.items():
        model = getattr(harbor, HARBOR_MODELS.get(name, name), None)
        if model is None:
            problems.append(f"{name}: harborapi has no model of that name (map it in HARBOR_MODELS)")
            continue
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        for prop, spec in schema.get("properties", {}).items():
            field = fields.get(prop)
            if field is None and (name, prop) in EXTENSIONS:
                continue
            if field is None:
                problems.append(f"{name}.{prop}: not a field of Harbor's {model.__name__}")
                continue
            expected = _json_type(field.annotation)
            served = spec.get("type", "object" if "$ref" in spec else "any")
            if expected != "any" and served != expected:
                problems.append(f"{name}.{prop}: served as {served}, Harbor's is {expected}")
    assert not problems, "\n".join(problems)
