"""The Harbor-compatible REST API at /api/v2.0: the subset an appliance needs, in Harbor's shapes.

Route table (``{p}`` is a project name or id; ``X-Is-Resource-Name: true``
forces a name; ``{r}`` is a repository name inside the project, URL-encoded
twice as Harbor's clients send it: ``a/b`` is ``a%252Fb``):

    GET                 /ping  /health  /systeminfo  /systeminfo/volumes
    GET POST            /users  (and /users/{id}..., /users/current...: registry.harbor_users)
    GET POST            /projects/{p}/metadatas, _deletable, artifacts, logs   (registry.harbor_projects)
    GET PUT             /quotas, /quotas/{id}                                  (registry.harbor_quotas)
    GET                 /statistics  /search?q=
    GET POST HEAD       /projects                (HEAD: ?project_name=)
    GET PUT DELETE      /projects/{p}
    GET                 /projects/{p}/summary
    GET POST            /projects/{p}/members
    GET PUT DELETE      /projects/{p}/members/{id}
    GET                 /repositories
    GET                 /projects/{p}/repositories
    GET PUT DELETE      /projects/{p}/repositories/{r}
    GET                 /projects/{p}/repositories/{r}/artifacts
    GET DELETE          /projects/{p}/repositories/{r}/artifacts/{reference}
    GET                 /projects/{p}/repositories/{r}/artifacts/{reference}/accessories
    GET POST            /projects/{p}/repositories/{r}/artifacts/{reference}/tags
    DELETE              /projects/{p}/repositories/{r}/artifacts/{reference}/tags/{tag}
    GET POST            /projects/{p}/immutabletagrules          (registry.immutable_api)
    PUT DELETE          /projects/{p}/immutabletagrules/{id}
    GET POST            /labels                                   (registry.labels_api)
    GET PUT DELETE      /labels/{id}
    POST                /projects/{p}/repositories/{r}/artifacts/{reference}/labels
    DELETE              /projects/{p}/repositories/{r}/artifacts/{reference}/labels/{id}
    POST                /projects/{p}/repositories/{r}/artifacts?from=   (copy; registry.system_api)
    GET                 /systeminfo/getcert  /permissions  (registry.system_api)
    GET PUT             /configurations                           (PUT refuses: read-only settings)
    GET POST            /robots
    GET PUT PATCH DELETE /robots/{id}
    GET                 /audit-logs
    GET                 /openapi.json  (also /swagger.json; with the operations other packages add: add_openapi_section)

Conventions: lists take ``page`` (from 1) and ``page_size`` (1-100, default
10) and answer ``X-Total-Count`` and ``Link`` (rel="prev"/"next"); ``q`` takes
Harbor's query syntax (``k=v``, ``k=~v`` fuzzy, ``k={v1 v2}`` any of);
creations answer 201 with ``Location``; other writes answer 200 with no body
and no ``Content-Type`` (as Harbor's go-swagger responders do: a JSON type on
an empty body breaks clients that parse JSON bodies); errors are
``{"errors": [{"code": "NOT_FOUND", "message": "..."}]}``. Credentials are
Basic (users and robots). Every write lands in the audit log.
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from registry.access import (
    ROLES,
    Access,
    AccessError,
    Project,
    Robot,
    TooManyAttempts,
    project_of,
    validate_project_name,
)
from registry.artifacts import Artifacts, Repository, rfc3339
from registry.audit import AuditLog
from registry.auth import Principal
from registry.dbengine import Error as DatabaseError
from registry.dbengine import IntegrityError
from registry.digest import Digest
from registry.errors import RegistryError
from registry.harbor_context import RouteContext
from registry.harbor_projects import add_routes as add_project_routes
from registry.harbor_quotas import add_routes as add_quota_routes
from registry.harbor_users import add_routes as add_user_routes
from registry.health import BLOBSTORE, readiness
from registry.image_trust import ImageTrust
from registry.immutable import ImmutableRules
from registry.immutable_api import add_routes as add_immutable_rule_routes
from registry.labels_api import add_routes as add_label_routes
from registry.names import is_digest_reference
from registry.numbers import MAX_INT64, NumberInvalid, is_ascii_number, parse_number
from registry.openapi import Section, openapi_document
from registry.project_metadata import KEYS as METADATA_KEYS
from registry.project_metadata import validate_all as validate_metadata
from registry.protection import TagProtected
from registry.system_api import SystemSettings
from registry.system_api import add_routes as add_system_routes
from registry.token_api import request_principal
from registry.version import VERSION as APPLIANCE_VERSION

PREFIX = "/api/v2.0"
# The Harbor API level answered (what Harbor clients read from systeminfo); the appliance's own version is
# systeminfo's cargohold_version.
VERSION = "v2.11.0-cargohold"
MAX_PAGE_SIZE = 100
# Largest JSON request body (the biggest real one, a repository description, is 64 KiB).
MAX_JSON_BYTES = 1 << 20
_MAX_ID = MAX_INT64
_REGISTRY_CODES = {"NAME_UNKNOWN": "NOT_FOUND", "MANIFEST_UNKNOWN": "NOT_FOUND", "BLOB_UNKNOWN": "NOT_FOUND",
                   "UNAUTHORIZED": "UNAUTHORIZED", "DENIED": "FORBIDDEN", "TOOMANYREQUESTS": "TOO_MANY_REQUESTS"}


class HarborError(Exception):
    """An error answered in Harbor's shape."""

    def __init__(self, code: str, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.headers = code, message, status, headers or {}


def _bad(message: str) -> HarborError:
    return HarborError("BAD_REQUEST", message, 400)


def harbor_error(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


# -- request helpers -------------------------------------------------------------------


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        return parse_number(text, name, low, high)
    except NumberInvalid as exc:
        raise _bad(exc.message) from None


def _q_number(value: str, key: str) -> int:
    """A number in a ``q`` filter (``q=project_id=3``); 400 naming the key otherwise."""
    try:
        return parse_number(value, f"q {key}")
    except NumberInvalid as exc:
        raise _bad(exc.message) from None


def _bool_arg(name: str, default: bool) -> bool:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise _bad(f"{name} must be true or false, not {text!r}")


def _paging() -> tuple[int, int, int]:
    """(page, page_size, offset) from the query."""
    page = _int_arg("page", 1, 1, 1_000_000)
    size = _int_arg("page_size", 10, 1, MAX_PAGE_SIZE)
    return page, size, (page - 1) * size


def _listed(items: list[Any], total: int, page: int, size: int) -> Response:
    resp = jsonify(items)
    resp.headers["X-Total-Count"] = str(total)
    links = []
    args = {k: v for k, v in request.args.items() if k not in ("page", "page_size")}

    def url(p: int) -> str:
        return f"{request.path}?{urllib.parse.urlencode({**args, 'page': p, 'page_size': size})}"

    if page > 1:
        links.append(f'<{url(page - 1)}>; rel="prev"')
    if page * size < total:
        links.append(f'<{url(page + 1)}>; rel="next"')
    if links:
        resp.headers["Link"] = ", ".join(links)
    return resp


def parse_q(allowed: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Harbor's ``q``: ``k=v`` exact, ``k=~v`` fuzzy; ``k={a b}`` is kept as exact on each (first match)."""
    text = request.args.get("q")
    out: dict[str, tuple[str, str]] = {}
    if not text:
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _bad(f"invalid q {text!r}: expected key=value or key=~value, comma-separated")
        if key not in allowed:
            raise _bad(f"q cannot filter by {key!r}; supported: {', '.join(allowed)}")
        if value.startswith("~"):
            out[key] = ("fuzzy", value[1:])
        elif value.startswith("[") or value.startswith("(") or value.startswith("{"):
            raise _bad(f"q {key}: ranges and lists are not supported here; use {key}=value or {key}=~value")
        else:
            out[key] = ("exact", value)
    return out


def _capped_body() -> bytes:
    """The request body, read into memory only up to MAX_JSON_BYTES; 413 past it."""
    request.max_content_length = MAX_JSON_BYTES  # a longer Content-Length: werkzeug answers 413 unread
    data = request.get_data(cache=True)
    if len(data) >= MAX_JSON_BYTES:  # a chunked body is cut at the cap by werkzeug, not refused
        raise HarborError("BAD_REQUEST", f"the request body is over the {MAX_JSON_BYTES}-byte limit", 413)
    return data


def _json_body() -> dict[str, Any]:
    _capped_body()
    body = request.get_json(force=True, silent=True)  # deep nesting reads as invalid (web.app's JSON provider)
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    return body


def _parse_id(text: str, what: str) -> int:
    if not is_ascii_number(text) or int(text) < 1:  # an id nothing can have is not found, whatever it is
        raise HarborError("NOT_FOUND", f"{what} {text[:40]!r} not found", 404)
    return int(text)


def _empty(status: int = 200) -> Response:
    """A success with no body, as Harbor sends it: no Content-Type either."""
    resp = Response(status=status)
    del resp.headers["Content-Type"]
    return resp


def _created(body: Any, location: str) -> Response:
    resp = jsonify(body) if body is not None else _empty(201)
    resp.status_code = 201
    resp.headers["Location"] = location
    return resp


# -- the blueprint ---------------------------------------------------------------------------


def create_blueprint(access: Access, artifacts: Artifacts, audit: AuditLog, default_project: str,
                     external_url: str | None = None, has_ca_root: Callable[[], bool] = lambda: False,
                     reserve_bytes: int = 0, system: SystemSettings | None = None) -> Blueprint:
    """The /api/v2.0 blueprint; `reserve_bytes`: the free space writes must leave (its health's disk check)."""
    bp = Blueprint("harbor", __name__, url_prefix=PREFIX)
    projects, robots, members = access.projects, access.robots, access.members
    image_trust = ImageTrust(projects.registry)

    def extra_metadata(metadata: dict[str, Any]) -> dict[str, str]:
        """The stored project metadata keys beyond `public` (registry.project_metadata), validated."""
        known = {k: v for k, v in metadata.items() if k in METADATA_KEYS and k != "public"}  # others: ignored
        return validate_metadata(known)

    @bp.before_request
    def _authenticate() -> None:
        g.principal = request_principal(access, None)

    @bp.after_request
    def _no_html(resp: Response) -> Response:
        # Flask labels a bodiless Response text/html; Harbor sends no Content-Type with an empty answer.
        if resp.mimetype == "text/html" and not resp.is_streamed and not resp.direct_passthrough \
                and not resp.get_data():
            del resp.headers["Content-Type"]
        return resp

    @bp.errorhandler(HarborError)
    def _harbor(exc: HarborError) -> Response:
        return harbor_error(exc.code, exc.message, exc.status, exc.headers)

    @bp.errorhandler(AccessError)
    def _access(exc: AccessError) -> Response:
        return harbor_error(exc.code, exc.message, exc.status)

    @bp.errorhandler(RegistryError)
    def _registry(exc: RegistryError) -> Response:
        code = _REGISTRY_CODES.get(exc.code, "BAD_REQUEST" if exc.status < 500 else "INTERNAL_SERVER_ERROR")
        if isinstance(exc, TagProtected):  # Harbor's answer for an immutable tag
            code = "PRECONDITION"
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyAttempts) else {}
        # Registry codes whose status only makes sense on /v2/ (an unsupported digest algorithm is 405 there).
        status = 400 if code == "BAD_REQUEST" and exc.status != 400 and exc.status < 500 else exc.status
        return harbor_error(code, exc.message, status, headers)

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BAD_REQUEST", 415: "UNSUPPORTED_MEDIA_TYPE"}
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return harbor_error(codes.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_SERVER_ERROR"),
                            exc.description or exc.name, status, headers)

    def _integrity(exc: Exception) -> Response:
        # Another table (a release, a bundle) still refers to what was to be deleted.
        return harbor_error("PRECONDITION", "the resource is still in use by other appliance data", 412)

    for integrity_error in IntegrityError:  # each engine's
        bp.register_error_handler(integrity_error, _integrity)

    @bp.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return harbor_error("INTERNAL_SERVER_ERROR", "internal error; see the appliance log", 500)

    def principal() -> Principal | None:
        p: Principal | None = g.get("principal")
        return p

    def require_login() -> Principal:
        p = principal()
        if p is None:
            raise HarborError("UNAUTHORIZED", "authentication required", 401)
        return p

    def forbid(message: str) -> HarborError:
        if principal() is None:
            return HarborError("UNAUTHORIZED", "authentication required", 401)
        return HarborError("FORBIDDEN", message, 403)

    def require_admin() -> Principal:
        p = require_login()
        if not p.admin:
            raise HarborError("FORBIDDEN", "this needs a system administrator", 403)
        return p

    def record(operation: str, resource_type: str, resource: str) -> None:
        p = principal()
        audit.record(p.username if p else "anonymous", operation, resource_type, resource, request.remote_addr or "")

    # -- system

    @bp.get("/ping")
    def ping() -> Response:
        return Response("Pong", mimetype="text/plain")

    @bp.get("/health")
    def health() -> Response:
        # The checks of /readyz (registry.health), in Harbor's shape: "registry" is the blob store. Harbor answers
        # 200 either way; the body says unhealthy and which component is, with why.
        ready = readiness(access.registry.paths, reserve_bytes, access.registry.store)
        names = {BLOBSTORE: "registry"}
        components: list[dict[str, str]] = [{"name": "core", "status": "healthy"}]
        for check in ready.checks:
            component = {"name": names.get(check.name, check.name), "status": "healthy" if check.ok else "unhealthy"}
            if check.error is not None:
                component["error"] = check.error
            components.append(component)
        return jsonify({"status": "healthy" if ready.ok else "unhealthy", "components": components})

    @bp.get("/systeminfo")
    def systeminfo() -> Response:
        base = (external_url or request.host_url).rstrip("/")
        info: dict[str, Any] = {"harbor_version": VERSION, "auth_mode": "db_auth", "self_registration": False,
                                "project_creation_restriction": "adminonly", "has_ca_root": has_ca_root(),
                                "with_notary": False, "with_chartmuseum": False, "read_only": False,
                                "registry_url": urllib.parse.urlsplit(base).netloc, "external_url": base,
                                "registry_storage_provider_name": "filesystem", "notification_enable": False,
                                "primary_auth_mode": False, "banner_message": "",
                                "cargohold_version": APPLIANCE_VERSION}
        return jsonify(info)

    @bp.get("/systeminfo/volumes")
    def volumes() -> Response:
        require_admin()
        usage = shutil.disk_usage(access.registry.paths.root)
        return jsonify({"storage": [{"total": usage.total, "free": usage.free}]})

    def visible_projects() -> list[Project]:
        _, every = projects.list([], [], 0, -1)
        return [pr for pr in every if access.visible(principal(), pr)]

    @bp.get("/statistics")
    def statistics() -> Response:
        require_login()
        visible = visible_projects()
        counts = {pr.name: projects.repository_count(pr.name) for pr in visible}
        public = [pr for pr in visible if pr.public]
        private = [pr for pr in visible if not pr.public]
        body = {"public_project_count": len(public), "private_project_count": len(private),
                "total_project_count": len(visible),
                "public_repo_count": sum(counts[pr.name] for pr in public),
                "private_repo_count": sum(counts[pr.name] for pr in private),
                "total_repo_count": sum(counts.values())}
        p = principal()
        if p is not None and p.admin:
            body["total_storage_consumption"] = artifacts.storage_used()
        return jsonify(body)

    @bp.get("/search")
    def search() -> Response:
        term = request.args.get("q")
        if not term:
            raise _bad("q is required: the text to search project and repository names for")
        visible = visible_projects()
        found_projects = [project_json(pr) for pr in visible if term in pr.name]
        by_name = {pr.name: pr for pr in visible}
        _, repos = artifacts.list_repositories(list(by_name), ("fuzzy", term), 0, 100)
        return jsonify({"project": found_projects, "repository": [
            {"project_id": r.project_id, "project_name": project_of(r.name),
             "project_public": by_name[project_of(r.name)].public, "repository_name": r.name,
             "pull_count": 0, "artifact_count": r.artifact_count} for r in repos]})

    # -- projects

    def project_json(project: Project) -> dict[str, Any]:
        role = access.role_of(principal(), project)
        return {"project_id": project.id, "name": project.name, "owner_id": project.owner_id or 1,
                "owner_name": "admin", "creation_time": rfc3339(project.created_at),
                "update_time": rfc3339(project.updated_at), "deleted": False,
                "repo_count": projects.repository_count(project.name),
                # Harbor leaves registry_id out for a project that is no proxy cache (every project here).
                "current_user_role_id": role or 0, "current_user_role_ids": [role] if role else [],
                "togglable": True, "metadata": {**image_trust.metadata(project.id),
                                                "public": "true" if project.public else "false"}}

    def find_project(ref: str) -> Project:
        by_name = request.headers.get("X-Is-Resource-Name", "").lower() == "true"
        found = None
        if not by_name and ref.isascii() and ref.isdigit():  # "²".isdigit() too: only ASCII digits make an id
            found = projects.get_by_id(int(ref)) if is_ascii_number(ref) else None
        else:
            found = projects.get(ref)
        if found is None:
            raise HarborError("NOT_FOUND", f"project {ref} not found", 404)
        return found

    def readable_project(ref: str) -> Project:
        project = find_project(ref)
        if not access.visible(principal(), project):
            raise forbid(f"no access to project {project.name}")
        return project

    def managed_project(ref: str) -> Project:
        project = find_project(ref)
        if not access.may_manage(principal(), project):
            raise forbid(f"only administrators of project {project.name} may change it")
        return project

    @bp.get("/projects")
    def list_projects() -> Response:
        if request.method == "HEAD":
            # Harbor's existence check: HEAD /projects?project_name=<name>
            name = request.args.get("project_name")
            if not name:
                raise _bad("project_name is required")
            return Response(status=200 if projects.get(name) else 404)
        page, size, offset = _paging()
        q = parse_q(("name", "public", "project_id"))
        where: list[str] = []
        params: list[Any] = []
        name = request.args.get("name")
        if name:
            q["name"] = ("fuzzy", name)
        if request.args.get("public") not in (None, ""):
            q["public"] = ("exact", "true" if _bool_arg("public", False) else "false")
        for key, (kind, value) in q.items():
            if key == "name":
                where.append("p.name LIKE ? ESCAPE '\\'" if kind == "fuzzy" else "p.name = ?")
                params.append("%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                              if kind == "fuzzy" else value)
            elif key == "public":
                if value not in ("true", "false"):
                    raise _bad(f"public must be true or false, not {value!r}")
                where.append("p.public = ?")
                params.append(int(value == "true"))
            elif key == "project_id":
                where.append("p.id = ?")
                params.append(_q_number(value, "project_id"))
        p = principal()
        if p is None or not p.admin:
            names = [pr.name for pr in visible_projects()]
            where.append(f"p.name IN ({','.join('?' * len(names))})" if names else "0")
            params += names
        total, found = projects.list(where, params, offset, size)
        return _listed([project_json(pr) for pr in found], total, page, size)


    @bp.post("/projects")
    def create_project() -> Response:
        p = require_login()
        if not p.admin:
            raise HarborError("FORBIDDEN", "only system administrators may create projects", 403)
        body = _json_body()
        name = validate_project_name(body.get("project_name"))
        public = body.get("public")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise _bad("metadata must be an object")
        if "public" in metadata:
            if metadata["public"] not in ("true", "false", True, False):
                raise _bad("metadata.public must be \"true\" or \"false\"")
            public = metadata["public"] in ("true", True)
        if public is not None and not isinstance(public, bool):
            raise _bad("public must be true or false")
        limit = body.get("storage_limit", -1)
        if not isinstance(limit, int) or isinstance(limit, bool) or not -1 <= limit <= _MAX_ID:
            raise _bad("storage_limit must be -1 (unlimited) or a number of bytes")
        if body.get("registry_id") is not None:
            raise _bad("proxy-cache projects (registry_id) are not supported on this appliance")
        extra = extra_metadata(metadata)
        project = projects.create(name, bool(public), p.id if p.kind == "user" else None, limit)
        if extra:
            image_trust.set_metadata(project.id, extra)
        if p.kind == "user" and p.id is not None:
            members.add(project, p.id, 1)
        record("create", "project", project.name)
        return _created(None, f"{PREFIX}/projects/{project.id}")

    @bp.get("/projects/<ref>")
    def get_project(ref: str) -> Response:
        return jsonify(project_json(readable_project(ref)))

    @bp.put("/projects/<ref>")
    def update_project(ref: str) -> Response:
        project = managed_project(ref)
        body = _json_body()
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise _bad("metadata must be an object")
        public: bool | None = None
        if "public" in metadata:
            if metadata["public"] not in ("true", "false", True, False):
                raise _bad("metadata.public must be \"true\" or \"false\"")
            public = metadata["public"] in ("true", True)
        limit = body.get("storage_limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or not -1 <= limit <= _MAX_ID):
            raise _bad("storage_limit must be -1 (unlimited) or a number of bytes")
        extra = extra_metadata(metadata)
        projects.update(project, public, limit)
        if extra:
            image_trust.set_metadata(project.id, extra)
        record("update", "project", project.name)
        return Response(status=200)

    @bp.delete("/projects/<ref>")
    def delete_project(ref: str) -> Response:
        project = managed_project(ref)
        if project.name == default_project:
            raise HarborError("PRECONDITION", f"{project.name} is the appliance's default project, which bundle "
                              "imports and edge hosts use; it cannot be deleted", 412)
        projects.delete(project)
        record("delete", "project", project.name)
        return Response(status=200)

    @bp.get("/projects/<ref>/summary")
    def project_summary(ref: str) -> Response:
        project = readable_project(ref)
        roles = [m.role for m in members.list(project)]
        return jsonify({"repo_count": projects.repository_count(project.name),
                        "project_admin_count": roles.count(1), "maintainer_count": roles.count(4),
                        "developer_count": roles.count(2), "guest_count": roles.count(3),
                        "limited_guest_count": roles.count(5),
                        "quota": {"hard": {"storage": project.storage_limit},
                                  "used": {"storage": artifacts.storage_used(project.name)}}})

    # -- members

    @bp.get("/projects/<ref>/members")
    def list_members(ref: str) -> Response:
        project = managed_project(ref)
        page, size, offset = _paging()
        found = members.list(project)
        entity = request.args.get("entityname")
        if entity:
            found = [m for m in found if entity in m.username]
        return _listed([m.to_json() for m in found[offset:offset + size]], len(found), page, size)

    @bp.post("/projects/<ref>/members")
    def add_member(ref: str) -> Response:
        project = managed_project(ref)
        body = _json_body()
        role = body.get("role_id")
        user = body.get("member_user")
        if not isinstance(role, int) or isinstance(role, bool) or role not in ROLES:
            raise _bad(f"role_id must be one of {sorted(ROLES)}")
        if not isinstance(user, dict):
            raise _bad("member_user is required: {\"username\": \"...\"} or {\"user_id\": N}")
        found = None
        if isinstance(user.get("username"), str):
            found = access.users.get(username=user["username"])
        elif isinstance(user.get("user_id"), int) and 0 < user["user_id"] <= _MAX_ID:
            found = access.users.get(user_id=user["user_id"])
        if found is None:
            raise HarborError("NOT_FOUND", "the member user does not exist", 404)
        member = members.add(project, int(found["user_id"]), role)  # type: ignore[call-overload]
        record("create", "member", f"{project.name}:{member.username}")
        return _created(None, f"{PREFIX}/projects/{project.id}/members/{member.id}")

    def find_member(project: Project, mid: str) -> Any:
        member = members.get(project, _parse_id(mid, "member"))
        if member is None:
            raise HarborError("NOT_FOUND", f"member {mid} not found in project {project.name}", 404)
        return member

    @bp.get("/projects/<ref>/members/<mid>")
    def get_member(ref: str, mid: str) -> Response:
        project = managed_project(ref)
        return jsonify(find_member(project, mid).to_json())

    @bp.put("/projects/<ref>/members/<mid>")
    def update_member(ref: str, mid: str) -> Response:
        project = managed_project(ref)
        member = find_member(project, mid)
        role = _json_body().get("role_id")
        if not isinstance(role, int) or isinstance(role, bool) or role not in ROLES:
            raise _bad(f"role_id must be one of {sorted(ROLES)}")
        members.update(member, role)
        record("update", "member", f"{project.name}:{member.username}")
        return Response(status=200)

    @bp.delete("/projects/<ref>/members/<mid>")
    def delete_member(ref: str, mid: str) -> Response:
        project = managed_project(ref)
        member = find_member(project, mid)
        members.remove(member)
        record("delete", "member", f"{project.name}:{member.username}")
        return Response(status=200)

    # -- repositories

    @bp.get("/repositories")
    def list_all_repositories() -> Response:
        page, size, offset = _paging()
        q = parse_q(("name",))
        p = principal()
        names = None if p is not None and p.admin else [pr.name for pr in visible_projects()]
        total, repos = artifacts.list_repositories(names, q.get("name"), offset, size)
        return _listed([r.to_json() for r in repos], total, page, size)

    @bp.get("/projects/<ref>/repositories")
    def list_repositories(ref: str) -> Response:
        project = readable_project(ref)
        page, size, offset = _paging()
        q = parse_q(("name",))
        total, repos = artifacts.list_repositories([project.name], q.get("name"), offset, size)
        return _listed([r.to_json() for r in repos], total, page, size)

    def repository(ref: str, repo: str, action: str = "pull") -> Repository:
        project = find_project(ref)
        name = f"{project.name}/{urllib.parse.unquote(repo)}"
        if not access.allowed(principal(), action, name):
            if action == "pull" or not access.allowed(principal(), "pull", name):
                raise forbid(f"no access to repository {name}")
            raise forbid(f"{require_login().username} may not {action} in {name}")
        return artifacts.repository(name)

    @bp.get("/projects/<ref>/repositories/<repo>")
    def get_repository(ref: str, repo: str) -> Response:
        return jsonify(repository(ref, repo).to_json())

    @bp.put("/projects/<ref>/repositories/<repo>")
    def update_repository(ref: str, repo: str) -> Response:
        found = repository(ref, repo, "push")
        description = _json_body().get("description", "")
        if not isinstance(description, str) or len(description) > 65536:
            raise _bad("description must be a string of at most 65536 characters")
        artifacts.set_description(found.name, description)
        record("update", "repository", found.name)
        return Response(status=200)

    @bp.delete("/projects/<ref>/repositories/<repo>")
    def delete_repository(ref: str, repo: str) -> Response:
        found = repository(ref, repo, "delete")
        artifacts.delete_repository(found.name)
        record("delete", "repository", found.name)
        return Response(status=200)

    # -- artifacts and tags

    def artifact_ref(found: Repository, reference: str) -> str:
        reference = urllib.parse.unquote(reference)
        return f"{found.name}@{reference}" if is_digest_reference(reference) else f"{found.name}:{reference}"

    @bp.get("/projects/<ref>/repositories/<repo>/artifacts")
    def list_artifacts(ref: str, repo: str) -> Response:
        found = repository(ref, repo)
        page, size, offset = _paging()
        q = parse_q(("digest", "tags"))
        total, items = artifacts.list_artifacts(found, q, offset, size, _bool_arg("with_tag", True),
                                                _bool_arg("with_accessory", False))
        return _listed(items, total, page, size)

    @bp.get("/projects/<ref>/repositories/<repo>/artifacts/<reference>")
    def get_artifact(ref: str, repo: str, reference: str) -> Response:
        found = repository(ref, repo)
        return jsonify(artifacts.artifact(found, urllib.parse.unquote(reference), _bool_arg("with_tag", True),
                                          _bool_arg("with_accessory", False)))

    @bp.delete("/projects/<ref>/repositories/<repo>/artifacts/<reference>")
    def delete_artifact(ref: str, repo: str, reference: str) -> Response:
        found = repository(ref, repo, "delete")
        digest = artifacts.delete_artifact(found, urllib.parse.unquote(reference))
        record("delete", "artifact", f"{found.name}@{digest}")
        return Response(status=200)

    @bp.get("/projects/<ref>/repositories/<repo>/artifacts/<reference>/accessories")
    def list_accessories(ref: str, repo: str, reference: str) -> Response:
        found = repository(ref, repo)
        page, size, offset = _paging()
        digest = artifacts.resolve(found, urllib.parse.unquote(reference))
        items = artifacts.accessories(found, Digest.parse(str(digest)))
        return _listed(items[offset:offset + size], len(items), page, size)

    @bp.get("/projects/<ref>/repositories/<repo>/artifacts/<reference>/tags")
    def list_tags(ref: str, repo: str, reference: str) -> Response:
        found = repository(ref, repo)
        page, size, offset = _paging()
        total, items = artifacts.tags(found, urllib.parse.unquote(reference), offset, size)
        return _listed(items, total, page, size)

    @bp.post("/projects/<ref>/repositories/<repo>/artifacts/<reference>/tags")
    def create_tag(ref: str, repo: str, reference: str) -> Response:
        found = repository(ref, repo, "push")
        tag = _json_body().get("name")
        artifacts.create_tag(found, urllib.parse.unquote(reference), tag)
        record("create", "tag", f"{found.name}:{tag}")
        return _created(None, f"{request.path}/{tag}")

    @bp.delete("/projects/<ref>/repositories/<repo>/artifacts/<reference>/tags/<tag>")
    def delete_tag(ref: str, repo: str, reference: str, tag: str) -> Response:
        found = repository(ref, repo, "delete")
        artifacts.delete_tag(found, urllib.parse.unquote(reference), tag)
        record("delete", "tag", f"{found.name}:{tag}")
        return Response(status=200)

    add_immutable_rule_routes(bp, ImmutableRules(access.registry), readable_project, managed_project, record)
    # Users, project metadata/artifacts/logs and quotas: their own modules, sharing this blueprint's checks.
    context = RouteContext(access, artifacts, audit, default_project, principal, require_login, require_admin,
                           forbid, find_project, readable_project, managed_project, record)
    for add_routes in (add_user_routes, add_project_routes, add_quota_routes):
        add_routes(bp, context)
    add_label_routes(bp, access, artifacts, principal, repository, record)
    add_system_routes(bp, access, system or SystemSettings(), principal, find_project, record)

    # -- robots

    def robot_project(robot_level: str, project_id: int | None) -> Project | None:
        return projects.get_by_id(project_id) if robot_level == "project" and project_id else None

    def manageable_robot(robot_id: str) -> Robot:
        robot = robots.get(_parse_id(robot_id, "robot"))
        if robot is None:
            raise HarborError("NOT_FOUND", f"robot {robot_id} not found", 404)
        if not access.may_manage(principal(), robot_project(robot.level, robot.project_id)):
            raise forbid("only administrators (of the robot's project) may manage it")
        return robot

    @bp.get("/robots")
    def list_robots() -> Response:
        page, size, offset = _paging()
        q = parse_q(("name", "Level", "ProjectID"))
        where: list[str] = []
        params: list[Any] = []
        for key, (kind, value) in q.items():
            if key == "name":
                where.append("r.name LIKE ? ESCAPE '\\'" if kind == "fuzzy" else "r.name = ?")
                params.append("%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                              if kind == "fuzzy" else value)
            elif key == "Level":
                where.append("r.level = ?")
                params.append(value)
            elif key == "ProjectID":
                where.append("r.project_id = ?")
                params.append(_q_number(value, "ProjectID"))
        p = require_login()
        if not p.admin:
            managed = [pr.id for pr in visible_projects() if access.may_manage(p, pr)]
            where.append(f"r.project_id IN ({','.join('?' * len(managed))})" if managed else "0")
            params += managed
        total, found = robots.list(where, params, offset, size)
        return _listed([r.to_json() for r in found], total, page, size)

    @bp.post("/robots")
    def create_robot() -> Response:
        p = require_login()
        body = _json_body()
        level = body.get("level")
        target: Project | None = None
        if level == "project":
            perms = body.get("permissions")
            namespace = perms[0].get("namespace") if isinstance(perms, list) and perms and isinstance(
                perms[0], dict) else None
            target = projects.get(namespace) if isinstance(namespace, str) else None
        if not p.admin and (level != "project" or not access.may_manage(p, target)):
            raise HarborError("FORBIDDEN", "only system administrators, or administrators of the project for a "
                              "project-level robot, may create robots", 403)
        robot, secret = robots.create(body, p.username)
        record("create", "robot", robot.name)
        return _created({"id": robot.id, "name": robot.name, "secret": secret,
                         "creation_time": rfc3339(robot.created_at), "expires_at": robot.expires_at},
                        f"{PREFIX}/robots/{robot.id}")

    @bp.get("/robots/<robot_id>")
    def get_robot(robot_id: str) -> Response:
        return jsonify(manageable_robot(robot_id).to_json())

    @bp.put("/robots/<robot_id>")
    def update_robot(robot_id: str) -> Response:
        robot = manageable_robot(robot_id)
        robots.update(robot, _json_body())
        record("update", "robot", robot.name)
        return Response(status=200)

    @bp.patch("/robots/<robot_id>")
    def refresh_robot_secret(robot_id: str) -> Response:
        robot = manageable_robot(robot_id)
        try:
            body = request.get_json(force=True, silent=True) if _capped_body() else {}
        except RecursionError:  # as in _json_body: deep nesting is bad input, not a 500
            body = None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object: {} or {\"secret\": \"...\"}")
        secret = robots.refresh(robot, body.get("secret"))
        record("update", "robot", f"{robot.name} (secret refreshed)")
        return jsonify({"secret": secret})

    @bp.delete("/robots/<robot_id>")
    def delete_robot(robot_id: str) -> Response:
        robot = manageable_robot(robot_id)
        robots.delete(robot)
        record("delete", "robot", robot.name)
        return Response(status=200)

    # -- audit logs, OpenAPI

    @bp.get("/audit-logs")
    def audit_logs() -> Response:
        require_admin()
        page, size, offset = _paging()
        q = parse_q(("username", "operation", "resource_type", "resource", "source_ip"))
        total, entries = audit.list(q, offset, size)
        return _listed([e.to_json() for e in entries], total, page, size)

    @bp.get("/openapi.json")
    @bp.get("/swagger.json")
    def openapi() -> Response:
        return jsonify(openapi_document(request.host_url.rstrip("/") + PREFIX,
                                        current_app.extensions.get(OPENAPI_SECTIONS, ())))

    # Anything else under /api/v2.0 answers in Harbor's shape too, 405 with Allow where the path exists.
    @bp.route("/<path:rest>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def _fallback(rest: str) -> Response:
        adapter = current_app.url_map.bind_to_environ(request.environ)
        allowed = []
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            try:
                endpoint, _ = adapter.match(request.path, method=method)
            except HTTPException:
                continue
            if endpoint != "harbor._fallback":
                allowed.append(method)
        if allowed:
            raise MethodNotAllowed(valid_methods=allowed)
        raise NotFound(f"no such endpoint: {request.method} {request.path}")

    return bp


OPENAPI_SECTIONS = "cargohold.openapi_sections"


def add_openapi_section(app: Flask, section: Section) -> None:
    """Describe in /api/v2.0/openapi.json operations another package's blueprint serves under /api/v2.0."""
    app.extensions.setdefault(OPENAPI_SECTIONS, []).append(section)


def register_audit(app: Flask, audit: AuditLog) -> None:
    """Record the /v2/ writes that change what is served: manifest pushes and deletes, tag and blob deletes."""

    @app.after_request
    def _audit_registry_writes(resp: Response) -> Response:
        if request.blueprint != "distribution" or resp.status_code >= 400 or not request.view_args:
            return resp
        endpoint = (request.endpoint or "").rpartition(".")[2]
        name, reference = request.view_args.get("name"), request.view_args.get("reference")
        p: Principal | None = g.get("principal")
        who, where = (p.username if p else "anonymous"), request.remote_addr or ""
        try:
            if endpoint == "put_manifest":
                audit.record(who, "create", "artifact", f"{name}:{reference}"
                             if not is_digest_reference(str(reference)) else f"{name}@{reference}", where)
            elif endpoint == "delete_manifest":
                if is_digest_reference(str(reference)):
                    audit.record(who, "delete", "artifact", f"{name}@{reference}", where)
                else:
                    audit.record(who, "delete", "tag", f"{name}:{reference}", where)
            elif endpoint == "delete_blob":
                audit.record(who, "delete", "blob", f"{name}@{request.view_args.get('digest')}", where)
        except DatabaseError:
            # The write itself succeeded; say so in the log rather than fail the client.
            app.logger.exception("could not record %s on %s in the audit log", endpoint, name)
        return resp
