"""Failed-login rate limiting (per account and address, per address, across workers) and secrets kept out of logs.

Each test runs its own appliance with small limits and a short lockout, so a
lock here never touches the shared appliance other tests use. Clients on
other loopback addresses (127.0.0.2, 127.0.0.3: all of 127/8 is the loopback
interface on Linux) stand for other hosts; nginx passes each connection's
source address to the app, which is what the limits count by.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from tests.appliance import ADMIN_PASSWORD, Appliance
from tests.pgengine import metadata
from tests.registry.harborapi import Harbor, token_claims

LIMITS = {"CARGOHOLD_LOGIN_FAILURES_PER_USER": "3", "CARGOHOLD_LOGIN_FAILURES_PER_ADDRESS": "6",
          "CARGOHOLD_LOGIN_LOCKOUT_SECONDS": "4"}


class _FromAddress(HTTPAdapter):
    """Connections from a given local address (another host, as far as the appliance can tell)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def _client(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _FromAddress(address))
    return session


def _v2(app: Appliance, auth: tuple[str, str], address: str = "127.0.0.1",
        headers: dict[str, str] | None = None) -> requests.Response:
    # A fresh connection each time, so requests spread over both gunicorn workers.
    with _client(address) as client:
        return client.get(f"{app.url}/v2/", auth=auth, timeout=30, headers={"Connection": "close", **(headers or {})})


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


def test_one_address_guessing_many_users_is_held_but_correct_credentials_still_get_in(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env=LIMITS)
    robot = Harbor(app, app.admin).project_robot(Harbor(app, app.admin).create_project(), ("pull",))
    codes = [_v2(app, (f"user{i}", "pw")).status_code for i in range(7)]
    assert codes[:6] == [401] * 6 and codes[6] == 429, codes
    held = _v2(app, ("user-new", "pw"))
    # Each failure past the cap doubles the hold: 4 s after the 6th, 8 s after the 7th.
    assert held.status_code == 429 and 5 <= int(held.headers["Retry-After"]) <= 8
    # A name that failed here is refused without a check; correct credentials of names that did not are let in.
    assert _v2(app, ("user0", "pw")).status_code == 429
    assert _v2(app, robot.auth).status_code == 200
    assert _v2(app, app.admin).status_code == 200
    # Other addresses are not held at all.
    assert _v2(app, ("user-new", "pw"), "127.0.0.2").status_code == 401


def test_wrong_passwords_from_one_address_never_lock_out_the_right_one_from_another(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env=LIMITS)
    attacker, site = "127.0.0.2", "127.0.0.3"
    assert [_v2(app, ("admin", f"guess-{i}"), attacker).status_code for i in range(3)] == [401, 401, 401]
    locked = _v2(app, app.admin, attacker)
    assert locked.status_code == 429 and 1 <= int(locked.headers["Retry-After"]) <= 4
    # The real admin elsewhere: the registry, the token service and the API all answer.
    assert _v2(app, app.admin, site).status_code == 200
    with _client(site) as client:
        assert client.get(f"{app.url}/service/token", auth=app.admin, timeout=30).status_code == 200
        assert client.get(f"{app.url}/api/v2.0/users/current", auth=app.admin, timeout=30).status_code == 200
    # A forged X-Forwarded-For does not move the attacker elsewhere: nginx sets it from the connection.
    assert _v2(app, app.admin, attacker, headers={"X-Forwarded-For": site}).status_code == 429


def test_the_lockout_of_an_account_at_an_address_doubles_with_each_further_failure(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env={**LIMITS, "CARGOHOLD_LOGIN_LOCKOUT_SECONDS": "2"})
    address = "127.0.0.2"
    assert [_v2(app, ("admin", f"guess-{i}"), address).status_code for i in range(3)] == [401, 401, 401]
    first = int(_v2(app, app.admin, address).headers["Retry-After"])
    assert 1 <= first <= 2
    time.sleep(first + 0.3)
    assert _v2(app, ("admin", "guess-3"), address).status_code == 401  # the lock ended; this one counts again
    second = _v2(app, app.admin, address)
    assert second.status_code == 429 and 3 <= int(second.headers["Retry-After"]) <= 4
    time.sleep(int(second.headers["Retry-After"]) + 0.3)
    # The right password once the lock is over: in, and the count starts afresh.
    assert _v2(app, app.admin, address).status_code == 200
    assert _v2(app, ("admin", "guess-4"), address).status_code == 401
    assert _v2(app, app.admin, address).status_code == 200


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
    with metadata(app.data_dir) as db:
        rows = db.execute("SELECT * FROM audit_logs").fetchall()
        dump = "\n".join(map(str, rows))
        stored = db.execute("SELECT secret_hash FROM robots").fetchone()[0]
    assert robot.name in dump  # who acted is recorded
    for secret in (ADMIN_PASSWORD, robot.secret, refreshed, chosen):
        assert secret not in dump and secret not in stored
    assert stored.startswith("scrypt$")
