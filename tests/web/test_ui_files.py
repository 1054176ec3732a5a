"""The Files page in a real browser: a file a bundle brought is listed with its digest, and its Download link
gives the exact bytes (through the files API, signed in by the UI session); a definition's readiness report
lists the file it requires."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import requests

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.web.uiutil import login, screenshot


def test_files_page_lists_and_downloads_a_file(ui_app: Appliance, context: Any, key_pair: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    data = os.urandom(300_000)
    (tmp_path / "user-data.yaml").write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    definition = simple_definition("edge-ui-files", [])
    definition["profiles"][0]["packs"][0]["content"]["files"] = [{"name": "user-data.yaml", "digest": digest}]
    bundle = tmp_path / "files.tar.zst"
    cargohold("bundle", "build", "--name", "files", "--version", "1", "--file",
              f"{tmp_path / 'user-data.yaml'}=user-data.yaml:2026.12", "--cluster-definition",
              build_archive(tmp_path / "edge-ui-files.tgz", definition), "--sign-key", private, "-o", bundle)
    json.loads(cargohold("bundle", "import", bundle, "--data-dir", ui_app.data_dir, "--json", "--quiet").stdout)

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Files", exact=True).click()
    page.wait_for_url(f"{ui_app.url}/ui/files/")
    row = page.locator("#files tbody tr", has_text="user-data.yaml")
    assert row.count() == 1
    assert digest in row.inner_text() and "2026.12" in row.inner_text()
    assert f"oras pull {ui_app.host}/spectro-images/files/user-data.yaml:2026.12" in row.inner_text()
    screenshot(page, "files")
    with page.expect_download() as info:
        row.get_by_role("link", name="Download user-data.yaml 2026.12").click()
    download = info.value
    assert download.suggested_filename == "user-data.yaml"
    assert Path(download.path()).read_bytes() == data

    # The definition's readiness report lists the file it needs, present.
    page.goto(f"{ui_app.url}/ui/definitions/edge-ui-files")
    file_row = page.locator("#findings tr", has_text="user-data.yaml")
    assert file_row.count() == 1 and "file" in file_row.inner_text() and digest in file_row.inner_text()
    assert file_row.get_by_text("present", exact=True).is_visible()

    # Signed out, the page itself asks for sign-in (the API stays anonymous for a public project).
    r = requests.get(f"{ui_app.url}/ui/files/", allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/ui/login" in r.headers["Location"]
