"""Cluster definitions in the UI: the readiness report (what is missing, exactly), recording a check, and
the verdict on the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.web.uiutil import build_bundle, login, screenshot


def test_definition_check_report_names_what_is_missing_and_records_checks(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    present = "docker.io/cargotest/present:1"
    missing = "docker.io/cargotest/missing:1"
    bundle, _ = build_bundle(tmp_path, private, "defs", "1", {present: 50_000}, seed=131)
    cargohold("bundle", "import", bundle, "--data-dir", ui_app.data_dir, "--quiet")
    archive = build_archive(tmp_path / "edge.tgz", simple_definition("edge-site", [present, missing]))
    cargohold("clusterdef", "sign", archive, "--sign-key", private, "--detached")
    cargohold("clusterdef", "import", "--data-dir", ui_app.data_dir, archive, "--signature", f"{archive}.sig")

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/definitions")
    page.get_by_role("link", name="edge-site").click()
    assert page.locator("#verdict").inner_text() == "NOT READY"
    findings = page.locator("#findings").inner_text()
    assert present in findings and missing in findings
    row = page.locator("#findings tr", has_text=missing)
    assert "present" not in row.inner_text()
    assert page.locator("#findings tr", has_text=present).get_by_text("present", exact=True).is_visible()
    assert page.locator("#findings tr", has_text=present).locator("td.platforms").inner_text() == "linux/amd64"
    assert "No checks recorded yet." in page.locator("#history").inner_text()

    page.get_by_role("button", name="Run and record a check").click()
    assert "Check recorded: not ready." in page.locator(".flashes").inner_text()
    assert page.locator("#history tbody tr").count() == 1
    screenshot(page, "16-definition-check")
    page.goto(f"{ui_app.url}/ui/")
    readiness = page.locator("#readiness").inner_text()
    assert "edge-site" in readiness and "not ready" in readiness


def test_upload_form_refuses_an_unsigned_definition_and_takes_a_signed_one(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    amd64_only = "docker.io/cargotest/amd64-only:1"
    bundle, _ = build_bundle(tmp_path, private, "arm-site", "1", {amd64_only: 40_000}, seed=151)
    cargohold("bundle", "import", bundle, "--data-dir", ui_app.data_dir, "--quiet")
    archive = build_archive(tmp_path / "arm-site.tgz",
                            simple_definition("arm-site", [amd64_only], architectures=("arm64",)))

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/definitions")
    page.set_input_files("#definition", str(archive))
    page.get_by_role("button", name="Upload and verify").click()
    flash = page.locator(".flashes").inner_text()
    assert "Refused (DEFINITION_UNSIGNED)" in flash and "not signed" in flash
    assert "Nothing was stored. Ask the build site for a signed definition" in flash
    assert "cargohold " not in flash and "--" not in flash and "allow_unsigned" not in flash  # no CLI or setting words
    assert page.get_by_role("link", name="arm-site").count() == 0  # nothing stored

    cargohold("clusterdef", "sign", archive, "--sign-key", private, "--detached")
    page.set_input_files("#definition", str(archive))
    page.set_input_files("#signature", f"{archive}.sig")
    page.get_by_role("button", name="Upload and verify").click()
    page.wait_for_url(f"{ui_app.url}/ui/definitions/arm-site")
    assert "Imported arm-site 1.0.0: 1 images, signed by sha256:" in page.locator(".flashes").inner_text()
    # amd64 content for an arm64 cluster: not ready, and the report says what the image is built for.
    assert page.locator("#verdict").inner_text() == "NOT READY"
    row = page.locator("#findings tr", has_text=amd64_only)
    assert "platform_missing" in row.inner_text()
    assert row.locator("td.platforms").inner_text() == "linux/amd64"
    screenshot(page, "17-definition-upload")
