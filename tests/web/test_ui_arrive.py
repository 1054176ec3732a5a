"""Arriving at the appliance: its address opens the UI in a browser (JSON for API clients), the first start's
generated admin password is in a 0600 file and must be changed at the first sign-in, and the dashboard warns
about what would make the next job fail (no trusted key, free space near the reserve, a NOT READY definition).
"""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path
from typing import Any

import requests

from tests.appliance import Appliance, start_appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.web.uiutil import build_bundle, screenshot

POINTER = {"service": "cargohold", "registry": "/v2/", "ui": "/ui/"}


def _sign_in(page: Any, app: Appliance, password: str) -> None:
    page.goto(f"{app.url}/ui/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


# -- the address


def test_a_browser_opening_the_address_lands_on_the_sign_in_page(ui_app: Appliance, context: Any) -> None:
    page = context.new_page()
    response = page.goto(f"{ui_app.url}/")
    first = response.request
    while first.redirected_from is not None:
        first = first.redirected_from
    assert first.url == f"{ui_app.url}/"
    # Chromium's own navigation Accept header, with its `*/*` fallback, is what was sent.
    sent = first.all_headers()["accept"]
    assert sent.startswith("text/html,") and "*/*" in sent, sent
    page.wait_for_url(re.compile(r".*/ui/login\?next=/ui/$|.*/ui/login$"))
    assert page.get_by_role("heading", name="Sign in").is_visible()
    # A script's fetch() in the same browser sends `*/*`: that is an API client, and gets JSON.
    answer = page.evaluate("fetch('/').then(r => r.json())")
    assert answer == POINTER


def test_api_clients_get_json_from_the_address(ui_app: Appliance) -> None:
    for accept in ("application/json", "*/*", None, "application/json, text/html", "text/html;q=0.5, */*"):
        headers = {"Accept": accept} if accept is not None else {}
        s = requests.Session()
        if accept is None:
            del s.headers["Accept"]  # no Accept header at all
        r = s.get(f"{ui_app.url}/", headers=headers, timeout=10, allow_redirects=False)
        assert r.status_code == 200, (accept, r.status_code)
        assert r.headers["Content-Type"].startswith("application/json") and r.json() == POINTER, accept
    # Exactly what curl sends.
    r = requests.get(f"{ui_app.url}/", headers={"Accept": "*/*", "User-Agent": "curl/8.5.0"}, timeout=10,
                     allow_redirects=False)
    assert r.status_code == 200 and r.json() == POINTER
    # A client that prefers HTML is a browser.
    r = requests.get(f"{ui_app.url}/", headers={"Accept": "text/html,*/*;q=0.8"}, timeout=10, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/")


# -- the first start


def test_first_start_keeps_the_password_in_a_0600_file_and_the_first_sign_in_must_change_it(
        tmp_path: Path, browser: Any) -> None:
    app = start_appliance(tmp_path / "data", env={"CARGOHOLD_ADMIN_PASSWORD": ""})
    try:
        password_file = app.data_dir / "initial-admin-password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        generated = password_file.read_text().strip()
        assert len(generated) >= 12
        log = app.log()
        assert str(password_file) in log and generated not in log

        first = browser.new_context(viewport={"width": 1366, "height": 800})
        other = browser.new_context(viewport={"width": 390, "height": 844})
        try:
            # A second browser signs in too: its session must end when the password changes.
            other_page = other.new_page()
            _sign_in(other_page, app, generated)
            other_page.wait_for_url(f"{app.url}/ui/password")

            page = first.new_page()
            page.goto(f"{app.url}/")
            page.wait_for_url(re.compile(r".*/ui/login"))
            assert "initial-admin-password" in page.locator("#first-start-hint").inner_text()
            assert generated not in page.content()
            _sign_in(page, app, generated)
            page.wait_for_url(f"{app.url}/ui/password")
            assert page.get_by_role("heading", name="Change password").is_visible()
            assert "first sign-in" in page.locator("#password-forced").inner_text()
            screenshot(page, "arrive-01-forced-password-change")
            # Every other page leads back here until the password is changed.
            for path in ("/ui/", "/ui/repositories", "/ui/keys", "/ui/upload", "/ui/audit"):
                page.goto(f"{app.url}{path}")
                assert page.url == f"{app.url}/ui/password", path
            # A form post elsewhere is not acted on either.
            token = page.locator('meta[name="csrf-token"]').get_attribute("content")
            posted = page.request.post(f"{app.url}/ui/robots", form={"name": "sneaky", "csrf_token": token},
                                       max_redirects=0)
            assert posted.status == 302 and posted.headers["location"].endswith("/ui/password")

            # A weak new password: refused with the policy's words; nothing changes.
            page.get_by_label("Current password").fill(generated)
            page.get_by_label("New password", exact=True).fill("short")
            page.get_by_label("New password again").fill("short")
            page.get_by_role("button", name="Change password").click()
            error = page.locator("#password-error").inner_text()
            assert "the password is too short: use at least 12 characters" in error and "Nothing was changed" in error
            screenshot(page, "arrive-02-weak-password-refused")
            assert password_file.exists()
            # One character repeated is refused by the same policy.
            page.get_by_label("Current password").fill(generated)
            page.get_by_label("New password", exact=True).fill("a" * 16)
            page.get_by_label("New password again").fill("a" * 16)
            page.get_by_role("button", name="Change password").click()
            assert "one character repeated" in page.locator("#password-error").inner_text()
            # A wrong current password: refused.
            page.get_by_label("Current password").fill("not-the-current-one")
            page.get_by_label("New password", exact=True).fill("Field-Tech-Chosen-42")
            page.get_by_label("New password again").fill("Field-Tech-Chosen-42")
            page.get_by_role("button", name="Change password").click()
            assert "current password is wrong" in page.locator("#password-error").inner_text()
            assert password_file.exists()

            page.get_by_label("Current password").fill(generated)
            page.get_by_label("New password", exact=True).fill("Field-Tech-Chosen-42")
            page.get_by_label("New password again").fill("Field-Tech-Chosen-42")
            page.get_by_role("button", name="Change password").click()
            page.wait_for_url(f"{app.url}/ui/")
            assert "Password changed. 1 other sign-in of admin ended." in page.locator(".flashes").inner_text()
            assert not password_file.exists()
            # This browser carries on; pages open normally now.
            page.goto(f"{app.url}/ui/repositories")
            assert page.url == f"{app.url}/ui/repositories"
            # The other browser's session has ended.
            other_page.goto(f"{app.url}/ui/")
            assert "/ui/login" in other_page.url

            # The new password works, the generated one no longer does.
            assert requests.get(f"{app.url}/v2/", auth=("admin", "Field-Tech-Chosen-42"), timeout=30).status_code == 200
            assert requests.get(f"{app.url}/v2/", auth=("admin", generated), timeout=30).status_code == 401
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(re.compile(r".*/ui/login$"))
            assert page.locator("#first-start-hint").count() == 0
            _sign_in(page, app, "Field-Tech-Chosen-42")
            page.wait_for_url(f"{app.url}/ui/")

            # Afterwards the page is there for any change, reached from the header, and not forced.
            page.get_by_role("link", name="Change password").click()
            page.wait_for_url(f"{app.url}/ui/password")
            assert page.locator("#password-forced").count() == 0
            page.goto(f"{app.url}/ui/keys")
            assert page.url == f"{app.url}/ui/keys"
        finally:
            first.close()
            other.close()
    finally:
        app.stop()


def test_an_operator_chosen_first_password_writes_no_file_and_forces_no_change(
        ui_app: Appliance, context: Any) -> None:
    assert not (ui_app.data_dir / "initial-admin-password").exists()
    assert "initial-admin-password" not in ui_app.log()
    page = context.new_page()
    page.goto(f"{ui_app.url}/ui/login")
    assert page.locator("#first-start-hint").count() == 0
    _sign_in(page, ui_app, ui_app.admin[1])
    page.wait_for_url(f"{ui_app.url}/ui/")
    assert page.get_by_role("heading", name="Dashboard").is_visible()


# -- the dashboard's warnings


def _warnings(page: Any, app: Appliance) -> dict[str, str]:
    page.goto(f"{app.url}/ui/")
    return {w.get_attribute("id"): w.inner_text() for w in page.locator("#warnings .warning").all()}


def test_dashboard_warns_until_each_cause_is_fixed(tmp_path: Path, browser: Any, key_pair: tuple[Path, Path]) -> None:
    private, public = key_pair
    data = tmp_path / "data"
    app = start_appliance(data)
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    try:
        page = context.new_page()
        _sign_in(page, app, app.admin[1])
        page.wait_for_url(f"{app.url}/ui/")

        # No key is trusted: signed bundles would all be refused.
        shown = _warnings(page, app)
        assert set(shown) == {"warn-keys"}, shown
        assert "No signing key is trusted" in shown["warn-keys"]
        screenshot(page, "arrive-03-warning-no-key")
        cargohold("keys", "add", public, "--data-dir", data)
        assert _warnings(page, app) == {}

        # A definition needing an image the appliance does not hold is NOT READY.
        present, missing = "docker.io/cargotest/here:1", "docker.io/cargotest/later:1"
        bundle, _ = build_bundle(tmp_path, private, "arrive", "1", {present: 30_000}, seed=1301)
        cargohold("bundle", "import", bundle, "--data-dir", data, "--quiet")
        archive = build_archive(tmp_path / "site.tgz", simple_definition("north-site", [present, missing]))
        cargohold("clusterdef", "sign", archive, "--sign-key", private, "--detached")
        cargohold("clusterdef", "import", "--data-dir", data, archive, "--signature", f"{archive}.sig")
        shown = _warnings(page, app)
        assert set(shown) == {"warn-definitions"}, shown
        assert "north-site" in shown["warn-definitions"] and "NOT READY" in shown["warn-definitions"]
        page.get_by_role("link", name="Open north-site").click()
        page.wait_for_url(f"{app.url}/ui/definitions/north-site")
        assert page.locator("#verdict").inner_text() == "NOT READY"
        # The missing image arrives: ready, and the warning goes (no recorded check needed).
        later, _ = build_bundle(tmp_path, private, "arrive", "2", {missing: 30_000}, seed=1302)
        cargohold("bundle", "import", later, "--data-dir", data, "--quiet")
        assert _warnings(page, app) == {}

        # Free space close to the reserve uploads and imports keep: warned before writes start failing.
        app.stop()
        free = shutil.disk_usage(data).free
        app = start_appliance(data, env={"CARGOHOLD_IMPORT_RESERVE_BYTES": str(free - (300 << 20))})
        _sign_in(page, app, app.admin[1])
        page.wait_for_url(f"{app.url}/ui/")
        shown = _warnings(page, app)
        assert set(shown) == {"warn-space"}, shown
        assert "must stay free" in shown["warn-space"] and "GiB" in shown["warn-space"]
        screenshot(page, "arrive-04-warning-space")
        app.stop()
        app = start_appliance(data)  # the default reserve: plenty of room again
        _sign_in(page, app, app.admin[1])
        page.wait_for_url(f"{app.url}/ui/")
        assert _warnings(page, app) == {}
    finally:
        context.close()
        app.stop()

