"""Failed-login rate limiting (per user, per address, across workers) and secrets kept out of logs.

Each test runs its own appliance with small limits and a short lockout, so a
lock here never touches the shared appliance other tests use.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import requests

from tests.appliance import ADMIN_PASSWORD, Appliance
from tests.registry.harborapi import Harbor, token_claims

LIMITS = {"CARGOHOLD_LOGIN_FAILURES_PER_USER": "3", "CARGOHOLD_LOGIN_FAILURES_PER_ADDRESS": "6",
          "CARGOHOLD_LOGIN_LOCKOUT_SECONDS": "4"}


def _v2(app: Appliance, auth: tuple[str, str]) -> requests.Response:
    # A fresh connection each time, so requests spread over both gunicorn workers.
    return requests.get(f"{app.url}/v2/", auth=auth, timeout=30, headers={"Connection": "close"})


def test_distinct_wrong_passwords_lock_the_user_out_then_the_lock_expires(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env=LIMITS)
    assert [_v2(app, ("admin", f"guess-{i}")).status_code for i in range(3)] == [401, 401, 401]
    locked = _v2(app, ("admin", "guess-3"))
    assert locked.status_code == 429
    assert locked.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 1 <= int(locked.headers["Retry-After"]) <= 4
    # the right password is refused too while the lock lasts, on /v2/, the token service and the API
    assert _v2(app, app.admin).status_code == 429
    token = requests.get(f"{app.url}/service/token", auth=app.admin, timeout=30)
    assert token.status_code == 429 and "Retry-After" in token.headers
    api = requests.get(f"{app.url}/api/v2.0/users/current", auth=app.admin, timeout=30)
    assert api.status_code == 429 and api.json()["errors"][0]["code"] == "TOO_MANY_REQUESTS"
    # other users are not locked
    assert _v2(app, ("someone", "x")).status_code == 401
    time.sleep(int(locked.headers["Retry-After"]) + 0.5)
    assert _v2(app, app.admin).status_code == 200


def test_a_client_retrying_one_stale_password_is_not_locked_out(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env=LIMITS)
    assert {_v2(app, ("admin", "stale-password")).status_code for _ in range(10)} == {401}
    assert _v2(app, app.admin).status_code == 200


def test_one_address_guessing_many_users_is_locked_out(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env=LIMITS)
    codes = [_v2(app, (f"user{i}", "pw")).status_code for i in range(7)]
    assert codes[:6] == [401] * 6 and codes[6] == 429, codes
    assert _v2(app, app.admin).status_code == 429  # the address is locked, whoever it claims to be


def test_no_secret_reaches_the_log_or_the_audit_log(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    admin = Harbor(app, app.admin)
    project = admin.create_project()
    robot = admin.project_robot(project, ("pull", "push"))
    refreshed = admin("PATCH", f"/robots/{robot.id}", json={}).json()["secret"]
    chosen = "Chosen-Secret-42"
    assert admin("PATCH", f"/robots/{robot.id}", json={"secret": chosen}).status_code == 200
    assert _v2(app, (robot.name, chosen)).status_code == 200
    assert _v2(app, (robot.name, refreshed)).status_code == 401
    assert _v2(app, ("admin", "typo-" + ADMIN_PASSWORD)).status_code == 401
    token = requests.get(f"{app.url}/service/token", auth=(robot.name, chosen), timeout=30,
                         params={"service": "harbor-registry", "scope": f"repository:{project}/x:pull"}).json()["token"]
    assert token_claims(token)["sub"] == robot.name
    app.stop()
    log = app.log()
    assert "/api/v2.0/robots" in log  # the requests were logged...
    for secret in (ADMIN_PASSWORD, robot.secret, refreshed, chosen, token, token.split(".")[2]):
        assert secret not in log, "a secret reached the appliance log"  # ...their secrets were not
    with sqlite3.connect(app.data_dir / "cargohold.db") as db:
        rows = db.execute("SELECT * FROM audit_logs").fetchall()
        dump = "\n".join(map(str, rows))
        stored = db.execute("SELECT secret_hash FROM robots").fetchone()[0]
    assert robot.name in dump  # who acted is recorded
    for secret in (ADMIN_PASSWORD, robot.secret, refreshed, chosen):
        assert secret not in dump and secret not in stored
    assert stored.startswith("scrypt$")
