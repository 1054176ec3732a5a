"""Expiry of what dead uploads and imports leave behind: the maintenance job of kind ``expire``.

Three things, each safe to run while the appliance serves:

- registry upload sessions idle longer than ``upload_expiry_seconds``, and
  their files (`registry.uploads.Uploads.expire`);
- resumable bundle uploads (tus) past their expiry: the caller passes that
  step in (the tus store belongs to the web shell), see `ExpireStep`;
- import staging directories (``imports/staging/<bundle>``) that no import
  holds (an import holds the flock on ``lock`` in it while it runs) and
  nothing in which changed for ``upload_expiry_seconds``. The lock is taken
  while the directory is removed, so an import that starts meanwhile is
  refused as busy rather than finding its staging gone.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from registry.diskuse import tree_size
from registry.paths import DataPaths


@dataclass(frozen=True)
class ExpireStep:
    """One more thing the expire job clears: `run()` returns (items removed, bytes freed)."""

    name: str  # the result's key and the progress phase, e.g. "importUploads"
    run: Callable[[], tuple[int, int]]


def expire_staging(paths: DataPaths, max_age: float, now: float | None = None) -> tuple[int, int]:
    """Remove staging directories no import holds and unchanged for `max_age` seconds; (count, bytes freed)."""
    now = time.time() if now is None else now
    root = paths.imports / "staging"
    if not root.is_dir():
        return 0, 0
    count, freed = 0, 0
    for directory in sorted(root.iterdir()):
        if not directory.is_dir():
            continue
        size, modified = tree_size(directory)
        if now - modified < max_age:
            continue
        if _remove_unheld(directory):
            count += 1
            freed += size
    return count, freed


def _remove_unheld(directory: Path) -> bool:
    """Remove `directory` unless an import holds its lock; held while removing. Whether it was removed."""
    lock = directory / "lock"
    try:
        handle = lock.open("a")
    except FileNotFoundError:  # no lock file: no import ever got going in it, or it is being removed
        shutil.rmtree(directory, ignore_errors=True)
        return not directory.exists()
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # an import runs in it
        shutil.rmtree(directory, ignore_errors=True)
    return not directory.exists()
