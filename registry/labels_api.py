"""Harbor's label endpoints, added to the /api/v2.0 blueprint of `registry.harbor`.

    GET POST            /labels                   (GET: ?scope=g, or ?scope=p&project_id=N; name= fuzzy)
    GET PUT DELETE      /labels/{id}
    POST                /projects/{p}/repositories/{r}/artifacts/{reference}/labels     body {"id": N}
    DELETE              /projects/{p}/repositories/{r}/artifacts/{reference}/labels/{id}

Who may do what, as Harbor's RBAC has it: global labels are created,
changed and deleted by system administrators and read by anyone signed in;
a project's labels are managed by its project administrators and
maintainers and read by whoever sees the project. Adding and removing a
label on an artifact needs what pushing to its repository needs (Harbor
grants it to developers and up). Writes are audited (``label``,
``artifact-label``). The labels themselves are `registry.labels`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from registry.access import ROLES, Access, Project
from registry.artifacts import Artifacts, Repository
from registry.auth import Principal
from registry.labels import GLOBAL, PROJECT, Label, LabelError, LabelInput, Labels

# Harbor's project roles that manage project labels: projectAdmin and maintainer.
_LABEL_MANAGERS = {role for role, name in ROLES.items() if name in ("projectAdmin", "maintainer")}


def add_routes(bp: Blueprint, access: Access, artifacts: Artifacts, principal: Callable[[], Principal | None],
               repository: Callable[[str, str, str], Repository], record: Callable[[str, str, str], None]) -> None:
    """Register the label routes on Harbor's blueprint `bp`."""
    # registry.harbor imports this module; its request helpers are read once it has loaded.
    from registry.harbor import (
        PREFIX,
        HarborError,
        _created,
        _empty,
        _json_body,
        _listed,
        _paging,
        _parse_id,
        harbor_error,
    )

    labels: Labels = artifacts.labels

    @bp.errorhandler(LabelError)
    def _label_error(exc: LabelError) -> Response:
        return harbor_error(exc.code, exc.message, exc.status)

    def deny(message: str) -> HarborError:
        if principal() is None:
            return HarborError("UNAUTHORIZED", "authentication required", 401)
        return HarborError("FORBIDDEN", message, 403)

    def project_by_id(project_id: int) -> Project:
        project = access.projects.get_by_id(project_id)
        if project is None:
            raise HarborError("NOT_FOUND", f"project {project_id} not found", 404)
        return project

    def may_manage(label_scope: str, project: Project | None) -> bool:
        p = principal()
        if p is None:
            return False
        if p.admin:
            return True
        if label_scope == GLOBAL or project is None:
            return False
        return access.may_manage(p, project) or access.role_of(p, project) in _LABEL_MANAGERS

    def require_read(label: Label) -> None:
        if label.scope == GLOBAL:
            if principal() is None:
                raise deny("global labels are shown to signed-in users")
            return
        project = project_by_id(label.project_id)
        if not access.visible(principal(), project):
            raise deny(f"no access to project {project.name}")

    def require_manage(label: Label) -> None:
        project = project_by_id(label.project_id) if label.scope == PROJECT else None
        if not may_manage(label.scope, project):
            raise deny("only system administrators manage global labels" if label.scope == GLOBAL else
                       f"only administrators and maintainers of project {project.name if project else ''} "
                       "manage its labels")

    def find_label(label_id: str) -> Label:
        label = labels.get(_parse_id(label_id, "label"))
        if label is None:
            raise HarborError("NOT_FOUND", f"label {label_id[:40]} not found", 404)
        return label

    def scope_of(value: Any) -> str:
        if value not in (GLOBAL, PROJECT):
            raise HarborError("BAD_REQUEST", f"scope must be \"g\" (global) or \"p\" (project), not {value!r}", 400)
        return str(value)

    @bp.get("/labels")
    def list_labels() -> Response:
        scope = scope_of(request.args.get("scope"))
        page, size, offset = _paging()
        project_id = 0
        if scope == PROJECT:
            text = request.args.get("project_id", "")
            if not text.isascii() or not text.isdigit() or int(text) < 1 or len(text) > 18:
                raise HarborError("BAD_REQUEST", "project_id is required with scope=p: the project's id", 400)
            project = project_by_id(int(text))
            if not access.visible(principal(), project):
                raise deny(f"no access to project {project.name}")
            project_id = project.id
        elif principal() is None:
            raise deny("global labels are shown to signed-in users")
        total, found = labels.list(scope, project_id, request.args.get("name") or None, offset, size)
        return _listed([label.to_json() for label in found], total, page, size)

    @bp.post("/labels")
    def create_label() -> Response:
        body = _json_body()
        scope = scope_of(body.get("scope", GLOBAL))
        project: Project | None = None
        if scope == PROJECT:
            project_id = body.get("project_id")
            if not isinstance(project_id, int) or isinstance(project_id, bool) or project_id < 1:
                raise HarborError("BAD_REQUEST", "project_id is required for a project label (scope p)", 400)
            project = project_by_id(project_id)
        if not may_manage(scope, project):
            raise deny("only system administrators create global labels" if scope == GLOBAL else
                       f"only administrators and maintainers of project {project.name if project else ''} "
                       "create its labels")
        label = labels.create(scope, project.id if project else 0, LabelInput.parse(body))
        record("create", "label", describe(label))
        return _created(None, f"{PREFIX}/labels/{label.id}")

    def describe(label: Label) -> str:
        if label.scope == GLOBAL:
            return f"{label.name} (global)"
        project = access.projects.get_by_id(label.project_id)
        return f"{label.name} (project {project.name if project else label.project_id})"

    @bp.get("/labels/<label_id>")
    def get_label(label_id: str) -> Response:
        label = find_label(label_id)
        require_read(label)
        return jsonify(label.to_json())

    @bp.put("/labels/<label_id>")
    def update_label(label_id: str) -> Response:
        label = find_label(label_id)
        require_manage(label)
        updated = labels.update(label, LabelInput.parse(_json_body(), label))
        record("update", "label", describe(updated))
        return _empty()

    @bp.delete("/labels/<label_id>")
    def delete_label(label_id: str) -> Response:
        label = find_label(label_id)
        require_manage(label)
        labels.delete(label)
        record("delete", "label", describe(label))
        return _empty()

    # -- on artifacts

    def artifact_target(ref: str, repo: str, reference: str) -> tuple[Repository, str]:
        found = repository(ref, repo, "push")
        digest = artifacts.resolve(found, urllib.parse.unquote(reference))
        return found, str(digest)

    @bp.post("/projects/<ref>/repositories/<repo>/artifacts/<reference>/labels")
    def add_artifact_label(ref: str, repo: str, reference: str) -> Response:
        found, digest = artifact_target(ref, repo, reference)
        label_id = _json_body().get("id")
        if not isinstance(label_id, int) or isinstance(label_id, bool) or label_id < 1:
            raise HarborError("BAD_REQUEST", "the body must name the label: {\"id\": <label id>}", 400)
        label = labels.get(label_id)
        if label is None:
            raise HarborError("NOT_FOUND", f"label {label_id} not found", 404)
        labels.attach(found.id, found.project_id, digest, label)
        record("create", "artifact-label", f"{found.name}@{digest}: {label.name}")
        return _empty()  # Harbor's addLabel answers 200 with no body (its swagger, and harborapi, expect that)

    @bp.delete("/projects/<ref>/repositories/<repo>/artifacts/<reference>/labels/<label_id>")
    def remove_artifact_label(ref: str, repo: str, reference: str, label_id: str) -> Response:
        found, digest = artifact_target(ref, repo, reference)
        number = _parse_id(label_id, "label")
        label = labels.get(number)
        labels.detach(found.id, digest, number)
        record("delete", "artifact-label", f"{found.name}@{digest}: {label.name if label else number}")
        return _empty()
