"""The data directory's layout: every path cargohold writes is built here.

    <data>/
      cargohold.db            SQLite metadata (WAL mode: -wal and -shm beside it); absent when the
                              metadata is in PostgreSQL (`database_url`, registry.db)
      cargohold.db.lock       held while migrations run, so workers never race them
      gc.lock                 held shared by bundle imports, exclusively by the GC's file sweep (SQLite only:
                              with PostgreSQL these locks are advisory locks, registry.db.cluster_lock)
      backup.lock             held shared by `cargohold backup` while it copies, exclusively by the GC's
                              file sweep (registry.gc.backup_guard): a blob a backup's snapshot names stays
      serve.lock              held by the one `cargohold serve` of this directory for its whole life
                              (it holds that process's pid); `tls issue` takes it too
      blobs/sha256/<2 hex>/<hex>
                              the content-addressed store; manifests are blobs too.
                              A file here always holds exactly the bytes its name says.
      tmp/                    blobs being written: hashed, fsynced, verified, then
                              renamed into blobs/ (same filesystem, so the rename is atomic)
      uploads/<uuid>          the bytes of an open upload session (with an object store: only its lock on
                              SQLite, nothing on PostgreSQL; the bytes are objects, registry.s3uploads)
      quarantine/             blobs `scrub` found damaged, moved aside
      keys/                   the token-signing key and the other secrets (token-binding.key,
                              ui-session.key, login-fingerprint.key); with PostgreSQL metadata these
                              live in its shared_secrets table instead (registry.tokens.shared_secret)
      tls/                    CA and server certificate and key
      imports/                bundles uploaded for import, and import scratch space
      seed/                   the default seed directory: bundles and definitions an installer placed
                              here are imported at start (bundles.seed); never written by the appliance
      metrics                 a symbolic link to the serving appliance's private directory of metric values
                              (prometheus_client multiprocess files, in the runtime directory; web/metrics_dir.py)
      initial-admin-password  the first start's generated admin password, until it is changed
      backups/pre-upgrade-<old>-to-<new>-<time>/
                              the database and small state files as they were before an upgrade migrated
                              them (registry.upgrade); the newest few are kept
      front/                  request bodies the nginx front buffers (small ones only) and
                              its scratch for responses (web/front.py); disposable

Nothing else in the code joins path segments under the data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from registry.digest import Digest


@dataclass(frozen=True)
class DataPaths:
    """Paths under one data directory."""

    root: Path
    # The PostgreSQL metadata database (registry.db), or None for cargohold.db here; never in a repr (a password).
    database_url: str | None = field(default=None, repr=False)

    @property
    def database(self) -> Path:
        return self.root / "cargohold.db"

    @property
    def migration_lock(self) -> Path:
        return self.root / "cargohold.db.lock"

    @property
    def gc_lock(self) -> Path:
        return self.root / "gc.lock"

    @property
    def backup_lock(self) -> Path:
        return self.root / "backup.lock"

    @property
    def serve_lock(self) -> Path:
        return self.root / "serve.lock"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def blob(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.encoded[:2] / digest.encoded

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    def upload(self, uuid: str) -> Path:
        return self.uploads / uuid

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def imports(self) -> Path:
        return self.root / "imports"

    @property
    def seed(self) -> Path:
        return self.root / "seed"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def front_scratch(self) -> Path:
        return self.root / "front"

    @property
    def initial_admin_password(self) -> Path:
        return self.root / "initial-admin-password"

    @property
    def upgrade_backups(self) -> Path:
        return self.root / "backups"

    def state_files(self) -> tuple[Path, ...]:
        """The small state a backup carries besides the database and blobs: secrets, TLS material, and the
        first start's password file. Everything else under the root is the blob store, scratch, or locks."""
        return (self.keys, self.tls, self.initial_admin_password)

    def ensure(self) -> None:
        """Create the directories (idempotent).

        The root is 0700: the database holds password and robot-secret
        hashes and the audit log, and everything else is served through the
        appliance's own access checks, never read from disk by other users.
        """
        for d in (self.root, self.blobs, self.tmp, self.uploads, self.quarantine, self.keys, self.tls, self.imports):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.keys):
            if d.stat().st_uid == os.getuid():  # a mounted volume owned by someone else keeps its mode
                d.chmod(0o700)
