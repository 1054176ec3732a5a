"""Online garbage collection of the registry: mark from tags and roots, sweep what nothing reaches.

Pulls and pushes continue while it runs. The registry does not know about
releases or clusters, so callers pass extra roots (`GcRoots`): manifests a
release keeps, digests a running cluster uses, blobs (charts, definition
archives) that no repository serves.

Mark and row sweep (one ``BEGIN IMMEDIATE`` transaction over metadata only,
no file I/O, so the write lock is held for a few indexed queries):

- kept manifests: every tagged manifest, every root, every manifest stored
  within the grace period (a client pushes an index's children before the
  index, untagged for a moment), then, to a fixpoint, the children of kept
  manifests (manifest_refs) and the referrers of kept manifests (subject);
- kept repository links: each kept manifest's own bytes and the blobs it
  references, plus links made within the grace period (a push in progress
  uploads layers before its manifest);
- every other manifest (with its refs and tags — none, by construction) and
  link row is deleted; a blob row goes when no link remains, no root names
  it and it is older than the grace period.

File sweep: every file in the store whose digest has no ``blobs`` row and
whose mtime is older than the grace period is unlinked, in batches, each
batch checked and unlinked inside its own write transaction. Since
`Registry.register_blob` refuses to record a blob whose file is missing,
and runs under the same lock, no row can ever come to point at a deleted
file. The file sweep takes the ``gc`` lock exclusively (``gc.lock`` beside
SQLite, an advisory lock on PostgreSQL, so imports on every replica count:
`registry.db.cluster_lock`); bundle imports hold it shared while they run
(they reuse files the store already has), so while an import runs the file
sweep is deferred and says so. Likewise the ``backup`` lock:
`cargohold backup` holds it shared from before its database snapshot until
it has copied every blob the snapshot names (`backup_guard`).

A dry run computes the same sets in a read transaction and changes nothing.
Stale upload sessions (idle longer than the configured upload expiry) are
removed and their bytes reported.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from registry import metrics
from registry.db import cluster_lock, write_transaction
from registry.dbengine import Database, placeholders
from registry.digest import Digest
from registry.model import Registry
from registry.paths import DataPaths
from registry.uploads import Uploads

DEFAULT_GRACE_SECONDS = 3600.0
# The locks (registry.db.cluster_lock: files gc.lock and backup.lock beside SQLite, advisory locks on PostgreSQL).
GC_LOCK, BACKUP_LOCK = "gc", "backup"
_FILE_BATCH = 256


@dataclass(frozen=True)
class GcRoots:
    """What the caller keeps besides tags.

    `manifests`: (repository name, manifest digest) pairs; `digests`: manifest
    digests kept in whichever repository holds them (what a cluster runs);
    `blobs`: blob digests kept even when no repository serves them.
    """

    manifests: frozenset[tuple[str, str]] = frozenset()
    digests: frozenset[str] = frozenset()
    blobs: frozenset[str] = frozenset()


@dataclass
class GcReport:
    """What a collection removed (or, in a dry run, would remove)."""

    dry_run: bool
    manifests: list[dict[str, Any]] = field(default_factory=list)  # {"repository", "digest", "size"}
    links: int = 0
    blobs: list[dict[str, Any]] = field(default_factory=list)  # {"digest", "size"}: rows removed
    files: int = 0
    bytes_reclaimed: int = 0  # file bytes unlinked (dry run: would be)
    uploads_expired: int = 0
    upload_bytes: int = 0
    deferred: str | None = None  # why the file sweep did not run
    kept_manifests: int = 0
    kept_blobs: int = 0
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    duration_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dryRun": self.dry_run, "manifestsRemoved": self.manifests, "linksRemoved": self.links,
                "blobsRemoved": self.blobs, "filesRemoved": self.files, "bytesReclaimed": self.bytes_reclaimed,
                "uploadsExpired": self.uploads_expired, "uploadBytesReclaimed": self.upload_bytes,
                "deferred": self.deferred, "keptManifests": self.kept_manifests, "keptBlobs": self.kept_blobs,
                "graceSeconds": self.grace_seconds, "durationSeconds": round(self.duration_seconds, 3),
                "warnings": list(self.warnings)}


@contextlib.contextmanager
def import_guard(paths: DataPaths) -> Iterator[None]:
    """Held (shared) while a bundle import runs: the file sweep waits for it to end."""
    with cluster_lock(paths, GC_LOCK, shared=True):
        yield


@contextlib.contextmanager
def backup_guard(paths: DataPaths) -> Iterator[None]:
    """Held (shared) while `cargohold backup` copies: the file sweep waits for it to end.

    Taking it waits for a file sweep in progress, so a snapshot taken under
    it names only blobs whose files stay until the guard is released.
    """
    with cluster_lock(paths, BACKUP_LOCK, shared=True):
        yield


_IMPORT_RUNNING = ("a bundle import is running: blob files were not removed this time "
                   "(their rows are gone; the next collection removes them)")
_BACKUP_RUNNING = ("a backup is running: blob files were not removed this time "
                   "(their rows are gone; the next collection removes them)")


@contextlib.contextmanager
def _sweep_lock(paths: DataPaths) -> Iterator[str | None]:
    """Exclusive ``gc`` and ``backup`` locks without waiting; yields None, or why the sweep must wait."""
    with cluster_lock(paths, GC_LOCK, wait=False) as gc_taken:
        if not gc_taken:
            yield _IMPORT_RUNNING
            return
        with cluster_lock(paths, BACKUP_LOCK, wait=False) as backup_taken:
            yield None if backup_taken else _BACKUP_RUNNING


RootsFn = Callable[[Database], GcRoots]
Progress = Callable[[str, int, int], None]  # (phase, done, total): for a job's progress display


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


class GarbageCollector:
    """Collects one registry's unreachable content."""

    def __init__(self, registry: Registry, uploads: Uploads | None = None,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        if grace_seconds < 0:
            raise ValueError("the grace period cannot be negative")
        self.registry = registry
        self.uploads = uploads
        self.grace = grace_seconds

    def run(self, roots: GcRoots | RootsFn = GcRoots(), dry_run: bool = False,
            progress: Progress = _no_progress) -> GcReport:
        """Collect (or with `dry_run` only list) what nothing keeps; returns the report.

        `roots` may be a function of the open transaction's database, so
        roots that depend on other tables (releases) are read in the same
        snapshot as the tags. `progress` hears the phase (marking, sweeping
        files, expiring uploads) and, while sweeping, files checked of about how many.
        """
        started = time.monotonic()
        try:
            report = self._run(roots, dry_run, started, progress)
        except BaseException:
            metrics.record_gc("failed", dry_run, time.monotonic() - started, None, time.time())
            raise
        metrics.record_gc("done", dry_run, report.duration_seconds, report.to_json(), time.time())
        return report

    def _run(self, roots: GcRoots | RootsFn, dry_run: bool, started: float, progress: Progress) -> GcReport:
        progress("marking", 0, 0)
        report = GcReport(dry_run=dry_run, grace_seconds=self.grace)
        cutoff = time.time() - self.grace
        db = self.registry.db
        if dry_run:
            db.begin_read()  # a read snapshot: the same view as the real run would take
            try:
                orphans = self._mark_and_sweep_rows(db, roots, cutoff, report, delete=False)
            finally:
                db.rollback()
            gone = {b["digest"] for b in report.blobs}
            report.bytes_reclaimed = sum(int(b["size"]) for b in report.blobs if self._on_disk(b["digest"]))
            report.bytes_reclaimed += sum(size for d, size in orphans if d not in gone)
            report.files = sum(1 for b in report.blobs if self._on_disk(b["digest"])) + \
                sum(1 for d, _ in orphans if d not in gone)
            if self.uploads is not None:
                report.uploads_expired, report.upload_bytes = self._stale_uploads()
        else:
            with write_transaction(db) as tx:
                self._mark_and_sweep_rows(tx, roots, cutoff, report, delete=True)
            with _sweep_lock(self.registry.paths) as busy:
                if busy is None:
                    self._sweep_files(cutoff, report, progress)
                else:
                    report.deferred = busy
            if self.uploads is not None:
                progress("expiring uploads", 0, 0)
                report.uploads_expired, report.upload_bytes = self.uploads.expire()
        report.duration_seconds = time.monotonic() - started
        return report

    # -- mark and the row sweep -------------------------------------------------------------------

    def _mark_and_sweep_rows(self, db: Database, roots: GcRoots | RootsFn, cutoff: float, report: GcReport,
                             delete: bool) -> list[tuple[str, int]]:
        r = roots(db) if callable(roots) else roots
        repo_ids = {name: int(i) for i, name in db.execute("SELECT id, name FROM repositories")}
        names = {i: n for n, i in repo_ids.items()}
        manifests: dict[tuple[int, str], tuple[str | None, float, int]] = {
            (int(rid), d): (subj, float(created or 0), int(size or 0))
            for rid, d, subj, created, size in db.execute(
                "SELECT repository_id, digest, subject, created_at, size FROM manifests")}
        children: dict[tuple[int, str], list[str]] = {}
        blob_refs: dict[tuple[int, str], list[str]] = {}
        for rid, m, child, kind in db.execute("SELECT repository_id, manifest, child, kind FROM manifest_refs"):
            (children if kind == "manifest" else blob_refs).setdefault((int(rid), m), []).append(child)
        referrers: dict[tuple[int, str], list[str]] = {}
        for (rid, d), (subj, _, _) in manifests.items():
            if subj:
                referrers.setdefault((rid, subj), []).append(d)

        stack: list[tuple[int, str]] = [(int(rid), d) for rid, d in db.execute(
            "SELECT repository_id, digest FROM tags")]
        stack += [(repo_ids[n], d) for n, d in r.manifests if n in repo_ids]
        stack += [k for k, (_, created, _) in manifests.items() if created >= cutoff or k[1] in r.digests]
        kept: set[tuple[int, str]] = set()
        while stack:
            key = stack.pop()
            if key in kept or key not in manifests:
                continue
            kept.add(key)
            stack += [(key[0], c) for c in children.get(key, ())]
            stack += [(key[0], c) for c in referrers.get(key, ())]
        doomed = sorted(k for k in manifests if k not in kept)
        report.kept_manifests = len(kept)
        report.manifests = [{"repository": names[rid], "digest": d, "size": manifests[(rid, d)][2]}
                            for rid, d in doomed]

        keep_links: set[tuple[int, str]] = set(kept)
        for key in kept:
            keep_links.update((key[0], b) for b in blob_refs.get(key, ()))
        links = [(int(rid), d, float(created or 0)) for rid, d, created in db.execute(
            "SELECT repository_id, digest, created_at FROM repository_blobs")]
        drop_links = [(rid, d) for rid, d, created in links if (rid, d) not in keep_links and created < cutoff]
        dropped = set(drop_links)
        remaining = {d for rid, d, _ in links if (rid, d) not in dropped}
        report.links = len(drop_links)
        blob_rows = [(d, int(size or 0), float(created or 0)) for d, size, created in db.execute(
            "SELECT digest, size, created_at FROM blobs")]
        drop_blobs = [(d, size) for d, size, created in blob_rows
                      if d not in remaining and d not in r.blobs and created < cutoff]
        report.blobs = [{"digest": d, "size": size} for d, size in drop_blobs]
        report.kept_blobs = len(blob_rows) - len(drop_blobs)

        if delete:
            db.executemany("DELETE FROM manifest_refs WHERE repository_id = ? AND manifest = ?", doomed)
            db.executemany("DELETE FROM tags WHERE repository_id = ? AND digest = ?", doomed)
            db.executemany("DELETE FROM manifests WHERE repository_id = ? AND digest = ?", doomed)
            db.executemany("DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?", drop_links)
            db.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d, _ in drop_blobs])
            return []
        # Dry run: files with no row at all (crash leftovers) the file sweep would take.
        known = {d for d, _, _ in blob_rows}
        return [(str(info.digest), info.size) for info in self.registry.store.walk()
                if str(info.digest) not in known and info.modified < cutoff]

    # -- the file sweep ---------------------------------------------------------------------------

    def _on_disk(self, digest: str) -> bool:
        return self.registry.store.stat(Digest.parse(digest)) is not None

    def _sweep_files(self, cutoff: float, report: GcReport, progress: Progress = _no_progress) -> None:
        total = int(self.registry.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])  # about as many files
        checked = 0
        progress("sweeping files", 0, total)
        batch: list[Digest] = []
        for info in self.registry.store.walk():
            batch.append(info.digest)
            if len(batch) >= _FILE_BATCH:
                self._sweep_batch(batch, cutoff, report)
                checked += len(batch)
                progress("sweeping files", checked, max(total, checked))
                batch = []
        if batch:
            self._sweep_batch(batch, cutoff, report)

    def _sweep_batch(self, batch: list[Digest], cutoff: float, report: GcReport) -> None:
        # Checked and unlinked under the write lock: a concurrent push records a blob only inside a write
        # transaction that first checks the file is there, so it either sees it gone or we see its row.
        with write_transaction(self.registry.db) as db:
            known = {row[0] for row in db.execute(
                f"SELECT digest FROM blobs WHERE digest IN ({placeholders(len(batch))})", [str(d) for d in batch])}
            for digest in batch:
                if str(digest) in known:
                    continue
                # Stat again under the lock: the walk's age may predate a reuse (the store refreshes it).
                info = self.registry.store.stat(digest)
                if info is None:
                    continue
                if info.modified >= cutoff:
                    continue  # just written or just reused by a push: its row is on the way
                if self.registry.store.delete(digest):
                    report.files += 1
                    report.bytes_reclaimed += info.size

    def _stale_uploads(self) -> tuple[int, int]:
        assert self.uploads is not None
        cutoff = time.time() - self.uploads.expiry_seconds
        count, size = 0, 0
        for (uuid,) in self.registry.db.execute("SELECT uuid FROM uploads WHERE updated_at < ?", [cutoff]):
            count += 1
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(self.registry.paths.upload(uuid)).st_size
        return count, size


def parse_grace(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``2h``, ``1d`` -> seconds; raises ValueError naming the value."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"grace period {text!r} is not a duration like 90, 30s, 15m, 2h or 1d") from None
    if value < 0 or value != value:
        raise ValueError(f"grace period {text!r} is negative")
    return value
