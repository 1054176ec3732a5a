"""The import page warns, in plain words, about a bundle built incomplete (Debian chromium, real upload form)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.images import OciLayout
from tests.web.uiutil import login, screenshot

NGINX = "docker.io/library/nginx:1.25"
ABSENT = "quay.io/acme/absent:7"


def test_import_page_lists_what_an_incomplete_bundle_lacks(ui_app: Appliance, context: Any,
                                                          key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    lay = OciLayout(tmp_path / "oci")
    lay.add_image([30_000], seed=81, ref=NGINX)
    edge = build_archive(tmp_path / "edge.tgz", simple_definition("edge-ui", [NGINX, ABSENT]))
    bundle = tmp_path / "partial.tar.zst"
    cargohold("bundle", "build", "--name", "partial", "--version", "1", "--layout", lay.root,
              "--cluster-definition", edge, "--allow-incomplete", "--sign-key", private, "-o", bundle)

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/keys")
    page.get_by_label("Public key (PEM)").fill(public.read_text())
    page.get_by_label("Description").fill("build team")
    page.get_by_role("button", name="Trust this key").click()
    page.get_by_text("Now trusting key sha256:").wait_for()
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    page.wait_for_url(re.compile(r".*/ui/imports/[0-9a-f]{32}$"), timeout=60_000)
    page.wait_for_function("() => document.getElementById('job-state').textContent === 'done'", timeout=60_000)
    banner = page.locator("#report-incomplete")
    banner.wait_for()
    text = banner.inner_text()
    # Plain words: what the build site did and what is missing, no CLI flag or finding code.
    assert "Incomplete bundle" in text and "the build site marked it as incomplete" in text and "--" not in text
    assert f"edge-ui 1.0.0: Image {ABSENT} is missing: the appliance has no copy of it." in text
    assert NGINX not in text  # present images are not listed as missing
    screenshot(page, "incomplete-import-report")
