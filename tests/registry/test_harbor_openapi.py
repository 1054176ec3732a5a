"""Property-based run (schemathesis) against the OpenAPI document the appliance serves: no 5xx, ever.

The schema is loaded from the running appliance's /api/v2.0/openapi.json, so
what is tested is what is served. Every operation gets generated requests
(valid and invalid parameters and bodies) as the admin, and a smaller round
anonymously; any answer of 500 or above fails. The appliance is its own,
since generated requests create and delete projects and robots. Bounded to
well under two minutes; `-m slow` runs a longer version.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.appliance import Appliance, start_appliance

EXAMPLES = int(os.environ.get("CARGOHOLD_SCHEMATHESIS_EXAMPLES", "12"))
KNOWN = {"project_name_or_id": "fuzz", "repository_name": "app", "reference": "1", "tag_name": "1", "robot_id": 1,
         "mid": 1, "immutable_rule_id": 1}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("schemathesis") / "data",
                          env={"CARGOHOLD_LOGIN_FAILURES_PER_USER": "0", "CARGOHOLD_LOGIN_FAILURES_PER_ADDRESS": "0"})
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
    yield app
    app.stop()


def _run(app: Appliance, examples: int, auth: tuple[str, str] | None) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{app.url}/api/v2.0/openapi.json")
    session = requests.Session()
    if auth is not None:
        session.auth = auth
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 35, [op.label for op in operations]
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

        check()
    return failures


def test_no_server_errors_as_admin_or_anonymous(api: Appliance) -> None:
    started = time.monotonic()
    failures = _run(api, EXAMPLES, api.admin) + _run(api, max(3, EXAMPLES // 3), None)
    assert not failures, "\n".join(failures)
    log = api.log()
    assert "Traceback" not in log, log[-3000:]
    # The run really exercised the API: every operation got several generated requests.
    assert sum(1 for line in log.splitlines() if " /api/v2.0/" in line) > 35 * 5
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_no_server_errors_long_run(api: Appliance) -> None:
    failures = _run(api, 200, api.admin)
    assert not failures, "\n".join(failures)
