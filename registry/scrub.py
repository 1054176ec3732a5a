"""Scrub: re-hash every blob in the store and quarantine the ones whose bytes no longer match.

A blob file is only ever put in place with verified bytes, so a mismatch
means the disk (or someone) changed it afterwards. Each blob is hashed as a
stream (flat memory), through the store's interface, so an object store's
blobs are checked as files are. A damaged blob is moved to
``<data>/quarantine/<algorithm>-<hex>-<unix time>`` (with an object store,
``<prefix>/quarantine/...`` in the bucket; kept for inspection,
never served), so pulls answer BLOB_UNKNOWN instead of wrong bytes. Its
database rows stay: the readiness check then reports the images that need
it as ``blob_missing``, and importing the bundle again (or pushing the image
again) puts correct bytes back under the same digest. Rows whose file is
absent are reported as missing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry import metrics
from registry.blobstore import CHUNK
from registry.digest import Digest
from registry.errors import RegistryError
from registry.model import Registry
from registry.throttle import Throttle

_log = logging.getLogger(__name__)


@dataclass
class ScrubReport:
    """What a scrub found."""

    checked: int = 0
    bytes: int = 0
    damaged: list[dict[str, Any]] = field(default_factory=list)  # {"digest", "actual", "quarantined"}
    missing: list[str] = field(default_factory=list)  # rows whose file is gone
    duration_seconds: float = 0.0
    rate_bytes: int = 0  # the read-rate limit it ran under (0: none)
    throttled_seconds: float = 0.0  # time spent waiting to keep to it

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.missing

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "bytes": self.bytes, "damaged": self.damaged,
                "missing": self.missing, "durationSeconds": round(self.duration_seconds, 3),
                "rateBytes": self.rate_bytes, "throttledSeconds": round(self.throttled_seconds, 3)}


def _hash_blob(registry: Registry, digest: Digest, throttle: Throttle) -> tuple[str, int]:
    h = hashlib.new(digest.algorithm)
    size = 0
    with registry.store.open(digest) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            throttle.consume(len(chunk))
    return h.hexdigest(), size


def scrub(registry: Registry, quarantine: bool = True,
          progress: Callable[[int, int], None] | None = None, rate_bytes: int = 0) -> ScrubReport:
    """Re-hash every blob file; quarantine (unless told not to) and report mismatches. Read-only otherwise.

    `rate_bytes`: read at most this many bytes per second on average (0: as fast as the disk goes), so
    pulls keep their speed while a scheduled scrub reads every blob.
    """
    # Every scrub (CLI, API, maintenance job) runs through here: its start and end are logged and counted here, once.
    _log.info("scrub started", extra={"quarantine": quarantine})
    report = ScrubReport(rate_bytes=rate_bytes)
    try:
        _scrub(registry, quarantine, progress, report)
    except BaseException:
        metrics.record_scrub("failed", report.checked, report.bytes, len(report.damaged), 0, time.time())
        _log.exception("scrub failed")
        raise
    metrics.record_scrub("done", report.checked, report.bytes, len(report.damaged), len(report.missing), time.time())
    _log.log(logging.WARNING if report.damaged or report.missing else logging.INFO,
             "scrub finished: %s blobs checked, %s damaged, %s missing", report.checked, len(report.damaged),
             len(report.missing), extra={"checked": report.checked, "bytes": report.bytes,
                                         "damaged": len(report.damaged), "missing": len(report.missing),
                                         "duration_ms": round(report.duration_seconds * 1000, 1)})
    return report


def _scrub(registry: Registry, quarantine: bool, progress: Callable[[int, int], None] | None,
           report: ScrubReport) -> None:
    started = time.monotonic()
    throttle = Throttle(report.rate_bytes)
    for info in registry.store.walk():
        try:
            actual, size = _hash_blob(registry, info.digest, throttle)
        except RegistryError as exc:
            if exc.code == "BLOB_UNKNOWN":
                continue  # removed by garbage collection meanwhile
            raise
        report.checked += 1
        report.bytes += size
        if progress is not None:
            progress(report.checked, report.bytes)
        if actual == info.digest.encoded:
            continue
        entry: dict[str, Any] = {"digest": str(info.digest), "actual": f"{info.digest.algorithm}:{actual}",
                                 "size": size, "quarantined": None}
        if quarantine:
            entry["quarantined"] = registry.store.quarantine(
                info.digest, f"{info.digest.algorithm}-{info.digest.encoded}-{int(time.time())}")
        report.damaged.append(entry)
    for (text,) in registry.db.execute("SELECT digest FROM blobs ORDER BY digest"):
        try:
            digest = Digest.parse(text)
        except RegistryError:
            continue
        if registry.store.stat(digest) is None and all(d["digest"] != text for d in report.damaged):
            report.missing.append(text)
    report.duration_seconds = time.monotonic() - started
    report.throttled_seconds = throttle.slept
