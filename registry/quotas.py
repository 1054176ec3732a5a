"""Project storage quotas: how much a project uses, its limit, and the refusal of writes past it.

A project's usage is counted as Harbor counts it: the size of every distinct
blob (layers, configs and the manifests' own bytes) that any repository of
the project holds, each blob once per project however many of its
repositories share it, and again in every other project that holds it.
Blobs a repository holds are its ``repository_blobs`` links, so usage moves
with what changes them: pushes and mounts add links; deleting a manifest
drops its own link and the links of the blobs no other manifest of that
repository still needs (`Registry.delete_manifest`, as Harbor cleans a
deleted artifact's blob associations); deleting a repository drops all of
its links; garbage collection drops what nothing keeps. Nothing is kept in
step by hand: usage is one indexed query over the project's links,
computed when asked (measured in docs/performance.md: a few milliseconds for
thousands of blobs), so it cannot drift from what the project holds.

The limit is the project's ``storage_limit`` column (-1: unlimited), which
Harbor's project API (``storage_limit``) and quota API (``hard.storage``)
both set. `ProjectQuota.require` is called inside each write transaction
that would link new blobs into a project (blob upload, monolithic upload,
mount, manifest push, bundle publish) before it links them, and raises
`QuotaExceeded` when the project's usage plus the blobs it does not hold yet
would pass the limit: the transaction rolls back, nothing is recorded. The
/v2/ refusal is Harbor's: code ``DENIED``, HTTP 403, a message saying "Quota
exceeded when processing the request of adding ... of storage resource ...",
here also naming the project and its limit.

A quota's id is its project's id (one quota per project, as in Harbor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.dbengine import Database, placeholders
from registry.errors import RegistryError

UNLIMITED = -1


def display_size(value: int) -> str:
    """Bytes as Harbor writes them in quota messages: ``512 B``, ``1.5 KiB``, ``3.0 MiB``."""
    if value < 1024:
        return f"{value} B"
    div, exp = 1024, 0
    n = value // 1024
    while n >= 1024:
        div *= 1024
        exp += 1
        n //= 1024
    return f"{value / div:.1f} {'KMGTPE'[exp]}iB"


class QuotaExceeded(RegistryError):
    """A write refused because it would take a project past its storage limit (DENIED, 403, as Harbor)."""

    def __init__(self, project: str, hard: int, used: int, adding: int) -> None:
        message = (f"Quota exceeded when processing the request of adding {display_size(adding)} of storage "
                   f"resource, which when updated to current usage of {display_size(used)} will exceed the "
                   f"configured upper limit of {display_size(hard)} (project {project}: storage quota "
                   f"{hard} bytes, {used} used, this adds {adding})")
        super().__init__("DENIED", message, detail={"project": project, "hard": {"storage": hard},
                                                    "used": {"storage": used}, "adding": {"storage": adding}})
        self.project, self.hard, self.used, self.adding = project, hard, used, adding


def project_of(repository: str) -> str:
    return repository.split("/", 1)[0]


def _prefix(project: str) -> tuple[int, str]:
    prefix = f"{project}/"
    return len(prefix), prefix


# The project's repositories by a range of the name index ("p/" <= name < "p0": '0' follows '/'), then their
# links by primary key. CROSS JOIN keeps SQLite from starting at the links' digest index instead, which
# visits every link of every project (measured: 34 ms instead of 3 ms with 5,000 blobs, docs/performance.md).
_USAGE = ("SELECT COALESCE(SUM(b.size), 0) FROM (SELECT DISTINCT rb.digest FROM repositories r CROSS JOIN "
          "repository_blobs rb WHERE rb.repository_id = r.id AND r.name >= ? AND r.name < ?) x "
          "JOIN blobs b ON b.digest = x.digest")


def usage(db: Database, project: str) -> int:
    """Bytes of the distinct blobs the repositories of `project` hold."""
    return int(db.execute(_USAGE, [f"{project}/", f"{project}0"]).fetchone()[0])


def usages(db: Database) -> dict[str, int]:
    """Usage of every project that holds anything, in one pass."""
    rows = db.execute(
        "SELECT project, COALESCE(SUM(size), 0) FROM (SELECT DISTINCT substr(r.name, 1, "
        "CASE WHEN instr(r.name, '/') > 0 THEN instr(r.name, '/') - 1 ELSE 0 END) AS project, b.digest, b.size "
        "FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
        "JOIN blobs b ON b.digest = rb.digest) AS x GROUP BY project").fetchall()
    return {str(p): int(s) for p, s in rows}


def limit(db: Database, project: str) -> int:
    """The project's storage limit in bytes; -1 when unlimited or when there is no such project."""
    row = db.execute("SELECT storage_limit FROM projects WHERE name = ?", [project]).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else UNLIMITED


_IN_BATCH = 4096  # digests per query: well below either engine's parameter limit


def missing(db: Database, project: str, blobs: Mapping[str, int]) -> dict[str, int]:
    """The part of `blobs` (digest -> size) that no repository of `project` holds yet."""
    if not blobs:
        return {}
    length, prefix = _prefix(project)
    digests = list(blobs)
    held: set[str] = set()
    for i in range(0, len(digests), _IN_BATCH):
        batch = digests[i:i + _IN_BATCH]
        held |= {str(r[0]) for r in db.execute(
            f"SELECT DISTINCT rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
            f"WHERE rb.digest IN ({placeholders(len(batch))}) AND substr(r.name, 1, ?) = ?",
            [*batch, length, prefix]).fetchall()}
    return {d: s for d, s in blobs.items() if d not in held}


class ProjectQuota:
    """The check every write that links blobs into a project makes (see the module docstring)."""

    def require(self, db: Database, project: str, blobs: Mapping[str, int]) -> None:
        """Raise QuotaExceeded if linking `blobs` (digest -> size) into `project` would pass its limit.

        Call inside the write transaction, before linking; read-only. Blobs
        the project already holds cost nothing, so re-pushing what is there
        is never refused, even over a limit lowered below the usage.
        """
        hard = limit(db, project)
        if hard < 0:
            return
        adding = sum(missing(db, project, blobs).values())
        if adding == 0:
            return
        used = usage(db, project)
        if used + adding > hard:
            raise QuotaExceeded(project, hard, used, adding)

    def require_repository(self, db: Database, repository: str, blobs: Mapping[str, int]) -> None:
        """`require` for the project of `repository`."""
        self.require(db, project_of(repository), blobs)


@dataclass(frozen=True)
class Quota:
    """Harbor's Quota object for one project."""

    id: int
    project_id: int
    project_name: str
    owner_name: str
    hard: int
    used: int
    created: str | None
    updated: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ref": {"id": self.project_id, "name": self.project_name,
                                       "owner_name": self.owner_name},
                "hard": {"storage": self.hard}, "used": {"storage": self.used},
                "creation_time": self.created, "update_time": self.updated}
