"""Wiring of the seed directory (`bundles.seed`) for the shell: the scanner a config sets, and the start-up scan.

`cargohold serve` does its set-up in a short-lived child and the gunicorn
master holds no database handle, so the start-up scan runs in the workers:
each worker, once booted, starts `start_up_scan` on a daemon thread, and the
first to claim the scan in the database (`SeedScanner.claim_scan`) runs it;
the others find it running or done and stop. Imports are long; they never
hold up serving.
"""

from __future__ import annotations

import logging
import threading

from bundles.clusterdef import ClusterDefinitions
from bundles.seed import SeedDirError, SeedScanner, discover, serve_identity
from registry import logcontext
from web.bundle_import import ImportServices, import_services
from web.config import Config

SYSTEM_USER = "system"  # who the audit log names for a start-up scan
_log = logging.getLogger(__name__)


def seed_scanner(config: Config, imports: ImportServices | None = None) -> SeedScanner:
    """The scanner of `config`'s seed directory; raises ValueError for malformed mapping rules."""
    imports = imports or import_services(config)
    return SeedScanner(config.paths, config.seed_directory, imports.importer, imports.jobs, imports.trust,
                       ClusterDefinitions(config.paths), config.allow_unsigned_definitions,
                       config.seed_settle_seconds)


def start_up_scan(config: Config) -> None:
    """Run this serve's start-up scan if this worker is the first to claim it; logs, never raises.

    A seed directory that is missing or holds nothing to import is not scanned (nor recorded).
    """
    try:
        if not discover(config.seed_directory, config.seed_settle_seconds):
            return  # nothing to import: no scan recorded, nothing in the audit log at every start
        scanner = seed_scanner(config)
        claimed = scanner.claim_scan("start", SYSTEM_USER, serve_identity())
        if claimed is None or not claimed[1]:
            return
        _log.info("seed: scanning %s (scan %s)", scanner.seed_dir, claimed[0])
        report = scanner.run_scan(claimed[0], SYSTEM_USER)
        _log.info("seed: scan %s done: %s", claimed[0], report["counts"] or "nothing found")
    except SeedDirError as exc:  # recorded on the scan; the appliance serves all the same
        _log.error("seed: the start-up scan failed: %s", exc)
    except Exception:  # a bug or a broken database: the appliance serves all the same, and says why
        _log.exception("seed: the start-up scan failed")


def start_up_thread(config: Config) -> threading.Thread | None:
    """Start `start_up_scan` on a daemon thread (None when `seed_scan` is off)."""
    if not config.seed_scan:
        return None
    thread = threading.Thread(target=start_up_scan, args=(config,), name="seed-scan", daemon=True)
    thread.start()
    return thread


def scan_in_background(scanner: SeedScanner, scan_id: int, requested_by: str, retry_refused: bool) -> None:
    """Run the claimed scan `scan_id` on a daemon thread of this process (the API's and the UI's scans)."""
    def work() -> None:
        try:
            scanner.run_scan(scan_id, requested_by, retry_refused)
        except SeedDirError as exc:  # recorded on the scan, which the caller follows
            _log.error("seed: scan %s failed: %s", scan_id, exc)
        except Exception:
            _log.exception("seed: scan %s failed", scan_id)

    logcontext.start_thread(work, f"seed-scan-{scan_id}")  # logs with the id of the request that asked
