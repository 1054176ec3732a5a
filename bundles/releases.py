"""Releases: every imported bundle, staged, diffed, checked, promoted, rolled back, retained.

A release is what one bundle import brought: name, version, source file,
signing key id, its images (local repository, tag, manifest digest), its
cluster definitions and the charts and definition archives it carried.

The staging rule, applied by `bundles.importer.publish` through
`tag_plan`: a tag that does not exist yet is published at import (nothing
can be running from a tag that did not exist, and a first install needs
no extra step); a tag that exists and points elsewhere is NOT moved: the
release records it as pending and it moves only at promotion. Cluster
definitions follow the same rule: a new name is stored at import, an
existing name is replaced only at promotion.

Promotion checks the release's cluster definitions against the content as
it will be once the release's tags are in place (`bundles.check` with
overrides), refuses when not ready unless forced with a reason (recorded),
then in ONE transaction points every tag of the release at its digests,
marks the previously promoted release superseded, stores the release's
definitions and writes the audit entry. Rollback, in one transaction,
points the previous release's tags back, marks the current one
rolled-back and the previous one promoted again. Tags that only the
rolled-back release introduced stay: no earlier release claims them, and
removing a tag can break a pull that already depends on it.

Discard (`discard`), in one transaction: a staged, superseded or rolled-back
release that will not be promoted (again) loses its image, definition and
file rows and keeps its ``releases`` row with state ``discarded`` (history:
the list still shows it; who discarded it, when and why is in the audit
log). Its content is then no longer a retention root. Refused for the
promoted release and for the release a rollback would restore (the
promoted one's `previous_id`). Tags and cluster definitions the release
published at import (new names) stay: they may already be pulled or
running, and the garbage collector keeps content while it is tagged.
Importing the same bundle again stages it again.

Every promotion, rollback and discard also appends a row to
``release_events`` in its own transaction: `events` lists them by their
sequence number, the ordered history a follower appliance replays
(`bundles.follow`). A followed promotion (`promote(..., followed=...)`)
records the primary's decision as made there (its forced flag and reason)
and skips the readiness check the primary already ran.

Retention (`retained`): the promoted release and the N-1 releases promoted
most recently before it, plus every staged release (waiting for promotion);
discarded releases hold nothing and take no place in it.
With no promoted release at all, every release is kept. Content outside
bundles (pushed with a client) is kept by the garbage collector while it is
tagged, whatever the retention.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from typing import Any

from bundles.check import check_definition
from bundles.clusterdef import ClusterDefinition, ClusterDefinitions
from registry.audit import AuditLog
from registry.db import open_database, write_transaction
from registry.dbengine import Database, insert_id, placeholders
from registry.digest import Digest
from registry.diskuse import disk_areas
from registry.gc import GcRoots, RootsFn
from registry.inventory import Inventory
from registry.model import Registry
from registry.names import MappingRule
from registry.numbers import is_ascii_number

STATES = ("staged", "promoted", "superseded", "rolled-back", "discarded")


class ReleaseError(Exception):
    """A release operation was refused; `status` is the HTTP status it maps to, the message says why."""

    def __init__(self, message: str, status: int = 409, code: str = "CONFLICT",
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ReleaseInfo:
    """What an import knows about the bundle it is publishing."""

    name: str
    version: str
    bundle: str
    bundle_digest: str | None = None
    key_id: str | None = None
    bytes_written: int = 0


@dataclass(frozen=True)
class ReleaseImage:
    """One image of a release."""

    reference: str
    repository: str
    tag: str | None
    digest: str
    media_type: str
    pending: bool

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "repository": self.repository, "tag": self.tag,
                "digest": self.digest, "mediaType": self.media_type, "pending": self.pending}


@dataclass(frozen=True)
class Release:
    """A release as recorded."""

    id: int
    name: str
    version: str
    bundle: str
    bundle_digest: str | None
    key_id: str | None
    imported_at: float
    state: str
    promoted_at: float | None
    promoted_by: str | None
    previous_id: int | None
    forced: bool
    reason: str | None
    bytes_written: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "bundle": self.bundle,
                "bundleDigest": self.bundle_digest, "keyId": self.key_id, "importedAt": self.imported_at,
                "state": self.state, "promotedAt": self.promoted_at, "promotedBy": self.promoted_by,
                "previousId": self.previous_id, "forced": self.forced, "reason": self.reason,
                "bytesWritten": self.bytes_written}


_COLUMNS = ("id, name, version, bundle, bundle_digest, key_id, imported_at, state, promoted_at, promoted_by, "
            "previous_id, forced, reason, bytes_written")


def _release(row: Any) -> Release:
    (rid, name, version, bundle, bdigest, key_id, imported_at, state, promoted_at, promoted_by, previous_id,
     forced, reason, written) = row
    return Release(int(rid), name, version or "", bundle or "", bdigest, key_id, float(imported_at), state,
                   promoted_at, promoted_by, previous_id, bool(forced), reason, int(written or 0))


# -- recording at import (inside publish's transaction) ---------------------------------------------------------


def tag_plan(db: Database, repo_id: int, tags: dict[str, Digest]) -> tuple[dict[str, Digest], set[str]]:
    """Split a repository's tags into (publish now, pending): the staging rule of this module's docstring."""
    now: dict[str, Digest] = {}
    pending: set[str] = set()
    for tag, digest in tags.items():
        row = db.execute("SELECT digest FROM tags WHERE repository_id = ? AND name = ?", [repo_id, tag]).fetchone()
        if row is not None and row[0] != str(digest):
            pending.add(tag)
        else:
            now[tag] = digest
    return now, pending


def definition_is_new(db: Database, name: str) -> bool:
    return db.execute("SELECT 1 FROM cluster_definitions WHERE name = ?", [name]).fetchone() is None


def record_release(db: Database, info: ReleaseInfo, images: list[tuple[str, str, str | None, str, str, bool]],
                   definitions: list[ClusterDefinition], files: list[tuple[str, str, int]]) -> int:
    """Record a release (inside the import's transaction); returns its id.

    `images` holds (reference, repository, tag, digest, media type, pending);
    `files` (bundle path, digest, size). Importing the same bundle again
    (same bundle manifest digest) updates that release instead of adding one.
    """
    release_id: int | None = None
    if info.bundle_digest:
        row = db.execute("SELECT id FROM releases WHERE bundle_digest = ? ORDER BY id DESC LIMIT 1",
                         [info.bundle_digest]).fetchone()
        release_id = int(row[0]) if row else None
    if release_id is None:
        release_id = insert_id(db, "INSERT INTO releases (name, version, bundle, bundle_digest, key_id, "
                               "imported_at, state, forced, bytes_written) VALUES (?, ?, ?, ?, ?, ?, 'staged', 0, ?)",
                               [info.name, info.version, info.bundle, info.bundle_digest, info.key_id, time.time(),
                                info.bytes_written])
    else:
        # A discarded release imported again is staged again (its rows are written back below).
        db.execute("UPDATE releases SET bundle = ?, key_id = ?, state = CASE state WHEN 'discarded' THEN 'staged' "
                   "ELSE state END WHERE id = ?", [info.bundle, info.key_id, release_id])
        for table in ("release_images", "release_definitions", "release_files"):
            db.execute(f"DELETE FROM {table} WHERE release_id = ?", [release_id])
    # The rows of this release were deleted above (or it is new): plain inserts; a reference or name twice in
    # the lists keeps the last, as the rows did before.
    db.executemany(
        "INSERT INTO release_images (release_id, reference, repository, tag, digest, media_type, pending) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (release_id, reference) DO UPDATE SET repository = "
        "excluded.repository, tag = excluded.tag, digest = excluded.digest, media_type = excluded.media_type, "
        "pending = excluded.pending",
        [(release_id, ref, repo, tag, digest, mt, int(pending)) for ref, repo, tag, digest, mt, pending in images])
    db.executemany(
        "INSERT INTO release_definitions (release_id, name, version, digest, document) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (release_id, name) DO UPDATE SET version = excluded.version, digest = excluded.digest, "
        "document = excluded.document",
        [(release_id, d.name, d.version, d.digest, json.dumps(d.to_json())) for d in definitions])
    db.executemany("INSERT INTO release_files (release_id, path, digest, size) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (release_id, path) DO UPDATE SET digest = excluded.digest, size = excluded.size",
                   [(release_id, p, d, s) for p, d, s in files])
    return release_id


# -- the store -----------------------------------------------------------------------------------------------------


class Releases:
    """Releases of one data directory, and what can be done with them."""

    def __init__(self, registry: Registry, project: str, rules: tuple[MappingRule, ...] = (),
                 audit: AuditLog | None = None) -> None:
        self.registry = registry
        self.paths = registry.paths
        self.project = project
        self.rules = rules
        self.audit = audit or AuditLog(registry)
        self.definitions = ClusterDefinitions(self.paths)  # also applies the bundles migrations

    @property
    def db(self) -> Database:
        return open_database(self.paths)

    # -- reading

    def all(self) -> list[Release]:
        return [_release(r) for r in self.db.execute(f"SELECT {_COLUMNS} FROM releases ORDER BY id")]

    def get(self, release_id: int | str) -> Release:
        """The release `release_id` (an id, or ``promoted``/``latest``); raises ReleaseError(404)."""
        db = self.db
        if release_id == "promoted":
            row = db.execute(f"SELECT {_COLUMNS} FROM releases WHERE state = 'promoted'").fetchone()
        elif release_id == "latest":
            row = db.execute(f"SELECT {_COLUMNS} FROM releases ORDER BY id DESC LIMIT 1").fetchone()
        else:
            text = str(release_id)
            if not (text.isascii() and text.isdigit()):  # int() takes " 3", "+3" and "٣"
                raise ReleaseError(f"release {text[:40]!r} is not a release id (a number, 'promoted' or "
                                   "'latest')", 400, "BAD_REQUEST")
            # A number past SQLite's INTEGER names no release (and would overflow the query).
            row = (db.execute(f"SELECT {_COLUMNS} FROM releases WHERE id = ?", [int(text)]).fetchone()
                   if is_ascii_number(text) else None)
        if row is None:
            raise ReleaseError(f"no release {str(release_id)[:40]}", 404, "NOT_FOUND")
        return _release(row)

    def promoted(self) -> Release | None:
        try:
            return self.get("promoted")
        except ReleaseError:
            return None

    def images(self, release_id: int) -> list[ReleaseImage]:
        return [ReleaseImage(ref, repo, tag, digest, mt or "", bool(pending)) for ref, repo, tag, digest, mt, pending
                in self.db.execute("SELECT reference, repository, tag, digest, media_type, pending FROM "
                                   "release_images WHERE release_id = ? ORDER BY repository, tag, reference",
                                   [release_id])]

    def release_definitions(self, release_id: int) -> list[ClusterDefinition]:
        return [ClusterDefinition.from_json(json.loads(doc)) for (doc,) in self.db.execute(
            "SELECT document FROM release_definitions WHERE release_id = ? ORDER BY name", [release_id])]

    def pending(self, release_id: int) -> list[ReleaseImage]:
        """The release's tags that do not point at its digests right now."""
        db = self.db
        out = []
        for image in self.images(release_id):
            if image.tag is None:
                continue
            row = db.execute("SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                             "WHERE r.name = ? AND t.name = ?", [image.repository, image.tag]).fetchone()
            if row is None or row[0] != image.digest:
                out.append(image)
        return out

    def show(self, release_id: int | str) -> dict[str, Any]:
        release = self.get(release_id)
        usage = self.usage().get(release.id, {"bytes": 0, "uniqueBytes": 0, "blobs": 0})
        pending = {(i.repository, i.tag) for i in self.pending(release.id)}
        return {**release.to_json(), "usage": usage,
                "images": [{**i.to_json(), "pending": (i.repository, i.tag) in pending}
                           for i in self.images(release.id)],
                "clusterDefinitions": [d.summary() for d in self.release_definitions(release.id)],
                "files": [{"path": p, "digest": d, "size": s} for p, d, s in self.db.execute(
                    "SELECT path, digest, size FROM release_files WHERE release_id = ? ORDER BY path", [release.id])]}

    # -- content and disk

    def _closure(self, db: Database, release_id: int) -> dict[str, int]:
        """digest -> size of every manifest and blob the release's images reach, plus its files (as stored now)."""
        rows = db.execute(
            "WITH RECURSIVE c(rid, d) AS ("
            " SELECT r.id, ri.digest FROM release_images ri JOIN repositories r ON r.name = ri.repository"
            " WHERE ri.release_id = ?"
            " UNION SELECT f.repository_id, f.child FROM manifest_refs f JOIN c"
            " ON f.repository_id = c.rid AND f.manifest = c.d)"
            " SELECT DISTINCT c.d, b.size FROM c JOIN blobs b ON b.digest = c.d", [release_id]).fetchall()
        out = {d: int(size or 0) for d, size in rows}
        for d, size in db.execute("SELECT rf.digest, b.size FROM release_files rf JOIN blobs b ON b.digest = rf.digest "
                                  "WHERE rf.release_id = ?", [release_id]):
            out[d] = int(size or 0)
        return out

    def usage(self) -> dict[int, dict[str, int]]:
        """release id -> {bytes, uniqueBytes (used by no other release), blobs}."""
        db = self.db
        closures = {r.id: self._closure(db, r.id) for r in self.all()}
        users: dict[str, int] = {}
        for c in closures.values():
            for d in c:
                users[d] = users.get(d, 0) + 1
        return {rid: {"bytes": sum(c.values()), "uniqueBytes": sum(s for d, s in c.items() if users[d] == 1),
                      "blobs": len(c)} for rid, c in closures.items()}

    def disk(self) -> dict[str, Any]:
        """Free space on the data volume, what the store holds, every area of the data directory, usage per release."""
        total, used, free = shutil.disk_usage(self.paths.root)
        db = self.db
        stored = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
        usage = self.usage()
        return {"dataDir": str(self.paths.root),
                "volume": {"total": total, "used": used, "free": free},
                "store": {"blobs": int(stored[0]), "bytes": int(stored[1])},
                "areas": [{"name": a.name, "bytes": a.size} for a in disk_areas(self.paths)],
                "releases": [{"id": r.id, "name": r.name, "version": r.version, "state": r.state,
                              **usage.get(r.id, {"bytes": 0, "uniqueBytes": 0, "blobs": 0})} for r in self.all()]}

    # -- diff

    def diff(self, old_id: int | str, new_id: int | str) -> dict[str, Any]:
        """What changes from release `old_id` to `new_id`: images, bytes new on disk, cluster definitions."""
        old, new = self.get(old_id), self.get(new_id)

        def key(i: ReleaseImage) -> tuple[str, str]:
            return (i.repository, i.tag if i.tag is not None else f"@{i.digest}")

        a = {key(i): i for i in self.images(old.id)}
        b = {key(i): i for i in self.images(new.id)}
        added = [b[k].to_json() for k in sorted(b.keys() - a.keys())]
        removed = [a[k].to_json() for k in sorted(a.keys() - b.keys())]
        changed = [{"repository": k[0], "tag": b[k].tag, "reference": b[k].reference, "from": a[k].digest,
                    "to": b[k].digest} for k in sorted(a.keys() & b.keys()) if a[k].digest != b[k].digest]
        unchanged = sum(1 for k in a.keys() & b.keys() if a[k].digest == b[k].digest)
        db = self.db
        ca, cb = self._closure(db, old.id), self._closure(db, new.id)
        new_blobs = {d: s for d, s in cb.items() if d not in ca}
        return {"from": old.to_json(), "to": new.to_json(),
                "images": {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged},
                "bytes": {"new": sum(new_blobs.values()), "newBlobs": len(new_blobs),
                          "released": sum(s for d, s in ca.items() if d not in cb),
                          "from": sum(ca.values()), "to": sum(cb.values())},
                "clusterDefinitions": diff_definitions(self.release_definitions(old.id),
                                                       self.release_definitions(new.id))}

    # -- check, promote, roll back

    def overrides(self, release_id: int) -> dict[tuple[str, str], str]:
        return {(i.repository, i.tag): i.digest for i in self.images(release_id) if i.tag is not None}

    def check(self, release_id: int | str) -> dict[str, Any]:
        """Readiness of the release's cluster definitions as they will be once its tags are promoted."""
        release = self.get(release_id)
        overrides = self.overrides(release.id)
        results = [check_definition(d, Inventory(self.registry.db), self.registry.store, self.project, self.rules,
                                    overrides=overrides) for d in self.release_definitions(release.id)]
        return {"release": release.id, "ready": all(r["ready"] for r in results), "definitions": results}

    def _require_content(self, db: Database, release: Release) -> None:
        missing = []
        for i in self.images(release.id):
            row = db.execute("SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                             "WHERE r.name = ? AND m.digest = ?", [i.repository, i.digest]).fetchone()
            if row is None:
                missing.append(f"{i.repository}@{i.digest}")
        if missing:
            raise ReleaseError(f"release {release.id} ({release.name} {release.version}) no longer has its content "
                               f"(garbage-collected outside the retention): {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}; import its bundle again", 409,
                               "CONTENT_MISSING", {"missing": missing})

    def _apply_tags(self, db: Database, release_id: int) -> int:
        moved = 0
        for i in self.images(release_id):
            if i.tag is None:
                continue
            repo_id = self.registry.ensure_repository(db, i.repository)
            row = db.execute("SELECT digest FROM tags WHERE repository_id = ? AND name = ?",
                             [repo_id, i.tag]).fetchone()
            if row is None or row[0] != i.digest:
                self.registry.set_tag(db, repo_id, i.tag, Digest.parse(i.digest))
                moved += 1
        return moved

    def _store_definitions(self, release_id: int) -> None:
        for d in self.release_definitions(release_id):
            self.definitions.put(d)

    def promote(self, release_id: int | str, username: str, source_ip: str = "", force: bool = False,
                reason: str | None = None, followed: str | None = None) -> dict[str, Any]:
        """Check, then point every tag of the release at its digests in one transaction; returns the outcome.

        Raises ReleaseError: not found, already promoted, content gone, check
        failed (unless `force`, which needs a `reason`). `followed` names the
        primary whose promotion this replays (`bundles.follow`): no readiness
        check (the primary ran it), `force` and `reason` are the primary's.
        """
        release = self.get(release_id)
        if release.state == "promoted":
            raise ReleaseError(f"release {release.id} ({release.name} {release.version}) is already promoted")
        if release.state == "discarded":
            raise ReleaseError(f"release {release.id} ({release.name} {release.version}) was discarded; import its "
                               "bundle again to promote it", 409, "DISCARDED")
        if force and not (reason or "").strip() and followed is None:
            raise ReleaseError("a forced promotion needs a reason (--reason)", 400, "BAD_REQUEST")
        if followed is not None:
            check: dict[str, Any] = {"release": release.id, "ready": not force, "definitions": []}
        else:
            check = self.check(release.id)
        if not check["ready"] and not force:
            not_ready = [f"{r['definition']}: {sum(v for k, v in r['counts'].items() if k != 'present')} "
                         f"image(s) not present" for r in check["definitions"] if not r["ready"]]
            raise ReleaseError(f"release {release.id} is not ready, promotion refused ({'; '.join(not_ready)}); "
                               "fix the content or promote with --force and a reason", 409, "NOT_READY",
                               {"check": check})
        for result in check["definitions"]:
            self.definitions.record_check(result)
        with write_transaction(self.registry.db) as db:
            # A discard may have run since `get`: its records are gone, so promoting it would move nothing.
            if db.execute("SELECT state FROM releases WHERE id = ?", [release.id]).fetchone()[0] == "discarded":
                raise ReleaseError(f"release {release.id} ({release.name} {release.version}) was discarded; import "
                                   "its bundle again to promote it", 409, "DISCARDED")
            self._require_content(db, release)
            previous = db.execute("SELECT id FROM releases WHERE state = 'promoted'").fetchone()
            moved = self._apply_tags(db, release.id)
            if previous is not None:
                db.execute("UPDATE releases SET state = 'superseded' WHERE id = ?", [previous[0]])
            db.execute("UPDATE releases SET state = 'promoted', promoted_at = ?, promoted_by = ?, previous_id = ?, "
                       "forced = ?, reason = ? WHERE id = ?",
                       [time.time(), username, previous[0] if previous else None, int(force and not check["ready"]),
                        reason if force else None, release.id])
            self._store_definitions(release.id)
            forced = bool(force and not check["ready"])
            note = f" (forced: {reason})" if forced else ""
            if followed is not None:
                note += f" (as promoted on {followed})"
            self.audit.record(username, "update", "release",
                              f"promote release {release.id} {release.name} {release.version}{note}", source_ip, db=db)
            _event(db, "promote", release.id, previous[0] if previous else None, username, forced,
                   reason if forced else None)
        return {"release": self.get(release.id).to_json(), "tagsMoved": moved, "ready": check["ready"],
                "forced": bool(force and not check["ready"]), "previous": previous[0] if previous else None}

    def rollback(self, username: str, source_ip: str = "") -> dict[str, Any]:
        """Put the previously promoted release's tags back in one transaction; returns the outcome.

        Raises ReleaseError when nothing is promoted or there is no earlier
        release to return to, or its content was collected.
        """
        current = self.promoted()
        if current is None:
            raise ReleaseError("no release is promoted: nothing to roll back")
        if current.previous_id is None:
            raise ReleaseError(f"release {current.id} was promoted with no release before it: nothing to roll "
                               "back to")
        target = self.get(current.previous_id)
        if target.state == "discarded":
            raise ReleaseError(f"release {target.id} ({target.name} {target.version}), which release {current.id} "
                               "replaced, was discarded: nothing to roll back to", 409, "DISCARDED")
        with write_transaction(self.registry.db) as db:
            if db.execute("SELECT state FROM releases WHERE id = ?", [target.id]).fetchone()[0] == "discarded":
                raise ReleaseError(f"release {target.id} ({target.name} {target.version}), which release "
                                   f"{current.id} replaced, was discarded: nothing to roll back to", 409, "DISCARDED")
            self._require_content(db, target)
            moved = self._apply_tags(db, target.id)
            db.execute("UPDATE releases SET state = 'rolled-back' WHERE id = ?", [current.id])
            db.execute("UPDATE releases SET state = 'promoted', promoted_at = ?, promoted_by = ? WHERE id = ?",
                       [time.time(), username, target.id])
            self._store_definitions(target.id)
            self.audit.record(username, "update", "release",
                              f"roll back release {current.id} {current.name} {current.version} to release "
                              f"{target.id} {target.name} {target.version}", source_ip, db=db)
            _event(db, "rollback", target.id, current.id, username)
        return {"rolledBack": self.get(current.id).to_json(), "release": self.get(target.id).to_json(),
                "tagsMoved": moved}

    # -- discard

    def discard(self, release_id: int | str, username: str, source_ip: str = "",
                reason: str | None = None) -> dict[str, Any]:
        """Drop a release that will not be promoted from the retention, in one transaction; returns the outcome.

        Raises ReleaseError: not found, already discarded, the promoted
        release, or the release a rollback would restore. Tags and cluster
        definitions it published at import stay (see the module docstring).
        """
        if reason is not None and len(reason) > 500:
            raise ReleaseError("the reason may be at most 500 characters", 400, "BAD_REQUEST")
        reason = (reason or "").strip() or None
        release = self.get(release_id)
        with write_transaction(self.registry.db) as db:
            # Re-read inside the write lock: a promotion or rollback may have run since `get`.
            row = db.execute(f"SELECT {_COLUMNS} FROM releases WHERE id = ?", [release.id]).fetchone()
            release = _release(row)
            what = f"release {release.id} ({release.name} {release.version})"
            if release.state == "discarded":
                raise ReleaseError(f"{what} is already discarded", 409, "DISCARDED")
            if release.state == "promoted":
                raise ReleaseError(f"{what} is promoted and cannot be discarded: promote another release or roll "
                                   "back first", 409, "PROMOTED")
            current = db.execute("SELECT id, previous_id FROM releases WHERE state = 'promoted'").fetchone()
            if current is not None and current[1] == release.id:
                raise ReleaseError(f"{what} is what a rollback of release {current[0]} would restore and cannot be "
                                   "discarded", 409, "ROLLBACK_TARGET")
            images = int(db.execute("SELECT COUNT(*) FROM release_images WHERE release_id = ?",
                                    [release.id]).fetchone()[0])
            for table in ("release_images", "release_definitions", "release_files"):
                db.execute(f"DELETE FROM {table} WHERE release_id = ?", [release.id])
            db.execute("UPDATE releases SET state = 'discarded' WHERE id = ?", [release.id])
            self.audit.record(username, "delete", "release",
                              f"discard release {release.id} {release.name} {release.version} (was {release.state})"
                              + (f": {reason}" if reason else ""), source_ip, db=db)
            _event(db, "discard", release.id, None, username, reason=reason)
        return {"release": self.get(release.id).to_json(), "was": release.state, "imagesDropped": images,
                "reason": reason}

    # -- the ordered history a follower replays

    def events(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Promote, rollback and discard events with a sequence number above `after`, oldest first."""
        rows = self.db.execute("SELECT seq, action, release_id, other_id, username, at, forced, reason FROM "
                               "release_events WHERE seq > ? ORDER BY seq LIMIT ?", [after, limit]).fetchall()
        return [{"seq": seq, "action": action, "release": rid,
                 **({"previous": other} if action == "promote" else {}),
                 **({"rolledBack": other} if action == "rollback" else {}),
                 "by": username, "at": at, "forced": bool(forced), "reason": reason}
                for seq, action, rid, other, username, at, forced, reason in rows]

    def last_event(self) -> int:
        """The highest event sequence number (0: none yet)."""
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM release_events").fetchone()[0])

    def file_digest(self, release_id: int, digest: str) -> Digest | None:
        """`digest` if it is one of the release's files (charts, definition archives), else None."""
        row = self.db.execute("SELECT digest FROM release_files WHERE release_id = ? AND digest = ?",
                              [release_id, digest]).fetchone()
        return Digest.parse(row[0]) if row else None

    # -- retention and GC roots

    def retained(self, keep: int, db: Database | None = None) -> list[int]:
        """Ids of the releases a retention of `keep` keeps (see the module docstring)."""
        if keep < 1:
            raise ReleaseError("retention must keep at least 1 release", 400, "BAD_REQUEST")
        db = db or self.db
        rows = [_release(r) for r in db.execute(f"SELECT {_COLUMNS} FROM releases ORDER BY id")]
        current = next((r for r in rows if r.state == "promoted"), None)
        if current is None:
            return [r.id for r in rows]
        earlier = sorted((r for r in rows if r.promoted_at is not None and r.id != current.id
                          and r.state != "discarded"),
                         key=lambda r: r.promoted_at or 0, reverse=True)[:keep - 1]
        staged = [r for r in rows if r.state == "staged"]
        return sorted({current.id, *(r.id for r in earlier), *(r.id for r in staged)})

    def roots(self, keep: int, in_use: frozenset[str] = frozenset()) -> RootsFn:
        """The garbage collector's roots: kept releases' images and files, current definitions, `in_use` digests."""
        def read(db: Database) -> GcRoots:
            ids = self.retained(keep, db)
            marks = placeholders(len(ids)) or "NULL"  # a few releases: those kept
            manifests = frozenset((repo, d) for repo, d in db.execute(
                f"SELECT repository, digest FROM release_images WHERE release_id IN ({marks})", ids))
            blobs = {d for (d,) in db.execute(f"SELECT digest FROM release_files WHERE release_id IN ({marks})", ids)}
            blobs |= {d for (d,) in db.execute("SELECT digest FROM cluster_definitions") if d}
            return GcRoots(manifests, in_use, frozenset(blobs))
        return read


def _event(db: Database, action: str, release_id: int, other_id: int | None, username: str, forced: bool = False,
           reason: str | None = None) -> None:
    """Append one release event inside the transaction that makes the change (see the module docstring)."""
    db.execute("INSERT INTO release_events (action, release_id, other_id, username, at, forced, reason) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)", [action, release_id, other_id, username, time.time(), int(forced),
                                                reason])


# -- cluster definition differences ---------------------------------------------------------------------------------


def diff_definitions(old: list[ClusterDefinition], new: list[ClusterDefinition]) -> dict[str, Any]:
    """Definitions added/removed, and per definition kept: packs and variables added, removed, changed."""
    a = {d.name: d for d in old}
    b = {d.name: d for d in new}
    changed = []
    for name in sorted(a.keys() & b.keys()):
        da, db_ = a[name], b[name]
        pa = {(p.name, k.name): k for p in da.profiles for k in p.packs}
        pb = {(p.name, k.name): k for p in db_.profiles for k in p.packs}
        va = {(p.name, v.name): v for p in da.profiles for v in p.variables}
        vb = {(p.name, v.name): v for p in db_.profiles for v in p.variables}
        packs = {
            "added": [{"profile": k[0], "pack": k[1], "version": pb[k].version} for k in sorted(pb.keys() - pa.keys())],
            "removed": [{"profile": k[0], "pack": k[1], "version": pa[k].version}
                        for k in sorted(pa.keys() - pb.keys())],
            "changed": [{"profile": k[0], "pack": k[1], "from": pa[k].version, "to": pb[k].version}
                        for k in sorted(pa.keys() & pb.keys()) if pa[k].version != pb[k].version],
        }
        variables = {
            "added": [{"profile": k[0], "name": k[1], "default": vb[k].default, "required": vb[k].required}
                      for k in sorted(vb.keys() - va.keys())],
            "removed": [{"profile": k[0], "name": k[1]} for k in sorted(va.keys() - vb.keys())],
            "changed": [{"profile": k[0], "name": k[1], "from": va[k].default, "to": vb[k].default,
                         "requiredFrom": va[k].required, "requiredTo": vb[k].required}
                        for k in sorted(va.keys() & vb.keys())
                        if (va[k].default, va[k].required) != (vb[k].default, vb[k].required)],
        }
        if da.version != db_.version or any(packs.values()) or any(variables.values()):
            changed.append({"name": name, "from": da.version, "to": db_.version, "packs": packs,
                            "variables": variables})
    return {"added": [{"name": n, "version": b[n].version} for n in sorted(b.keys() - a.keys())],
            "removed": [{"name": n, "version": a[n].version} for n in sorted(a.keys() - b.keys())],
            "changed": changed}
