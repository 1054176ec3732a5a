"""Harbor's project metadata, deletable check, project-wide artifact list and project logs.

Added to the /api/v2.0 blueprint of `registry.harbor`:

    GET POST            /projects/{p}/metadatas                 (also with a trailing slash, Harbor's path)
    GET PUT DELETE      /projects/{p}/metadatas/{meta_name}
    GET                 /projects/{p}/_deletable
    GET                 /projects/{p}/artifacts                  (q: digest, tags, repository_name; latest)
    GET                 /projects/{p}/logs                       (the project's audit log entries)

Reading metadata and artifacts needs a caller who can see the project;
writing metadata and ``_deletable`` a project administrator; the logs a
project administrator or maintainer (Harbor's ``log list``). Metadata keys
and values are `registry.project_metadata`; metadata writes are audited
(resource type ``project-metadata``, resource ``<project>:<key>``).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from registry.access import Project
from registry.harbor_context import RouteContext
from registry.project_metadata import ProjectMetadata, validate, validate_all

_LOG_ROLES = (1, 4)  # projectAdmin, maintainer


def add_routes(bp: Blueprint, ctx: RouteContext) -> None:
    """Register the project routes on Harbor's blueprint `bp`."""
    # registry.harbor imports this module; its request helpers are read once it has loaded.
    from registry.harbor import HarborError, _bad, _bool_arg, _capped_body, _json_body, _listed, _paging, parse_q

    metadata = ProjectMetadata(ctx.access.projects)

    def metadata_body() -> dict[str, str]:
        # An empty body is an empty object (Harbor's clients send none when nothing is set).
        return validate_all(_json_body() if _capped_body() else {})

    @bp.get("/projects/<ref>/metadatas", strict_slashes=False)
    def list_metadata(ref: str) -> Response:
        return jsonify(metadata.get(ctx.readable_project(ref)))

    @bp.post("/projects/<ref>/metadatas", strict_slashes=False)
    def add_metadata(ref: str) -> Response:
        project = ctx.managed_project(ref)
        values = metadata_body()
        metadata.set(project, values)
        for key in sorted(values):
            ctx.record("update", "project-metadata", f"{project.name}:{key}")
        return Response(status=200)

    def key_of(project: Project, name: str) -> str:
        value = metadata.get(project).get(name)
        if value is None:
            raise HarborError("NOT_FOUND", f"project {project.name} has no metadata {name[:80]!r}", 404)
        return value

    @bp.get("/projects/<ref>/metadatas/<meta_name>")
    def get_metadata(ref: str, meta_name: str) -> Response:
        name = meta_name
        project = ctx.readable_project(ref)
        return jsonify({name: key_of(project, name)})

    @bp.put("/projects/<ref>/metadatas/<meta_name>")
    def update_metadata(ref: str, meta_name: str) -> Response:
        name = meta_name
        project = ctx.managed_project(ref)
        body = _json_body()
        if set(body) != {name}:
            raise _bad(f'the body must hold exactly the key of the path: {{"{name[:80]}": "<value>"}}')
        metadata.set(project, {name: validate(name, body[name])})
        ctx.record("update", "project-metadata", f"{project.name}:{name}")
        return Response(status=200)

    @bp.delete("/projects/<ref>/metadatas/<meta_name>")
    def delete_metadata(ref: str, meta_name: str) -> Response:
        name = meta_name
        project = ctx.managed_project(ref)
        key_of(project, name)
        metadata.delete(project, name)
        ctx.record("delete", "project-metadata", f"{project.name}:{name}")
        return Response(status=200)

    @bp.get("/projects/<ref>/_deletable")
    def deletable(ref: str) -> Response:
        project = ctx.managed_project(ref)
        if project.name == ctx.default_project:
            return jsonify({"deletable": False, "message": f"{project.name} is the appliance's default project, "
                                                           "which bundle imports and edge hosts use"})
        if ctx.access.projects.repository_count(project.name):
            return jsonify({"deletable": False, "message": "the project contains repositories"})
        return jsonify({"deletable": True, "message": ""})

    @bp.get("/projects/<ref>/artifacts")
    def project_artifacts(ref: str) -> Response:
        project = ctx.readable_project(ref)
        page, size, offset = _paging()
        q = parse_q(("digest", "tags", "repository_name"))
        total, items = ctx.artifacts.list_project_artifacts(
            project.name, q, offset, size, _bool_arg("with_tag", True), _bool_arg("with_accessory", False),
            _bool_arg("latest", False))
        return _listed(items, total, page, size)

    @bp.get("/projects/<ref>/logs")
    def project_logs(ref: str) -> Response:
        project = ctx.find_project(ref)
        p = ctx.principal()
        if p is None or not (p.admin or ctx.access.role_of(p, project) in _LOG_ROLES):
            raise ctx.forbid(f"only administrators and maintainers of project {project.name} may read its logs")
        page, size, offset = _paging()
        q = parse_q(("username", "operation", "resource_type", "resource"))
        total, entries = ctx.audit.list(q, offset, size, project=project.name)
        return _listed([e.to_json() for e in entries], total, page, size)
