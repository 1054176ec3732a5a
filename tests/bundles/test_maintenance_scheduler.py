"""The scheduler's claims (bundles.maintenance_schedule) on a real data directory, with explicit clock values:
a new schedule never fires at once, a due run that finds the slot busy stays due and starts once the slot is
free, a due time is claimed once however many schedulers tick, an override wins and a changed schedule is
counted from when it takes effect. Cross-process behaviour (two gunicorn workers) is tested against the
running server in test_maintenance_schedule.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from bundles.maintenance_jobs import GC, SCRUB, MaintenanceJobs
from bundles.maintenance_schedule import MaintenanceScheduler
from bundles.releases import Releases
from bundles.schedule import parse_schedule
from registry.db import write_transaction
from web.app import build_services
from web.config import Config


def _jobs(tmp_path: Path) -> MaintenanceJobs:
    services = build_services(Config(data_dir=tmp_path / "data", admin_password="Unused-Secret-1"))
    return MaintenanceJobs(Releases(services.registry, services.config.project), services.uploads, services.audit)


def _wait_idle(jobs: MaintenanceJobs) -> None:
    deadline = time.monotonic() + 30
    while jobs.running() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.running() is None


def test_due_runs_are_claimed_once_and_wait_for_a_busy_slot(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)
    schedule = {GC: parse_schedule("every 10s"), SCRUB: parse_schedule("off")}
    one, two = MaintenanceScheduler(jobs, schedule), MaintenanceScheduler(jobs, schedule)  # two workers
    t = 1_000_000.0
    assert one.tick(t) == [] and two.tick(t) == []  # first sight: recorded, not run
    assert one.state(GC).next_run_at == t + 10
    assert one.tick(t + 9) == []

    # The slot is busy (a scrub started by hand): the due run waits, and stays due.
    with write_transaction(jobs.db) as db:
        busy = jobs.claim(db, SCRUB, False, "someone")
    assert one.tick(t + 11) == [] and two.tick(t + 12) == []
    assert one.state(GC).next_run_at == t + 10
    with write_transaction(jobs.db) as db:
        db.execute("UPDATE maintenance_jobs SET state = 'done' WHERE id = ?", [busy])

    # Free again: exactly one of the two schedulers starts it, and the next run is counted from then.
    started = one.tick(t + 13) + two.tick(t + 13)
    assert [(j.kind, j.trigger, j.requested_by) for j in started] == [(GC, "schedule", "scheduler")]
    state = two.state(GC)
    assert (state.last_run_at, state.next_run_at, state.last_job_id) == (t + 13, t + 23, started[0].id)
    _wait_idle(jobs)
    assert jobs.get(started[0].id).state == "done"  # type: ignore[union-attr]
    assert one.tick(t + 22) == [] and len(two.tick(t + 23)) == 1
    _wait_idle(jobs)
    assert jobs.count(GC) == 2 and jobs.count(SCRUB) == 1


def test_an_override_wins_and_a_changed_schedule_counts_from_its_change(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)
    scheduler = MaintenanceScheduler(jobs, {GC: parse_schedule("every 10s")})
    t = 2_000_000.0
    scheduler.tick(t)
    state = scheduler.set_override(GC, "every 100s", {"dry_run": True}, now=t + 5)
    assert (state.schedule, state.configured, state.override, state.next_run_at) == \
        ("every 100s", "every 10s", "every 100s", t + 105)
    assert scheduler.tick(t + 50) == []  # the configured 10 s no longer applies
    started = scheduler.tick(t + 106)
    assert [(j.kind, j.dry_run) for j in started] == [(GC, True)]  # the override's parameters apply
    _wait_idle(jobs)
    # Back to the setting: counted from now, never fired just because it changed.
    state = scheduler.set_override(GC, None, now=t + 200)
    assert (state.schedule, state.override, state.next_run_at) == ("every 10s", None, t + 210)
    assert scheduler.tick(t + 201) == []
    # A different configuration at the next start (the setting changed): recomputed from that start.
    restarted = MaintenanceScheduler(jobs, {GC: parse_schedule("every 1h")})
    assert restarted.tick(t + 300) == [] and restarted.state(GC).next_run_at == t + 300 + 3600
