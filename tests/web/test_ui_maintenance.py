"""The no-shell maintenance pages in a real browser against a real server: the edge-host configuration zip
for a typed address (with the CA on a TLS appliance, and no plain http without a tick), the site inventory as
`cargohold inventory export` writes it, and leftover uploads and staging listed, sized and cleared while an
upload in progress is left alone."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.fakekube import write_kubeconfig
from tests.registry.v2client import V2
from tests.web.uiutil import build_bundle, login, screenshot, signed_in

TUS = {"Tus-Resumable": "1.0.0"}


def _zip(path: str) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_edge_config_zip_on_a_tls_appliance(appliance_factory: Callable[..., Appliance], browser: Any,
                                            tmp_path: Path) -> None:
    app = appliance_factory("--tls", scheme="https")
    ctx = browser.new_context(viewport={"width": 1366, "height": 800}, ignore_https_errors=True,
                              accept_downloads=True)
    ctx.set_default_timeout(30_000)
    try:
        page = ctx.new_page()
        login(page, app)
        page.wait_for_url(f"{app.url}/ui/")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Maintenance").click()
        page.get_by_role("link", name="Edge-host configuration").click()
        page.wait_for_url(f"{app.url}/ui/edge-config")
        page.get_by_label("Address edge hosts use to reach this appliance").fill("registry.site.example:8443")
        assert page.get_by_role("radio", name="HTTPS").is_checked()  # the appliance has its own CA
        screenshot(page, "edge-config")
        with page.expect_download() as info:
            page.get_by_role("button", name="Download edge-config.zip").click()
        assert info.value.suggested_filename == "edge-config.zip"
        files = _zip(info.value.path())
        ca = (app.data_dir / "tls" / "ca.crt").read_bytes()
        assert files["edge-config/ca.crt"] == ca
        own = "registry.site.example:8443"
        for mode in ("mirror", "override"):
            hosts = files[f"edge-config/containerd/{mode}/{own}/hosts.toml"].decode()
            assert f'server = "https://{own}"' in hosts and 'ca = "ca.crt"' in hosts
            assert files[f"edge-config/containerd/{mode}/{own}/ca.crt"] == ca
        registries = yaml.safe_load(files["edge-config/k3s/registries.yaml"])
        assert registries["mirrors"][own]["endpoint"] == [f"https://{own}"]
        assert registries["configs"][own]["tls"]["ca_file"].endswith("cargohold-ca.crt")

        # Plain HTTP without ticking the box: refused with a plain message, nothing downloaded.
        page.goto(f"{app.url}/ui/edge-config")
        page.get_by_label("Address edge hosts use to reach this appliance").fill("10.0.0.5:80")
        page.get_by_role("radio", name="Plain HTTP").check()
        page.get_by_role("button", name="Download edge-config.zip").click()
        error = page.locator("#edge-error")
        assert "Tick the box" in error.inner_text() and "Nothing was downloaded" in error.inner_text()
        assert page.get_by_label("Address edge hosts use to reach this appliance").input_value() == "10.0.0.5:80"
        # Ticked, with robot credentials: http files carrying them.
        page.get_by_role("radio", name="Plain HTTP").check()
        page.get_by_label("I understand").check()
        page.get_by_label("Robot account name").fill("robot$edge")
        page.get_by_label("Robot account secret").fill("s3cret")
        with page.expect_download() as info:
            page.get_by_role("button", name="Download edge-config.zip").click()
        files = _zip(info.value.path())
        hosts = files["edge-config/containerd/mirror/10.0.0.5:80/hosts.toml"].decode()
        assert 'server = "http://10.0.0.5:80"' in hosts
        assert base64.b64encode(b"robot$edge:s3cret").decode() in hosts
        assert "edge-config/ca.crt" not in files
        registries = yaml.safe_load(files["edge-config/k3s/registries.yaml"])
        assert registries["configs"]["10.0.0.5:80"]["auth"] == {"username": "robot$edge", "password": "s3cret"}

        # A URL instead of an address: a clear error, no 500.
        page.goto(f"{app.url}/ui/edge-config")
        page.get_by_label("Address edge hosts use to reach this appliance").fill("https://x/y")
        page.get_by_role("button", name="Download edge-config.zip").click()
        assert "not an address edge hosts can use" in page.locator("#edge-error").inner_text()
    finally:
        ctx.close()


def test_inventory_download_matches_the_cli(ui_app: Appliance, context: Any, key_pair: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    bundle, _ = build_bundle(tmp_path, private, "inv", "1", {"docker.io/cargotest/inv:1": 50_000}, seed=4100)
    cargohold("bundle", "import", bundle, "--data-dir", ui_app.data_dir, "--quiet")
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/maintenance")
    with page.expect_download() as info:
        page.get_by_role("link", name="Site inventory (inventory.json)").click()
    assert info.value.suggested_filename == "inventory.json"
    downloaded = json.loads(Path(info.value.path()).read_text())
    cli = json.loads(cargohold("inventory", "export", "--data-dir", ui_app.data_dir, "-o", "-").stdout)
    assert downloaded["blobs"] and downloaded["blobs"] == cli["blobs"]
    assert downloaded["repositories"] == cli["repositories"]
    assert downloaded["mediaType"] == cli["mediaType"] and downloaded["name"] == cli["name"]


@pytest.mark.sqlite_only  # reads or sizes cargohold.db itself
def test_leftovers_are_listed_sized_and_cleared_but_an_upload_in_progress_is_not(
        ui_app: Appliance, context: Any) -> None:
    imports = ui_app.data_dir / "imports"
    orphan = imports / "tus" / ("ab" * 16)
    orphan.mkdir(parents=True)
    (orphan / "data").write_bytes(os.urandom(3 * 1024 * 1024))
    staged = imports / "staging" / ("cd" * 32) / "sha256"
    staged.mkdir(parents=True)
    (staged / ("ef" * 32)).write_bytes(os.urandom(2 * 1024 * 1024))
    (staged.parent / "lock").touch()

    # An upload in progress: created over tus, half its bytes sent.
    auth = {**TUS, "Authorization": "Basic " + base64.b64encode(f"{ui_app.admin[0]}:{ui_app.admin[1]}".encode()
                                                                ).decode()}
    created = requests.post(f"{ui_app.url}/api/v1/uploads", timeout=10,
                            headers={**auth, "Upload-Length": str(2_000_000), "Upload-Metadata": "filename eC5iaW4="})
    assert created.status_code == 201
    live_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    r = requests.patch(ui_app.url + created.headers["Location"], data=os.urandom(1_000_000), timeout=10,
                       headers={**auth, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
    assert r.status_code == 204
    assert (imports / "tus" / live_id).is_dir()

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/maintenance")
    usage = {row.locator("td").nth(0).inner_text(): int(row.locator("td").nth(1).get_attribute("data-bytes"))
             for row in page.locator("#usage tbody tr").all()}
    assert usage["imports/tus"] >= 3 * 1024 * 1024 + 1_000_000
    assert usage["imports/staging"] >= 2 * 1024 * 1024
    assert "blobs" in usage and "cargohold.db" in usage
    # The disk API and `cargohold disk` count the same areas.
    disk = requests.get(f"{ui_app.url}/api/cargohold/v1/disk", auth=ui_app.admin, timeout=10).json()
    api_areas = {a["name"]: a["bytes"] for a in disk["areas"]}
    assert api_areas["imports/tus"] >= 3 * 1024 * 1024 + 1_000_000 and api_areas["imports/staging"] >= 2 * 1024 * 1024
    cli_areas = {a["name"]: a["bytes"] for a in json.loads(
        cargohold("disk", "--json", "--data-dir", ui_app.data_dir).stdout)["areas"]}
    assert cli_areas["imports/tus"] == api_areas["imports/tus"]
    rows = page.locator("#leftovers tbody tr")
    text = page.locator("#leftovers").inner_text()
    assert rows.count() == 2, text
    assert "ab" * 16 in text and "cd" * 32 in text and live_id not in text
    assert "3.0 MiB" in text and "2.0 MiB" in text
    screenshot(page, "maintenance-leftovers")

    page.get_by_role("button", name="Remove all leftovers (5.0 MiB)").click()
    page.locator("#confirm-ok").click()
    page.wait_for_url(f"{ui_app.url}/ui/maintenance")
    assert "Removed 2 leftovers, freeing 5.0 MiB." in page.locator(".flashes").inner_text()
    assert page.locator("#no-leftovers").is_visible()
    assert not orphan.exists() and not staged.parent.exists()
    assert (imports / "tus" / live_id).is_dir()  # the upload in progress is untouched, and still resumable
    head = requests.head(ui_app.url + created.headers["Location"], headers=auth, timeout=10)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == "1000000"


@pytest.mark.sqlite_only  # reads or sizes cargohold.db itself
def test_a_staging_directory_an_import_holds_is_not_listed(ui_app: Appliance) -> None:
    import fcntl

    held = ui_app.data_dir / "imports" / "staging" / "held-by-an-import"
    held.mkdir(parents=True)
    with (held / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running import holds it
        s, token = signed_in(ui_app)
        assert "held-by-an-import" not in s.get(f"{ui_app.url}/ui/maintenance", timeout=10).text
        r = s.post(f"{ui_app.url}/ui/maintenance/leftovers/clear", timeout=10,
                   data={"csrf_token": token, "key": "staging:held-by-an-import"})
        assert r.status_code == 200 and "left alone" in r.text
        assert held.is_dir()
    assert "held-by-an-import" in s.get(f"{ui_app.url}/ui/maintenance", timeout=10).text


def _age_everything(app: Appliance, seconds: float) -> None:
    """Make every stored manifest, blob and file look `seconds` old (GC keeps what is newer than an hour)."""
    with sqlite3.connect(app.data_dir / "cargohold.db", timeout=30) as db:
        for table in ("manifests", "blobs", "repository_blobs"):
            db.execute(f"UPDATE {table} SET created_at = created_at - ?", [seconds])
    then = time.time() - seconds
    for root, _, files in os.walk(app.data_dir / "blobs"):
        for name in files:
            os.utime(os.path.join(root, name), (then, then))


def _finished_job_page(page: Any, timeout: float = 60) -> str:
    """Wait on a job page (it reloads itself while the job runs) until the job ended; its state."""
    deadline = time.monotonic() + timeout
    while True:
        state = page.locator("#job").get_attribute("data-state")
        if state != "running" or time.monotonic() > deadline:
            return str(state)
        page.wait_for_timeout(300)


def test_gc_dry_run_then_run_as_background_jobs_match_the_cli(ui_app: Appliance, context: Any) -> None:
    v2 = V2(ui_app)
    pushed = v2.push_image("spectro-images/gcjunk", tag="old", layer_size=400_000, seed=b"gc-junk")
    r = requests.delete(f"{ui_app.url}/api/v2.0/projects/spectro-images/repositories/gcjunk/artifacts/old/tags/old",
                        auth=ui_app.admin, timeout=10)
    assert r.status_code == 200, r.text
    _age_everything(ui_app, 7200)
    cli = json.loads(cargohold("gc", "--dry-run", "--json", "--data-dir", ui_app.data_dir).stdout)
    assert any(m["digest"] == pushed.digest for m in cli["manifestsRemoved"])
    assert cli["bytesReclaimed"] >= 400_000

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/maintenance")
    assert page.get_by_role("button", name="Run GC").count() == 0  # not before a dry run
    page.get_by_role("button", name="GC dry run").click()
    page.wait_for_url(f"{ui_app.url}/ui/maintenance/jobs/*")
    assert _finished_job_page(page) == "done"
    assert page.get_by_role("heading", name="Garbage collection dry run").is_visible()
    assert int(page.locator("#gc-bytes").get_attribute("data-bytes")) == cli["bytesReclaimed"]
    assert page.locator("#gc-manifests").inner_text() == str(len(cli["manifestsRemoved"]))
    assert page.locator("#gc-blobs").inner_text() == str(len(cli["blobsRemoved"]))
    assert pushed.digest in page.locator("#gc-removed").inner_text()
    assert "No cluster is connected" in page.locator(".note").inner_text()  # plain words, no option names
    assert "--" not in page.locator("#result").inner_text()
    assert v2.request("GET", f"/v2/spectro-images/gcjunk/manifests/{pushed.digest}").status_code == 200
    screenshot(page, "maintenance-gc-dry-run")

    page.get_by_role("button", name="Run GC").click()
    page.locator("#confirm-ok").click()
    page.wait_for_url(f"{ui_app.url}/ui/maintenance/jobs/*")
    assert _finished_job_page(page) == "done"
    assert page.get_by_role("heading", name="Garbage collection", exact=True).is_visible()
    assert int(page.locator("#gc-bytes").get_attribute("data-bytes")) == cli["bytesReclaimed"]
    assert page.locator("#gc-manifests").inner_text() == str(len(cli["manifestsRemoved"]))
    assert v2.request("GET", f"/v2/spectro-images/gcjunk/manifests/{pushed.digest}").status_code == 404
    after = json.loads(cargohold("gc", "--dry-run", "--json", "--data-dir", ui_app.data_dir).stdout)
    assert after["manifestsRemoved"] == [] and after["bytesReclaimed"] == 0

    # Both jobs are listed on the Maintenance page, and the API reports the same results.
    page.goto(f"{ui_app.url}/ui/maintenance")
    listed = page.locator("#jobs").inner_text()
    assert "Garbage collection dry run" in listed and listed.count("done") >= 2
    jobs = requests.get(f"{ui_app.url}/api/cargohold/v1/jobs", auth=ui_app.admin, timeout=10).json()["jobs"]
    run = next(j for j in jobs if j["kind"] == "gc" and not j["dryRun"])
    assert run["state"] == "done" and run["result"]["bytesReclaimed"] == cli["bytesReclaimed"]

    # Running GC without a finished dry run is refused in the UI, with nothing removed.
    s, token = signed_in(ui_app)
    r = s.post(f"{ui_app.url}/ui/maintenance/jobs", data={"csrf_token": token, "action": "gc"}, timeout=10)
    assert r.status_code == 200 and "Run a garbage collection dry run first" in r.text


def test_scrub_job_finds_a_corrupted_blob(ui_app: Appliance, context: Any) -> None:
    v2 = V2(ui_app)
    pushed = v2.push_image("spectro-images/scrubbed", tag="v1", layer_size=300_000, seed=b"scrub-me")
    layer = json.loads(pushed.body)["layers"][0]["digest"]
    path = ui_app.data_dir / "blobs" / "sha256" / layer.split(":")[1][:2] / layer.split(":")[1]
    if not path.exists():
        path = next(p for p in (ui_app.data_dir / "blobs").rglob(layer.split(":")[1]))
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))

    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/maintenance")
    page.get_by_role("button", name="Scrub").click()
    page.wait_for_url(f"{ui_app.url}/ui/maintenance/jobs/*")
    assert _finished_job_page(page) == "done"
    assert "Damaged or missing files found." in page.locator("#scrub-verdict").inner_text()
    assert page.locator("#scrub-damaged").inner_text() == "1"
    assert layer in page.locator("#scrub-damaged-list").inner_text()
    assert int(page.locator("#scrub-checked").inner_text()) >= 2
    screenshot(page, "maintenance-scrub")
    assert v2.request("GET", f"/v2/spectro-images/scrubbed/blobs/{layer}").status_code == 404  # set aside


@pytest.mark.sqlite_only  # reads or sizes cargohold.db itself
def test_a_gc_job_killed_with_its_worker_shows_interrupted(appliance_factory: Callable[..., Appliance],
                                                           browser: Any, tmp_path: Path) -> None:
    # A cluster API server that accepts connections and never answers: GC waits on it (in-use protection).
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{hung.getsockname()[1]}")
    app = appliance_factory(env={"CARGOHOLD_KUBECONFIG": str(kubeconfig)})
    try:
        started = requests.post(f"{app.url}/api/cargohold/v1/jobs/gc", json={"dryRun": True}, auth=app.admin,
                                timeout=10)
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["state"] == "running" and started.headers["Location"] == f"/api/cargohold/v1/jobs/{job['id']}"
        # One at a time: a scrub is refused while the collection runs.
        busy = requests.post(f"{app.url}/api/cargohold/v1/jobs/scrub", auth=app.admin, timeout=10)
        assert busy.status_code == 409 and busy.json()["errors"][0]["code"] == "JOB_BUSY"
        assert busy.json()["errors"][0]["detail"]["id"] == job["id"]
        with sqlite3.connect(app.data_dir / "cargohold.db", timeout=30) as db:
            pid = db.execute("SELECT pid FROM maintenance_jobs WHERE id = ?", [job["id"]]).fetchone()[0]
        assert pid in app.worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            r = requests.get(f"{app.url}{started.headers['Location']}", auth=app.admin, timeout=10)
            if (r.status_code == 200 and r.json()["state"] != "running") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.json()["state"] == "interrupted" and "interrupted" in r.json()["error"]
    finally:
        hung.close()
    ctx = browser.new_context(viewport={"width": 1366, "height": 800})
    try:
        page = ctx.new_page()
        login(page, app)
        page.wait_for_url(f"{app.url}/ui/")
        page.goto(f"{app.url}/ui/maintenance/jobs/{job['id']}")
        assert page.locator("#job-state").inner_text() == "interrupted"
        assert "start it again" in page.locator("#job-error").inner_text()
        # The cluster is gone now (connection refused): a new dry run fails, saying so in plain words.
        page.get_by_role("button", name="Start with a new dry run").click()
        page.wait_for_url(f"{app.url}/ui/maintenance/jobs/*")
        assert _finished_job_page(page) == "failed"
        error = page.locator("#job-error").inner_text()
        assert "cluster cannot be reached" in error and "Nothing was collected" in error and "--" not in error
    finally:
        ctx.close()


def test_image_signing_keys_are_trusted_and_removed_with_a_confirmation(ui_app: Appliance, context: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    page = context.new_page()
    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    page.goto(f"{ui_app.url}/ui/keys")
    page.get_by_role("link", name="Image-signing keys").click()
    page.wait_for_url(f"{ui_app.url}/ui/image-keys")

    # A private key is refused, and nothing is trusted.
    page.get_by_label("Public key (PEM, such as cosign.pub)").fill(private_pem)
    page.get_by_role("button", name="Trust this key for image signatures").click()
    assert "Nothing was changed" in page.locator(".flashes").inner_text()
    assert "No image-signing keys" in page.locator("#image-keys").inner_text()

    page.get_by_label("Public key (PEM, such as cosign.pub)").fill(public_pem)
    page.get_by_label("Description").fill("site image signer")
    page.get_by_role("button", name="Trust this key for image signatures").click()
    page.wait_for_url(f"{ui_app.url}/ui/image-keys")
    row = page.locator("#image-keys tbody tr", has_text="site image signer")
    assert row.count() == 1 and "ecdsa-p256" in row.inner_text()
    listed = json.loads(cargohold("image-keys", "list", "--json", "--data-dir", ui_app.data_dir).stdout)
    assert [k["description"] for k in listed] == ["site image signer"]
    key_id = listed[0]["id"]

    # Remove asks first; Cancel keeps the key, Confirm removes it.
    row.get_by_role("button", name=f"Remove image-signing key {key_id}").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert page.locator("#image-keys tbody tr", has_text="site image signer").count() == 1
    row.get_by_role("button", name=f"Remove image-signing key {key_id}").click()
    page.locator("#confirm-ok").click()
    page.wait_for_url(f"{ui_app.url}/ui/image-keys")
    assert f"No longer trusting image-signing key {key_id}." in page.locator(".flashes").inner_text()
    assert json.loads(cargohold("image-keys", "list", "--json", "--data-dir", ui_app.data_dir).stdout) == []


def test_the_maintenance_pages_fit_a_phone(ui_app: Appliance, browser: Any) -> None:
    staged = ui_app.data_dir / "imports" / "staging" / ("9f" * 32) / "sha256"
    staged.mkdir(parents=True)
    (staged / ("1e" * 32)).write_bytes(b"z" * 5000)
    ctx = browser.new_context(viewport={"width": 390, "height": 800})
    ctx.set_default_timeout(30_000)
    try:
        page = ctx.new_page()
        login(page, ui_app)
        page.wait_for_url(f"{ui_app.url}/ui/")
        page.goto(f"{ui_app.url}/ui/maintenance")
        assert page.locator("#leftovers").count() == 1  # the widest table is there
        jobs = page.locator("#jobs a")
        targets = ["/ui/maintenance", "/ui/edge-config", "/ui/image-keys"]
        if jobs.count():
            targets.append(str(jobs.first.get_attribute("href")))
        for path in targets:
            page.goto(f"{ui_app.url}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} scrolls sideways at 390 px ({width} px wide)"
        screenshot(page, "maintenance-phone")
    finally:
        ctx.close()
