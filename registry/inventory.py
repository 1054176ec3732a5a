"""Read-only bulk lookups over what the registry holds, for checks and reports.

`registry.model.Registry` answers one question per call, which is right for
the /v2/ API and far too slow for checking a thousand images at once. Each
lookup here takes a whole batch of keys, sends them as one ``VALUES`` list
(a SQL both metadata engines run) and answers in a single query, so a check
costs a handful of queries whatever its size. Nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from registry.dbengine import Database

# Keys per query: two parameters each, below SQLite's 32766 and PostgreSQL's 65535 parameters per statement.
_BATCH = 10_000


@dataclass(frozen=True)
class ManifestRow:
    """A manifest stored in a repository."""

    repository_id: int
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class RefRow:
    """One thing a manifest references: a blob (config, layer) or a child manifest."""

    child: str
    kind: str  # "blob" or "manifest"
    media_type: str
    size: int
    platform: dict[str, object] | None


def _batches(keys: Sequence[tuple[object, ...]]) -> Iterable[tuple[str, list[object]]]:
    """The keys in batches: a ``WITH j(a, b) AS (VALUES (?, ?), ...)`` clause and its parameters."""
    for i in range(0, len(keys), _BATCH):
        batch = keys[i:i + _BATCH]
        width = len(batch[0])
        columns = ", ".join("ab"[:width])
        row = "(" + ", ".join("?" * width) + ")"
        yield f"WITH j({columns}) AS (VALUES {', '.join([row] * len(batch))}) ", [v for key in batch for v in key]


class Inventory:
    """Batch queries over one registry database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def repository_ids(self, names: Iterable[str]) -> dict[str, int]:
        """name -> id for those of `names` that exist."""
        out: dict[str, int] = {}
        for values, params in _batches([(n,) for n in sorted(set(names))]):
            out.update(self.db.execute(
                f"{values}SELECT r.name, r.id FROM j JOIN repositories r ON r.name = j.a", params).fetchall())
        return out

    def tags(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], str]:
        """(repository id, tag) -> manifest digest, for the tags that exist."""
        out: dict[tuple[int, str], str] = {}
        for values, params in _batches(sorted(set(keys))):
            for repo_id, tag, digest in self.db.execute(
                    f"{values}SELECT t.repository_id, t.name, t.digest FROM j JOIN tags t "
                    "ON t.repository_id = j.a AND t.name = j.b", params):
                out[(int(repo_id), tag)] = digest
        return out

    def manifests(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], ManifestRow]:
        """(repository id, digest) -> the stored manifest, for those that exist."""
        out: dict[tuple[int, str], ManifestRow] = {}
        for values, params in _batches(sorted(set(keys))):
            for repo_id, digest, media_type, size in self.db.execute(
                    f"{values}SELECT m.repository_id, m.digest, m.media_type, m.size FROM j JOIN manifests m "
                    "ON m.repository_id = j.a AND m.digest = j.b", params):
                out[(int(repo_id), digest)] = ManifestRow(int(repo_id), digest, media_type, int(size or 0))
        return out

    def references(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], list[RefRow]]:
        """(repository id, manifest digest) -> what that manifest references (empty list if nothing)."""
        wanted = sorted(set(keys))
        out: dict[tuple[int, str], list[RefRow]] = {k: [] for k in wanted}
        for values, params in _batches(wanted):
            for repo_id, manifest, child, kind, media_type, size, platform in self.db.execute(
                    f"{values}SELECT f.repository_id, f.manifest, f.child, f.kind, f.media_type, f.size, f.platform "
                    "FROM j JOIN manifest_refs f ON f.repository_id = j.a AND f.manifest = j.b", params):
                out[(int(repo_id), manifest)].append(
                    RefRow(child, kind, media_type or "", int(size or 0), json.loads(platform) if platform else None))
        return out

    def linked_blobs(self, keys: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
        """Those (repository id, blob digest) pairs the repository may serve."""
        out: set[tuple[int, str]] = set()
        for values, params in _batches(sorted(set(keys))):
            for repo_id, digest in self.db.execute(
                    f"{values}SELECT rb.repository_id, rb.digest FROM j JOIN repository_blobs rb "
                    "ON rb.repository_id = j.a AND rb.digest = j.b", params):
                out.add((int(repo_id), digest))
        return out

    def repository_names(self, prefix: str) -> list[str]:
        """Every repository name that starts with `prefix`, sorted."""
        # Range scan on the unique name index instead of LIKE (which would treat _ and % as wildcards).
        return [r[0] for r in self.db.execute(
            "SELECT name FROM repositories WHERE name >= ? AND name < ? ORDER BY name",
            [prefix, prefix + "\U0010ffff"])]
