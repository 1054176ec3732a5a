"""The registry's Prometheus metrics: pulls, pushes, upload sessions, garbage collection, scrub, the data volume.

Counters and histograms are module-level `prometheus_client` objects, so
every process that records (each gunicorn worker, a background job thread, a
CLI command) adds to them; under ``cargohold serve`` they are in
multiprocess mode (web/metrics_dir.py), and `/metrics` (web/metrics.py) sums
every process's values. Labels stay few and bounded: a project name (only
for requests that succeeded, so a client cannot mint label values), an
outcome from a fixed set; never a digest, tag, user or path.

What is a state rather than an event (open upload sessions, free bytes of
the data volume, the version) is read when Prometheus scrapes, by
`RegistryCollector`, so it is right whichever process changed it and never
goes stale when a process dies.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from registry.db import open_database
from registry.dbengine import Error as DatabaseError
from registry.paths import DataPaths
from registry.version import VERSION

# Every metric the appliance defines starts with this.
PREFIX = "cargohold_"

PULLS = Counter(f"{PREFIX}pulls_total", "Manifests served by GET (image pulls), by project", ["project"])
PUSHES = Counter(f"{PREFIX}pushes_total", "Manifests stored by PUT (image pushes), by project", ["project"])
UPLOADS_STARTED = Counter(f"{PREFIX}upload_sessions_started_total", "Blob upload sessions opened on /v2/")
UPLOADS_COMPLETED = Counter(f"{PREFIX}upload_sessions_completed_total",
                            "Blob upload sessions finished with a verified blob")

GC_RUNS = Counter(f"{PREFIX}gc_runs_total", "Garbage collections by outcome (done, failed, refused) and dry run",
                  ["outcome", "dry_run"])
GC_RECLAIMED_BYTES = Counter(f"{PREFIX}gc_reclaimed_bytes_total",
                             "Bytes of blob files and expired uploads garbage collection removed")
GC_REMOVED_BLOBS = Counter(f"{PREFIX}gc_removed_blobs_total", "Blobs garbage collection removed")
GC_REMOVED_MANIFESTS = Counter(f"{PREFIX}gc_removed_manifests_total", "Manifests garbage collection removed")
GC_DURATION = Histogram(f"{PREFIX}gc_duration_seconds", "How long garbage collections took (dry runs too)",
                        buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600))
# "max": the newest success across every process, kept after that process ended (a CLI run counts too).
GC_LAST_SUCCESS = Gauge(f"{PREFIX}gc_last_success_timestamp_seconds",
                        "When the last garbage collection (not a dry run) finished, Unix time",
                        multiprocess_mode="max")

SCRUB_RUNS = Counter(f"{PREFIX}scrub_runs_total", "Scrubs by outcome (done, failed)", ["outcome"])
SCRUB_CHECKED_BLOBS = Counter(f"{PREFIX}scrub_checked_blobs_total", "Blob files scrub re-hashed")
SCRUB_CHECKED_BYTES = Counter(f"{PREFIX}scrub_checked_bytes_total", "Bytes scrub re-hashed")
SCRUB_DAMAGED = Counter(f"{PREFIX}scrub_damaged_blobs_total", "Blob files scrub found damaged (bytes not matching "
                        "their digest)")
SCRUB_MISSING = Counter(f"{PREFIX}scrub_missing_blobs_total", "Recorded blobs scrub found without a file")
SCRUB_LAST_SUCCESS = Gauge(f"{PREFIX}scrub_last_success_timestamp_seconds",
                           "When the last scrub finished, Unix time", multiprocess_mode="max")

GC_OUTCOMES = ("done", "failed", "refused")


def record_gc(outcome: str, dry_run: bool, duration: float, report: dict[str, Any] | None, now: float) -> None:
    """Count one garbage collection; `report` is `GcReport.to_json()` of one that ran (None when it did not)."""
    GC_RUNS.labels(outcome, "true" if dry_run else "false").inc()
    if report is None:
        return
    GC_DURATION.observe(duration)
    if dry_run:
        return
    GC_RECLAIMED_BYTES.inc(int(report.get("bytesReclaimed", 0)) + int(report.get("uploadBytesReclaimed", 0)))
    GC_REMOVED_BLOBS.inc(len(report.get("blobsRemoved", ())))
    GC_REMOVED_MANIFESTS.inc(len(report.get("manifestsRemoved", ())))
    if outcome == "done":
        GC_LAST_SUCCESS.set(now)


def record_scrub(outcome: str, checked: int, checked_bytes: int, damaged: int, missing: int, now: float) -> None:
    """Count one scrub and what it found."""
    SCRUB_RUNS.labels(outcome).inc()
    SCRUB_CHECKED_BLOBS.inc(checked)
    SCRUB_CHECKED_BYTES.inc(checked_bytes)
    SCRUB_DAMAGED.inc(damaged)
    SCRUB_MISSING.inc(missing)
    if outcome == "done":
        SCRUB_LAST_SUCCESS.set(now)


class RegistryCollector(Collector):
    """States read at scrape time: the data volume, open upload sessions, the version."""

    def __init__(self, paths: DataPaths, reserve_bytes: int) -> None:
        self.paths = paths
        self.reserve_bytes = reserve_bytes

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(f"{PREFIX}build_info", "The appliance's version (always 1)", labels=["version"])
        info.add_metric([VERSION], 1)
        yield info
        try:
            usage = shutil.disk_usage(self.paths.root)
        except OSError:
            usage = None
        if usage is not None:
            yield GaugeMetricFamily(f"{PREFIX}data_volume_free_bytes",
                                    "Bytes free on the data directory's volume (for this service's user)",
                                    value=usage.free)
            yield GaugeMetricFamily(f"{PREFIX}data_volume_used_bytes", "Bytes used on the data directory's volume",
                                    value=usage.used)
            yield GaugeMetricFamily(f"{PREFIX}data_volume_size_bytes", "Size of the data directory's volume",
                                    value=usage.total)
        yield GaugeMetricFamily(f"{PREFIX}data_volume_reserve_bytes",
                                "Free space every write must leave on the data volume (CARGOHOLD_IMPORT_RESERVE_BYTES)",
                                value=self.reserve_bytes)
        try:
            open_sessions = open_database(self.paths).execute("SELECT COUNT(*) FROM uploads").fetchone()[0]
        except DatabaseError:
            return  # the database cannot be read: /readyz says so; the metric is left out rather than wrong
        yield GaugeMetricFamily(f"{PREFIX}upload_sessions_open", "Blob upload sessions open now (not finished, "
                                "cancelled or expired)", value=int(open_sessions))
