"""Verdicts and next steps in Debian's chromium: the import report names the release it staged, what edge hosts
get now and after promotion, each definition's verdict and a Review and promote link; a NOT READY release names
what is missing in plain words and links to its own definition version; promoting it needs a typed reason (UI
and API) that lands in the audit log; a refused import says nothing was imported and what to do, without CLI words.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import requests

from bundles import format as fmt
from bundles import keys
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.bundles.releases_util import import_release, release_api, trust
from tests.images import OciLayout
from tests.web.uiutil import login, screenshot


def _bundle(tmp: Path, layout: OciLayout, key: keys.PrivateKey, version: str, definition: dict[str, Any]) -> Path:
    archive = build_archive(tmp / f"def-{version}.tgz", definition)
    member = f"cluster-definitions/{archive.name}"
    entries = craft.standard_entries(layout.root, key, name="edge-site", version=version,
                                     extra=[(member, archive)],
                                     definitions=[fmt.FileEntry(definition["name"], version, member)])
    return craft.write_bundle(tmp / f"site-{version}.tar.zst", entries)


def _upload(page: Any, app: Appliance, bundle: Path) -> str:
    """Upload `bundle` through the form; the finished job's state."""
    page.goto(f"{app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    page.wait_for_url(re.compile(r".*/ui/imports/[0-9a-f]{32}$"), timeout=60_000)
    page.wait_for_function("() => ['done', 'failed'].includes(document.getElementById('job-state').textContent)",
                           timeout=60_000)
    page.wait_for_load_state()
    return str(page.locator("#job-state").text_content())


def _no_cli_words(page: Any) -> None:
    text = page.locator("body").inner_text()
    assert "--" not in text, text
    assert not re.search(r"cargohold \w", text), text


def test_staged_release_verdicts_and_promotion_with_a_reason(ui_app: Appliance, context: Any,
                                                            tmp_path: Path) -> None:
    key = keys.generate("ecdsa-p256")
    trust(ui_app, key, tmp_path)
    tag = uuid.uuid4().hex[:8]
    ref = f"docker.io/cargotest/verdict-{tag}:1.0"
    absent = f"docker.io/cargotest/absent-{tag}:9.9"
    name = f"edge-{tag}"
    v1 = OciLayout(tmp_path / "v1")
    old = str(v1.add_image([60_000], seed=701, ref=ref).digest)
    v2 = OciLayout(tmp_path / "v2")
    new = str(v2.add_image([61_000], seed=702, ref=ref).digest)  # amd64 only
    d1 = simple_definition(name, [ref])
    d2 = simple_definition(name, [ref, absent], architectures=("amd64", "arm64"))
    d2["version"] = "2.0.0"
    import_release(ui_app, _bundle(tmp_path, v1, key, "1.0.0", d1))  # publishes the tag and the READY 1.0.0

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    assert _upload(page, ui_app, _bundle(tmp_path, v2, key, "2.0.0", d2)) == "done"

    # The report: the staged release, served now vs after promotion, the verdict, the next step.
    release_link = page.locator("#report-release")
    rid = int(re.search(r"/ui/releases/(\d+)$", release_link.get_attribute("href") or "").group(1))  # type: ignore[union-attr]
    assert f"#{rid} edge-site 2.0.0" in release_link.inner_text()
    assert "move to this release's images only when the release is promoted" in page.locator(
        "#report-pending").inner_text()
    row = page.locator("#report-images tbody tr", has_text=ref.rsplit(":", 1)[0])
    assert row.locator(".served-now code").get_attribute("title") == old
    assert row.locator(".after-promotion code").get_attribute("title") == new
    assert "moves at promotion" in row.locator(".after-promotion").inner_text()
    head = page.locator("#report-images thead").inner_text()
    assert "Served now" in head and "After promotion" in head and "Served as" not in head
    verdicts = page.locator("#report-verdicts").inner_text()
    assert f"{name} 2.0.0: NOT READY (2 findings)" in verdicts
    screenshot(page, "verdicts-import-report-staged")
    page.get_by_role("link", name="Review and promote").click()
    page.wait_for_url(f"{ui_app.url}/ui/releases/{rid}")

    # The release page names every finding of its own definition version in plain words.
    needs = page.locator(f"#findings-{name}").inner_text()
    assert f"Image {absent} is missing: the appliance has no copy of it." in needs
    assert (f"Image {ref} is not built for this cluster: it is built for linux/amd64; the cluster needs "
            "linux/arm64.") in needs
    assert page.locator("#release-verdict").inner_text() == "NOT READY"
    _no_cli_words(page)
    screenshot(page, "verdicts-release-not-ready")
    page.locator("#release-definition-links").get_by_role("link", name=f"{name} 2.0.0").click()
    assert page.locator("#definition-title").inner_text() == f"{name} 2.0.0"
    assert page.locator("#verdict").inner_text() == "NOT READY"
    assert f"Image {absent} is missing" in page.locator("#findings").inner_text()
    page.goto(f"{ui_app.url}/ui/releases/{rid}")

    # Without a reason: the dialog will not confirm, and the server refuses the form in plain words.
    page.get_by_role("button", name=f"Promote #{rid}").click()
    dialog = page.get_by_role("dialog")
    assert dialog.is_visible()
    assert dialog.get_by_role("button", name="Promote anyway").is_disabled()
    dialog.get_by_role("button", name="Cancel").click()
    page.evaluate("() => document.getElementById('promote-form').submit()")  # as if the dialog were bypassed
    page.wait_for_load_state()
    flashes = page.locator(".flashes").inner_text()
    assert "Promotion refused. Promoting a release that is not ready needs a reason." in flashes
    assert page.locator("#release-state").inner_text() == "staged"
    _no_cli_words(page)

    # The API refuses too: not ready without force, and force without a reason.
    refused = release_api(ui_app, "POST", f"/releases/{rid}/promote", json={})
    assert refused.status_code == 409 and refused.json()["errors"][0]["code"] == "NOT_READY"
    refused = release_api(ui_app, "POST", f"/releases/{rid}/promote", json={"force": True, "reason": "  "})
    assert refused.status_code == 400
    served = requests.head(f"{ui_app.url}/v2/spectro-images/{ref.rsplit(':', 1)[0]}/manifests/1.0",
                           auth=ui_app.admin, timeout=10,
                           headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert served.headers["Docker-Content-Digest"] == old

    # With a reason typed in the dialog: promoted, the reason in the audit log.
    page.get_by_role("button", name=f"Promote #{rid}").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason (required; recorded in the audit log)").fill("arm64 nodes arrive next month")
    dialog.get_by_role("button", name="Promote anyway").click()
    page.wait_for_load_state()
    assert f"Release {rid} (edge-site 2.0.0) promoted" in page.locator(".flashes").inner_text()
    assert page.locator("#release-state").inner_text() == "promoted"
    audit = page.goto(f"{ui_app.url}/ui/audit").text()
    assert f"promote release {rid} edge-site 2.0.0 (forced: arm64 nodes arrive next month)" in audit


def test_refused_import_says_nothing_was_imported_and_what_to_do(ui_app: Appliance, context: Any,
                                                                 tmp_path: Path) -> None:
    stranger = keys.generate("ecdsa-p256")  # never trusted
    layout = OciLayout(tmp_path / "oci")
    layout.add_image([20_000], seed=801, ref=f"docker.io/cargotest/stranger-{uuid.uuid4().hex[:8]}:1")
    bundle = craft.write_bundle(tmp_path / "stranger.tar.zst",
                                craft.standard_entries(layout.root, stranger, name="stranger", version="1"))
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    assert _upload(page, ui_app, bundle) == "failed"
    error = page.locator("#job-error")
    assert error.is_visible()
    text = error.inner_text()
    assert "Import refused: nothing was imported" in text
    assert "signed with a key this appliance does not trust" in text
    assert ("What to do next: Ask for a bundle signed with a trusted key, or trust its key on the Trusted keys "
            "page") in text
    _no_cli_words(page)
    screenshot(page, "verdicts-import-refused-untrusted")
    error.get_by_role("link", name="Open Trusted keys").click()
    page.wait_for_url(f"{ui_app.url}/ui/keys")
