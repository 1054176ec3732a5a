"""Scheduled maintenance against the real server (bundles.maintenance_schedule, bundles.maintenance_jobs).

Two gunicorn workers each run the scheduler: a scheduled GC runs once per due time; the expire job removes
stale registry uploads and a dead import's staging (never one an import holds); while a job runs, the CLI's
`gc`, the older synchronous POST /gc and every other start are refused naming it; the API shows progress and
the options a scrub ran with (its read-rate limit); the UI's Maintenance page shows the schedule and next run;
a schedule that is not one stops `serve` naming the setting.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.appliance import Appliance, free_port
from tests.bundles.buildutil import ROOT, cargohold
from tests.pgengine import env_for, metadata
from tests.registry.v2client import V2
from tests.web.uiutil import signed_in

JOBS = "/api/cargohold/v1/jobs"
QUIET = {"CARGOHOLD_GC_SCHEDULE": "off", "CARGOHOLD_SCRUB_SCHEDULE": "off", "CARGOHOLD_EXPIRE_SCHEDULE": "off"}


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _jobs(app: Appliance, kind: str) -> list[dict[str, Any]]:
    r = requests.get(f"{app.url}{JOBS}", params={"kind": kind}, auth=app.admin, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json()["jobs"])


def test_a_scheduled_gc_runs_once_per_due_time_with_two_workers(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env={**QUIET, "CARGOHOLD_GC_SCHEDULE": "every 3s"})
    workers = app.worker_pids(2)
    assert len(workers) == 2

    def scheduled() -> list[dict[str, Any]]:
        done = [j for j in _jobs(app, "gc") if j["trigger"] == "schedule" and j["state"] == "done"]
        return done if len(done) >= 3 else []

    _wait_for("three scheduled collections", scheduled)
    with metadata(app.data_dir) as db:
        rows = db.execute("SELECT id, created_at, finished_at, pid, requested_by, dry_run FROM maintenance_jobs "
                          "WHERE kind = 'gc' AND trigger = 'schedule' ORDER BY created_at").fetchall()
        last = db.execute("SELECT schedule, last_job_id, next_run_at, last_run_at FROM maintenance_schedule "
                          "WHERE kind = 'gc'").fetchone()
    # Once per due time: each due time is 3 s after the previous claim, so two workers claiming the same due
    # time would show as two jobs moments apart; and never two at once (one slot).
    for before, after in itertools.pairwise(rows):
        assert after[1] - before[1] >= 2.9, rows
        assert before[2] is not None and before[2] <= after[1], rows
    assert {r[3] for r in rows} <= set(workers)
    assert all(r[4] == "scheduler" and r[5] == 0 for r in rows)  # a real collection, by the schedule
    assert last[0] == "every 3s" and last[1] in {r[0] for r in rows} and last[2] > last[3]

    api = requests.get(f"{app.url}{JOBS}/schedule", auth=app.admin, timeout=10).json()["schedules"]
    gc = next(s for s in api if s["kind"] == "gc")
    assert gc["schedule"] == gc["configured"] == "every 3s" and gc["override"] is None
    assert gc["nextRunAt"] > gc["lastRunAt"]
    assert next(s for s in api if s["kind"] == "scrub")["schedule"] == "off"

    # The UI's Maintenance page shows each schedule and its next run.
    session, _ = signed_in(app)
    html = session.get(f"{app.url}/ui/maintenance", timeout=10).text
    row = html.split('<tr data-kind="gc">', 1)[1].split("</tr>", 1)[0]
    assert "every 3s" in row and "never" not in row.split('class="next-run">', 1)[1].split("</td>", 1)[0]
    scrub_row = html.split('<tr data-kind="scrub">', 1)[1].split("</tr>", 1)[0]
    assert "<code>off</code>" in scrub_row and "never" in scrub_row

    # An override through the API is kept in the database and wins over the setting; bad ones change nothing.
    bad = requests.put(f"{app.url}{JOBS}/schedule/gc", json={"schedule": "now and then"}, auth=app.admin,
                       timeout=10)
    assert bad.status_code == 400 and "is not one of" in bad.text
    r = requests.put(f"{app.url}{JOBS}/schedule/gc", json={"schedule": "off"}, auth=app.admin, timeout=10)
    assert r.status_code == 200 and r.json()["schedule"] == "off" and r.json()["configured"] == "every 3s"
    count = len(_jobs(app, "gc"))
    time.sleep(4)  # longer than one period: an off schedule starts nothing
    assert len(_jobs(app, "gc")) == count


def test_the_expire_job_removes_stale_uploads_and_dead_staging(appliance_factory: Callable[..., Appliance],
                                                               repo: str) -> None:
    app = appliance_factory(env={**QUIET, "CARGOHOLD_EXPIRE_SCHEDULE": "every 2s",
                                 "CARGOHOLD_UPLOAD_EXPIRY_SECONDS": "3"})
    v2 = V2(app)
    location = v2.start_upload(repo)
    r = v2.request("PATCH", location, data=b"x" * 1000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    upload_id = location.rsplit("/", 1)[-1].split("?")[0]
    assert (app.data_dir / "uploads" / upload_id).exists()

    old = time.time() - 3600
    staging = app.data_dir / "imports" / "staging"
    dead, held = staging / "dead-import", staging / "running-import"
    for directory in (dead, held):
        (directory / "sha256").mkdir(parents=True)
        (directory / "sha256" / "ab").write_bytes(b"y" * 5000)
        (directory / "lock").touch()
        for path in (directory / "sha256" / "ab", directory / "sha256", directory / "lock", directory):
            os.utime(path, (old, old))
    with (held / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a running import holds its staging

        def expired() -> dict[str, int] | None:
            # The staging goes at the first run; the upload once it has been idle for the expiry.
            totals = {"uploads": 0, "uploadsBytes": 0, "staging": 0, "stagingBytes": 0}
            for job in _jobs(app, "expire"):
                assert job["trigger"] == "schedule" and job["state"] in ("running", "done"), job
                result = job["result"] or {}
                for step in ("uploads", "staging"):
                    totals[step] += (result.get(step) or {}).get("removed", 0)
                    totals[f"{step}Bytes"] += (result.get(step) or {}).get("bytes", 0)
            return totals if totals["uploads"] and totals["staging"] else None

        totals = _wait_for("scheduled expiries that removed the stale upload and staging", expired)
        assert totals["uploadsBytes"] >= 1000
        assert totals["staging"] == 1 and totals["stagingBytes"] == 5000
        assert not (app.data_dir / "uploads" / upload_id).exists()
        assert v2.request("GET", location).status_code == 404
        assert not dead.exists() and held.exists()  # the held one stays, however old


def test_one_job_at_a_time_for_the_cli_and_every_http_entry_point(appliance_factory: Callable[..., Appliance],
                                                                 repo: str) -> None:
    rate = 256 << 10
    app = appliance_factory(env={**QUIET, "CARGOHOLD_SCRUB_RATE_BYTES": str(rate)})
    V2(app).push_blob(repo, os.urandom(3 << 20))  # 3 MiB at 256 KiB/s: the scrub runs for seconds
    started = requests.post(f"{app.url}{JOBS}/scrub", json={}, auth=app.admin, timeout=10)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    assert started.json()["options"]["rateBytes"] == rate  # the limit it runs under is recorded

    def hashing() -> dict[str, Any] | None:
        job = requests.get(f"{app.url}{JOBS}/{job_id}", auth=app.admin, timeout=10).json()
        return job if job["phase"] == "hashing" and job["total"] >= 1 else None

    progress = _wait_for("the scrub's progress", hashing)
    assert progress["state"] == "running" and 0 <= progress["done"] <= progress["total"]

    cli = cargohold("gc", "--dry-run", "--data-dir", app.data_dir, check=False)
    assert cli.returncode == 1, cli.stderr
    assert f"a scrub is already running (job {job_id}" in cli.stderr and "--wait" in cli.stderr
    legacy = requests.post(f"{app.url}/api/cargohold/v1/gc", json={"dryRun": True}, auth=app.admin, timeout=30)
    assert legacy.status_code == 409 and legacy.json()["errors"][0]["code"] == "JOB_BUSY"
    assert job_id in legacy.text
    for kind in ("gc", "expire", "scrub"):
        busy = requests.post(f"{app.url}{JOBS}/{kind}", json={}, auth=app.admin, timeout=10)
        assert busy.status_code == 409 and busy.json()["errors"][0]["detail"]["id"] == job_id

    # --wait waits for the slot, then runs; without a terminal, progress comes as plain lines.
    waited = cargohold("gc", "--dry-run", "--wait", "--json", "--data-dir", app.data_dir)
    report = json.loads(waited.stdout)
    assert report["dryRun"] is True
    assert "waiting: scrub" in waited.stderr and "marking..." in waited.stderr and "\r" not in waited.stderr
    scrub = requests.get(f"{app.url}{JOBS}/{job_id}", auth=app.admin, timeout=10).json()
    assert scrub["state"] == "done" and scrub["result"]["rateBytes"] == rate
    assert scrub["result"]["throttledSeconds"] > 0  # it did wait to keep to the limit
    cli_job = _jobs(app, "gc")[0]
    assert cli_job["requestedBy"].endswith("(cli)") and cli_job["state"] == "done" and cli_job["dryRun"]

    # The older synchronous endpoints take the slot too, and answer with the result when it is free.
    legacy = requests.post(f"{app.url}/api/cargohold/v1/gc", json={"dryRun": True}, auth=app.admin, timeout=60)
    assert legacy.status_code == 200 and legacy.json()["dryRun"] is True
    assert _jobs(app, "gc")[0]["requestedBy"] == "admin"


def test_a_schedule_that_is_not_one_stops_serve_naming_the_setting(tmp_path: Path) -> None:
    for name, value in (("CARGOHOLD_GC_SCHEDULE", "sometimes"), ("CARGOHOLD_SCRUB_SCHEDULE", "weekly@funday 3:00"),
                        ("CARGOHOLD_EXPIRE_SCHEDULE", "every 0s")):
        log = tmp_path / "serve.log"
        with log.open("wb") as out:  # a file, not a pipe: a serve that does start must not hold the test up
            proc = subprocess.Popen([sys.executable, "-m", "web.cli", "serve", "--data-dir", str(tmp_path / "data"),
                                     "--bind", f"127.0.0.1:{free_port()}"], stdout=out, stderr=subprocess.STDOUT,
                                    cwd=ROOT, env={**os.environ, name: value})
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=30)
            raise AssertionError(f"serve started with {name}={value!r} instead of refusing it") from None
        stderr = log.read_text()
        assert proc.returncode == 2, stderr
        assert name in stderr and repr(value) in stderr
        assert not (tmp_path / "data" / "cargohold.db").exists()  # refused before any set-up


def test_the_cli_draws_a_progress_bar_on_a_terminal(appliance: Appliance) -> None:
    master, slave = pty.openpty()  # standard error is a terminal: the bar is redrawn in place
    try:
        proc = subprocess.run([sys.executable, "-m", "web.cli", "expire", "--json", "--wait", "--data-dir",
                               str(appliance.data_dir)], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT,
                              timeout=120, env={**os.environ, **env_for(["--data-dir", appliance.data_dir])})
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, drawn
    assert b"\rexpiring" in drawn and b"] 3/3" in drawn  # one line redrawn, ending full
    report = json.loads(proc.stdout)
    assert set(report) >= {"uploads", "importUploads", "staging", "bytesReclaimed"}
