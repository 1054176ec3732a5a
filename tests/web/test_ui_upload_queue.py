"""The upload page beyond one file, in Debian's chromium against the real appliance: a split bundle's parts (and
its signature) chosen at once import as one bundle; several bundles go up and import one after another; an upload
cut mid-way is listed on the Upload and Imports pages and resumed from a browser that never saw it; an import cut
by killing the appliance says "interrupted" and Retry import imports it from the file already uploaded; the retry
API refuses once that file is gone.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import requests

from tests.appliance import Appliance, restart_on, start_appliance
from tests.bundles.buildutil import cargohold
from tests.images import OciLayout
from tests.web.uiutil import build_bundle, detached_signature, login, signed_in

CHUNK = 256 << 10
TUS = {"Tus-Resumable": "1.0.0"}


def _trust(app: Appliance, public: Path) -> None:
    cargohold("keys", "add", public, "--data-dir", app.data_dir, check=False)  # may be trusted already


def _split_bundle(directory: Path, key: Path, name: str, images: dict[str, int], seed: int,
                  split: str) -> tuple[list[Path], dict[str, str]]:
    """A signed bundle from `cargohold bundle build --split`: its parts in order, and {reference: digest}."""
    layout = OciLayout(directory / f"layout-{name}")
    digests = {ref: str(layout.add_image([size, 20_000], seed=seed + i, ref=ref).digest)
               for i, (ref, size) in enumerate(images.items())}
    out = directory / f"{name}.tar.zst"
    cargohold("bundle", "build", "--name", name, "--version", "1", "--layout", layout.root, "--sign-key", key,
              "-o", out, "--split", split)
    parts = sorted(directory.glob(f"{name}.tar.zst.part*"))
    return parts, digests


def _wait_done(page: Any, timeout: float = 90) -> str:
    page.wait_for_url(re.compile(r".*/ui/imports/[0-9a-f]{32}$"), timeout=timeout * 1000)
    page.wait_for_function("() => ['done', 'failed'].includes(document.getElementById('job-state').textContent)",
                           timeout=timeout * 1000)
    return str(page.locator("#job-state").text_content())


def _job(app: Appliance, job_id: str) -> dict[str, Any]:
    return requests.get(f"{app.url}/api/v1/imports/{job_id}", auth=app.admin, timeout=10).json()  # type: ignore[no-any-return]


def _wait_job(app: Appliance, job_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = _job(app, job_id)
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def _manifest_digest(app: Appliance, reference: str) -> str:
    repo, _, tag = reference.rpartition(":")
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{app.host}/spectro-images/{repo}:{tag}"], capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_split_bundle_parts_and_signature_chosen_at_once_import_as_one_bundle(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    _trust(ui_app, public)
    parts, digests = _split_bundle(tmp_path, private, "split-site",
                                   {"docker.io/cargotest/split-a:1": 1_500_000, "quay.io/cargotest/split-b:2": 900_000},
                                   seed=301, split="700K")
    assert len(parts) >= 3
    whole = tmp_path / "whole.tar.zst"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    signature = detached_signature(whole, private)
    named_sig = tmp_path / "split-site.tar.zst.sig"
    signature.rename(named_sig)
    context.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/upload")
    # Everything in the one file chooser, in a shuffled order: the page puts the parts in order.
    page.get_by_label("Bundle file").set_input_files([str(named_sig), *map(str, reversed(parts))])
    page.get_by_role("button", name="Upload and import").click()
    assert _wait_done(page) == "done"
    job = _job(ui_app, page.url.rsplit("/", 1)[1])
    assert job["source"] == "split-site.tar.zst"
    assert {s["kind"] for s in job["report"]["signatures"]} == {"embedded", "detached"}
    assert job["report"]["parts"] == len(parts)  # one import read every part
    for reference, digest in digests.items():  # the images pull, byte for byte
        assert _manifest_digest(ui_app, reference) == digest

    # Parts missing one in the middle: refused before anything is uploaded.
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files([str(parts[0]), str(parts[2])])
    page.get_by_role("button", name="Upload and import").click()
    error = page.locator("#upload-error")
    error.wait_for()
    assert "Part 001 of split-site.tar.zst is missing" in error.inner_text()


def test_parts_already_sent_are_not_sent_again_from_another_browser(
        ui_app: Appliance, browser: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    _trust(ui_app, public)
    parts, digests = _split_bundle(tmp_path, private, "split-again", {"docker.io/cargotest/again:1": 1_400_000},
                                   seed=361, split="600K")
    assert len(parts) >= 2
    first = browser.new_context()
    first.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = first.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.route("**/api/v1/imports/uploads", lambda route: route.abort("connectionreset"))  # every part lands, then
    page.goto(f"{ui_app.url}/ui/upload")                                                  # the network is gone
    page.get_by_label("Bundle file").set_input_files([str(p) for p in parts])
    page.get_by_role("button", name="Upload and import").click()
    page.locator("#upload-error").wait_for()
    first.close()

    other = browser.new_context()
    page = other.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(f"{r.method} {r.url}") if "/api/v1/uploads" in r.url
            and r.method in ("POST", "PATCH") else None)
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files([str(p) for p in parts])
    page.get_by_role("button", name="Upload and import").click()
    assert _wait_done(page) == "done"
    assert sent == []  # every part was already on the appliance: nothing uploaded again
    job = _job(ui_app, page.url.rsplit("/", 1)[1])
    assert job["report"]["parts"] == len(parts)
    assert [i["digest"] for i in job["report"]["images"]] == list(digests.values())
    other.close()


def test_cancel_of_a_split_bundle_also_discards_the_parts_already_sent(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, _ = key_pair
    parts, _ = _split_bundle(tmp_path, private, "split-cancel", {"docker.io/cargotest/cancel-split:1": 1_400_000},
                             seed=371, split="600K")
    assert len(parts) >= 2
    context.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    created: list[str] = []
    page.on("response", lambda r: created.append(ui_app.url + r.headers["location"])
            if r.request.method == "POST" and r.status == 201 and "/api/v1/uploads" in r.url else None)
    finals: list[str] = []

    def stall(route: Any) -> None:  # the first part lands whole, then every PATCH fails: the second is mid-way
        request = route.request
        if request.method == "POST" and (request.headers.get("upload-concat") or "").startswith("final;"):
            finals.append(request.url)
        if request.method == "PATCH" and finals:
            route.abort("connectionreset")
            return
        route.continue_()

    page.route("**/api/v1/uploads**", stall)
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files([str(p) for p in parts])
    page.get_by_role("button", name="Upload and import").click()
    page.get_by_text("The connection dropped; retrying").wait_for()
    assert finals  # part000 is whole on the appliance
    page.get_by_role("button", name="Cancel upload").click()
    page.locator("#confirm-ok").click()
    page.get_by_text("Upload cancelled.").wait_for()
    assert created
    for url in created:  # part000 (its final upload and partials) and part001's partials: all gone
        assert requests.head(url, headers=TUS, auth=ui_app.admin, timeout=10).status_code == 404, url
    listed = requests.get(f"{ui_app.url}/api/v1/uploads", auth=ui_app.admin, timeout=10).json()["uploads"]
    assert not [u for u in listed if u["filename"].startswith("split-cancel")]


def test_two_bundles_chosen_together_are_uploaded_and_imported_in_order(
        ui_app: Appliance, context: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    _trust(ui_app, public)
    first, d1 = build_bundle(tmp_path, private, "queue-a", "1", {"docker.io/cargotest/queue-a:1": 800_000}, seed=311)
    second, d2 = build_bundle(tmp_path, private, "queue-b", "1", {"docker.io/cargotest/queue-b:1": 600_000}, seed=321)
    context.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files([str(first), str(second)])
    page.get_by_role("button", name="Upload and import").click()
    page.get_by_text("All 2 bundles are handled").wait_for(timeout=120_000)
    lines = page.locator("#queue li").all_inner_texts()
    assert len(lines) == 2 and lines[0].startswith(first.name) and lines[1].startswith(second.name)
    assert all("imported" in line for line in lines), lines
    jobs = requests.get(f"{ui_app.url}/api/v1/imports", auth=ui_app.admin, timeout=10).json()["imports"]
    ours = [j for j in jobs if j["source"] in (first.name, second.name)]
    ours.sort(key=lambda j: j["createdAt"])
    assert [j["source"] for j in ours] == [first.name, second.name]
    assert all(j["state"] == "done" for j in ours)
    # The second started after the first was imported: one after another.
    assert ours[1]["createdAt"] >= ours[0]["updatedAt"]
    for reference, digest in {**d1, **d2}.items():
        assert _manifest_digest(ui_app, reference) == digest


def test_cut_upload_is_listed_and_a_new_browser_resumes_it(
        ui_app: Appliance, browser: Any, key_pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = key_pair
    _trust(ui_app, public)
    bundle, digests = build_bundle(tmp_path, private, "elsewhere", "1", {"docker.io/cargotest/elsewhere:1": 3_000_000},
                                   seed=331)
    size = bundle.stat().st_size
    first = browser.new_context()
    first.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = first.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    landed: list[str] = []

    def throttle(route: Any) -> None:  # four chunks get through, then the network is gone
        if route.request.method != "PATCH":
            route.continue_()
        elif len(landed) < 4:
            landed.append(route.request.url)
            route.continue_()
        else:
            route.abort("connectionreset")

    finished: list[str] = []
    page.route("**/api/v1/uploads/*", throttle)
    page.on("requestfinished", lambda r: finished.append(r.url) if r.method == "PATCH" else None)
    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    page.get_by_text("The connection dropped; retrying").wait_for()
    deadline = time.monotonic() + 30
    while len(finished) < 4 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert len(finished) == 4
    first.close()  # the page, and the browser profile with its localStorage, are gone

    # Another browser: the unfinished upload is listed on the Upload and the Imports pages, with its %.
    other = browser.new_context()
    other.add_init_script(f"window.CARGOHOLD_CHUNK_SIZE = {CHUNK};")
    page = other.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    expected_pct = f"{100 * 4 * CHUNK / size:.1f}%"
    for path in ("/ui/upload", "/ui/imports"):
        page.goto(f"{ui_app.url}{path}")
        table = page.locator("#unfinished-uploads")
        table.wait_for()
        row = table.locator("tbody tr", has_text=bundle.name)
        text = row.inner_text()
        assert expected_pct in text and ui_app.admin[0] in text, text
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('tus::'))") == []

    # What the appliance holds of it (the same list over the API), part by part.
    listed = requests.get(f"{ui_app.url}/api/v1/uploads", auth=ui_app.admin, timeout=10).json()["uploads"]
    (held,) = [u for u in listed if u["filename"] == bundle.name]
    assert held["received"] == 4 * CHUNK and held["size"] == size and held["owner"] == ui_app.admin[0]

    # Choosing the same file there continues it: the parts resume at the appliance's offsets.
    page.goto(f"{ui_app.url}/ui/upload")
    patches: list[Any] = []
    page.on("requestfinished", lambda r: patches.append(r) if r.method == "PATCH" else None)
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_role("button", name="Upload and import").click()
    assert _wait_done(page) == "done"
    sent = 0
    for part in held["uploads"]:  # every part continued from the appliance's offset: nothing sent twice
        url = ui_app.url + part["url"]
        assert [int(r.headers["upload-offset"]) for r in patches if r.url == url] == \
            list(range(part["offset"], part["length"], CHUNK))
        sent += part["length"] - part["offset"]
    assert sent == size - 4 * CHUNK < size  # the second browser sent only what the appliance did not have
    job = _job(ui_app, page.url.rsplit("/", 1)[1])
    assert [i["digest"] for i in job["report"]["images"]] == list(digests.values())
    page.goto(f"{ui_app.url}/ui/upload")
    assert page.locator("#unfinished-uploads tbody tr", has_text=bundle.name).count() == 0
    other.close()


def _tus_upload(app: Appliance, path: Path) -> str:
    """Upload `path` as a bundle with plain tus requests; returns the upload URL."""
    import base64

    data = path.read_bytes()
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in
                    {"filename": path.name, "kind": "bundle"}.items())
    r = requests.post(f"{app.url}/api/v1/uploads", auth=app.admin, timeout=30,
                      headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta})
    assert r.status_code == 201, r.text
    url = app.url + r.headers["Location"]
    r = requests.patch(url, data=data, auth=app.admin, timeout=120,
                       headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 204, r.text
    return url


def test_unfinished_list_counts_a_finished_part_of_an_unfinished_file_and_only_finds_the_requesters_own(
        ui_app: Appliance) -> None:
    import base64

    fields = {"filename": "pieces.tar.zst", "kind": "bundle", "size": "3000", "fingerprint": "fp-pieces"}
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())
    urls = []
    for length in (1499, 1501):
        r = requests.post(f"{ui_app.url}/api/v1/uploads", auth=ui_app.admin, timeout=10,
                          headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": meta,
                                   "Upload-Concat": "partial"})
        assert r.status_code == 201, r.text
        urls.append(r.headers["Location"])
    for url, body in ((urls[0], b"a" * 1499), (urls[1], b"b" * 500)):  # the first part complete, the second not
        r = requests.patch(ui_app.url + url, data=body, auth=ui_app.admin, timeout=10,
                           headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == 204, r.text
    found = requests.get(f"{ui_app.url}/api/v1/uploads", params={"fingerprint": "fp-pieces"}, auth=ui_app.admin,
                         timeout=10).json()["uploads"]
    assert len(found) == 1 and found[0]["received"] == 1999 and found[0]["size"] == 3000
    assert found[0]["percent"] == 66.6 and found[0]["parallel"] is True
    assert sorted(u["url"] for u in found[0]["uploads"]) == sorted(urls)  # the complete part too: resuming needs it
    assert requests.get(f"{ui_app.url}/api/v1/uploads", params={"fingerprint": "fp-none"}, auth=ui_app.admin,
                        timeout=10).json()["uploads"] == []
    assert requests.get(f"{ui_app.url}/api/v1/uploads", timeout=10).status_code == 401
    for url in urls:
        requests.delete(ui_app.url + url, headers=TUS, auth=ui_app.admin, timeout=10)


def test_import_cut_by_a_kill_says_interrupted_and_retry_imports_it_without_uploading_again(
        tmp_path: Path, browser: Any, key_pair: tuple[Path, Path]) -> None:
    private, public = key_pair
    bundle, digests = build_bundle(tmp_path, private, "cut", "1", {"docker.io/cargotest/cut:1": 120_000_000},
                                   seed=341)
    app = start_appliance(tmp_path / "data")
    try:
        _trust(app, public)
        url = _tus_upload(app, bundle)  # its last byte starts the import...
        app.process.kill()  # ...which the appliance's death cuts short
        app.process.wait()
        app = restart_on(app, timeout=30)
        deadline = time.monotonic() + 30
        while True:  # the restarted appliance may drop a first connection while its workers start
            try:
                upload = requests.get(url, auth=app.admin, timeout=10).json()
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        cut = _wait_job(app, upload["jobId"])
        assert cut["state"] == "failed" and cut["errorCode"] == "INTERRUPTED", cut
        uploads_before = sorted(p.name for p in (app.data_dir / "imports" / "tus").iterdir())

        context = browser.new_context()
        page = context.new_page()
        login(page, app)
        page.wait_for_url(f"{app.url}/ui/")
        # The interrupted import's own report page offers the retry too.
        page.goto(f"{app.url}/ui/imports/{cut['id']}")
        assert page.locator("#job-error").get_by_role("button", name="Retry import").is_visible()
        page.goto(f"{app.url}/ui/imports")
        row = page.locator("#imports tbody tr", has_text=bundle.name)
        assert "interrupted" in row.locator(".badge").inner_text()
        patches: list[str] = []
        page.on("request", lambda r: patches.append(r.url) if r.method in ("PATCH", "POST")
                and "/api/v1/uploads" in r.url else None)
        row.get_by_role("button", name="Retry import").click()
        assert _wait_done(page, timeout=180) == "done"
        assert patches == []  # nothing uploaded again
        assert sorted(p.name for p in (app.data_dir / "imports" / "tus").iterdir()) == uploads_before
        job = _job(app, page.url.rsplit("/", 1)[1])
        assert job["source"] == bundle.name
        assert [i["digest"] for i in job["report"]["images"]] == list(digests.values())
        context.close()

        # The import removed the uploaded file: asking again for the first (interrupted) job is refused, clearly.
        again = requests.post(f"{app.url}/api/v1/imports/{cut['id']}/retry", auth=app.admin, timeout=10)
        assert again.status_code == 410
        assert "no longer on the appliance" in again.json()["errors"][0]["message"]
    finally:
        app.stop()


def test_retry_api_reuses_the_file_needs_csrf_and_refuses_once_it_is_removed(
        ui_app: Appliance, tmp_path: Path) -> None:
    # A bundle signed by a key nobody trusts: its import fails, and its uploaded file stays.
    from tests.web.uiutil import signing_key

    (tmp_path / "stranger").mkdir()
    stranger, _ = signing_key(tmp_path / "stranger")
    bundle, _ = build_bundle(tmp_path, stranger, "untrusted", "1", {"docker.io/cargotest/untrusted:1": 200_000},
                             seed=351)
    url = _tus_upload(ui_app, bundle)
    upload = requests.get(url, auth=ui_app.admin, timeout=10).json()
    failed = _wait_job(ui_app, upload["jobId"])
    assert failed["state"] == "failed"
    path = ui_app.data_dir / "imports" / "tus" / upload["id"] / bundle.name
    assert path.is_file()

    session, csrf = signed_in(ui_app)
    with closing(session):
        refused = session.post(f"{ui_app.url}/api/v1/imports/{failed['id']}/retry", timeout=10)
        assert refused.status_code == 403  # a browser session without its CSRF token
        page = session.get(f"{ui_app.url}/ui/imports", timeout=10).text
        assert f'data-job="{failed["id"]}"' in page  # Retry import is offered
        retried = session.post(f"{ui_app.url}/api/v1/imports/{failed['id']}/retry", headers={"X-CSRF-Token": csrf},
                               timeout=10)
        assert retried.status_code == 202, retried.text
        second = _wait_job(ui_app, retried.json()["jobId"])
        assert second["state"] == "failed" and second["source"] == bundle.name  # the same file, the same verdict

        path.unlink()
        latest = requests.get(url, auth=ui_app.admin, timeout=10).json()["jobId"]
        _wait_job(ui_app, latest)
        gone = session.post(f"{ui_app.url}/api/v1/imports/{latest}/retry", headers={"X-CSRF-Token": csrf},
                            timeout=10)
        assert gone.status_code == 410
        message = gone.json()["errors"][0]["message"]
        assert "no longer on the appliance" in message and "nothing was imported" in message
        page = session.get(f"{ui_app.url}/ui/imports", timeout=10).text
        assert f'data-job="{latest}"' not in page  # no Retry import for a file that is gone
        unknown = session.post(f"{ui_app.url}/api/v1/imports/{'0' * 32}/retry", headers={"X-CSRF-Token": csrf},
                               timeout=10)
        assert unknown.status_code == 404
