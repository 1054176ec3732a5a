"""Every route of the app, walked from its URL map: none lets an anonymous caller, or a signed-in
browser session without its CSRF token, change anything.

Built from `app.url_map`, so a route added later is covered without touching
this file. Placeholders get values that would be valid targets (existing
project, numeric ids); what matters is only that no unsafe request gets a
2xx or 3xx, and that nothing answers 500.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from tests.appliance import Appliance
from tests.web.uiutil import signed_in
from web.app import create_app
from web.config import Config

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Routes anyone may call with an unsafe method, and why.
PUBLIC_UNSAFE = {
    ("POST", "/ui/login"),  # signs in: refused without its CSRF token (checked below)
}
VALUES = {"name": "spectro-images/guard", "digest": "sha256:" + "0" * 64, "reference": "latest",
          "uuid": "0" * 32, "upload_id": "0" * 32, "job_id": "1", "rid": "1", "release_id": "1",
          "ref": "spectro-images", "repo": "guard", "mid": "1", "robot_id": "1", "tag": "t", "check_id": "1",
          "action": "delete", "rest": "projects/spectro-images/anything", "filename": "x.css",
          "rule_id": "1", "scan_id": "1", "spec": "installer.iso", "kind": "gc", "gc_id": "1",
          "policy_id": "1", "execution_id": "1", "task_id": "1"}
VALUES.update({"user_id": "1", "quota_id": "1", "meta_name": "auto_scan"})  # Harbor's users, quotas, project metadata
VALUES.update({"label_id": "1"})  # Harbor's labels


def _unsafe_routes(tmp_path: Path) -> list[tuple[str, str]]:
    app = create_app(Config(data_dir=tmp_path / "data", admin_password="Unused-Secret-1"))
    routes = []
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if "definitions" in path:
            path = path.replace("<name>", "guard")  # a cluster definition name, not a repository
        url = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: VALUES[m.group(1)], path)
        routes += [(method, url) for method in sorted((rule.methods or set()) & UNSAFE)]
    assert len(routes) > 40  # the walk really found the app's routes
    return routes


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    return _unsafe_routes(tmp_path_factory.mktemp("routes"))


def test_no_unsafe_route_accepts_an_anonymous_caller(appliance: Appliance, routes: list[tuple[str, str]]) -> None:
    accepted = []
    for method, url in routes:
        r = requests.request(method, f"{appliance.url}{url}", json={}, allow_redirects=False, timeout=30)
        if r.status_code < 400 or r.status_code >= 500:
            accepted.append((method, url, r.status_code))
    assert accepted == []


def test_no_unsafe_route_accepts_a_session_without_its_csrf_token(appliance: Appliance,
                                                                   routes: list[tuple[str, str]]) -> None:
    session, token = signed_in(appliance)
    assert token
    accepted = []
    for method, url in routes:
        if (method, url) in PUBLIC_UNSAFE:
            continue
        r = session.request(method, f"{appliance.url}{url}", json={}, allow_redirects=False, timeout=30)
        if r.status_code < 400 or r.status_code >= 500:
            accepted.append((method, url, r.status_code))
    assert accepted == []
    # the session is still good: refusals were about the token, not a broken session
    assert session.get(f"{appliance.url}/ui/", allow_redirects=False, timeout=30).status_code == 200
