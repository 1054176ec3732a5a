"""Harbor's system endpoints beyond /systeminfo, and copy artifact, added to the /api/v2.0 blueprint.

    GET                 /systeminfo/getcert       the appliance's generated CA (anyone), 404 when it has none
    GET PUT             /configurations           the settings that map to the appliance (sysadmin); read-only
    GET                 /permissions              what robot accounts can be granted here
    POST                /projects/{p}/repositories/{r}/artifacts?from=<project>/<repo>:<tag>|@<digest>

`/configurations` answers Harbor's ``ConfigurationsResponse`` limited to
what the appliance really has, each item ``{"value", "editable": false}``:
its settings come from its configuration (``CARGOHOLD_*``), not from the
API, so a ``PUT`` changes nothing: it is refused naming the keys, whether
Harbor knows them or not, and never half-applied.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file

from registry.access import PROJECT_RESOURCES, Access, Project
from registry.artifact_copy import CopySource, copy_artifact
from registry.auth import Principal


@dataclass(frozen=True)
class SystemSettings:
    """What /configurations reports: read from the appliance's configuration by the application factory."""

    token_expiry_seconds: int = 1800
    ca_certificate: Callable[[], Path | None] = lambda: None


# (resource, action) pairs a robot can be granted that give it something on this appliance (registry.access).
_PROJECT_PERMISSIONS = [("repository", "pull"), ("repository", "push"), ("repository", "delete"),
                        ("artifact", "delete"), ("tag", "delete"), ("repository", "*"), ("*", "*")]
assert all(resource in PROJECT_RESOURCES for resource, _ in _PROJECT_PERMISSIONS)


def configurations(settings: SystemSettings) -> dict[str, dict[str, Any]]:
    """Harbor's ConfigurationsResponse items that describe this appliance."""
    values: dict[str, Any] = {
        "auth_mode": "db_auth", "primary_auth_mode": False, "self_registration": False,
        "project_creation_restriction": "adminonly", "read_only": False, "notification_enable": False,
        # Harbor counts minutes; the appliance's token lifetime is in seconds (CARGOHOLD_TOKEN_EXPIRY_SECONDS).
        "token_expiration": max(1, settings.token_expiry_seconds // 60), "robot_name_prefix": "robot$",
    }
    return {key: {"value": value, "editable": False} for key, value in values.items()}


def add_routes(bp: Blueprint, access: Access, settings: SystemSettings, principal: Callable[[], Principal | None],
               find_project: Callable[[str], Project], record: Callable[[str, str, str], None]) -> None:
    """Register these routes on Harbor's blueprint `bp`."""
    # registry.harbor imports this module; its request helpers are read once it has loaded.
    from registry.harbor import PREFIX, HarborError, _capped_body, _created, _json_body

    def require_admin() -> Principal:
        p = principal()
        if p is None:
            raise HarborError("UNAUTHORIZED", "authentication required", 401)
        if not p.admin:
            raise HarborError("FORBIDDEN", "this needs a system administrator", 403)
        return p

    @bp.get("/systeminfo/getcert")
    def get_cert() -> Response:
        path = settings.ca_certificate()
        if path is None:
            raise HarborError("NOT_FOUND", "no CA certificate: this appliance has not generated a local CA (it "
                              "serves plain HTTP, or an operator-provided certificate)", 404)
        # Harbor sends the CA as a download; read per request, so a regenerated CA shows at once.
        return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name="ca.crt",
                         max_age=0)

    @bp.get("/configurations")
    def get_configurations() -> Response:
        require_admin()
        return jsonify(configurations(settings))

    @bp.put("/configurations")
    def update_configurations() -> Response:
        require_admin()
        body = _json_body()
        if not body:
            raise HarborError("BAD_REQUEST", "the body names no configuration to change", 400)
        known = configurations(settings)
        ours = sorted(k for k in body if k in known)
        others = sorted(k for k in body if k not in known)
        parts = []
        if ours:
            parts.append(f"{', '.join(ours)} cannot be changed through the API on this appliance (set through "
                         "its configuration, CARGOHOLD_* settings)")
        if others:
            parts.append(f"{', '.join(k[:60] for k in others[:20])} "
                         f"{'is' if len(others) == 1 else 'are'} not supported on this appliance")
        raise HarborError("BAD_REQUEST", "; ".join(parts) + "; nothing was changed", 400)

    @bp.get("/permissions")
    def permissions() -> Response:
        p = principal()
        if p is None:
            raise HarborError("UNAUTHORIZED", "authentication required", 401)
        _, every = access.projects.list([], [], 0, -1)
        if not p.admin and not any(access.may_manage(p, project) for project in every):
            raise HarborError("FORBIDDEN", "only system administrators and project administrators, who create "
                              "robot accounts, may list the permissions", 403)
        return jsonify({"system": [{"resource": "*", "action": "*"}],
                        "project": [{"resource": r, "action": a} for r, a in _PROJECT_PERMISSIONS]})

    @bp.post("/projects/<ref>/repositories/<repo>/artifacts")
    def copy(ref: str, repo: str) -> Response:
        _capped_body()  # Harbor's copy takes no body; one is read (bounded) and ignored like Harbor does
        project = find_project(ref)
        target = f"{project.name}/{urllib.parse.unquote(repo)}"
        source = CopySource.parse(request.args.get("from"))
        p = principal()
        if not access.allowed(p, "pull", source.repository):
            if p is None:
                raise HarborError("UNAUTHORIZED", "authentication required", 401)
            raise HarborError("FORBIDDEN", f"{p.username} may not pull {source.repository}", 403)
        if not access.allowed(p, "push", target):
            if p is None:
                raise HarborError("UNAUTHORIZED", "authentication required", 401)
            raise HarborError("FORBIDDEN", f"{p.username} may not push to {target}", 403)
        digest = copy_artifact(access.registry, source, target)
        record("create", "artifact", f"{target}@{digest} (copied from {source.repository}"
                                     f"{'@' if ':' in source.reference else ':'}{source.reference})")
        return _created(None, f"{PREFIX}/projects/{project.name}/repositories/"
                              f"{urllib.parse.quote(urllib.parse.unquote(repo), safe='').replace('%', '%25')}"
                              f"/artifacts/{digest}")
