"""The registry model: repositories, blobs, manifests, tags and referrers.

The facade every caller (the /v2/ API, bundle import, releases, checks) uses
instead of touching the database: endpoints call this, never SQL. Manifest
bytes live in the blob store like any blob; SQLite holds what references what.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.blobstore import BlobInfo, BlobStore, FilesystemBlobStore
from registry.db import open_database, write_transaction
from registry.dbengine import Database, insert_id
from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.manifest_cache import MANIFESTS
from registry.manifests import ParsedManifest, parse_manifest, referrer_artifact_type
from registry.names import is_digest_reference, validate_name, validate_tag
from registry.paths import DataPaths
from registry.protection import TagProtection
from registry.quotas import ProjectQuota

DEFAULT_MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class ManifestRecord:
    """A stored manifest as the API serves it."""

    repository: str
    digest: Digest
    media_type: str
    size: int
    subject: Digest | None = None


@dataclass(frozen=True)
class Page:
    """One page of a lexically sorted listing; `more` says a next page exists."""

    items: list[str]
    more: bool


class Registry:
    """Repositories, blobs, manifests and tags of one data directory."""

    def __init__(self, paths: DataPaths, store: BlobStore | None = None,
                 max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES) -> None:
        self.paths = paths
        self.store: BlobStore = store or FilesystemBlobStore(paths)
        self.max_manifest_bytes = max_manifest_bytes
        # Protected tags (released, immutable) neither move nor vanish through this facade.
        self.protection = TagProtection()
        # Writes that would take a project past its storage limit are refused (registry.quotas).
        self.quota = ProjectQuota()

    @property
    def db(self) -> Database:
        return open_database(self.paths)

    # -- repositories -------------------------------------------------------

    def repository_id(self, name: str) -> int | None:
        row = self.db.execute("SELECT id FROM repositories WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

    def ensure_repository(self, db: Database, name: str) -> int:
        """The id of repository `name`, created if new. Call inside a transaction."""
        validate_name(name)
        row = db.execute("SELECT id FROM repositories WHERE name = ?", [name]).fetchone()
        if row:
            return int(row[0])
        return insert_id(db, "INSERT INTO repositories (name, created_at) VALUES (?, ?)", [name, time.time()])

    def catalog(self, n: int | None = None, last: str | None = None) -> Page:
        """Repository names in lexical order after `last`, at most `n`."""
        return self._page("SELECT name FROM repositories WHERE name > ? ORDER BY name", [], n, last)

    def _page(self, sql: str, params: list[object], n: int | None, last: str | None) -> Page:
        limit = "" if n is None else f" LIMIT {int(n) + 1}"
        rows = [r[0] for r in self.db.execute(f"{sql}{limit}", [*params, last or ""]).fetchall()]
        if n is not None and len(rows) > n:
            return Page(rows[:n], True)
        return Page(rows, False)

    # -- blobs ----------------------------------------------------------------

    def register_blob(self, db: Database, info: BlobInfo) -> None:
        """Record a stored blob (idempotent). Call inside a transaction.

        Raises BLOB_UNKNOWN when the file is not in the store: garbage
        collection removes unrecorded files under the same write lock, so
        checking here means no row ever points at a swept file.
        """
        if self.store.stat(info.digest) is None:
            raise RegistryError("BLOB_UNKNOWN", f"blob {info.digest} is not in the store (removed by garbage "
                                "collection meanwhile?); push or import it again", detail={"digest": str(info.digest)})
        db.execute("INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                   [str(info.digest), info.size, time.time()])

    def link_blob(self, name: str, info: BlobInfo) -> None:
        """Make a stored blob servable from repository `name` (idempotent); raises QuotaExceeded."""
        with write_transaction(self.db) as db:
            self.quota.require_repository(db, name, {str(info.digest): info.size})
            self.link(db, self.ensure_repository(db, name), info)

    def link(self, db: Database, repo_id: int, info: BlobInfo) -> None:
        """Register a stored blob and link it into a repository. Call inside a transaction."""
        self.register_blob(db, info)
        db.execute("INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (?, ?, ?) "
                   "ON CONFLICT (repository_id, digest) DO NOTHING", [repo_id, str(info.digest), time.time()])

    def blob(self, name: str, digest: Digest) -> BlobInfo:
        """A blob servable from `name`; raises BLOB_UNKNOWN otherwise."""
        row = self.db.execute(
            "SELECT b.size FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
            "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
            [name, str(digest)],
        ).fetchone()
        if row is None or self.store.stat(digest) is None:
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not known to repository {name}",
                                detail={"digest": str(digest)})
        return BlobInfo(digest, int(row[0]))

    def mount_blob(self, name: str, source: str, digest: Digest) -> BlobInfo | None:
        """Link a blob of repository `source` into `name`; None if `source` lacks it."""
        try:
            info = self.blob(source, digest)
        except RegistryError:
            return None
        self.link_blob(name, info)
        return info

    def unlink_blob(self, name: str, digest: Digest) -> None:
        """Remove a blob from a repository; raises BLOB_UNKNOWN if it was not there.

        The bytes stay on disk until garbage collection, since other
        repositories may share them.
        """
        with write_transaction(self.db) as db:
            repo_id = self.repository_id(name)
            self.protection.before_remove_content(db, repo_id, name, digest)
            cur = db.execute("DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?",
                             [repo_id, str(digest)])
            if cur.rowcount == 0:
                raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not known to repository {name}")

    # -- manifests --------------------------------------------------------------

    def put_manifest(self, name: str, reference: str, body: bytes, content_type: str | None) -> ParsedManifest:
        """Validate and store a manifest, tagging it if `reference` is a tag.

        Raises MANIFEST_INVALID, DIGEST_INVALID (digest reference does not
        match the body), MANIFEST_BLOB_UNKNOWN (a referenced blob or child
        manifest is missing from the repository), TAG_INVALID, NAME_INVALID,
        DENIED (412, `registry.protection.TagProtected`: the tag is protected
        and points elsewhere), DENIED (403, `registry.quotas.QuotaExceeded`:
        the project's storage limit). Nothing is changed when it raises.
        """
        validate_name(name)
        if len(body) > self.max_manifest_bytes:
            raise RegistryError("MANIFEST_INVALID", f"manifest is larger than the {self.max_manifest_bytes}-byte limit",
                                status=413)
        tag: str | None = None
        expected: Digest | None = None
        if is_digest_reference(reference):
            expected = Digest.parse(reference)
        else:
            tag = validate_tag(reference)
        digest = Digest.of_bytes(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise RegistryError("DIGEST_INVALID", f"manifest digest {digest} does not match the reference {expected}")
        parsed = parse_manifest(body, content_type, digest)
        cost = {str(digest): len(body)}
        self.quota.require_repository(self.db, name, cost)  # before the bytes are written: nothing to undo
        info = self.store.ingest_bytes(body, digest)
        with write_transaction(self.db) as db:
            self.quota.require_repository(db, name, cost)  # again under the write lock: concurrent pushes
            repo_id = self.ensure_repository(db, name)
            self.publish_manifest(db, repo_id, name, parsed, info)
            if tag is not None:
                self.protection.before_move(db, repo_id, name, tag, parsed.digest)
                self.set_tag(db, repo_id, tag, parsed.digest)
        return parsed

    def publish_manifest(self, db: Database, repo_id: int, name: str, parsed: ParsedManifest, info: BlobInfo) -> None:
        """Record a validated, stored manifest in a repository. Call inside a transaction.

        Raises MANIFEST_BLOB_UNKNOWN listing what the repository lacks, and
        MANIFEST_INVALID naming the first descriptor whose ``size`` is not the
        stored content's size (a client would otherwise be told to expect
        bytes the registry does not serve, and fail its own size check).
        """
        missing: list[str] = []
        wrong: list[dict[str, Any]] = []
        checks = [(d, "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
                      "WHERE rb.repository_id = ? AND rb.digest = ?") for d in parsed.required_blobs]
        checks += [(d, "SELECT size FROM manifests WHERE repository_id = ? AND digest = ?") for d in parsed.manifests]
        for descriptor, sql in checks:
            row = db.execute(sql, [repo_id, str(descriptor.digest)]).fetchone()
            if row is None:
                missing.append(str(descriptor.digest))
            elif row[0] is not None and int(row[0]) != descriptor.size:
                wrong.append({"digest": str(descriptor.digest), "size": descriptor.size, "stored": int(row[0])})
        if missing:
            raise RegistryError("MANIFEST_BLOB_UNKNOWN",
                                f"manifest references content not in repository {name}: {', '.join(missing)}",
                                detail={"missing": missing})
        if wrong:
            first = wrong[0]
            raise RegistryError("MANIFEST_INVALID",
                                f"descriptor {first['digest']} says size {first['size']}, but the stored content is "
                                f"{first['stored']} bytes (detail lists every such descriptor)",
                                detail={"sizeMismatch": wrong})
        now = time.time()
        self.link(db, repo_id, info)
        db.execute(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, size, "
            "annotations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repository_id, digest) DO UPDATE "
            "SET media_type = excluded.media_type, artifact_type = excluded.artifact_type, subject = excluded.subject, "
            "size = excluded.size, annotations = excluded.annotations, created_at = excluded.created_at",
            [repo_id, str(parsed.digest), parsed.media_type, referrer_artifact_type(parsed),
             str(parsed.subject.digest) if parsed.subject else None, parsed.size,
             json.dumps(parsed.annotations) if parsed.annotations else None, now],
        )
        db.execute("DELETE FROM manifest_refs WHERE repository_id = ? AND manifest = ?", [repo_id, str(parsed.digest)])
        blobs = ((parsed.config,) if parsed.config else ()) + parsed.layers
        refs: list[tuple[Descriptor, str]] = [(d, "blob") for d in blobs]
        refs += [(d, "manifest") for d in parsed.manifests]
        if refs:
            db.executemany(
                "INSERT INTO manifest_refs "
                "(repository_id, manifest, child, kind, media_type, size, platform) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repository_id, manifest, child) DO NOTHING",
                [(repo_id, str(parsed.digest), str(d.digest), kind, d.media_type, d.size,
                  json.dumps(d.platform, sort_keys=True) if d.platform else None) for d, kind in refs],
            )

    def set_tag(self, db: Database, repo_id: int, tag: str, digest: Digest) -> None:
        """Point `tag` at a manifest of the repository. Call inside a transaction."""
        db.execute("INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, "
                   "updated_at = excluded.updated_at", [repo_id, tag, str(digest), time.time()])

    def resolve(self, name: str, reference: str) -> ManifestRecord:
        """The manifest a tag or digest names; raises MANIFEST_UNKNOWN (or NAME_UNKNOWN)."""
        if is_digest_reference(reference):
            digest = Digest.parse(reference)
            row = self.db.execute(
                "SELECT m.digest, m.media_type, m.size, m.subject FROM manifests m JOIN repositories r "
                "ON r.id = m.repository_id WHERE r.name = ? AND m.digest = ?", [name, str(digest)]).fetchone()
        else:
            validate_tag(reference)
            row = self.db.execute(
                "SELECT m.digest, m.media_type, m.size, m.subject FROM tags t "
                "JOIN repositories r ON r.id = t.repository_id "
                "JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest "
                "WHERE r.name = ? AND t.name = ?", [name, reference]).fetchone()
        if row is None:
            if self.repository_id(name) is None:
                raise RegistryError("NAME_UNKNOWN", f"repository {name} is not known to this registry",
                                    detail={"name": name})
            raise RegistryError("MANIFEST_UNKNOWN", f"manifest {reference} is not known to repository {name}",
                                detail={"name": name, "reference": reference})
        return ManifestRecord(name, Digest.parse(row[0]), row[1], int(row[2]), Digest.parse(row[3]) if row[3] else None)

    def manifest_bytes(self, record: ManifestRecord) -> bytes:
        """The stored bytes of a manifest (small: capped at push); cached per process (registry.manifest_cache)."""
        cached = MANIFESTS.get(record.digest)
        if cached is not None:
            return cached
        with self.store.open(record.digest) as f:
            data = f.read(self.max_manifest_bytes + 1)
        MANIFESTS.put(record.digest, data)
        return data

    def manifest_children(self, name: str, digest: Digest) -> list[tuple[Digest, str, dict[str, object] | None]]:
        """(digest, media type, platform) of an index's child manifests."""
        rows = self.db.execute(
            "SELECT f.child, f.media_type, f.platform FROM manifest_refs f "
            "JOIN repositories r ON r.id = f.repository_id "
            "WHERE r.name = ? AND f.manifest = ? AND f.kind = 'manifest'", [name, str(digest)]).fetchall()
        return [(Digest.parse(c), mt, json.loads(p) if p else None) for c, mt, p in rows]

    def delete_manifest(self, name: str, digest: Digest) -> None:
        """Delete a manifest and every tag pointing at it; raises MANIFEST_UNKNOWN.

        The repository also stops holding the blobs (layers, config) that
        only this manifest used there, as Harbor drops a deleted artifact's
        blob associations: the project's quota usage goes down at once, not
        at the next garbage collection. The bytes stay until the collection.
        Raises DENIED (412) when a protected tag needs the manifest (`registry.protection`).
        """
        with write_transaction(self.db) as db:
            repo_id = self.repository_id(name)
            self.protection.before_remove_content(db, repo_id, name, digest)
            blobs = [r[0] for r in db.execute("SELECT child FROM manifest_refs WHERE repository_id = ? AND "
                                              "manifest = ? AND kind = 'blob'", [repo_id, str(digest)])]
            cur = db.execute("DELETE FROM manifests WHERE repository_id = ? AND digest = ?", [repo_id, str(digest)])
            if cur.rowcount == 0:
                raise RegistryError("MANIFEST_UNKNOWN", f"manifest {digest} is not known to repository {name}")
            db.execute("DELETE FROM tags WHERE repository_id = ? AND digest = ?", [repo_id, str(digest)])
            db.execute("DELETE FROM manifest_refs WHERE repository_id = ? AND manifest = ?", [repo_id, str(digest)])
            db.execute("DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?", [repo_id, str(digest)])
            for blob in blobs:
                db.execute("DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ? AND NOT EXISTS "
                           "(SELECT 1 FROM manifest_refs WHERE repository_id = ? AND child = ?) AND NOT EXISTS "
                           "(SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?)",
                           [repo_id, blob, repo_id, blob, repo_id, blob])

    def delete_tag(self, name: str, tag: str) -> None:
        """Delete one tag, keeping its manifest; raises MANIFEST_UNKNOWN, or DENIED (412) if it is protected."""
        validate_tag(tag)
        with write_transaction(self.db) as db:
            self.protection.before_remove_tags(db, name, [tag])
            cur = db.execute("DELETE FROM tags WHERE repository_id = ? AND name = ?", [self.repository_id(name), tag])
            if cur.rowcount == 0:
                raise RegistryError("MANIFEST_UNKNOWN", f"tag {tag} is not known to repository {name}")

    def tags(self, name: str, n: int | None = None, last: str | None = None) -> Page:
        """Tags of a repository in lexical order; raises NAME_UNKNOWN."""
        repo_id = self.repository_id(name)
        if repo_id is None:
            raise RegistryError("NAME_UNKNOWN", f"repository {name} is not known to this registry",
                                detail={"name": name})
        return self._page("SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name",
                          [repo_id], n, last)

    def referrers(self, name: str, subject: Digest, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests of `name` whose subject is `subject`, optionally of one artifactType."""
        sql = ("SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m "
               "JOIN repositories r ON r.id = m.repository_id WHERE r.name = ? AND m.subject = ?")
        params: list[object] = [name, str(subject)]
        if artifact_type is not None:
            sql += " AND m.artifact_type = ?"
            params.append(artifact_type)
        rows = self.db.execute(sql + " ORDER BY m.created_at, m.digest", params).fetchall()
        return [Descriptor(mt, Digest.parse(d), int(size), at, json.loads(ann) if ann else None)
                for d, mt, size, at, ann in rows]

    def blob_path(self, digest: Digest) -> Path | None:
        """The local file of a blob, for sendfile; None for a remote backend."""
        return self.store.local_path(digest)
