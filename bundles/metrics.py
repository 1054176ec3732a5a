"""The bundles package's Prometheus metrics: bundle imports and releases.

`IMPORTS` counts every import that ended, whichever way it came (CLI, HTTP
upload, UI, seed directory), by outcome (``done``, ``refused``: a
`BundleRefused` with its code, ``failed``: anything unexpected, code
``INTERNAL``); the code is the job's ``errorCode`` (docs/bundle-import.md,
"Refusals"), a fixed set. `BundlesCollector` reads releases by state and
the imports running now (and, on a follower appliance, how far it is behind its
primary: `bundles.follow`) from the database at scrape time (a killed
importer's job reads as interrupted, not running, as everywhere else).
See registry/metrics.py for how the values of every process are summed.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from registry import leases
from registry.db import open_database
from registry.dbengine import Error as DatabaseError
from registry.metrics import PREFIX
from registry.paths import DataPaths
from registry.processes import process_alive

IMPORTS = Counter(f"{PREFIX}bundle_imports_total",
                  "Bundle imports that ended, by outcome (done, refused, failed) and refusal code (errorCode)",
                  ["outcome", "code"])
IMPORT_DURATION = Histogram(f"{PREFIX}bundle_import_duration_seconds", "How long bundle imports took, by outcome",
                            ["outcome"], buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600))
IMPORT_BYTES = Counter(f"{PREFIX}bundle_import_bytes_total", "Compressed bundle bytes read by imports that succeeded")

RELEASE_STATES = ("staged", "promoted", "superseded", "rolled-back", "discarded")  # bundles.releases.STATES


def record_import(outcome: str, code: str, duration: float, bytes_read: int = 0) -> None:
    """Count one import that ended: `outcome` done, refused or failed; `code` its errorCode ("" when done)."""
    IMPORTS.labels(outcome, code).inc()
    IMPORT_DURATION.labels(outcome).observe(duration)
    if bytes_read:
        IMPORT_BYTES.inc(bytes_read)


class BundlesCollector(Collector):
    """Releases by state and imports in progress, read from the database when Prometheus scrapes."""

    def __init__(self, paths: DataPaths) -> None:
        self.paths = paths

    def collect(self) -> Iterator[Metric]:
        try:
            db = open_database(self.paths)
            states = dict(db.execute("SELECT state, COUNT(*) FROM releases GROUP BY state").fetchall())
            open_jobs = db.execute("SELECT pid, pid_start FROM import_jobs "
                                   "WHERE state IN ('verifying', 'importing')").fetchall()
            follow = db.execute("SELECT last_sync_at, primary_seq - last_seq, last_error FROM follow_state "
                                "WHERE id = 1 AND primary_url IS NOT NULL").fetchone()
        except DatabaseError:
            return  # the database cannot be read: /readyz says so; these are left out rather than wrong
        releases = GaugeMetricFamily(f"{PREFIX}releases", "Releases by state", labels=["state"])
        for state in sorted(set(RELEASE_STATES) | set(states)):
            releases.add_metric([state], int(states.get(state, 0)))
        yield releases
        machine_alive = leases.machine_judge(self.paths)
        running = sum(1 for pid, start in open_jobs if process_alive(pid, start, machine_alive))
        yield GaugeMetricFamily(f"{PREFIX}bundle_imports_in_progress", "Bundle imports running now", value=running)
        if follow is not None:
            synced, behind, error = follow
            yield GaugeMetricFamily(f"{PREFIX}follower_last_sync_timestamp_seconds",
                                    "When this follower last finished a round with its primary (0: never)",
                                    value=float(synced or 0))
            yield GaugeMetricFamily(f"{PREFIX}follower_events_behind",
                                    "Release events of the primary not yet applied here", value=max(0, behind or 0))
            yield GaugeMetricFamily(f"{PREFIX}follower_in_sync",
                                    "1 when the follower's last round ended in sync with the primary, else 0",
                                    value=0 if error or not synced else 1)
