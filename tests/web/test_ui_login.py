"""Sign-in, CSRF and sessions: the browser sees errors; requests without the CSRF token are refused;
the session works for the JSON APIs the UI calls and ends at sign-out or a password change.
"""

from __future__ import annotations

import re
from typing import Any

import requests

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.web.uiutil import login, screenshot, signed_in


def test_wrong_password_shows_an_error_and_the_right_one_signs_in(ui_app: Appliance, context: Any) -> None:
    page = context.new_page()
    login(page, ui_app, password="not-the-password")
    error = page.locator("#login-error")
    assert error.inner_text() == "Invalid username or password."
    assert "/ui/login" in page.url
    screenshot(page, "01b-login-error")
    # keyboard only: tab through the form and press Enter
    page.get_by_label("Username").fill(ui_app.admin[0])
    page.get_by_label("Password").fill(ui_app.admin[1])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{ui_app.url}/ui/")
    assert page.get_by_role("heading", name="Dashboard").is_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "cargohold_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/ui/login$"))
    page.goto(f"{ui_app.url}/ui/robots")
    assert "/ui/login" in page.url


def test_posts_without_the_csrf_token_are_refused(ui_app: Appliance) -> None:
    # The sign-in form itself: the right password without the token does not sign in.
    s = requests.Session()
    s.get(f"{ui_app.url}/ui/login", timeout=10)
    r = s.post(f"{ui_app.url}/ui/login", data={"username": ui_app.admin[0], "password": ui_app.admin[1]},
               timeout=10, allow_redirects=False)
    assert r.status_code == 400 and "CSRF" in r.text
    assert s.get(f"{ui_app.url}/ui/", timeout=10, allow_redirects=False).status_code == 302

    s, token = signed_in(ui_app)
    # A page form without the token: refused, nothing created.
    r = s.post(f"{ui_app.url}/ui/robots", data={"name": "csrfless"}, timeout=10)
    assert r.status_code == 400 and "CSRF" in r.text
    assert "csrfless" not in s.get(f"{ui_app.url}/ui/robots", timeout=10).text
    # A state-changing fetch on the session without X-CSRF-Token: refused by the JSON API too.
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "10"}
    r = s.post(f"{ui_app.url}/api/v1/uploads", headers=headers, timeout=10)
    assert r.status_code == 403 and "CSRF" in r.text
    r = s.post(f"{ui_app.url}/api/v1/uploads", headers={**headers, "X-CSRF-Token": "wrong"}, timeout=10)
    assert r.status_code == 403
    r = s.post(f"{ui_app.url}/api/v1/uploads", headers={**headers, "X-CSRF-Token": token}, timeout=10)
    assert r.status_code == 201
    # Reads need no token; the session is accepted by the appliance's JSON APIs.
    assert s.get(f"{ui_app.url}/api/v1/imports", timeout=10).status_code == 200
    assert requests.get(f"{ui_app.url}/api/v1/imports", timeout=10).status_code == 401


def test_a_password_change_ends_the_session(ui_app: Appliance) -> None:
    s, _ = signed_in(ui_app)
    assert s.get(f"{ui_app.url}/ui/keys", timeout=10, allow_redirects=False).status_code == 200
    # The same password again: a new salt, so a new hash, which is what a session is bound to.
    cargohold("admin", "set-password", "--data-dir", ui_app.data_dir, env={"CARGOHOLD_NEW_PASSWORD": ui_app.admin[1]})
    r = s.get(f"{ui_app.url}/ui/keys", timeout=10, allow_redirects=False)
    assert r.status_code == 302 and "/ui/login" in r.headers["Location"]


def test_a_cookie_replayed_after_sign_out_is_refused(ui_app: Appliance) -> None:
    s, token = signed_in(ui_app)
    other, _ = signed_in(ui_app)  # a second session of the same admin (another browser)
    captured = s.cookies.get("cargohold_session")
    assert captured
    assert s.get(f"{ui_app.url}/ui/keys", timeout=10, allow_redirects=False).status_code == 200
    r = s.post(f"{ui_app.url}/ui/logout", data={"csrf_token": token}, timeout=10, allow_redirects=False)
    assert r.status_code == 302 and "/ui/login" in r.headers["Location"]
    # Someone who copied the cookie before sign-out replays it: the pages and the JSON APIs refuse it.
    replay = requests.Session()
    replay.cookies.set("cargohold_session", captured)
    r = replay.get(f"{ui_app.url}/ui/keys", timeout=10, allow_redirects=False)
    assert r.status_code == 302 and "/ui/login" in r.headers["Location"]
    r = replay.get(f"{ui_app.url}/api/v1/imports", timeout=10)
    assert r.status_code == 401
    r = replay.post(f"{ui_app.url}/api/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10",
                                                             "X-CSRF-Token": token}, timeout=10)
    assert r.status_code == 401
    # Signing out ends that session only: the other one goes on.
    assert other.get(f"{ui_app.url}/ui/keys", timeout=10, allow_redirects=False).status_code == 200


def test_robot_accounts_page_shows_the_secret_once_and_the_robot_pulls(ui_app: Appliance, context: Any) -> None:
    page = context.new_page()
    login(page, ui_app)
    page.goto(f"{ui_app.url}/ui/robots")
    page.get_by_label("Name", exact=True).fill("ci-puller")
    page.get_by_label("Description").fill("edge pull")
    page.get_by_role("button", name="Create robot account").click()
    secret = page.get_by_label("Secret").input_value()
    assert len(secret) >= 8
    screenshot(page, "12-robots")
    token = requests.get(f"{ui_app.url}/service/token?service=harbor-registry&scope=repository:spectro-images/x:pull",
                         auth=("robot$ci-puller", secret), timeout=10)
    assert token.status_code == 200  # the secret works
    page.reload()
    assert page.get_by_label("Secret").count() == 0  # shown once
    page.get_by_role("button", name="Disable robot$ci-puller").click()
    assert page.locator("#robots").get_by_text("disabled").is_visible()
    token = requests.get(f"{ui_app.url}/service/token?service=harbor-registry&scope=repository:spectro-images/x:pull",
                         auth=("robot$ci-puller", secret), timeout=10)
    assert token.status_code == 401
    page.get_by_role("button", name="Delete robot$ci-puller").click()
    page.get_by_role("button", name="Confirm").click()  # the confirmation dialog
    page.wait_for_load_state()
    assert "robot$ci-puller deleted." in page.locator(".flashes").inner_text()
