"""Harbor's /api/v2.0/system/gc* against the real server, driven by `harborapi` (an independent client whose
pydantic models check every answer's shape) and by requests for errors and headers.

Run now (dry run, then for real) through POST /system/gc/schedule with type Manual, history and log, the
schedule in Harbor's types and crons (stored, overriding `gc_schedule`), a scheduled run in the history,
refusals in Harbor's error shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import requests
from harborapi import HarborAsyncClient
from harborapi.models import GCHistory, Schedule, ScheduleObj

from tests.appliance import Appliance
from tests.pgengine import metadata
from tests.registry.v2client import V2

API = "/api/v2.0"


def _age_everything(app: Appliance, seconds: float) -> None:
    """Make every stored manifest, blob and file look `seconds` old (GC keeps what is newer than its grace)."""
    with metadata(app.data_dir) as db:
        for table in ("manifests", "blobs", "repository_blobs"):
            db.execute(f"UPDATE {table} SET created_at = created_at - ?", [seconds])
    then = time.time() - seconds
    for root, _, files in os.walk(app.data_dir / "blobs"):
        for name in files:
            os.utime(os.path.join(root, name), (then, then))


def _client(app: Appliance) -> HarborAsyncClient:
    return HarborAsyncClient(url=f"{app.url}{API}", username=app.admin[0], secret=app.admin[1], timeout=30)


def _kind(obj: ScheduleObj | None) -> tuple[str, str]:
    """(type, cron) of a schedule object; harborapi reads the type as an enum."""
    assert obj is not None and obj.type is not None
    return str(obj.type.value), obj.cron or ""


async def _finished(client: HarborAsyncClient, gc_id: int) -> GCHistory:
    deadline = time.monotonic() + 60
    while True:
        job = await client.get_gc_job(gc_id)
        if job.job_status != "Running" or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.3)


def test_gc_run_now_history_log_and_schedule_with_harborapi(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env={"CARGOHOLD_GC_SCHEDULE": "off", "CARGOHOLD_SCRUB_SCHEDULE": "off",
                                 "CARGOHOLD_EXPIRE_SCHEDULE": "off"})
    v2 = V2(app)
    pushed = v2.push_image("spectro-images/gcjunk", tag="old", layer_size=300_000, seed=b"harbor-gc")
    kept = v2.push_image("spectro-images/gckept", tag="1", layer_size=1000, seed=b"harbor-gc-kept")
    r = requests.delete(f"{app.url}{API}/projects/spectro-images/repositories/gcjunk/artifacts/old/tags/old",
                        auth=app.admin, timeout=10)
    assert r.status_code == 200, r.text
    _age_everything(app, 7200)
    asyncio.run(_scenario(app, v2, pushed.digest, kept.digest))


async def _scenario(app: Appliance, v2: V2, junk: str, kept: str) -> None:
    client = _client(app)
    schedule = await client.get_gc_schedule()
    assert _kind(schedule.schedule) == ("None", "")  # gc_schedule is off

    # Run now, as a dry run: the history and log say what would go; nothing goes.
    location = await client.create_gc_schedule(Schedule(schedule=ScheduleObj(type="Manual"),
                                                        parameters={"dry_run": True}))
    dry_id = int(location.rsplit("/", 1)[-1])
    dry = await _finished(client, dry_id)
    assert dry.job_status == "Success" and dry.job_kind == "MANUAL" and dry.job_name == "GARBAGE_COLLECTION"
    assert json.loads(dry.job_parameters or "{}")["dry_run"] is True
    log = await client.get_gc_log(dry_id, as_list=False)
    assert f"would remove manifest spectro-images/gcjunk@{junk}" in log and "success" in log
    assert v2.request("GET", f"/v2/spectro-images/gcjunk/manifests/{junk}").status_code == 200

    # Run now for real: the untagged image goes, the tagged one stays.
    location = await client.create_gc_schedule(Schedule(schedule=ScheduleObj(type="Manual")))
    run = await _finished(client, int(location.rsplit("/", 1)[-1]))
    assert run.job_status == "Success" and json.loads(run.job_parameters or "{}")["dry_run"] is False
    assert f"removed manifest spectro-images/gcjunk@{junk}" in await client.get_gc_log(run.id or 0, as_list=False)
    assert v2.request("GET", f"/v2/spectro-images/gcjunk/manifests/{junk}").status_code == 404
    assert v2.request("GET", f"/v2/spectro-images/gckept/manifests/{kept}").status_code == 200

    history = await client.get_gc_jobs()
    assert [h.id for h in history] == [run.id, dry_id]  # newest first
    # The same runs are the appliance's maintenance jobs.
    jobs = requests.get(f"{app.url}/api/cargohold/v1/jobs?kind=gc", auth=app.admin, timeout=10).json()["jobs"]
    assert [j["seq"] for j in jobs] == [run.id, dry_id] and jobs[0]["requestedBy"] == "admin"
    paged = requests.get(f"{app.url}{API}/system/gc?page=1&page_size=1", auth=app.admin, timeout=10)
    assert paged.headers["X-Total-Count"] == "2" and 'rel="next"' in paged.headers["Link"]

    # The schedule in Harbor's types; stored as the GC schedule's override, shown by the appliance's API.
    await client.update_gc_schedule(Schedule(schedule=ScheduleObj(type="Custom", cron="0 30 2 * * *"),
                                             parameters={"delete_untagged": True, "dry_run": False}))
    got = await client.get_gc_schedule()
    assert _kind(got.schedule) == ("Custom", "0 30 2 * * *")
    assert got.schedule is not None and got.schedule.next_scheduled_time is not None
    assert got.parameters == {"delete_untagged": True, "dry_run": False}
    ours = requests.get(f"{app.url}/api/cargohold/v1/jobs/schedule", auth=app.admin, timeout=10).json()
    gc = next(s for s in ours["schedules"] if s["kind"] == "gc")
    assert gc["schedule"] == gc["override"] == "daily@02:30" and gc["configured"] == "off"
    await client.update_gc_schedule(Schedule(schedule=ScheduleObj(type="Weekly")))
    assert _kind((await client.get_gc_schedule()).schedule) == ("Weekly", "0 0 0 * * 0")

    # A scheduled run (every 2 s, dry runs) shows in the history as SCHEDULE.
    await client.update_gc_schedule(Schedule(schedule=ScheduleObj(type="Custom", cron="@every 2s"),
                                             parameters={"dry_run": True}))
    found = None
    deadline = time.monotonic() + 60
    while found is None and time.monotonic() < deadline:
        found = next((h for h in await client.get_gc_jobs() if h.job_kind == "SCHEDULE"
                      and h.job_status == "Success"), None)
        await asyncio.sleep(0.5)
    assert found is not None, "no scheduled collection ran"
    assert json.loads(found.job_parameters or "{}")["dry_run"] is True
    assert _kind(found.schedule) == ("Custom", "@every 2s")
    await client.update_gc_schedule(Schedule(schedule=ScheduleObj(type="None")))
    assert _kind((await client.get_gc_schedule()).schedule)[0] == "None"


def test_gc_refusals_in_harbors_shape(appliance: Appliance) -> None:
    def call(method: str, path: str, auth: Any = None, **kw: Any) -> requests.Response:
        return requests.request(method, f"{appliance.url}{API}{path}", auth=auth, timeout=10, **kw)

    assert call("GET", "/system/gc").status_code == 401
    assert call("POST", "/system/gc/schedule", json={"schedule": {"type": "Manual"}}).status_code == 401
    before = call("GET", "/system/gc/schedule", appliance.admin).json()
    for body, words in (({"schedule": {"type": "Custom", "cron": "*/5 * * * * *"}}, "is not a schedule"),
                        ({"schedule": {"type": "Sometimes"}}, "schedule type must be one of"),
                        ({"schedule": {"type": "Daily"}, "parameters": {"purge": True}}, "not supported"),
                        ({"schedule": {"type": "Daily"}, "parameters": {"dry_run": "yes"}}, "true or false"),
                        ({"schedule": "Daily"}, "must be an object")):
        r = call("PUT", "/system/gc/schedule", appliance.admin, json=body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["errors"][0]
        assert error["code"] == "BAD_REQUEST" and words in error["message"], (body, error)
    assert call("GET", "/system/gc/schedule", appliance.admin).json() == before  # nothing changed
    for path in ("/system/gc/999999", "/system/gc/abc", "/system/gc/999999/log"):
        r = call("GET", path, appliance.admin)
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND"
