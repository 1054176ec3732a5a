"""Where the data directory's space goes, and the upload and import leftovers nothing else reclaims.

`find_leftovers` lists what an interrupted upload or import left behind:

- ``imports/tus/<id>``: an upload directory with no upload record, or whose
  record has expired, or whose upload completed and whose import is no
  longer running (done or failed). An upload still open (not expired) or
  whose import is verifying/importing is never listed.
- ``imports/staging/<bundle>``: a staging directory whose lock no import
  holds (an import holds ``lock`` in it with flock for as long as it runs).

`clear_leftover` removes one, re-checking first, so an upload that started
or resumed after the list was shown is never deleted.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bundles.jobs import OPEN_STATES, ImportJobs
from registry.diskuse import tree_size
from registry.paths import DataPaths
from web.tus import TusUploads

TUS = "upload"
STAGING = "staging"


@dataclass(frozen=True)
class Leftover:
    kind: str  # TUS or STAGING
    name: str  # the directory's name under imports/tus or imports/staging
    size: int
    modified: float  # newest modification time of anything in it
    reason: str  # why it counts as a leftover, in plain words

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


def _staging_free(directory: Path) -> bool:
    """Whether no import holds `directory`'s lock now (a directory without a lock file is free)."""
    lock = directory / "lock"
    try:
        handle = lock.open("r")
    except FileNotFoundError:
        return True
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def _tus_reason(uploads: TusUploads, jobs: ImportJobs, upload_id: str, now: float) -> str | None:
    """Why imports/tus/<upload_id> is a leftover, or None while an upload or import still needs it."""
    row = uploads.db.execute("SELECT expires_at, completed_at, job_id, final_id FROM tus_uploads WHERE id = ?",
                             [upload_id]).fetchone()
    if row is None:
        return "no upload owns it"
    expires_at, completed_at, job_id, final_id = row
    if final_id:
        # A part of a split upload: it lives as long as the upload it was joined into.
        return _tus_reason(uploads, jobs, final_id, now) if final_id != upload_id else None
    job = jobs.get(job_id) if job_id else None
    if job is not None and job.state in OPEN_STATES:
        return None  # its import is reading it right now, expired or not
    if expires_at is not None and expires_at <= now:
        return "its upload expired" + ("" if completed_at else " unfinished")
    if completed_at is None:
        return None  # still uploading (or resumable): never a leftover
    if not job_id:
        return None  # complete, and its import is about to start
    if job is None:
        return "its import is gone"
    return "its import finished" if job.state == "done" else "its import failed"


def find_leftovers(paths: DataPaths, uploads: TusUploads, jobs: ImportJobs, now: float | None = None) -> list[Leftover]:
    """Every leftover upload or staging directory, oldest first."""
    now = time.time() if now is None else now
    found: list[Leftover] = []
    tus = paths.imports / "tus"
    if tus.is_dir():
        for d in sorted(tus.iterdir()):
            reason = _tus_reason(uploads, jobs, d.name, now)
            if reason is not None:
                size, modified = tree_size(d)
                found.append(Leftover(TUS, d.name, size, modified, reason))
    staging = paths.imports / "staging"
    if staging.is_dir():
        for d in sorted(staging.iterdir()):
            if d.is_dir() and _staging_free(d):
                size, modified = tree_size(d)
                found.append(Leftover(STAGING, d.name, size, modified, "no import is using it"))
    return sorted(found, key=lambda f: f.modified)


def clear_leftover(paths: DataPaths, uploads: TusUploads, jobs: ImportJobs, key: str) -> int | None:
    """Remove the leftover named by `key` (``upload:<id>`` or ``staging:<name>``) if it still is one.

    Returns the bytes freed; None when it is gone or no longer a leftover (nothing removed).
    """
    for leftover in find_leftovers(paths, uploads, jobs):
        if leftover.key != key:
            continue
        if leftover.kind == TUS:
            directory = paths.imports / "tus" / leftover.name
            if uploads.db.execute("SELECT 1 FROM tus_uploads WHERE id = ?", [leftover.name]).fetchone():
                uploads.delete(leftover.name)  # the record goes with its bytes
            shutil.rmtree(directory, ignore_errors=True)
            return leftover.size
        directory = paths.imports / "staging" / leftover.name
        lock = directory / "lock"
        # Hold the lock while removing: an import that starts meanwhile is told the bundle is busy.
        handle = lock.open("a") if lock.exists() else None
        try:
            if handle is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            if handle is not None:
                handle.close()
        return leftover.size
    return None
