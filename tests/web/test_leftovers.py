"""web.leftovers over a real data directory: which upload and staging directories count as leftovers, at each
point of an upload's and an import's life, and that clearing one never takes what is in use."""

from __future__ import annotations

import fcntl
import io
from pathlib import Path

from bundles.jobs import ImportJobs
from registry.paths import DataPaths
from web.leftovers import clear_leftover, find_leftovers
from web.tus import TusUploads


def test_an_upload_counts_as_leftover_only_once_nothing_needs_it(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    paths.ensure()
    jobs = ImportJobs(paths)
    uploads = TusUploads(paths, expiry_seconds=3600, max_size=1 << 30)

    def listed(now: float | None = None) -> dict[str, str]:
        return {f.name: f.reason for f in find_leftovers(paths, uploads, jobs, now)}

    up = uploads.create(10, {"filename": "b.tar.zst"}, "admin")
    uploads.append(up.id, 0, io.BytesIO(b"01234"), 5, None)
    assert listed() == {}  # half-way: resumable, never a leftover
    done = uploads.append(up.id, 5, io.BytesIO(b"56789"), 5, None)
    assert listed() == {}  # complete, its import not started yet
    job = jobs.create("b.tar.zst", 10)
    uploads.set_job(up.id, job.id)
    assert listed() == {}
    # Importing, even past the upload's expiry: its bytes are being read.
    assert listed(now=done.expires_at + 1) == {}
    assert clear_leftover(paths, uploads, jobs, f"upload:{up.id}") is None
    assert uploads.data_path(done).exists()
    jobs.fail(job.id, "refused for the test", "FORMAT")
    assert listed() == {up.id: "its import failed"}
    assert clear_leftover(paths, uploads, jobs, f"upload:{up.id}") == 10
    assert uploads.get(up.id) is None and not uploads.directory(up.id).exists()

    # An expired unfinished upload, and a directory no upload owns.
    stale = uploads.create(10, {}, "admin")
    orphan = uploads.root / ("0" * 32)
    orphan.mkdir()
    (orphan / "data").write_bytes(b"x" * 100)
    assert listed(now=stale.expires_at + 1) == {stale.id: "its upload expired unfinished",
                                                 orphan.name: "no upload owns it"}


def test_staging_held_by_an_import_is_not_a_leftover(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    paths.ensure()
    jobs = ImportJobs(paths)
    uploads = TusUploads(paths, expiry_seconds=3600, max_size=1 << 30)
    staging = paths.imports / "staging" / "bundle"
    (staging / "sha256").mkdir(parents=True)
    (staging / "sha256" / "ab").write_bytes(b"y" * 50)
    with (staging / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert find_leftovers(paths, uploads, jobs) == []
        assert clear_leftover(paths, uploads, jobs, "staging:bundle") is None
        assert staging.is_dir()
    [found] = find_leftovers(paths, uploads, jobs)
    assert (found.name, found.size) == ("bundle", 50)
    assert clear_leftover(paths, uploads, jobs, "staging:bundle") == 50 and not staging.exists()
