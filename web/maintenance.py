"""Wiring of maintenance jobs for the shell: the jobs a config builds, and the scheduler each worker runs.

The HTTP app (`web.app`), the CLI (`web.cli_release`) and the scheduler
share one construction, `maintenance_jobs`, so every entry point takes the
same slot with the same settings (`scrub_rate_bytes`,
`upload_expiry_seconds`). The expire job also clears expired resumable
bundle uploads (`web.tus`), a step only the shell can give it.

`start_scheduler` runs `bundles.maintenance_schedule` on a daemon thread of
a serving worker; gunicorn starts it after the fork (web/server.py), never
in the master, which holds no database handle.
"""

from __future__ import annotations

import logging
import threading
import time

from bundles.expiry import ExpireStep
from bundles.jobs import OPEN_STATES, ImportJobs
from bundles.maintenance_jobs import MaintenanceJobs
from bundles.maintenance_schedule import MaintenanceScheduler
from bundles.releases import Releases
from registry.audit import AuditLog
from registry.diskuse import tree_size
from registry.uploads import Uploads
from web.config import Config
from web.tus import TusUploads

_log = logging.getLogger(__name__)


def _expire_tus(tus: TusUploads, jobs: ImportJobs) -> tuple[int, int]:
    """Remove resumable bundle uploads past their expiry whose import is not reading them; (count, bytes)."""
    count, freed = 0, 0
    rows = tus.db.execute("SELECT id, job_id FROM tus_uploads WHERE expires_at <= ? AND final_id IS NULL",
                          [time.time()]).fetchall()
    for upload_id, job_id in rows:
        job = jobs.get(job_id) if job_id else None
        if job is not None and job.state in OPEN_STATES:
            continue  # its import is reading it right now
        parts = [r[0] for r in tus.db.execute("SELECT id FROM tus_uploads WHERE final_id = ?", [upload_id])]
        freed += sum(tree_size(tus.directory(u))[0] for u in [upload_id, *parts] if tus.directory(u).is_dir())
        tus.delete(upload_id)
        count += 1
    return count, freed


def maintenance_jobs(config: Config, releases: Releases, uploads: Uploads, audit: AuditLog) -> MaintenanceJobs:
    """The maintenance jobs of `config`'s data directory, with its settings."""
    tus = TusUploads(config.paths, config.upload_expiry_seconds, config.bundle_max_bytes, uploads.registry.store)
    imports = ImportJobs(config.paths)
    return MaintenanceJobs(releases, uploads, audit, config.scrub_rate_bytes,
                           [ExpireStep("importUploads", lambda: _expire_tus(tus, imports))],
                           config.upload_expiry_seconds)


def scheduler(config: Config, jobs: MaintenanceJobs) -> MaintenanceScheduler:
    """The scheduler of `config`'s schedules; raises ValueError naming a setting that is not a schedule."""
    return MaintenanceScheduler(jobs, config.schedules)


def start_scheduler(sched: MaintenanceScheduler) -> threading.Thread:
    """Run `sched` on a daemon thread of this process (a serving worker) for as long as it lives."""
    stop = threading.Event()
    thread = threading.Thread(target=sched.run_forever, args=(stop,), name="maintenance-scheduler", daemon=True)
    thread.start()
    _log.info("maintenance scheduler: %s", ", ".join(f"{k} {s.text}" for k, s in sched.configured.items()))
    return thread
