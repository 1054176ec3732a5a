"""Where the metric values of every process of one appliance live (prometheus_client's multiprocess mode).

Each process that records a metric (a gunicorn worker, a job thread in it, a
CLI command) keeps its values in memory-mapped files of its own in one
directory named by ``PROMETHEUS_MULTIPROC_DIR``; `/metrics` sums them
(web/metrics.py). prometheus_client chooses its mode when it is first
imported, so the variable is set before anything imports it:

- ``cargohold serve`` makes a fresh private directory (0700) in the runtime
  directory (``CARGOHOLD_RUNTIME_DIR``, ``$RUNTIME_DIRECTORY`` or /tmp; not the
  data volume: writing a memory-mapped file on a full volume kills the
  process with SIGBUS, and the data volume is the one that fills) before it
  forks anything, points ``<data>/metrics`` (a symbolic link) at it, and
  removes the previous serve's directory. Values therefore start from zero at
  each start, as Prometheus expects of a restarted target. When a worker
  exits, its live gauges go (`worker_exited`); its counters stay counted.
- Other commands on the same data directory (``bundle import``, ``gc``,
  ``scrub``...) find the directory through that link and add to it when the
  appliance is serving, so an import from the command line is counted too.
  With no serving appliance (no link, or a dangling one) they record in
  memory only, and nothing is kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from registry.paths import DataPaths

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "cargohold-metrics-"


class MetricsDirError(RuntimeError):
    """The metrics directory cannot be set up; the message says why."""


def _require_not_loaded() -> None:
    # Imported already (in single-process mode), prometheus_client would ignore the directory: a bug here.
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise MetricsDirError("prometheus_client was imported before its multiprocess directory was set")


def prepare_for_serve(paths: DataPaths, runtime_dir: Path | None) -> Path:
    """A fresh directory for this serve's processes, linked from ``<data>/metrics`` and named in the environment.

    Call before anything imports prometheus_client and before forking.
    Raises MetricsDirError.
    """
    _require_not_loaded()
    parent = runtime_dir or Path(os.environ.get("RUNTIME_DIRECTORY") or tempfile.gettempdir())
    link = paths.metrics
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            previous = Path(os.readlink(link))
            if previous.name.startswith(_PREFIX):
                shutil.rmtree(previous, ignore_errors=True)
        directory = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=parent))
        staged = link.with_name(f".{link.name}.{os.getpid()}")
        staged.unlink(missing_ok=True)
        staged.symlink_to(directory)
        os.replace(staged, link)
    except OSError as exc:
        raise MetricsDirError(f"cannot set up the metrics directory in {parent} ({exc.strerror or exc}); "
                              "set CARGOHOLD_RUNTIME_DIR to a writable directory") from None
    os.environ[ENV] = str(directory)
    return directory


def remove_after_serve(directory: Path, owner: int) -> None:
    """Remove this serve's directory (the link is left dangling), in the process that made it only.

    gunicorn workers unwind through the master's cleanup when they exit (see
    web/front.py `FrontLayout.remove`): they must not take the directory away.
    """
    if os.getpid() != owner:
        return
    shutil.rmtree(directory, ignore_errors=True)


def adopt_for_command(paths: DataPaths) -> Path | None:
    """Record into the serving appliance's directory when there is one (a CLI command); returns it or None."""
    if ENV in os.environ:
        return None
    try:
        directory = paths.metrics.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not directory.is_dir() or not directory.name.startswith(_PREFIX) or not os.access(directory, os.W_OK | os.X_OK):
        return None
    if "prometheus_client.values" in sys.modules:
        return None  # too late for this process to change mode: it records in memory only
    os.environ[ENV] = str(directory)
    return directory


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: the exited worker's live gauges (in-flight requests) no longer count."""
    if ENV not in os.environ:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
