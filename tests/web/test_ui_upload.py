"""The UI end to end in Debian's chromium: sign in, trust a key, upload a real bundle through the form (tus-js-client,
parallel partial uploads joined by tus concatenation), watch the progress and the import report, pull an image with
skopeo; resume an interrupted upload (one part, and several in parallel) in a new page; cancel one; refuse a
tampered bundle without importing anything.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from tests.appliance import Appliance
from tests.bundles.conftest import snapshot
from tests.layouts import sha256_file
from tests.web.uiutil import build_bundle, catalog, detached_signature, login, screenshot

CHUNK = 256 << 10
PARALLEL = 4  # upload.js's default number of parts

STATUS_RECORDER = """
window.__statuses = [];
new MutationObserver(() => window.__statuses.push(document.getElementById('upload-status').textContent))
  .observe(document.getElementById('upload-status'), {childList: true, characterData: true, subtree: true});
"""


def _trust_key(page: Any, app: Appliance, public_pem: Path) -> None:
    page.goto(f"{app.url}/ui/keys")
    page.get_by_label("Public key (PEM)").fill(public_pem.read_text())
    page.get_by_label("Description").fill("build team")
    page.get_by_role("button", name="Trust this key").click()
    page.get_by_text("Now trusting key sha256:").wait_for()


def _stored_upload(page: Any) -> dict[str, Any]:
    """tus-js-client's localStorage entry for the bundle being uploaded (upload.js's fingerprint)."""
    entry = page.evaluate("""() => {
        const key = Object.keys(localStorage).find(k => k.startsWith('tus::cargohold-tus:bundle:'));
        return key ? JSON.parse(localStorage.getItem(key)) : null;
    }""")
    assert entry, "no unfinished upload is kept in localStorage"
    return entry  # type: ignore[no-any-return]


def _wait_job(page: Any, timeout: float = 60) -> str:
    """Wait until the import page shows a finished job; returns its state."""
    page.wait_for_url(re.compile(r".*/ui/imports/[0-9a-f]{32}$"), timeout=timeout * 1000)
    page.wait_for_function("() => ['done', 'failed'].includes(document.getElementById('job-state').textContent)",
                           timeout=timeout * 1000)
    return str(page.locator("#job-state").text_content())


def test_sign_in_upload_bundle_see_progress_and_report_then_skopeo_pulls(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    bundle, digests = build_bundle(tmp_path, private, "site", "1.0.0",
                                   {"docker.io/library/nginx:1.25": 1_500_000, "quay.io/org/agent:2.1": 300_000},
                                   seed=71)
    signature = detached_signature(bundle, private)
    context.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = context.new_page()

    page.goto(f"{ui_app.url}/ui/")
    assert "/ui/login" in page.url  # not signed in: the dashboard sends you to sign in
    screenshot(page, "01-login")
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    _trust_key(page, ui_app, public)
    screenshot(page, "02-trusted-keys")

    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_label("Detached signature (optional)").set_input_files(str(signature))
    screenshot(page, "03-upload-form")
    concat: list[str] = []
    page.on("request", lambda r: concat.append(r.headers["upload-concat"])
            if r.method == "POST" and "upload-concat" in r.headers else None)
    page.get_by_role("button", name="Upload and import").click()
    assert _wait_job(page) == "done"
    report_page = page.url
    # The bundle went up as parallel partial uploads, joined by one final upload naming them in order.
    parts = min(PARALLEL, bundle.stat().st_size // CHUNK)
    assert parts >= 2 and concat.count("partial") == parts
    (final,) = [c for c in concat if c.startswith("final;")]
    assert len(final.removeprefix("final;").split()) == parts
    screenshot(page, "04-import-report")

    # The report is on the page: both images, both signatures (embedded by the builder, detached by openssl).
    text = page.locator("#report-images").inner_text()
    for ref in digests:
        assert ref in text
    job_id = report_page.rsplit("/", 1)[1]
    job = requests.get(f"{ui_app.url}/api/v1/imports/{job_id}", auth=ui_app.admin, timeout=10).json()
    assert job["state"] == "done" and job["source"] == bundle.name
    assert {s["kind"] for s in job["report"]["signatures"]} == {"embedded", "detached"}

    # skopeo pulls one of the images it brought, byte for byte the digest the layout had.
    ref = "docker.io/library/nginx:1.25"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{ui_app.host}/spectro-images/{ref}"], capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digests[ref]
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ui_app.host}/spectro-images/{ref}",
                    f"oci:{tmp_path / 'pulled'}:x"], capture_output=True, check=True)

    # Browse to the artifact: platforms/layers and the pull command naming this appliance.
    page.goto(f"{ui_app.url}/ui/repositories")
    page.get_by_role("link", name="spectro-images/docker.io/library/nginx").click()
    screenshot(page, "05-repository")
    page.get_by_role("link", name="1.25").click()
    assert page.locator("#layers tbody tr").count() == 3  # config + two layers
    pull = page.get_by_label("podman").input_value()
    assert pull == f"podman pull --tls-verify=false {ui_app.host}/spectro-images/docker.io/library/nginx:1.25"
    assert digests[ref] in page.locator("#artifact-detail").inner_text()
    screenshot(page, "06-artifact")

    page.goto(f"{ui_app.url}/ui/")
    assert page.locator("#counts").inner_text().count("\n") >= 6
    assert bundle.name in page.locator("main").inner_text()
    screenshot(page, "00-dashboard")
    for path, name in (("/ui/imports", "07-imports"), ("/ui/audit", "08-audit"), ("/ui/definitions", "09-definitions")):
        page.goto(f"{ui_app.url}{path}")
        screenshot(page, name)
    audit = page.goto(f"{ui_app.url}/ui/audit").text()
    assert "trusted_key" in audit and f"{job_id}:{bundle.name}" in audit  # who trusted, who imported


def test_interrupted_one_part_upload_resumes_in_a_new_page_and_completes_with_the_right_digest(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    bundle, _ = build_bundle(tmp_path, private, "resume", "1", {"docker.io/cargotest/big:1": 3_000_000}, seed=81)
    assert bundle.stat().st_size > 10 * CHUNK
    context.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK}; window.CARGOHOLD_PARALLEL_UPLOADS = 1;")
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    if "sha256:" not in page.goto(f"{ui_app.url}/ui/keys").text():
        _trust_key(page, ui_app, public)

    # First page: let four chunks through, then the network "drops" and the page is closed mid-upload.
    patches: list[int] = []

    def throttle(route: Any) -> None:
        if route.request.method != "PATCH":
            route.continue_()
            return
        patches.append(int(route.request.headers["upload-offset"]))
        if len(patches) <= 4:
            route.continue_()
        else:
            route.abort("connectionreset")

    page.route("**/api/v1/uploads/*", throttle)
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.evaluate(STATUS_RECORDER)
    page.get_by_role("button", name="Upload and import").click()
    deadline = time.monotonic() + 30
    while len(patches) < 5 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert len(patches) >= 5
    statuses = page.evaluate("() => window.__statuses")
    assert any(re.search(r"of .*\(\d+\.\d%\) — .*(/s|measuring)", s) for s in statuses), statuses
    assert page.locator("#upload-bar").evaluate("b => b.value") > 0
    page.get_by_text("The connection dropped; retrying").wait_for()  # the client says what happens
    screenshot(page, "11-upload-interrupted")
    upload_url = _stored_upload(page)["uploadUrl"]
    page.close()

    head = requests.head(upload_url, auth=ui_app.admin, timeout=10)
    assert head.status_code == 200 and int(head.headers["Upload-Offset"]) == 4 * CHUNK
    assert int(head.headers["Upload-Length"]) == bundle.stat().st_size

    # A new page, same browser profile: choosing the same file resumes where the server stopped.
    page = context.new_page()
    resumed: list[int] = []
    page.on("request", lambda r: resumed.append(int(r.headers["upload-offset"])) if r.method == "PATCH" else None)
    page.goto(f"{ui_app.url}/ui/upload")
    hint = page.locator("#resume-hint")
    hint.wait_for()
    assert f"Unfinished upload: {bundle.name}" in hint.inner_text()  # before any file is chosen
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    assert _wait_job(page) == "done"
    assert resumed[0] == 4 * CHUNK  # nothing sent twice
    upload = requests.get(upload_url, auth=ui_app.admin, timeout=10).json()
    assert upload["sha256"] == sha256_file(bundle)  # the server's file is the operator's file, byte for byte
    assert upload["offset"] == upload["length"] == bundle.stat().st_size
    assert page.url.endswith(upload["jobId"])


def test_interrupted_parallel_upload_resumes_every_part_in_a_new_page_with_the_right_digest(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    bundle, _ = build_bundle(tmp_path, private, "presume", "1", {"docker.io/cargotest/parallel:1": 3_000_000}, seed=83)
    size = bundle.stat().st_size
    assert size // PARALLEL > 2 * CHUNK  # every part takes three chunks or more
    context.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    if "sha256:" not in page.goto(f"{ui_app.url}/ui/keys").text():
        _trust_key(page, ui_app, public)

    # First page: three chunks (of whichever parts) get through, then the network drops for good.
    allowed: list[tuple[str, int]] = []
    refused: list[tuple[str, int]] = []
    finished: list[str] = []

    def throttle(route: Any) -> None:
        request = route.request
        if request.method != "PATCH":
            route.continue_()
            return
        sent = (request.url, int(request.headers["upload-offset"]))
        if len(allowed) < 3:
            allowed.append(sent)
            route.continue_()
        else:
            refused.append(sent)
            route.abort("connectionreset")

    page.route("**/api/v1/uploads/*", throttle)
    page.on("requestfinished", lambda r: finished.append(r.url) if r.method == "PATCH" else None)
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    page.get_by_text("The connection dropped; retrying").wait_for()
    deadline = time.monotonic() + 30
    while len(finished) < 3 and time.monotonic() < deadline:  # the chunks let through have landed
        page.wait_for_timeout(50)
    assert len(finished) == 3 and refused
    urls = _stored_upload(page)["parallelUploadUrls"]
    assert len(urls) == PARALLEL
    page.close()

    # The appliance kept exactly the chunks that got through, part by part.
    auth = {"Tus-Resumable": "1.0.0"}
    had: dict[str, tuple[int, int]] = {}
    for url in urls:
        head = requests.head(url, headers=auth, auth=ui_app.admin, timeout=10)
        assert head.status_code == 200 and head.headers["Upload-Concat"] == "partial"
        offset, length = int(head.headers["Upload-Offset"]), int(head.headers["Upload-Length"])
        expected = max((o + min(CHUNK, length - o) for u, o in allowed if u == url), default=0)
        assert offset == expected
        had[url] = (offset, length)
    assert sum(length for _, length in had.values()) == size
    assert 0 < sum(offset for offset, _ in had.values()) < size

    # A new page, same browser profile: choosing the same file continues every part from the appliance's offset.
    page = context.new_page()
    resumed: list[tuple[str, int]] = []
    finals: list[Any] = []
    page.on("request", lambda r: resumed.append((r.url, int(r.headers["upload-offset"]))) if r.method == "PATCH"
            else None)
    page.on("requestfinished", lambda r: finals.append(r) if r.method == "POST"
            and (r.headers.get("upload-concat") or "").startswith("final;") else None)
    page.goto(f"{ui_app.url}/ui/upload")
    hint = page.locator("#resume-hint")
    hint.wait_for()
    assert f"Unfinished upload: {bundle.name}" in hint.inner_text()
    screenshot(page, "12-upload-unfinished")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    assert _wait_job(page) == "done"
    for url, (offset, length) in had.items():  # nothing sent twice, nothing skipped
        assert [o for u, o in resumed if u == url] == list(range(offset, length, CHUNK))
    (final,) = finals
    assert final.headers["upload-concat"] == "final;" + " ".join(urls)
    final_url = ui_app.url + final.response().headers["location"]
    upload = requests.get(final_url, auth=ui_app.admin, timeout=10).json()
    assert upload["sha256"] == sha256_file(bundle)  # the assembled file is the operator's file, byte for byte
    assert upload["offset"] == upload["length"] == size
    assert upload["parts"] == [u.rsplit("/", 1)[1] for u in urls]
    assert page.url.endswith(upload["jobId"])
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('tus::'))") == []


def test_cancel_stops_a_parallel_upload_and_removes_its_parts(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, _ = key_pair
    bundle, _ = build_bundle(tmp_path, private, "cancel", "1", {"docker.io/cargotest/cancel:1": 2_000_000}, seed=85)
    context.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    patches: list[str] = []

    def stall(route: Any) -> None:  # two chunks get through, then every PATCH fails: the upload is mid-way
        if route.request.method == "PATCH":
            patches.append(route.request.url)
            if len(patches) > 2:
                route.abort("connectionreset")
                return
        route.continue_()

    page.route("**/api/v1/uploads/*", stall)
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    page.get_by_text("The connection dropped; retrying").wait_for()
    urls = _stored_upload(page)["parallelUploadUrls"]
    assert requests.head(urls[0], headers={"Tus-Resumable": "1.0.0"}, auth=ui_app.admin, timeout=10).status_code == 200
    page.get_by_role("button", name="Cancel upload").click()
    page.locator("#confirm-ok").click()
    page.get_by_text("Upload cancelled.").wait_for()
    for url in urls:
        assert requests.head(url, headers={"Tus-Resumable": "1.0.0"}, auth=ui_app.admin, timeout=10).status_code == 404
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('tus::'))") == []
    assert page.get_by_role("button", name="Upload and import").is_enabled()
    assert not page.get_by_role("button", name="Cancel upload").is_visible()
    assert not page.locator("#upload-error").is_visible()
    page.goto(f"{ui_app.url}/ui/upload")  # nothing is left to resume
    page.wait_for_load_state("networkidle")
    assert not page.locator("#resume-hint").is_visible()


def test_tampered_bundle_shows_the_verification_error_and_imports_nothing(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    bundle, _ = build_bundle(tmp_path, private, "tampered", "1", {"docker.io/cargotest/evil:1": 400_000}, seed=91)
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the compressed stream
    bundle.write_bytes(bytes(data))
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    if "sha256:" not in page.goto(f"{ui_app.url}/ui/keys").text():
        _trust_key(page, ui_app, public)
    before_catalog = catalog(ui_app)
    before = snapshot(ui_app.data_dir)

    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    assert _wait_job(page) == "failed"
    error = page.locator("#job-error")
    assert error.is_visible()
    message = error.inner_text()
    assert message.startswith("Import refused: ")
    assert re.search(r"corrupt|digest|checksum|does not match|signature", message, re.I), message
    screenshot(page, "10-tampered-refused")
    assert catalog(ui_app) == before_catalog
    assert "evil" not in " ".join(catalog(ui_app))
    assert snapshot(ui_app.data_dir)["tables"] == before["tables"]


def test_drag_and_drop_fills_the_bundle_and_signature_inputs(ui_app: Appliance, context: Any) -> None:
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/upload")
    data_transfer = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array([40, 181, 47, 253])], 'site.tar.zst'));
        dt.items.add(new File(['c2lnbmF0dXJl'], 'site.tar.zst.sig'));
        return dt;
    }""")
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": data_transfer})
    assert "over" in (page.locator("#dropzone").get_attribute("class") or "")
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": data_transfer})
    assert page.locator("#bundle").evaluate("i => i.files[0].name") == "site.tar.zst"
    assert page.locator("#signature").evaluate("i => i.files[0].name") == "site.tar.zst.sig"
