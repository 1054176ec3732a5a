"""Harbor's quota endpoints, added to the /api/v2.0 blueprint of `registry.harbor` (system administrators only).

    GET                 /quotas              (reference=project, reference_id=<project id>, sort, paging)
    GET PUT             /quotas/{id}         (PUT body: {"hard": {"storage": <bytes, -1 unlimited>}})

One quota per project, whose id is the project's id; ``hard.storage`` is
the project's ``storage_limit`` (the same value the project API sets) and
``used.storage`` its usage as `registry.quotas` counts it. Only the
``storage`` resource exists here (Harbor dropped ``count``). A limit below
the current usage is accepted, as in Harbor: nothing is removed, further
pushes that add content are refused until usage is below it again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, jsonify, request

from registry import quotas
from registry.access import Project
from registry.artifacts import rfc3339
from registry.harbor_context import RouteContext
from registry.numbers import MAX_INT64

_SORTS = {"creation_time", "update_time", "hard.storage", "used.storage", "id"}


def add_routes(bp: Blueprint, ctx: RouteContext) -> None:
    """Register the quota routes on Harbor's blueprint `bp`."""
    # registry.harbor imports this module; its request helpers are read once it has loaded.
    from registry.harbor import HarborError, _bad, _json_body, _listed, _paging, _parse_id

    projects = ctx.access.projects

    def quota_of(project: Project, used: int) -> quotas.Quota:
        return quotas.Quota(project.id, project.id, project.name, "admin", project.storage_limit, used,
                            rfc3339(project.created_at), rfc3339(project.updated_at))

    def find(quota_id: str) -> Project:
        project = projects.get_by_id(_parse_id(quota_id, "quota"))
        if project is None:
            raise HarborError("NOT_FOUND", f"quota {quota_id[:40]} not found", 404)
        return project

    @bp.get("/quotas")
    def list_quotas() -> Response:
        ctx.require_admin()
        page, size, offset = _paging()
        reference, reference_id = request.args.get("reference"), request.args.get("reference_id")
        if reference not in (None, "", "project"):
            raise _bad(f"reference must be project, not {reference[:40]!r}: quotas here are per project")
        sort = request.args.get("sort") or "id"
        key = sort.lstrip("-")
        if key not in _SORTS:
            raise _bad(f"sort by one of {', '.join(sorted(_SORTS))} (a leading - for descending), not {sort[:40]!r}")
        _, every = projects.list([], [], 0, -1)
        if reference_id:
            every = [p for p in every if str(p.id) == reference_id]
        db = ctx.access.registry.db
        if key == "used.storage":  # every project's usage, in one pass over the links
            used = quotas.usages(db)
            items = [quota_of(p, used.get(p.name, 0)) for p in every]
        else:  # only the page's projects' usage: it is the one costly figure
            items = [quota_of(p, 0) for p in every]

        def value(q: quotas.Quota) -> Any:
            return {"creation_time": q.created or "", "update_time": q.updated or "", "hard.storage": q.hard,
                    "used.storage": q.used, "id": q.id}[key]

        items.sort(key=value, reverse=sort.startswith("-"))
        shown = items[offset:offset + size]
        if key != "used.storage":
            shown = [replace(q, used=quotas.usage(db, q.project_name)) for q in shown]
        return _listed([q.to_json() for q in shown], len(items), page, size)

    @bp.get("/quotas/<quota_id>")
    def get_quota(quota_id: str) -> Response:
        ctx.require_admin()
        project = find(quota_id)
        return jsonify(quota_of(project, quotas.usage(ctx.access.registry.db, project.name)).to_json())

    @bp.put("/quotas/<quota_id>")
    def update_quota(quota_id: str) -> Response:
        ctx.require_admin()
        project = find(quota_id)
        hard = _json_body().get("hard")
        if not isinstance(hard, dict) or set(hard) != {"storage"}:
            raise _bad('the body must be {"hard": {"storage": <bytes>}}: storage is the only quota resource here')
        limit = hard["storage"]
        if not isinstance(limit, int) or isinstance(limit, bool) or not -1 <= limit <= MAX_INT64:
            raise _bad("hard.storage must be -1 (unlimited) or a number of bytes")
        projects.update(project, None, limit)
        ctx.record("update", "quota", f"{project.name} (storage {limit})")
        return Response(status=200)
