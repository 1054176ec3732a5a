"""Harbor labels: global and project labels, and which artifacts carry them.

A label is global (scope ``g``, project id 0) or belongs to one project
(scope ``p``); its name is unique within its scope and project, as in
Harbor. An artifact (a manifest of a repository, keyed by repository id and
digest like the ``manifests`` table) may carry global labels and labels of
its own project. SQLite triggers (`registry.schema` m007) drop attachments
with their manifest or label, and a project's labels with the project.

Who may do what is decided by the HTTP layer (`registry.labels_api`); this
module checks the input and keeps the tables consistent. Errors are
`LabelError` with Harbor's code and HTTP status.
"""

from __future__ import annotations

import builtins
import re
import time
from dataclasses import dataclass
from typing import Any

from registry.artifacts import rfc3339
from registry.db import write_transaction
from registry.dbengine import IntegrityError, insert_id
from registry.model import Registry

GLOBAL, PROJECT = "g", "p"
MAX_NAME = 128
MAX_DESCRIPTION = 1024
# Harbor's UI offers #RRGGBB colours; the API stores any short string, so keep it to colours a page can show.
_COLOR = re.compile(r"#[0-9A-Fa-f]{6}|#[0-9A-Fa-f]{3}")


class LabelError(Exception):
    """A label request refused, with Harbor's error code and HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _bad(message: str) -> LabelError:
    return LabelError("BAD_REQUEST", message, 400)


@dataclass(frozen=True)
class Label:
    id: int
    name: str
    description: str
    color: str
    scope: str
    project_id: int
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        """Harbor's ``Label``."""
        return {"id": self.id, "name": self.name, "description": self.description, "color": self.color,
                "scope": self.scope, "project_id": self.project_id, "creation_time": rfc3339(self.created_at),
                "update_time": rfc3339(self.updated_at)}


@dataclass(frozen=True)
class LabelInput:
    """The writable fields of a label, checked."""

    name: str
    description: str
    color: str

    @staticmethod
    def parse(body: dict[str, Any], current: Label | None = None) -> LabelInput:
        """Read `body`; fields left out keep `current`'s value (an update), or are required/empty (a creation)."""
        name = body.get("name", current.name if current else None)
        if not isinstance(name, str) or not name.strip():
            raise _bad("name is required: a non-empty string")
        if len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
            raise _bad(f"name must be at most {MAX_NAME} printable characters")
        description = body.get("description", current.description if current else "")
        if description is None:
            description = ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise _bad(f"description must be a string of at most {MAX_DESCRIPTION} characters")
        color = body.get("color", current.color if current else "")
        if color is None:
            color = ""
        if not isinstance(color, str) or (color and not _COLOR.fullmatch(color)):
            raise _bad(f"color must be a colour like #61717D, not {str(color)[:20]!r}")
        return LabelInput(name.strip(), description, color)


_COLUMNS = "id, name, COALESCE(description, ''), COALESCE(color, ''), scope, project_id, created_at, updated_at"


def _row(row: Any) -> Label:
    return Label(int(row[0]), row[1], row[2], row[3], row[4], int(row[5]), float(row[6]), float(row[7]))


class Labels:
    """Labels and their attachments to artifacts, in the registry's database."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def get(self, label_id: int) -> Label | None:
        row = self.registry.db.execute(f"SELECT {_COLUMNS} FROM labels WHERE id = ?", [label_id]).fetchone()
        return _row(row) if row else None

    def list(self, scope: str, project_id: int, name: str | None, offset: int, limit: int
             ) -> tuple[int, list[Label]]:
        """(total, page) of one scope's labels (of one project for scope p), optionally by fuzzy name."""
        where, params = "scope = ? AND project_id = ?", [scope, project_id if scope == PROJECT else 0]
        if name:
            where += " AND name LIKE ? ESCAPE '\\'"
            params.append("%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        db = self.registry.db
        total = int(db.execute(f"SELECT COUNT(*) FROM labels WHERE {where}", params).fetchone()[0])
        rows = db.execute(f"SELECT {_COLUMNS} FROM labels WHERE {where} ORDER BY name, id LIMIT ? OFFSET ?",
                          [*params, limit, offset]).fetchall()
        return total, [_row(r) for r in rows]

    def create(self, scope: str, project_id: int, value: LabelInput) -> Label:
        """A new label; CONFLICT if its scope (and project) already has that name."""
        now = time.time()
        try:
            with write_transaction(self.registry.db) as db:
                label_id = insert_id(db, "INSERT INTO labels (name, description, color, scope, project_id, "
                                     "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     [value.name, value.description, value.color, scope,
                                      project_id if scope == PROJECT else 0, now, now])
        except IntegrityError:
            raise self._taken(value.name, scope) from None
        found = self.get(label_id)
        assert found is not None
        return found

    def update(self, label: Label, value: LabelInput) -> Label:
        """Change name, description and colour (scope and project stay); CONFLICT for a taken name."""
        try:
            with write_transaction(self.registry.db) as db:
                db.execute("UPDATE labels SET name = ?, description = ?, color = ?, updated_at = ? WHERE id = ?",
                           [value.name, value.description, value.color, time.time(), label.id])
        except IntegrityError:
            raise self._taken(value.name, label.scope) from None
        found = self.get(label.id)
        if found is None:
            raise LabelError("NOT_FOUND", f"label {label.id} not found", 404)
        return found

    @staticmethod
    def _taken(name: str, scope: str) -> LabelError:
        where = "global labels" if scope == GLOBAL else "this project's labels"
        return LabelError("CONFLICT", f"a label named {name!r} already exists among {where}", 409)

    def delete(self, label: Label) -> None:
        """Delete a label; it leaves every artifact that carried it (trigger)."""
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM labels WHERE id = ?", [label.id])

    # -- attachments

    def attach(self, repository_id: int, project_id: int, digest: str, label: Label) -> None:
        """Put `label` on an artifact; BAD_REQUEST for another project's label, CONFLICT if already there."""
        if label.scope == PROJECT and label.project_id != project_id:
            raise _bad(f"label {label.id} ({label.name}) belongs to another project; only global labels and "
                       "labels of the artifact's own project can be added")
        with write_transaction(self.registry.db) as db:
            if db.execute("SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?",
                          [repository_id, digest]).fetchone() is None:
                raise LabelError("NOT_FOUND", f"artifact {digest} not found", 404)
            cur = db.execute("INSERT INTO artifact_labels (repository_id, digest, label_id, created_at) "
                             "VALUES (?, ?, ?, ?) ON CONFLICT (repository_id, digest, label_id) DO NOTHING",
                             [repository_id, digest, label.id, time.time()])
            if cur.rowcount == 0:
                raise LabelError("CONFLICT", f"label {label.id} ({label.name}) is already on artifact {digest}", 409)

    def detach(self, repository_id: int, digest: str, label_id: int) -> None:
        """Take a label off an artifact; NOT_FOUND if it was not on it."""
        with write_transaction(self.registry.db) as db:
            cur = db.execute("DELETE FROM artifact_labels WHERE repository_id = ? AND digest = ? AND label_id = ?",
                             [repository_id, digest, label_id])
            if cur.rowcount == 0:
                raise LabelError("NOT_FOUND", f"label {label_id} is not on artifact {digest}", 404)

    def of_artifacts(self, repository_id: int, digests: builtins.list[str]) -> dict[str, builtins.list[Label]]:
        """The labels each of `digests` carries in a repository, by name."""
        if not digests:
            return {}
        rows = self.registry.db.execute(
            "SELECT al.digest, l.id, l.name, COALESCE(l.description, ''), COALESCE(l.color, ''), l.scope, "
            "l.project_id, l.created_at, l.updated_at "
            "FROM artifact_labels al JOIN labels l ON l.id = al.label_id WHERE al.repository_id = ? "
            f"AND al.digest IN ({','.join('?' * len(digests))}) ORDER BY l.name, l.id",
            [repository_id, *digests]).fetchall()
        out: dict[str, builtins.list[Label]] = {}
        for row in rows:
            out.setdefault(row[0], []).append(_row(row[1:]))
        return out
