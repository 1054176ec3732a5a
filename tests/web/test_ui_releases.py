"""Promote, roll back and discard from the UI: releases of one image tag, each step behind a confirmation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import requests

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.web.uiutil import build_bundle, login, screenshot

REF = "docker.io/cargotest/web:stable"
REPO = "spectro-images/docker.io/cargotest/web"


def _served(app: Appliance) -> str:
    r = requests.head(f"{app.url}/v2/{REPO}/manifests/stable", auth=app.admin, timeout=10,
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200
    return r.headers["Docker-Content-Digest"]


def _confirm(page: Any, button: str, label: str) -> None:
    page.get_by_role("button", name=button).click()
    dialog = page.get_by_role("dialog")
    assert dialog.is_visible()
    dialog.get_by_role("button", name=label).click()
    page.wait_for_load_state()


def test_promote_and_roll_back_from_the_ui(ui_app: Appliance, context: Any, key_pair: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    first, d1 = build_bundle(tmp_path, private, "web", "1", {REF: 100_000}, seed=111)
    second, d2 = build_bundle(tmp_path, private, "web", "2", {REF: 100_000}, seed=222)
    assert d1[REF] != d2[REF]
    r1 = json.loads(cargohold("bundle", "import", first, "--data-dir", ui_app.data_dir, "--json", "--quiet").stdout)
    id1 = r1["release"]["id"]
    assert _served(ui_app) == d1[REF]  # a new tag is published at import

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/releases/{id1}")
    _confirm(page, f"Promote #{id1}", "Promote")
    assert f"Release {id1} (web 1) promoted" in page.locator(".flashes").inner_text()
    assert page.locator("#release-state").inner_text() == "promoted"

    r2 = json.loads(cargohold("bundle", "import", second, "--data-dir", ui_app.data_dir, "--json", "--quiet").stdout)
    id2 = r2["release"]["id"]
    assert _served(ui_app) == d1[REF]  # staged: the existing tag does not move at import

    page.goto(f"{ui_app.url}/ui/releases/")
    assert re.search(rf"#{id1} web 1", page.locator("#promoted").inner_text())
    screenshot(page, "13-releases")
    page.get_by_role("link", name="web 2").click()
    diff = page.locator("#diff-images").inner_text()
    assert "changed" in diff and REPO in diff  # the diff from the promoted release
    assert page.get_by_text("moves at promotion").is_visible()
    screenshot(page, "14-release-staged")

    # The dialog's Cancel leaves everything as it was.
    page.get_by_role("button", name=f"Promote #{id2}").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert _served(ui_app) == d1[REF]

    _confirm(page, f"Promote #{id2}", "Promote")
    assert f"Release {id2} (web 2) promoted: 1 tag(s) moved." in page.locator(".flashes").inner_text()
    assert _served(ui_app) == d2[REF]

    _confirm(page, f"Roll back to #{id1}", "Roll back")
    assert f"Rolled back to release {id1}" in page.locator(".flashes").inner_text()
    assert _served(ui_app) == d1[REF]
    page.goto(f"{ui_app.url}/ui/releases/")
    states = page.locator("#releases").inner_text()
    assert "rolled-back" in states and "promoted" in states
    screenshot(page, "15-releases-rolled-back")
    audit = page.goto(f"{ui_app.url}/ui/audit").text()
    assert f"promote release {id2} web 2" in audit and f"roll back release {id2} web 2 to release {id1}" in audit


API_REF = "docker.io/cargotest/api:stable"
API_REPO = "spectro-images/docker.io/cargotest/api"


def test_discard_a_staged_release_from_the_ui(ui_app: Appliance, context: Any, key_pair: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    first, d1 = build_bundle(tmp_path, private, "api", "1", {API_REF: 50_000}, seed=333)
    second, d2 = build_bundle(tmp_path, private, "api", "2", {API_REF: 50_000}, seed=444)
    cargohold("bundle", "import", first, "--data-dir", ui_app.data_dir, "--json", "--quiet")
    r2 = json.loads(cargohold("bundle", "import", second, "--data-dir", ui_app.data_dir, "--json", "--quiet").stdout)
    id2 = r2["release"]["id"]

    def served() -> str:
        r = requests.head(f"{ui_app.url}/v2/{API_REPO}/manifests/stable", auth=ui_app.admin, timeout=10,
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 200
        return r.headers["Docker-Content-Digest"]

    assert served() == d1[API_REF]  # v2 is staged: its tag move is pending
    page = context.new_page()
    login(page, ui_app)
    page.goto(f"{ui_app.url}/ui/releases/{id2}")
    page.get_by_role("button", name=f"Discard #{id2}").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert page.locator("#release-state").inner_text() == "staged"  # Cancel changes nothing

    page.fill("#discard-reason", "never going to ship")
    _confirm(page, f"Discard #{id2}", "Discard")
    assert f"Release {id2} (api 2) discarded" in page.locator(".flashes").inner_text()
    assert page.locator("#release-state").inner_text() == "discarded"
    assert page.get_by_role("button", name=f"Promote #{id2}").count() == 0
    assert page.get_by_role("button", name=f"Discard #{id2}").count() == 0
    assert served() == d1[API_REF] and d1[API_REF] != d2[API_REF]
    listed = requests.get(f"{ui_app.url}/api/cargohold/v1/releases/{id2}", auth=ui_app.admin, timeout=10).json()
    assert listed["state"] == "discarded" and listed["images"] == []
    audit = page.goto(f"{ui_app.url}/ui/audit").text()
    assert f"discard release {id2} api 2 (was staged): never going to ship" in audit
