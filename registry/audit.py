"""The audit log: every write, who made it, on what, when and from where.

Entries are rows of ``audit_logs`` in Harbor's vocabulary: `operation` is
``create``, ``update`` or ``delete``; `resource_type` is ``project``,
``repository``, ``artifact``, ``tag``, ``blob``, ``robot`` or ``member``
(and, from the bundle APIs, ``bundle``, ``import``, ``cluster-definition``,
``check``); `resource` names it (``project/repo:tag``, ``project/repo@sha256:...``).
Entries never hold secrets: callers pass names, never credentials. Each
committed entry is logged too (`append`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.db import after_commit, write_transaction
from registry.dbengine import Database

if TYPE_CHECKING:  # registry.model reaches this module through registry.protection
    from registry.model import Registry

OPERATIONS = ("create", "update", "delete")
_log = logging.getLogger("cargohold.audit")


@dataclass(frozen=True)
class AuditEntry:
    """One recorded write."""

    id: int
    username: str
    operation: str
    resource_type: str
    resource: str
    source_ip: str
    op_time: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "operation": self.operation,
                "resource_type": self.resource_type, "resource": self.resource, "source_ip": self.source_ip,
                "op_time": _rfc3339(self.op_time)}


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


_INSERT = ("INSERT INTO audit_logs (username, operation, resource_type, resource, source_ip, op_time) "
           "VALUES (?, ?, ?, ?, ?, ?)")


def append(db: Database, username: str, operation: str, resource_type: str, resource: str,
           source_ip: str = "") -> None:
    """Append one entry inside `db`'s open transaction, so it commits (or not) with the write it describes.

    Once it has committed, the entry is also logged at INFO on ``cargohold.audit``
    (with the request id of the work that made it): the audit log is the one
    place every recorded change passes, so the appliance log has each one
    once, and none that was rolled back.
    """
    username = username or "anonymous"
    db.execute(_INSERT, [username, operation, resource_type, resource, source_ip or "", time.time()])
    after_commit(db, lambda: _log.info("%s %s %s: %s", username, operation, resource_type, resource, extra={
        "principal": username, "operation": operation, "resource_type": resource_type, "resource": resource,
        "client": source_ip or None}))


class AuditLog:
    """Append and list audit entries."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def record(self, username: str, operation: str, resource_type: str, resource: str, source_ip: str,
               db: Database | None = None) -> None:
        """Append one entry (inside `db`'s transaction when given, so it commits with the write)."""
        if db is not None:
            append(db, username, operation, resource_type, resource, source_ip)
            return
        with write_transaction(self.registry.db) as own:
            append(own, username, operation, resource_type, resource, source_ip)

    def list(self, filters: dict[str, tuple[str, str]], offset: int, limit: int,
             project: str | None = None) -> tuple[int, list[AuditEntry]]:
        """(total, one page) newest first; `filters` maps a column to ("exact"|"fuzzy", value).

        `project` keeps the entries about one project: the project itself
        (``p``), what is inside it (``p/repo...``), its members (``p:user``),
        its metadata and its robots (``robot$p+name``).
        """
        where: list[str] = []
        params: list[Any] = []
        if project is not None:
            where.append("(resource = ? OR substr(resource, 1, ?) IN (?, ?) OR substr(resource, 1, ?) = ?)")
            robot = f"robot${project}+"
            params += [project, len(project) + 1, f"{project}/", f"{project}:", len(robot), robot]
        for column, (kind, value) in filters.items():
            if column not in ("username", "operation", "resource_type", "resource", "source_ip"):
                raise ValueError(f"audit logs cannot be filtered by {column!r}")
            if kind == "fuzzy":
                where.append(f"{column} LIKE ? ESCAPE '\\'")
                params.append("%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
            else:
                where.append(f"{column} = ?")
                params.append(value)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        db = self.registry.db
        total = int(db.execute(f"SELECT COUNT(*) FROM audit_logs{clause}", params).fetchone()[0])
        rows = db.execute(f"SELECT id, username, operation, resource_type, resource, source_ip, op_time "
                          f"FROM audit_logs{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                          [*params, limit, offset]).fetchall()
        return total, [AuditEntry(*row) for row in rows]
