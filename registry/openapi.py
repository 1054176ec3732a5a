"""The OpenAPI 3.0 document of the /api/v2.0 subset this appliance implements.

Served at /api/v2.0/openapi.json (and /swagger.json, where Harbor's clients
look). It describes only what `registry.harbor` answers, with Harbor's
parameter names and shapes, so property-based tests (schemathesis) and
generated clients see the real surface.
"""

from __future__ import annotations

from typing import Any

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_BOOL: dict[str, Any] = {"type": "boolean"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema or _STR}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _STR}


_PAGING = [_query("page", "Page number, from 1.", {"type": "integer", "minimum": 1, "default": 1}),
           _query("page_size", "Items per page (at most 100).",
                  {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}),
           _query("q", "Harbor query: key=value (exact) or key=~value (fuzzy), comma-separated.")]
_PROJECT = _path("project_name_or_id", "Project name, or id (X-Is-Resource-Name: true forces a name).")
_IS_NAME = {"name": "X-Is-Resource-Name", "in": "header", "required": False, "schema": _BOOL,
            "description": "true: project_name_or_id is a name."}
_REPO = _path("repository_name", "Repository name inside the project, URL-encoded twice (a/b is a%252Fb).")
_REFERENCE = _path("reference", "A tag, or a digest (sha256:...).")
_ROBOT = _path("robot_id", "Robot id.", {"type": "integer", "minimum": 1})
_MEMBER = _path("mid", "Member id.", {"type": "integer", "minimum": 1})
_RULE = _path("immutable_rule_id", "Immutable tag rule id.", {"type": "integer", "minimum": 1})


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
            412: "Precondition failed", 429: "Too many failed logins"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ref("Errors")}}}
            for c in codes}


def _ok(schema: dict[str, Any] | None, description: str = "Success", status: str = "200",
        listed: bool = False) -> dict[str, Any]:
    resp: dict[str, Any] = {"description": description}
    if schema is not None:
        resp["content"] = {"application/json": {"schema": schema}}
    if listed:
        resp["headers"] = {"X-Total-Count": {"schema": _INT, "description": "Total items"},
                           "Link": {"schema": _STR, "description": "prev/next pages"}}
    if status == "201":
        resp["headers"] = {"Location": {"schema": _STR, "description": "The created resource"}}
    return {status: resp}


def _op(summary: str, responses: dict[str, Any], params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, tag: str = "") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, "tags": [tag] if tag else []}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _schemas() -> dict[str, Any]:
    access_item = {"type": "object", "properties": {"resource": {"type": "string",
                                                                 "enum": ["repository", "artifact", "tag", "*"]},
                                                    "action": {"type": "string", "enum": ["pull", "push", "delete",
                                                                                          "list", "read", "create",
                                                                                          "*"]}}}
    permission = {"type": "object", "properties": {"kind": {"type": "string", "enum": ["project", "system"]},
                                                   "namespace": _STR,
                                                   "access": {"type": "array", "items": access_item}}}
    return {
        "Errors": {"type": "object", "properties": {"errors": {"type": "array", "items": {
            "type": "object", "properties": {"code": _STR, "message": _STR}}}}},
        "Project": {"type": "object", "properties": {
            "project_id": _INT, "name": _STR, "owner_id": _INT, "owner_name": _STR, "creation_time": _STR,
            "update_time": _STR, "deleted": _BOOL, "repo_count": _INT, "current_user_role_id": _INT,
            "togglable": _BOOL, "metadata": {"type": "object", "properties": {
                "public": _STR, "enable_content_trust_cosign": _STR}}}},
        "ProjectReq": {"type": "object", "properties": {
            "project_name": {"type": "string", "maxLength": 255}, "public": _BOOL,
            "metadata": {"type": "object", "properties": {
                "public": {"type": "string", "enum": ["true", "false"]},
                "enable_content_trust_cosign": {"type": "string", "enum": ["true", "false"]}}},
            "storage_limit": {"type": "integer", "format": "int64"}}},
        "ProjectSummary": {"type": "object", "properties": {
            "repo_count": _INT, "project_admin_count": _INT, "maintainer_count": _INT, "developer_count": _INT,
            "guest_count": _INT, "limited_guest_count": _INT, "quota": {"type": "object"}}},
        "ProjectMember": {"type": "object", "properties": {
            "role_id": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
            "member_user": {"type": "object", "properties": {"username": _STR, "user_id": _INT}}}},
        "ProjectMemberEntity": {"type": "object", "properties": {
            "id": _INT, "project_id": _INT, "entity_id": _INT, "entity_name": _STR, "entity_type": _STR,
            "role_id": _INT, "role_name": _STR}},
        "RoleRequest": {"type": "object", "properties": {"role_id": {"type": "integer", "enum": [1, 2, 3, 4, 5]}}},
        "Repository": {"type": "object", "properties": {
            "id": _INT, "project_id": _INT, "name": _STR, "description": _STR, "artifact_count": _INT,
            "pull_count": _INT, "creation_time": _STR, "update_time": _STR}},
        "RepositoryUpdate": {"type": "object", "properties": {"description": _STR}},
        "Tag": {"type": "object", "properties": {
            "id": _INT, "repository_id": _INT, "artifact_id": _INT, "name": _STR, "push_time": _STR,
            "immutable": _BOOL}},
        "TagReq": {"type": "object", "required": ["name"], "properties": {"name": _STR}},
        "Artifact": {"type": "object", "properties": {
            "id": _INT, "type": _STR, "media_type": _STR, "manifest_media_type": _STR, "project_id": _INT,
            "repository_id": _INT, "repository_name": _STR, "digest": _STR, "size": _INT, "push_time": _STR,
            "tags": {"type": "array", "nullable": True, "items": _ref("Tag")},
            "references": {"type": "array", "nullable": True, "items": {"type": "object"}},
            "accessories": {"type": "array", "nullable": True, "items": _ref("Accessory")}}},
        "Accessory": {"type": "object", "properties": {
            "id": _INT, "artifact_id": _INT, "subject_artifact_digest": _STR, "digest": _STR, "size": _INT,
            "type": _STR, "creation_time": _STR}},
        "Permission": permission,
        "ImmutableSelector": {"type": "object", "properties": {
            "kind": {"type": "string", "enum": ["doublestar"]},
            "decoration": {"type": "string", "enum": ["matches", "excludes", "repoMatches", "repoExcludes"]},
            "pattern": {"type": "string", "description": "doublestar subset: **, *, ?, {a,b}"}}},
        "ImmutableRule": {"type": "object", "properties": {
            "id": _INT, "priority": _INT, "disabled": _BOOL,
            "action": {"type": "string", "enum": ["immutable"]},
            "template": {"type": "string", "enum": ["immutable_template"]},
            "params": {"type": "object"},
            "tag_selectors": {"type": "array", "items": _ref("ImmutableSelector"),
                              "description": "Exactly one selector, decoration matches or excludes."},
            "scope_selectors": {"type": "object", "properties": {"repository": {
                "type": "array", "items": _ref("ImmutableSelector"),
                "description": "Exactly one selector, decoration repoMatches or repoExcludes; the pattern is "
                               "matched against the repository name inside the project."}}}}},
        "RobotCreate": {"type": "object", "properties": {
            "name": _STR, "description": _STR, "level": {"type": "string", "enum": ["system", "project"]},
            "duration": {"type": "integer", "minimum": -1}, "disable": _BOOL, "secret": _STR,
            "permissions": {"type": "array", "items": _ref("Permission")}}},
        "RobotCreated": {"type": "object", "properties": {
            "id": _INT, "name": _STR, "secret": _STR, "creation_time": _STR, "expires_at": _INT}},
        "Robot": {"type": "object", "properties": {
            "id": _INT, "name": _STR, "description": _STR, "level": _STR, "duration": _INT, "disable": _BOOL,
            "expires_at": _INT, "editable": _BOOL, "permissions": {"type": "array", "items": _ref("Permission")},
            "creation_time": _STR, "update_time": _STR}},
        "RobotSec": {"type": "object", "properties": {"secret": _STR}},
        "AuditLog": {"type": "object", "properties": {
            "id": _INT, "username": _STR, "operation": _STR, "resource_type": _STR, "resource": _STR,
            "source_ip": _STR, "op_time": _STR}},
        "Statistic": {"type": "object", "properties": {
            "private_project_count": _INT, "private_repo_count": _INT, "public_project_count": _INT,
            "public_repo_count": _INT, "total_project_count": _INT, "total_repo_count": _INT,
            "total_storage_consumption": _INT}},
        "Search": {"type": "object", "properties": {"project": {"type": "array", "items": _ref("Project")},
                                                    "repository": {"type": "array", "items": {"type": "object"}}}},
        "GeneralInfo": {"type": "object", "properties": {"harbor_version": _STR, "auth_mode": _STR,
                                                         "registry_url": _STR, "external_url": _STR,
                                                         "has_ca_root": _BOOL}},
        "SystemInfo": {"type": "object", "properties": {"storage": {"type": "array", "items": {
            "type": "object", "properties": {"total": _INT, "free": _INT}}}}},
        "OverallHealthStatus": {"type": "object", "properties": {"status": _STR, "components": {
            "type": "array", "items": {"type": "object", "properties": {"name": _STR, "status": _STR}}}}},
    }


def openapi_document(server_url: str) -> dict[str, Any]:
    """The document, with `server_url` (``<base>/api/v2.0``) as its server."""
    project = [_PROJECT, _IS_NAME]
    repo = [*project, _REPO]
    art = [*repo, _REFERENCE]
    listed = _errors(400, 401, 403, 404)

    def lst(schema: str) -> dict[str, Any]:
        return {**_ok({"type": "array", "items": _ref(schema)}, listed=True), **listed}

    paths: dict[str, Any] = {
        "/ping": {"get": _op("Ping", {"200": {"description": "Pong", "content": {"text/plain": {"schema": _STR}}}},
                             tag="system")},
        "/health": {"get": _op("Health of the components", _ok(_ref("OverallHealthStatus")), tag="system")},
        "/systeminfo": {"get": _op("General system information", _ok(_ref("GeneralInfo")), tag="system")},
        "/systeminfo/volumes": {"get": _op("Storage volume capacity (admin)",
                                           {**_ok(_ref("SystemInfo")), **_errors(401, 403)}, tag="system")},
        "/statistics": {"get": _op("Project and repository counts", {**_ok(_ref("Statistic")), **_errors(401)},
                                   tag="statistic")},
        "/search": {"get": _op("Search projects and repositories by name",
                               {**_ok(_ref("Search")), **_errors(400)},
                               [{**_query("q", "Text to look for."), "required": True}], tag="search")},
        "/projects": {
            "get": _op("List projects", lst("Project"),
                       [*_PAGING, _query("name", "Fuzzy name filter."), _query("public", "Only public or private.",
                                                                               _BOOL)], tag="project"),
            "head": _op("Does a project exist?", {"200": {"description": "Exists"},
                                                  "404": {"description": "Not found"},
                                                  "400": {"description": "project_name missing"}},
                        [{**_query("project_name", "Project name."), "required": True}], tag="project"),
            "post": _op("Create a project (admin)", {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 409)},
                        body=_ref("ProjectReq"), tag="project"),
        },
        "/projects/{project_name_or_id}": {
            "get": _op("Get a project", {**_ok(_ref("Project")), **_errors(401, 403, 404)}, project, tag="project"),
            "put": _op("Update a project", {**_ok(None), **_errors(400, 401, 403, 404)}, project,
                       _ref("ProjectReq"), tag="project"),
            "delete": _op("Delete an empty project", {**_ok(None), **_errors(401, 403, 404, 412)}, project,
                          tag="project"),
        },
        "/projects/{project_name_or_id}/summary": {
            "get": _op("Project summary", {**_ok(_ref("ProjectSummary")), **_errors(401, 403, 404)}, project,
                       tag="project")},
        "/projects/{project_name_or_id}/members": {
            "get": _op("List members", lst("ProjectMemberEntity"),
                       [*project, *_PAGING[:2], _query("entityname", "Fuzzy user name filter.")], tag="member"),
            "post": _op("Add a member", {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 404, 409)},
                        project, _ref("ProjectMember"), tag="member"),
        },
        "/projects/{project_name_or_id}/members/{mid}": {
            "get": _op("Get a member", {**_ok(_ref("ProjectMemberEntity")), **_errors(401, 403, 404)},
                       [*project, _MEMBER], tag="member"),
            "put": _op("Change a member's role", {**_ok(None), **_errors(400, 401, 403, 404)}, [*project, _MEMBER],
                       _ref("RoleRequest"), tag="member"),
            "delete": _op("Remove a member", {**_ok(None), **_errors(401, 403, 404)}, [*project, _MEMBER],
                          tag="member"),
        },
        "/projects/{project_name_or_id}/immutabletagrules": {
            "get": _op("List a project's immutable tag rules", lst("ImmutableRule"), [*project, *_PAGING[:2]],
                       tag="immutable"),
            "post": _op("Add an immutable tag rule (project admin)",
                        {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 404, 409)}, project,
                        _ref("ImmutableRule"), tag="immutable"),
        },
        "/projects/{project_name_or_id}/immutabletagrules/{immutable_rule_id}": {
            "put": _op("Update, enable or disable an immutable tag rule (project admin)",
                       {**_ok(None), **_errors(400, 401, 403, 404, 409)}, [*project, _RULE], _ref("ImmutableRule"),
                       tag="immutable"),
            "delete": _op("Delete an immutable tag rule (project admin)", {**_ok(None), **_errors(401, 403, 404)},
                          [*project, _RULE], tag="immutable"),
        },
        "/repositories": {"get": _op("List all repositories", lst("Repository"), _PAGING, tag="repository")},
        "/projects/{project_name_or_id}/repositories": {
            "get": _op("List a project's repositories", lst("Repository"), [*project, *_PAGING], tag="repository")},
        "/projects/{project_name_or_id}/repositories/{repository_name}": {
            "get": _op("Get a repository", {**_ok(_ref("Repository")), **_errors(401, 403, 404)}, repo,
                       tag="repository"),
            "put": _op("Update a repository's description", {**_ok(None), **_errors(400, 401, 403, 404)}, repo,
                       _ref("RepositoryUpdate"), tag="repository"),
            "delete": _op("Delete a repository (412 while it holds a protected tag)",
                          {**_ok(None), **_errors(401, 403, 404, 412)}, repo, tag="repository"),
        },
        "/projects/{project_name_or_id}/repositories/{repository_name}/artifacts": {
            "get": _op("List artifacts", lst("Artifact"),
                       [*repo, *_PAGING, _query("with_tag", "Include tags.", _BOOL),
                        _query("with_accessory", "Include accessories.", _BOOL)], tag="artifact")},
        "/projects/{project_name_or_id}/repositories/{repository_name}/artifacts/{reference}": {
            "get": _op("Get an artifact", {**_ok(_ref("Artifact")), **_errors(400, 401, 403, 404)},
                       [*art, _query("with_tag", "Include tags.", _BOOL),
                        _query("with_accessory", "Include accessories.", _BOOL)], tag="artifact"),
            "delete": _op("Delete an artifact and its tags (412 when a protected tag needs it)",
                          {**_ok(None), **_errors(400, 401, 403, 404, 412)}, art,
                          tag="artifact"),
        },
        "/projects/{project_name_or_id}/repositories/{repository_name}/artifacts/{reference}/accessories": {
            "get": _op("List accessories (OCI referrers)", lst("Accessory"), [*art, *_PAGING[:2]], tag="artifact")},
        "/projects/{project_name_or_id}/repositories/{repository_name}/artifacts/{reference}/tags": {
            "get": _op("List an artifact's tags", lst("Tag"), [*art, *_PAGING[:2]], tag="artifact"),
            "post": _op("Tag an artifact", {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 404, 409)},
                        art, _ref("TagReq"), tag="artifact"),
        },
        "/projects/{project_name_or_id}/repositories/{repository_name}/artifacts/{reference}/tags/{tag_name}": {
            "delete": _op("Delete a tag (412 when it is protected)", {**_ok(None), **_errors(400, 401, 403, 404, 412)},
                          [*art, _path("tag_name", "The tag.")], tag="artifact")},
        "/robots": {
            "get": _op("List robots", lst("Robot"), _PAGING, tag="robot"),
            "post": _op("Create a robot (its secret is shown once)",
                        {**_ok(_ref("RobotCreated"), "Created", "201"), **_errors(400, 401, 403, 404, 409)},
                        body=_ref("RobotCreate"), tag="robot"),
        },
        "/robots/{robot_id}": {
            "get": _op("Get a robot", {**_ok(_ref("Robot")), **_errors(401, 403, 404)}, [_ROBOT], tag="robot"),
            "put": _op("Update a robot", {**_ok(None), **_errors(400, 401, 403, 404)}, [_ROBOT], _ref("RobotCreate"),
                       tag="robot"),
            "patch": _op("Refresh a robot's secret", {**_ok(_ref("RobotSec")), **_errors(400, 401, 403, 404)},
                         [_ROBOT], _ref("RobotSec"), tag="robot"),
            "delete": _op("Delete a robot", {**_ok(None), **_errors(401, 403, 404)}, [_ROBOT], tag="robot"),
        },
        "/audit-logs": {"get": _op("List audit log entries (admin)", lst("AuditLog"), _PAGING, tag="auditlog")},
    }
    from registry import openapi_accounts  # users, project metadata/artifacts/logs, quotas

    paths.update(openapi_accounts.paths())
    return {
        "openapi": "3.0.3",
        "info": {"title": "cargohold Harbor-compatible API", "version": "2.0",
                 "description": "The subset of Harbor's /api/v2.0 that cargohold implements."},
        "servers": [{"url": server_url}],
        "security": [{"basic": []}, {}],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
                       "schemas": {**_schemas(), **openapi_accounts.schemas()}},
        "paths": paths,
    }
