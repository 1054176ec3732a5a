"""Jobs of another machine sharing PostgreSQL metadata are judged by that machine's lease (registry.leases).

Real PostgreSQL 15 (tests/pgengine.py). The other machine is a job row whose
recorded process carries another boot id, as a replica on another host
writes it; its lease row is what that replica's heartbeat thread writes.
"""

from __future__ import annotations

import time
from pathlib import Path

from bundles.jobs import ImportJobs
from registry import leases
from registry.db import open_database, write_transaction
from registry.paths import DataPaths
from tests.pgengine import PostgresServer

OTHER_BOOT = "00000000-0000-4000-8000-00000000beef"


def _job_of_another_machine(paths: DataPaths) -> str:
    jobs = ImportJobs(paths)
    job = jobs.create("bundle.tar.zst")
    with write_transaction(open_database(paths)) as db:
        db.execute("UPDATE import_jobs SET pid = 4242, pid_start = ? WHERE id = ?", [f"{OTHER_BOOT}:12345", job.id])
    return job.id


def test_a_job_of_a_machine_with_a_fresh_lease_stays_running(postgres: PostgresServer, tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data", postgres.create_database())
    job_id = _job_of_another_machine(paths)
    with write_transaction(open_database(paths)) as db:
        db.execute("INSERT INTO machine_leases (boot_id, heartbeat_at) VALUES (?, ?)", [OTHER_BOOT, time.time()])
    job = ImportJobs(paths).get(job_id)
    assert job is not None and job.state == "verifying"


def test_a_job_of_a_machine_whose_lease_ran_out_is_interrupted(postgres: PostgresServer, tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data", postgres.create_database())
    job_id = _job_of_another_machine(paths)
    stale = time.time() - leases.LEASE_SECONDS - 5
    with write_transaction(open_database(paths)) as db:
        db.execute("INSERT INTO machine_leases (boot_id, heartbeat_at) VALUES (?, ?)", [OTHER_BOOT, stale])
    job = ImportJobs(paths).get(job_id)
    assert job is not None and job.state == "failed" and job.error_code == "INTERRUPTED", job
    # ... and this machine's own lease is renewed by the process that created the job.
    row = open_database(paths).execute("SELECT heartbeat_at FROM machine_leases WHERE boot_id = ?",
                                       [leases.boot_id()]).fetchone()
    assert row is not None and row[0] > time.time() - 60
