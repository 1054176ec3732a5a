"""The appliance's log against the real server (nginx front, gunicorn) and real clients.

- No secret reaches the log at DEBUG, in text or JSON: the admin password
  (CARGOHOLD_ADMIN_PASSWORD), wrong passwords, the UI's session cookie and
  CSRF token, a robot's secret (created through the Harbor API, used by
  skopeo), bearer tokens from /service/token (also sent as a ``?token=``
  query), passwords given to `admin add-user` and `admin set-password` in a
  password file; nor their Basic (base64) forms. The whole server log is read.
- A request line has every field; forged X-Forwarded-For and X-Request-Id do
  not change the client address or the id; the response carries the id.
- JSON mode: every line the appliance writes (gunicorn's, nginx's, the CLI's
  own) is one JSON object.
- An import's events carry the request id of the POST that started it.
- Requests nginx answers itself are logged once, by the front, with the id
  the client got.
- A bad CARGOHOLD_LOG_LEVEL or _FORMAT stops serve at start, naming it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.appliance import ADMIN_PASSWORD, Appliance
from tests.bundles import craft
from tests.bundles.conftest import unique_layout
from tests.images import OciLayout
from tests.logs import REQUEST_FIELDS, records, request_lines
from tests.pgengine import env_for
from tests.registry.conftest import require, run
from tests.registry.harborapi import Harbor
from tests.web.uiutil import form_token, signed_in

REPO_ROOT = Path(__file__).resolve().parents[2]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "web.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, **env_for(args), **(env or {})}, timeout=120, check=False)


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _wait_for(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_reaches_the_log_at_debug(appliance_factory: Callable[..., Appliance], tmp_path: Path,
                                             fmt: str) -> None:
    require("skopeo")
    app = appliance_factory(env={"CARGOHOLD_LOG_LEVEL": "DEBUG", "CARGOHOLD_LOG_FORMAT": fmt}, name=f"secrets-{fmt}")
    secrets: list[str] = [ADMIN_PASSWORD, _basic("admin", ADMIN_PASSWORD)]

    # Basic auth straight on /v2/, right and wrong.
    assert requests.get(f"{app.url}/v2/", auth=app.admin, timeout=10).status_code == 200
    wrong = f"Wrong-Password-{uuid.uuid4().hex}"
    assert requests.get(f"{app.url}/v2/", auth=("admin", wrong), timeout=10).status_code == 401
    secrets += [wrong, _basic("admin", wrong)]

    # The UI's sign-in form: a wrong password, then the right one; the session cookie and CSRF tokens.
    s = requests.Session()
    token = form_token(s.get(f"{app.url}/ui/login", timeout=10).text)
    ui_wrong = f"Ui-Wrong-{uuid.uuid4().hex}"
    r = s.post(f"{app.url}/ui/login", data={"username": "admin", "password": ui_wrong, "csrf_token": token},
               timeout=10, allow_redirects=False)
    assert r.status_code == 401
    session, csrf = signed_in(app)
    cookie = session.cookies["cargohold_session"]
    secrets += [ui_wrong, token, csrf, cookie]

    # A robot created through the Harbor API (its secret is shown once), used by skopeo to push and pull.
    robot = Harbor(app, app.admin).create_robot(
        f"logs{uuid.uuid4().hex[:8]}", "system",
        [{"kind": "project", "namespace": "spectro-images",
          "access": [{"resource": "repository", "action": "push"}, {"resource": "repository", "action": "pull"}]}])
    secrets += [robot.secret, _basic(robot.name, robot.secret)]
    layout = OciLayout(tmp_path / "layout")
    layout.add_image([3000], seed=7, ref="logs:1")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    repo = f"spectro-images/logs/app{uuid.uuid4().hex[:8]}"
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", robot.creds, f"oci:{layout.root}:logs:1",
        f"docker://{app.host}/{repo}:1", env=env)
    run("skopeo", "inspect", "--tls-verify=false", "--creds", robot.creds, f"docker://{app.host}/{repo}:1", env=env)

    # A bearer token from the token service, used in the header and (as some clients try) in the query.
    bearer = requests.get(f"{app.url}/service/token", auth=robot.auth, timeout=10,
                          params={"service": "harbor-registry", "scope": f"repository:{repo}:pull"}).json()["token"]
    headers = {"Authorization": f"Bearer {bearer}"}
    assert requests.get(f"{app.url}/v2/{repo}/tags/list", headers=headers, timeout=10).status_code == 200
    requests.get(f"{app.url}/v2/{repo}/tags/list", params={"token": bearer, "access_token": bearer}, timeout=10)
    secrets += [bearer, bearer.split(".")[2]]

    # Passwords given to the CLI in a password file, then used.
    user_password, new_password = f"User-Pass-{uuid.uuid4().hex}", f"New-Pass-{uuid.uuid4().hex}"
    pw_file = tmp_path / "pw"
    pw_file.write_text(user_password + "\n")
    cli_out = []
    for args, password in ((("admin", "add-user", "operator", "--password-file", str(pw_file)), user_password),
                           (("admin", "set-password", "--username", "operator", "--password-file", str(pw_file)),
                            new_password)):
        pw_file.write_text(password + "\n")
        proc = _cli(*args, "--data-dir", str(app.data_dir),
                    env={"CARGOHOLD_LOG_LEVEL": "DEBUG", "CARGOHOLD_LOG_FORMAT": fmt})
        assert proc.returncode == 0, proc.stderr
        cli_out.append(proc.stdout + proc.stderr)
    assert requests.get(f"{app.url}/v2/", auth=("operator", new_password), timeout=10).status_code == 200
    secrets += [user_password, new_password, _basic("operator", new_password)]

    app.stop()
    log = app.log()
    for secret in secrets:
        assert secret not in log, f"a secret reached the appliance log: {secret[:6]}…"
        assert all(secret not in out for out in cli_out), f"a secret reached the command's output: {secret[:6]}…"
    # ...while what was done is there: the log is not silent.
    lines = request_lines(log)
    assert any(r["path"] == "/ui/login" and r["method"] == "POST" and r["principal"] == "admin" for r in lines)
    assert any(r["path"] == "/service/token" and r["principal"] == robot.name for r in lines)
    assert any(r["method"] == "PUT" and r["repository"] == repo and r["principal"] == robot.name
               and r["status"] == 201 for r in lines), [r for r in lines if r["method"] == "PUT"]
    assert any(r["path"] == f"/v2/{repo}/tags/list" and r["query"] == "token=…&access_token=…" for r in lines)
    events = records(log)
    logins = [e["message"] for e in events if e["logger"] == "cargohold.login"]
    assert logins.count("login failed: admin from 127.0.0.1") == 2  # Basic on /v2/, and the UI form
    assert "UI sign-in: admin from 127.0.0.1" in logins  # though the same password was checked (and remembered)
    assert f"login: {robot.name} from 127.0.0.1" in logins
    assert any(e["logger"] == "cargohold.audit" and e.get("resource_type") == "robot" and
               e.get("resource") == robot.name for e in events)
    # The CLI logs too (on its own standard error), its audit entries included.
    assert [(e.get("operation"), e.get("resource_type"), e.get("resource")) for e in records(cli_out[0]) + records(
        cli_out[1]) if e["logger"] == "cargohold.audit"] == [("create", "user", "operator"),
                                                              ("update", "user-password", "operator")]
    if fmt == "json":
        for line in log.splitlines():
            assert isinstance(json.loads(line), dict), line


def test_a_request_line_has_every_field_and_ignores_forged_headers(appliance: Appliance) -> None:
    forged_id = "0123456789abcdef0123456789abcdef"
    resp = requests.get(f"{appliance.url}/api/v2.0/projects/spectro-images/repositories/no%252Fsuch", timeout=10,
                        auth=appliance.admin, params={"page": "1", "secret": "x"},
                        headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9",
                                 "X-Request-Id": forged_id})
    assert resp.status_code == 404
    rid = resp.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and rid != forged_id  # nginx's own id, not the client's
    line = _wait_for(lambda: [r for r in request_lines(appliance.log()) if r["request_id"] == rid],
                     "the request line")
    assert len(line) == 1, line
    r = line[0]
    assert ISO_UTC.match(r["time"]) and r["level"] == "INFO"
    assert set(REQUEST_FIELDS) <= set(r), r
    assert r["client"] == "127.0.0.1"  # the forged X-Forwarded-For did not change it
    assert r["principal"] == "admin"
    assert r["method"] == "GET"
    assert r["route"] == "/api/v2.0/projects/<ref>/repositories/<repo>"
    assert r["path"] == "/api/v2.0/projects/spectro-images/repositories/no%2Fsuch"
    assert r["query"] == "page=1&secret=…"
    assert r["repository"] == "spectro-images/no/such"
    assert r["status"] == 404
    assert r["bytes_in"] == 0 and r["bytes_out"] == len(resp.content)
    assert isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0


def test_blob_bodies_sent_by_the_front_are_logged_once_by_the_app(appliance: Appliance, repo: str) -> None:
    body = os.urandom(300_000)
    digest = "sha256:" + __import__("hashlib").sha256(body).hexdigest()
    up = requests.post(f"{appliance.url}/v2/{repo}/blobs/uploads/", auth=appliance.admin, timeout=10)
    assert up.status_code == 202, up.text
    put = requests.put(f"{appliance.url}{up.headers['Location']}", params={"digest": digest}, data=body,
                       auth=appliance.admin, timeout=30)
    assert put.status_code == 201, put.text
    got = requests.get(f"{appliance.url}/v2/{repo}/blobs/{digest}", auth=appliance.admin, timeout=30)
    assert got.status_code == 200 and got.content == body
    rid = got.headers["X-Request-Id"]
    lines = _wait_for(lambda: [r for r in records(appliance.log()) if r.get("request_id") == rid], "the blob's line")
    (line,) = [r for r in lines if r["logger"] == "cargohold.request"]
    assert (line["route"], line["repository"], line["status"]) == ("/v2/<path:name>/blobs/<digest>", repo, 200)
    assert line["bytes_out"] == len(body) and line["sent_by"] == "front"
    assert not [r for r in lines if r["logger"] == "cargohold.front"]  # sent whole: nginx adds no line
    upload = [r for r in request_lines(appliance.log()) if r["request_id"] == put.headers["X-Request-Id"]]
    assert upload[0]["bytes_in"] == len(body)


def test_requests_the_front_answers_are_logged_by_the_front(appliance: Appliance, repo: str) -> None:
    too_big = b"{" + b" " * (6 << 20) + b"}"
    resp = requests.put(f"{appliance.url}/v2/{repo}/manifests/1", data=too_big, auth=appliance.admin,
                        params={"token": "query-secret-413"},
                        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=30)
    assert resp.status_code == 413
    rid = resp.headers["X-Request-Id"]
    lines = _wait_for(lambda: [r for r in records(appliance.log()) if r.get("request_id") == rid], "the front's line")
    assert [r["logger"] for r in lines] == ["cargohold.front"], lines
    r = lines[0]
    assert (r["method"], r["path"], r["status"], r["client"]) == ("PUT", f"/v2/{repo}/manifests/1", 413, "127.0.0.1")
    assert "query-secret-413" not in appliance.log()  # nor in nginx's error line about the body


def test_an_import_logs_its_events_with_the_request_id_that_started_it(
        appliance_factory: Callable[..., Appliance], tmp_path: Path) -> None:
    app = appliance_factory(env={"CARGOHOLD_ALLOW_UNSIGNED_BUNDLES": "true", "CARGOHOLD_LOG_FORMAT": "json"},
                            name="imports")
    layout, _refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, None))
    with bundle.open("rb") as f:
        resp = requests.post(f"{app.url}/api/v1/bundles", files={"uploadFile": ("b.tar.zst", f)}, auth=app.admin,
                             timeout=60)
    assert resp.status_code == 202, resp.text
    rid = resp.headers["X-Request-Id"]
    job_id = resp.json()["jobUrl"].rstrip("/").rsplit("/", 1)[1]

    def finished() -> list[dict[str, Any]]:
        events = [r for r in records(app.log()) if r.get("job_id") == job_id]
        return events if any("finished" in e["message"] or "refused" in e["message"] for e in events) else []

    events = _wait_for(finished, "the import's end")
    assert [e["message"].split(":")[0] for e in events] == [f"bundle import {job_id} started",
                                                           f"bundle import {job_id} finished"], events
    assert {e["request_id"] for e in events} == {rid}  # logged from the import's thread, with the POST's id
    assert events[1]["images"] == 1 and events[1]["blobs_new"] > 0 and isinstance(events[1]["release"], int)
    post = [r for r in request_lines(app.log()) if r["request_id"] == rid]
    assert post and post[0]["path"] == "/api/v1/bundles" and post[0]["bytes_in"] > bundle.stat().st_size
    audit = [r for r in records(app.log()) if r["logger"] == "cargohold.audit" and r.get("resource_type") == "import"]
    assert [a["request_id"] for a in audit] == [rid]


@pytest.mark.parametrize(("variable", "value"), [("CARGOHOLD_LOG_LEVEL", "verbose"),
                                                 ("CARGOHOLD_LOG_FORMAT", "xml")])
def test_a_bad_log_setting_stops_serve_at_start_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    proc = _cli("serve", "--data-dir", str(tmp_path / "data"), "--bind", "127.0.0.1:0", env={variable: value})
    assert proc.returncode == 2
    assert f"{variable}={value!r}: not one of" in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was set up


def test_promote_gc_and_scrub_are_logged_once_with_the_id_of_the_request(
        appliance_factory: Callable[..., Appliance], tmp_path: Path) -> None:
    app = appliance_factory(env={"CARGOHOLD_ALLOW_UNSIGNED_BUNDLES": "true"}, name="events")
    layout, _refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, None))
    with bundle.open("rb") as f:
        resp = requests.post(f"{app.url}/api/v1/bundles", files={"uploadFile": ("b.tar.zst", f)}, auth=app.admin,
                             timeout=60)
    assert resp.status_code == 202, resp.text
    job_url = resp.json()["jobUrl"]
    job = _wait_for(lambda: (j := requests.get(f"{app.url}{job_url}", auth=app.admin, timeout=10).json())
                    ["state"] in ("done", "failed") and j, "the import")
    assert job["state"] == "done", job
    release = job["report"]["release"]["id"]
    api = f"{app.url}/api/cargohold/v1"
    promoted = requests.post(f"{api}/releases/{release}/promote", json={}, auth=app.admin, timeout=30)
    assert promoted.status_code == 200, promoted.text
    started = {}
    for kind in ("gc", "scrub"):
        r = _wait_for(lambda kind=kind: (r := requests.post(f"{api}/jobs/{kind}", json={}, auth=app.admin,
                                                            timeout=30)).status_code == 202 and r, f"the {kind} job")
        started[kind] = r.headers["X-Request-Id"]
        _wait_for(lambda r=r: requests.get(f"{app.url}{r.headers['Location']}", auth=app.admin, timeout=10)
                  .json()["state"] != "running", f"the {kind} job's end")

    def of(request_id: str) -> list[str]:
        return [f"{e['logger']}: {e['message']}" for e in records(app.log())
                if e.get("request_id") == request_id and e["logger"] != "cargohold.request"]

    assert of(promoted.headers["X-Request-Id"]) == [
        f"cargohold.audit: admin update release: promote release {release} test-bundle 1.0.0"]
    gc = _wait_for(lambda: [m for m in of(started["gc"]) if "finished" in m], "the GC's line")
    assert gc == ["bundles.gc_policy: garbage collection finished: 0 manifests, 0 blobs, 0 bytes reclaimed"]
    assert of(started["gc"])[0] == "bundles.gc_policy: garbage collection started (retain 3)"
    scrub = _wait_for(lambda: [m for m in of(started["scrub"]) if "finished" in m], "the scrub's line")
    assert len(scrub) == 1 and scrub[0].startswith("registry.scrub: scrub finished: ")
    assert scrub[0].endswith(" blobs checked, 0 damaged, 0 missing")


def test_a_blob_download_cut_short_gets_a_line_from_the_front(appliance: Appliance, repo: str) -> None:
    body = os.urandom(48 << 20)
    digest = "sha256:" + __import__("hashlib").sha256(body).hexdigest()
    up = requests.post(f"{appliance.url}/v2/{repo}/blobs/uploads/", auth=appliance.admin, timeout=10)
    put = requests.put(f"{appliance.url}{up.headers['Location']}", params={"digest": digest}, data=body,
                       auth=appliance.admin, timeout=60)
    assert put.status_code == 201, put.text
    with requests.get(f"{appliance.url}/v2/{repo}/blobs/{digest}", auth=appliance.admin, timeout=30,
                      stream=True) as got:
        assert got.status_code == 200
        got.raw.read(1 << 16)
        rid = got.headers["X-Request-Id"]
    # The client went away: the app's line says what it handed over, the front's how far it got.
    lines = _wait_for(lambda: (found := [r for r in records(appliance.log()) if r.get("request_id") == rid])
                      and len(found) == 2 and found, "both lines")
    by = {r["logger"]: r for r in lines}
    assert by["cargohold.request"]["bytes_out"] == len(body) and by["cargohold.request"]["sent_by"] == "front"
    front = by["cargohold.front"]
    assert front["complete"] is False and front["status"] == 200 and front["bytes_out"] < len(body)
    assert (front["method"], front["path"]) == ("GET", f"/v2/{repo}/blobs/{digest}")


def test_without_the_front_the_app_makes_the_id_and_logs_sendfile_bodies(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory("--front", "none", name="no-front")
    repo = f"spectro-images/test/r{uuid.uuid4().hex[:10]}"
    body = os.urandom(200_000)
    digest = "sha256:" + __import__("hashlib").sha256(body).hexdigest()
    up = requests.post(f"{app.url}/v2/{repo}/blobs/uploads/", auth=app.admin, timeout=10)
    assert requests.put(f"{app.url}{up.headers['Location']}", params={"digest": digest}, data=body,
                        auth=app.admin, timeout=30).status_code == 201
    forged = "injected\tid x=1"
    got = requests.get(f"{app.url}/v2/{repo}/blobs/{digest}", auth=app.admin, timeout=30,
                       headers={"X-Request-Id": forged, "X-Forwarded-For": "203.0.113.9"})
    assert got.status_code == 200 and got.content == body
    rid = got.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)  # not the client's: made by the app
    (line,) = _wait_for(lambda: [r for r in request_lines(app.log()) if r["request_id"] == rid], "the line")
    assert line["client"] == "127.0.0.1" and line["bytes_out"] == len(body) and "sent_by" not in line
    assert forged not in app.log() and "203.0.113.9" not in app.log()


@pytest.mark.parametrize("path", ["/v2/x%0A2026-01-01T00:00:00.000Z%20INFO%20%5B1%5D%20forged%20line/tags/list",
                                  "/v2/x/tags/list%0A", "/v2/x/tags/%C2%85%E2%80%A8list"])
def test_a_path_cannot_forge_a_log_line(appliance: Appliance, path: str) -> None:
    resp = requests.get(f"{appliance.url}{path}", timeout=10)
    rid = resp.headers["X-Request-Id"]
    (line,) = _wait_for(lambda: [line for line in appliance.log().split("\n") if rid in line], "the request line")
    assert re.search(r" duration_ms=[0-9.]+$", line), line  # the whole record on its one line
    assert not [line for line in appliance.log().split("\n") if line.startswith("2026-01-01T00:00:00.000Z")]


def test_python_warnings_are_json_records_too(tmp_path: Path) -> None:
    code = ("from web.logs import LogSettings, configure; configure(LogSettings('INFO', 'json')); "
            "import warnings; warnings.warn('careful: something odd')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                          check=True)
    (line,) = proc.stderr.strip().split("\n")
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and record["level"] == "WARNING"
    assert "careful: something odd" in record["message"]
