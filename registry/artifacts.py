"""Harbor's view of the registry: repositories with descriptions, artifacts with tags and accessories.

An artifact is a manifest of a repository. Listings show the top-level ones
only, as Harbor does: children of an index appear in the index's
``references``, and manifests with a subject appear as ``accessories`` of
their subject. Ids are SQLite rowids (stable until a manifest is re-pushed).
Writes go through `Registry` where it has a method; deleting a whole
repository is here because only Harbor's API does it.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any

from registry import quotas
from registry.access import AccessError, Projects
from registry.db import write_transaction
from registry.digest import Digest
from registry.errors import RegistryError
from registry.model import Registry
from registry.names import is_digest_reference, validate_tag

IMAGE_CONFIGS = {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
INDEXES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# How Harbor (Go's zero time.Time through strfmt.DateTime) writes a time that never happened: a pull time
# of an artifact nobody pulled. The appliance does not record pulls (edge hosts pull at every start).
NEVER = "0001-01-01T00:00:00.000Z"
# A config blob larger than this is not an image config anyone wrote by hand; extra_attrs stays empty.
MAX_CONFIG_BYTES = 1 << 20


@functools.lru_cache(maxsize=512)
def _image_attrs(registry: Registry, config_digest: str) -> tuple[tuple[str, Any], ...]:
    """Harbor's extra_attrs from an image config blob (content-addressed, so cached by digest)."""
    try:
        with registry.store.open(Digest.parse(config_digest)) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        config = json.loads(data) if len(data) <= MAX_CONFIG_BYTES else None
    except (OSError, ValueError, RegistryError):
        config = None
    if not isinstance(config, dict):
        return ()
    inner: dict[str, Any] = config["config"] if isinstance(config.get("config"), dict) else {}
    author = config["author"] if isinstance(config.get("author"), str) else ""
    labels: dict[str, Any] = inner["Labels"] if isinstance(inner.get("Labels"), dict) else {}
    if not author:  # as Harbor: the OCI authors annotation, then Docker's maintainer label
        author = next((str(labels[k]) for k in ("org.opencontainers.image.authors", "maintainer") if labels.get(k)), "")
    return (("architecture", str(config.get("architecture") or "")), ("os", str(config.get("os") or "")),
            ("author", author), ("created", config.get("created")), ("config", inner))


@functools.lru_cache(maxsize=2048)
def _described_bytes(registry: Registry, manifest_digest: str) -> int | None:
    """config.size plus every layers[].size of a stored manifest, as Harbor adds them (a layer listed twice
    counts twice); None if it cannot be read."""
    try:
        with registry.store.open(Digest.parse(manifest_digest)) as f:
            doc = json.loads(f.read(registry.max_manifest_bytes + 1))  # manifests are capped at push
        config = doc.get("config") or {}
        sizes = [config.get("size", 0), *(layer.get("size", 0) for layer in doc.get("layers") or [])]
        return sum(int(size) for size in sizes if isinstance(size, int) and not isinstance(size, bool))
    except (OSError, ValueError, AttributeError, RegistryError):
        return None


def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class Repository:
    id: int
    name: str
    project_id: int
    description: str
    artifact_count: int
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "project_id": self.project_id, "name": self.name, "description": self.description,
                "artifact_count": self.artifact_count, "pull_count": 0,
                "creation_time": rfc3339(self.created_at), "update_time": rfc3339(self.updated_at)}


_TOP_LEVEL = ("m.subject IS NULL AND NOT EXISTS (SELECT 1 FROM manifest_refs f WHERE f.repository_id = "
              "m.repository_id AND f.child = m.digest AND f.kind = 'manifest')")


class Artifacts:
    """Repositories and artifacts as Harbor's API shows them."""

    def __init__(self, registry: Registry, projects: Projects) -> None:
        from registry.labels import Labels  # registry.labels formats times with this module's rfc3339

        self.registry = registry
        self.projects = projects
        self.labels = Labels(registry)

    # -- repositories

    def _repositories(self, where: list[str], params: list[Any], offset: int, limit: int
                      ) -> tuple[int, list[Repository]]:
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        db = self.registry.db
        base = (" FROM repositories r JOIN projects p ON p.name = substr(r.name, 1, CASE WHEN instr(r.name, '/') > 0 "
                "THEN instr(r.name, '/') - 1 ELSE 0 END) "
                "LEFT JOIN repository_meta rm ON rm.name = r.name")
        total = int(db.execute(f"SELECT COUNT(*){base}{clause}", params).fetchone()[0])
        rows = db.execute(
            f"SELECT r.id, r.name, p.id, COALESCE(rm.description, ''), "
            f"(SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id AND {_TOP_LEVEL}), r.created_at, "
            f"COALESCE((SELECT MAX(m.created_at) FROM manifests m WHERE m.repository_id = r.id), r.created_at)"
            f"{base}{clause} ORDER BY r.name LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
        return total, [Repository(int(a), b, int(c), d, int(e), float(f), float(g)) for a, b, c, d, e, f, g in rows]

    def list_repositories(self, projects: list[str] | None, name: tuple[str, str] | None, offset: int, limit: int
                          ) -> tuple[int, list[Repository]]:
        """Repositories of the given projects (None: all), optionally filtered by ("exact"|"fuzzy", name)."""
        where: list[str] = []
        params: list[Any] = []
        if projects is not None:
            if not projects:
                return 0, []
            where.append(f"p.name IN ({','.join('?' * len(projects))})")
            params += projects
        if name is not None:
            if name[0] == "fuzzy":
                where.append("r.name LIKE ? ESCAPE '\\'")
                params.append(_like(name[1]))
            else:
                where.append("r.name = ?")
                params.append(name[1])
        return self._repositories(where, params, offset, limit)

    def repository(self, name: str) -> Repository:
        """One repository; raises RegistryError NAME_UNKNOWN."""
        _, found = self._repositories(["r.name = ?"], [name], 0, 1)
        if not found:
            raise RegistryError("NAME_UNKNOWN", f"repository {name} not found", detail={"name": name})
        return found[0]

    def set_description(self, name: str, description: str) -> None:
        self.repository(name)
        with write_transaction(self.registry.db) as db:
            db.execute("INSERT INTO repository_meta (name, description, updated_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET description = excluded.description, "
                       "updated_at = excluded.updated_at", [name, description, time.time()])

    def delete_repository(self, name: str) -> None:
        """Delete a repository with all its manifests and tags; its blobs stay until garbage collection."""
        with write_transaction(self.registry.db) as db:
            row = db.execute("SELECT id FROM repositories WHERE name = ?", [name]).fetchone()
            if row is None:
                raise RegistryError("NAME_UNKNOWN", f"repository {name} not found", detail={"name": name})
            repo_id = row[0]
            self.registry.protection.before_remove_repository(db, repo_id, name)
            for table in ("tags", "manifest_refs", "manifests", "repository_blobs"):
                db.execute(f"DELETE FROM {table} WHERE repository_id = ?", [repo_id])
            db.execute("DELETE FROM repository_meta WHERE name = ?", [name])
            db.execute("DELETE FROM repositories WHERE id = ?", [repo_id])

    # -- artifacts

    def _artifact_rows(self, repo_id: int, extra: str, params: list[Any], offset: int, limit: int
                       ) -> tuple[int, list[Any]]:
        db = self.registry.db
        where = f"m.repository_id = ? {extra}"
        total = int(db.execute(f"SELECT COUNT(*) FROM manifests m WHERE {where}", [repo_id, *params]).fetchone()[0])
        rows = db.execute(
            f"SELECT m.rowid, m.digest, m.media_type, m.artifact_type, m.size, m.annotations, m.created_at, "
            f"m.subject FROM manifests m WHERE {where} ORDER BY m.created_at DESC, m.digest LIMIT ? OFFSET ?",
            [repo_id, *params, limit, offset]).fetchall()
        return total, rows

    def list_artifacts(self, repository: Repository, filters: dict[str, tuple[str, str]], offset: int, limit: int,
                       with_tag: bool, with_accessory: bool) -> tuple[int, list[dict[str, Any]]]:
        extra, params = f"AND {_TOP_LEVEL}", []
        for key, (kind, value) in filters.items():
            if key == "digest":
                extra += " AND m.digest = ?" if kind == "exact" else " AND m.digest LIKE ? ESCAPE '\\'"
                params.append(value if kind == "exact" else _like(value))
            elif key == "tags":
                op = "= ?" if kind == "exact" else "LIKE ? ESCAPE '\\'"
                extra += (f" AND EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id "
                          f"AND t.digest = m.digest AND t.name {op})")
                params.append(value if kind == "exact" else _like(value))
            else:
                raise AccessError("BAD_REQUEST", f"artifacts cannot be filtered by {key!r}: use digest or tags")
        total, rows = self._artifact_rows(repository.id, extra, params, offset, limit)
        return total, [self._artifact_json(repository, row, with_tag, with_accessory) for row in rows]

    def list_project_artifacts(self, project: str, filters: dict[str, tuple[str, str]], offset: int, limit: int,
                               with_tag: bool, with_accessory: bool, latest: bool = False
                               ) -> tuple[int, list[dict[str, Any]]]:
        """Top-level artifacts of every repository of `project`, newest first (Harbor's project artifact list).

        `filters`: digest, tags, repository_name ("exact"|"fuzzy"); `latest`
        keeps only each repository's most recently pushed artifact.
        """
        length, prefix = len(project) + 1, f"{project}/"
        where, params = [f"substr(r.name, 1, ?) = ? AND {_TOP_LEVEL}"], [length, prefix]
        for key, (kind, value) in filters.items():
            op = "= ?" if kind == "exact" else "LIKE ? ESCAPE '\\'"
            arg = value if kind == "exact" else _like(value)
            if key == "digest":
                where.append(f"m.digest {op}")
            elif key == "repository_name":
                where.append(f"r.name {op}")
                arg = (f"{prefix}{value}" if not value.startswith(prefix) else value) if kind == "exact" else arg
            elif key == "tags":
                where.append(f"EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id "
                             f"AND t.digest = m.digest AND t.name {op})")
            else:
                raise AccessError("BAD_REQUEST", f"artifacts cannot be filtered by {key!r}: use digest, tags or "
                                  "repository_name")
            params.append(arg)
        if latest:
            where.append("NOT EXISTS (SELECT 1 FROM manifests n WHERE n.repository_id = m.repository_id AND "
                         f"{_TOP_LEVEL.replace('m.', 'n.')} AND (n.created_at > m.created_at OR "
                         "(n.created_at = m.created_at AND n.digest < m.digest)))")
        clause = " AND ".join(where)
        db = self.registry.db
        base = f" FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE {clause}"
        total = int(db.execute(f"SELECT COUNT(*){base}", params).fetchone()[0])
        rows = db.execute(
            f"SELECT r.name, m.rowid, m.digest, m.media_type, m.artifact_type, m.size, m.annotations, m.created_at, "
            f"m.subject{base} ORDER BY m.created_at DESC, m.digest LIMIT ? OFFSET ?",
            [*params, limit, offset]).fetchall()
        repositories: dict[str, Repository] = {}
        out = []
        for name, *row in rows:
            if name not in repositories:
                repositories[name] = self.repository(name)
            out.append(self._artifact_json(repositories[name], row, with_tag, with_accessory))
        return total, out

    def resolve(self, repository: Repository, reference: str) -> Digest:
        """The digest a tag or digest reference names; raises RegistryError (MANIFEST_UNKNOWN, *_INVALID)."""
        if not is_digest_reference(reference):
            validate_tag(reference)
        return self.registry.resolve(repository.name, reference).digest

    def artifact(self, repository: Repository, reference: str, with_tag: bool = True,
                 with_accessory: bool = False) -> dict[str, Any]:
        digest = self.resolve(repository, reference)
        _, rows = self._artifact_rows(repository.id, "AND m.digest = ?", [str(digest)], 0, 1)
        if not rows:
            raise RegistryError("MANIFEST_UNKNOWN", f"artifact {reference} not found in {repository.name}")
        return self._artifact_json(repository, rows[0], with_tag, with_accessory)

    def _size(self, repository_id: int, digest: str, media_type: str, own: int, depth: int = 0) -> int:
        """Harbor's artifact size: the manifest, its config and layers; an index adds its children's sizes."""
        db = self.registry.db
        if media_type not in INDEXES:
            described = _described_bytes(self.registry, digest)
            if described is None:  # unreadable: the distinct blobs the manifest references
                described = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM manifest_refs WHERE repository_id = ? "
                                           "AND manifest = ? AND kind = 'blob'", [repository_id, digest]).fetchone()[0])
            return own + described
        if depth > 4:  # indexes of indexes nest a level or two; a deeper chain is not worth following
            return own
        children = db.execute(
            "SELECT m.digest, m.media_type, m.size FROM manifest_refs f JOIN manifests m ON m.repository_id = "
            "f.repository_id AND m.digest = f.child WHERE f.repository_id = ? AND f.manifest = ? AND "
            "f.kind = 'manifest'", [repository_id, digest]).fetchall()
        return own + sum(self._size(repository_id, d, mt, int(sz), depth + 1) for d, mt, sz in children)

    def _extra_attrs(self, repository_id: int, digest: str) -> dict[str, Any]:
        """Harbor's extra_attrs of an image: architecture, os, author, created and config from its config blob."""
        row = self.registry.db.execute(
            "SELECT child FROM manifest_refs WHERE repository_id = ? AND manifest = ? AND kind = 'blob' AND "
            f"media_type IN ({','.join('?' * len(IMAGE_CONFIGS))}) LIMIT 1",
            [repository_id, digest, *sorted(IMAGE_CONFIGS)]).fetchone()
        return dict(_image_attrs(self.registry, row[0])) if row else {}

    def _artifact_json(self, repository: Repository, row: Any, with_tag: bool, with_accessory: bool
                       ) -> dict[str, Any]:
        rowid, digest, media_type, artifact_type, size, annotations, created, _subject = row
        db = self.registry.db
        config_type = artifact_type or ("" if media_type in INDEXES else None)
        kind = "IMAGE" if media_type in INDEXES or artifact_type in IMAGE_CONFIGS else "UNKNOWN"
        refs = db.execute(
            "SELECT f.child, f.platform, m.rowid FROM manifest_refs f LEFT JOIN manifests m ON "
            "m.repository_id = f.repository_id AND m.digest = f.child WHERE f.repository_id = ? AND f.manifest = ? "
            "AND f.kind = 'manifest'", [repository.id, digest]).fetchall()
        # Arrays and maps are never null (Harbor sends [] / {}); a time never reached is Go's zero time, as
        # Harbor formats an artifact that was never pulled.
        doc: dict[str, Any] = {
            "id": rowid, "type": kind, "media_type": config_type or media_type, "manifest_media_type": media_type,
            "artifact_type": artifact_type, "project_id": repository.project_id, "repository_id": repository.id,
            "repository_name": repository.name, "digest": digest,
            "size": self._size(repository.id, digest, media_type, int(size)), "icon": "",
            "push_time": rfc3339(created), "pull_time": NEVER,
            "extra_attrs": self._extra_attrs(repository.id, digest) if artifact_type in IMAGE_CONFIGS else {},
            "annotations": json.loads(annotations) if annotations else {},
            "labels": [label.to_json() for label in self.labels.of_artifacts(repository.id, [digest]).get(digest, [])],
            "references": [{"parent_id": rowid, "child_id": child_id, "child_digest": child,
                            **({"platform": json.loads(platform)} if platform else {}), "urls": []}
                           for child, platform, child_id in refs],
        }
        if with_tag:
            tags = db.execute("SELECT rowid, name, updated_at FROM tags WHERE repository_id = ? AND digest = ? "
                              "ORDER BY name", [repository.id, digest]).fetchall()
            protected = self.registry.protection.protectors(db, repository.name, [t[1] for t in tags])
            doc["tags"] = [{"id": tid, "repository_id": repository.id, "artifact_id": rowid, "name": name,
                            "push_time": rfc3339(t), "pull_time": NEVER, "immutable": name in protected}
                           for tid, name, t in tags]
        if with_accessory:
            doc["accessories"] = self.accessories(repository, Digest.parse(digest), rowid)
        return doc

    def accessories(self, repository: Repository, subject: Digest, subject_id: int | None = None
                    ) -> list[dict[str, Any]]:
        """Manifests whose subject is `subject` (OCI referrers), in Harbor's accessory shape."""
        rows = self.registry.db.execute(
            "SELECT m.rowid, m.digest, m.artifact_type, m.size, m.created_at FROM manifests m "
            "WHERE m.repository_id = ? AND m.subject = ? ORDER BY m.created_at, m.digest",
            [repository.id, str(subject)]).fetchall()
        if subject_id is None:
            found = self.registry.db.execute("SELECT rowid FROM manifests WHERE repository_id = ? AND digest = ?",
                                             [repository.id, str(subject)]).fetchone()
            subject_id = int(found[0]) if found else None
        kinds = {"application/vnd.dev.cosign.artifact.sig.v1+json": "signature.cosign",
                 "application/vnd.cncf.notary.signature": "signature.notation"}
        return [{"id": rid, "artifact_id": rid, "subject_artifact_id": subject_id,
                 "subject_artifact_digest": str(subject), "subject_artifact_repo": repository.name,
                 "digest": d, "size": size, "type": kinds.get(at or "", "subject.accessory"),
                 "artifact_type": at, "icon": "", "creation_time": rfc3339(t)} for rid, d, at, size, t in rows]

    def delete_artifact(self, repository: Repository, reference: str) -> Digest:
        """Delete the artifact a reference names, with all its tags; PRECONDITION if an index uses it."""
        digest = self.resolve(repository, reference)
        if self.registry.db.execute("SELECT 1 FROM manifest_refs WHERE repository_id = ? AND child = ? AND "
                                    "kind = 'manifest' LIMIT 1", [repository.id, str(digest)]).fetchone():
            raise AccessError("PRECONDITION", f"artifact {digest} is referenced by an index in {repository.name}; "
                              "delete the index first")
        self.registry.delete_manifest(repository.name, digest)
        return digest

    def tags(self, repository: Repository, reference: str, offset: int, limit: int
             ) -> tuple[int, list[dict[str, Any]]]:
        digest = self.resolve(repository, reference)
        db = self.registry.db
        artifact_id = db.execute("SELECT rowid FROM manifests WHERE repository_id = ? AND digest = ?",
                                 [repository.id, str(digest)]).fetchone()
        total = int(db.execute("SELECT COUNT(*) FROM tags WHERE repository_id = ? AND digest = ?",
                               [repository.id, str(digest)]).fetchone()[0])
        rows = db.execute("SELECT rowid, name, updated_at FROM tags WHERE repository_id = ? AND digest = ? "
                          "ORDER BY name LIMIT ? OFFSET ?", [repository.id, str(digest), limit, offset]).fetchall()
        protected = self.registry.protection.protectors(db, repository.name, [r[1] for r in rows])
        return total, [{"id": tid, "repository_id": repository.id, "artifact_id": artifact_id[0] if artifact_id
                        else None, "name": name, "push_time": rfc3339(t), "pull_time": NEVER,
                        "immutable": name in protected} for tid, name, t in rows]

    def create_tag(self, repository: Repository, reference: str, tag: Any) -> None:
        """Tag the artifact; CONFLICT if the tag exists (Harbor does not move tags here)."""
        if not isinstance(tag, str):
            raise AccessError("BAD_REQUEST", "the body needs a tag name: {\"name\": \"<tag>\"}")
        validate_tag(tag)
        digest = self.resolve(repository, reference)
        with write_transaction(self.registry.db) as db:
            if db.execute("SELECT 1 FROM tags WHERE repository_id = ? AND name = ?", [repository.id, tag]).fetchone():
                raise AccessError("CONFLICT", f"tag {tag} already exists in {repository.name}")
            self.registry.set_tag(db, repository.id, tag, digest)

    def delete_tag(self, repository: Repository, reference: str, tag: str) -> None:
        digest = self.resolve(repository, reference)
        validate_tag(tag)
        row = self.registry.db.execute("SELECT digest FROM tags WHERE repository_id = ? AND name = ?",
                                       [repository.id, tag]).fetchone()
        if row is None or row[0] != str(digest):
            raise RegistryError("MANIFEST_UNKNOWN", f"tag {tag} of artifact {reference} not found in "
                                f"{repository.name}")
        self.registry.delete_tag(repository.name, tag)

    def storage_used(self, project: str | None = None) -> int:
        """Bytes of the distinct blobs the project's repositories hold (its quota usage, `registry.quotas`), or of
        every blob the store records."""
        if project is None:
            return int(self.registry.db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])
        return quotas.usage(self.registry.db, project)
