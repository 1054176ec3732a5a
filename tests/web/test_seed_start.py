"""Zero-touch first start (issue 12, part 4): what lies in the seed directory is imported with no command.

The real appliance (`cargohold serve`, nginx front, two gunicorn workers) is
started on a data directory whose ``seed/`` holds bundles made by the real
builder, the installer's signing key trusted beforehand with `cargohold keys
add`. The API (requests), the UI (Playwright in Debian's chromium) and the
database (read-only) are checked; the start-up scan, a restart, the
on-demand scan (API and UI button), a worker killed mid-import, and a
command-line scan racing the server's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.appliance import Appliance, restart_on, start_appliance
from tests.bundles import seedutil as su
from tests.bundles.buildutil import ROOT
from tests.web.uiutil import login, screenshot, signed_in

SETTLE = {"CARGOHOLD_SEED_SETTLE_SECONDS": "1"}


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return su.key_pair(tmp_path_factory.mktemp("seedkeys"))


def wait_scan(app: Appliance, after: int = 0, timeout: float = 90) -> dict[str, Any]:
    """The latest seed scan with an id above `after`, once it is no longer running."""
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(f"{app.url}/api/v1/seed", auth=app.admin, timeout=10)
        assert r.status_code == 200, r.text
        latest = r.json()["latestScan"]
        if latest is not None and latest["id"] > after and latest["state"] != "running":
            return r.json()  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no finished seed scan after {after}: {r.json()}\n{app.log()}"
        time.sleep(0.2)


def outcomes(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {f["name"]: (f["outcome"], f["errorCode"]) for f in report["files"]}


def seed_jobs(app: Appliance) -> dict[str, list[dict[str, Any]]]:
    r = requests.get(f"{app.url}/api/v1/imports?limit=1000", auth=app.admin, timeout=10)
    assert r.status_code == 200
    out: dict[str, list[dict[str, Any]]] = {}
    for job in r.json()["imports"]:
        out.setdefault(job["source"], []).append(job)
    return out


def installer_image(tmp_path: Path, private: Path, public: Path, trust: bool = True) -> Path:
    """A data directory as an installer image ships it: the key trusted by the CLI, three bundles in seed/."""
    data = tmp_path / "data"
    seed = data / "seed"
    seed.mkdir(parents=True)
    if trust:
        su.trust(data, public)
    su.bundle(seed / "a-site.tar.zst", private, "site", {"docker.io/library/alpha:1": 50_000}, 11)
    su.bundle(seed / "b-tampered.tar.zst", private, "bad", {"docker.io/library/beta:1": 300_000}, 12)
    su.tamper(seed / "b-tampered.tar.zst")
    su.bundle(tmp_path / "c-split.tar.zst", None, "split", {"docker.io/library/gamma:1": 200_000}, 13,
              "--split", "100K")
    parts = sorted(tmp_path.glob("c-split.tar.zst.part*"))
    for part in parts:
        part.rename(seed / part.name)
    su.openssl_signature(sorted(seed.glob("c-split.tar.zst.part*")), private, seed / "c-split.tar.zst.sig")
    return data


def test_seed_bundles_are_imported_at_first_start_shown_in_ui_and_api_and_never_again(
        tmp_path: Path, keypair: tuple[Path, Path], context: Any) -> None:
    private, public = keypair
    data = installer_image(tmp_path, private, public)
    app = start_appliance(data, env=SETTLE)  # two workers: both offer to scan, one does
    try:
        seed = wait_scan(app)
        scan = seed["latestScan"]
        assert (scan["trigger"], scan["requestedBy"], scan["state"]) == ("start", "system", "done")
        assert outcomes(scan["report"]) == {"a-site.tar.zst": ("imported", None),
                                            "b-tampered.tar.zst": ("refused", "DIGEST_MISMATCH"),
                                            "c-split.tar.zst": ("imported", None)}
        split = next(f for f in scan["report"]["files"] if f["name"] == "c-split.tar.zst")
        assert (split["parts"], split["signature"]) == (3, "c-split.tar.zst.sig")
        assert {f["path"].rsplit("/", 1)[1]: f["state"] for f in seed["files"]} == {
            "a-site.tar.zst": "imported", "b-tampered.tar.zst": "refused", "c-split.tar.zst": "imported"}
        jobs = seed_jobs(app)
        assert [j["state"] for j in jobs["seed/a-site.tar.zst"]] == ["done"]
        assert [(j["state"], j["errorCode"]) for j in jobs["seed/b-tampered.tar.zst"]] == [
            ("failed", "DIGEST_MISMATCH")]
        assert [j["state"] for j in jobs["seed/c-split.tar.zst"]] == ["done"]
        r = requests.get(f"{app.url}/v2/spectro-images/docker.io/library/alpha/tags/list", timeout=10)
        assert r.status_code == 200 and r.json()["tags"] == ["1"]  # served, anonymously, from the public project
        assert su.rows(data, "SELECT COUNT(*) FROM seed_scans WHERE trigger = 'start'") == [(1,)]
        audit = {r[0] for r in su.rows(data, "SELECT resource FROM audit_logs WHERE username = 'system'")}
        assert f"{jobs['seed/a-site.tar.zst'][0]['id']}:seed/a-site.tar.zst" in audit
        assert any(r.startswith("seed/b-tampered.tar.zst: refused DIGEST_MISMATCH") for r in audit)

        page = context.new_page()
        login(page, app)
        page.wait_for_url(f"{app.url}/ui/")
        health = page.locator("#health").inner_text()
        assert "seed directory" in health and "DIGEST_MISMATCH" in health
        page.goto(f"{app.url}/ui/imports")
        row = page.locator("#imports tr", has_text="seed/a-site.tar.zst")
        assert row.locator(".badge").inner_text() == "done"
        assert "site 1.0: 1 images" in row.inner_text()
        page.locator("#seed-latest").click()
        page.wait_for_url(f"{app.url}/ui/seed")
        assert page.locator("#scan-state").inner_text() == "done"
        report = page.locator("#seed-report")
        assert "imported" in report.locator("tr", has_text="a-site.tar.zst").inner_text()
        bad = report.locator("tr", has_text="b-tampered.tar.zst").inner_text()
        assert "refused" in bad and "DIGEST_MISMATCH" in bad
        assert "3 parts" in report.locator("tr", has_text="c-split.tar.zst").inner_text()
        screenshot(page, "seed-first-start")
        page.close()

        # A second start imports nothing new.
        app.stop()
        app = restart_on(app)
        again = wait_scan(app, after=scan["id"])["latestScan"]
        assert outcomes(again["report"]) == {"a-site.tar.zst": ("done-earlier", None),
                                             "b-tampered.tar.zst": ("refused-earlier", "DIGEST_MISMATCH"),
                                             "c-split.tar.zst": ("done-earlier", None)}
        assert sum(len(v) for v in seed_jobs(app).values()) == 3

        # On demand over the API: only an administrator may start a scan; a new bundle is imported.
        su.bundle(data / "seed" / "d-later.tar.zst", private, "later", {"docker.io/library/delta:1": 30_000}, 14)
        assert requests.post(f"{app.url}/api/v1/seed/scan", timeout=10).status_code == 401
        bad_body = requests.post(f"{app.url}/api/v1/seed/scan", auth=app.admin, json=["x"], timeout=10)
        assert bad_body.status_code == 400 and bad_body.json()["errors"][0]["code"] == "FORMAT"
        r = requests.post(f"{app.url}/api/v1/seed/scan", auth=app.admin, timeout=10)
        assert r.status_code == 202 and r.json()["started"] is True
        assert r.headers["Location"] == r.json()["scanUrl"]
        deadline = time.monotonic() + 60
        while (scan_now := requests.get(f"{app.url}{r.json()['scanUrl']}", auth=app.admin,
                                        timeout=10).json())["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert outcomes(scan_now["report"])["d-later.tar.zst"] == ("imported", None)
        assert scan_now["requestedBy"] == "admin"

        # On demand from the UI: the button on the Imports page.
        su.bundle(data / "seed" / "e-ui.tar.zst", private, "ui", {"docker.io/library/epsilon:1": 30_000}, 15)
        page = context.new_page()
        login(page, app)
        page.wait_for_url(f"{app.url}/ui/")
        page.goto(f"{app.url}/ui/imports")
        page.get_by_role("button", name="Scan seed directory").click()
        page.wait_for_url(f"{app.url}/ui/seed")
        assert "Scanning" in page.locator(".flashes").inner_text()
        deadline = time.monotonic() + 60
        while page.locator("#scan-state").inner_text() == "running":
            assert time.monotonic() < deadline
            time.sleep(0.3)
            page.reload()
        assert "imported" in page.locator("#seed-report tr", has_text="e-ui.tar.zst").inner_text()
        assert [j["state"] for j in seed_jobs(app)["seed/e-ui.tar.zst"]] == ["done"]
        page.close()
    finally:
        app.stop()


def test_without_a_trusted_key_seed_bundles_are_refused_and_the_dashboard_says_why(
        tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private, public = keypair
    data = installer_image(tmp_path, private, public, trust=False)
    app = start_appliance(data, env=SETTLE)
    try:
        seed = wait_scan(app)
        assert seed["trustedKeys"] == 0
        assert outcomes(seed["latestScan"]["report"]) == {"a-site.tar.zst": ("refused", "SIGNATURE"),
                                                          "b-tampered.tar.zst": ("refused", "SIGNATURE"),
                                                          "c-split.tar.zst": ("refused", "SIGNATURE")}
        assert requests.get(f"{app.url}/v2/_catalog", auth=app.admin, timeout=10).json()["repositories"] == []
        session, _ = signed_in(app)
        dashboard = session.get(f"{app.url}/ui/", timeout=10).text
        assert "no key is trusted" in dashboard and "SIGNATURE" in dashboard
        assert "No trusted key" in session.get(f"{app.url}/ui/seed", timeout=10).text
    finally:
        app.stop()


def test_a_worker_killed_mid_import_and_a_racing_cli_scan_import_each_bundle_exactly_once(
        tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private, public = keypair
    data = tmp_path / "data"
    seed = data / "seed"
    seed.mkdir(parents=True)
    su.trust(data, public)
    # Big and in one zstd frame (read as one stream), so its import lasts long enough to be killed in the middle:
    # a framed 40 MiB bundle imported in parallel was sometimes done before the kill landed.
    su.bundle(seed / "a-big.tar.zst", private, "big", {"docker.io/library/big:1": 160 << 20}, 21,
              "--no-frame-index")
    for i in range(3):
        su.bundle(seed / f"b{i}.tar.zst", private, f"small{i}", {f"docker.io/library/small{i}:1": 20_000}, 22 + i)
    app = start_appliance(data, env=SETTLE)
    try:
        # A command-line scan started beside the server's own: it waits for that one, then finds all done.
        cli = subprocess.Popen([sys.executable, "-m", "web.cli", "seed", "scan", "--data-dir", str(data), "--json"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Kill the worker running the start-up scan once its first import streams; gunicorn starts another.
        deadline = time.monotonic() + 60
        while not su.rows(data, "SELECT 1 FROM import_jobs WHERE source = 'seed/a-big.tar.zst' AND bytes_done > 0"):
            assert time.monotonic() < deadline, app.log()
            time.sleep(0.02)
        ((pid,),) = su.rows(data, "SELECT pid FROM seed_scans WHERE trigger = 'start'")
        assert pid in app.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # frozen mid-import: the kill below cannot miss the import
        ((state,),) = su.rows(data, "SELECT state FROM import_jobs WHERE source = 'seed/a-big.tar.zst'")
        assert state not in ("done", "failed"), f"the import ended ({state}) before the worker was stopped"
        os.kill(pid, signal.SIGKILL)
        out, err = cli.communicate(timeout=180)
        assert cli.returncode == 0, out + err
        assert "Traceback" not in err
        deadline = time.monotonic() + 90
        while True:  # the replacement worker scans again for this start and retries the interrupted import
            states = dict(su.rows(data, "SELECT path, state FROM seed_files"))
            if len(states) == 4 and set(states.values()) == {"imported"}:
                break
            assert time.monotonic() < deadline, (states, app.log())
            time.sleep(0.2)
        jobs = seed_jobs(app)
        big = sorted((j["state"], j["errorCode"]) for j in jobs["seed/a-big.tar.zst"])
        assert big == [("done", None), ("failed", "INTERRUPTED")]
        for i in range(3):
            assert [j["state"] for j in jobs[f"seed/b{i}.tar.zst"]] == ["done"]  # exactly one job each
        scans = su.rows(data, "SELECT trigger, state, report FROM seed_scans ORDER BY id")
        assert scans[0][:2] == ("start", "interrupted")
        # Whichever scan came next (the replacement worker's, or the command line's if it claimed first)
        # retried the interrupted import; every other scan found it done.
        retries = [json.loads(r)["files"] for _, _, r in scans[1:]]
        big_lines = [f for files in retries for f in files if f["name"] == "a-big.tar.zst"]
        assert [(f["outcome"], f.get("retried")) for f in big_lines if f["outcome"] == "imported"] == [
            ("imported", "interrupted")]
        assert {f["outcome"] for f in big_lines} <= {"imported", "done-earlier"}
    finally:
        app.stop()
