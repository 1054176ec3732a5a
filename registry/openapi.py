"""The OpenAPI 3.0 document of the /api/v2.0 subset this appliance implements.

Served at /api/v2.0/openapi.json (and /swagger.json, where Harbor's clients
look). It describes only what `registry.harbor` answers, with Harbor's
parameter names and shapes, so property-based tests (schemathesis) and
generated clients see the real surface.

Operations another package serves under /api/v2.0 (bundles' GC and
retention endpoints) are described beside their routes and handed in as
`Section`s (registered on the app with `registry.harbor.add_openapi_section`),
so this module never imports upward and the document still lists them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}


@dataclass(frozen=True)
class Section:
    """Paths and component schemas of operations another package serves; `openapi_document` merges them."""

    paths: Mapping[str, Any]
    schemas: Mapping[str, Any] = field(default_factory=dict)


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
_LABEL = _path("label_id", "Label id.", {"type": "integer", "minimum": 1})


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
                                                   "access": {"type": "array", "items": _ref("Access")}}}
    return {
        "Errors": {"type": "object", "properties": {"errors": {"type": "array", "items": {
            "type": "object", "properties": {"code": _STR, "message": _STR}}}}},
        "Project": {"type": "object", "properties": {
            "project_id": _INT, "name": _STR, "owner_id": _INT, "owner_name": _STR, "creation_time": _STR,
            "update_time": _STR, "deleted": _BOOL, "repo_count": _INT, "current_user_role_id": _INT,
            "current_user_role_ids": {"type": "array", "items": _INT},
            "togglable": _BOOL, "metadata": {"type": "object", "properties": {
                "public": _STR, "enable_content_trust_cosign": _STR,
                "retention_id": {"type": "string", "description": "The project's retention policy, when it has one "
                                                                  "(set by POST /retentions, removed with it)."}}}}},
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
            "id": _INT, "repository_id": _INT, "artifact_id": _INT, "name": _STR, "push_time": _TIME,
            "pull_time": _TIME, "immutable": _BOOL}},
        "TagReq": {"type": "object", "required": ["name"], "properties": {"name": _STR}},
        "Artifact": {"type": "object", "properties": {
            "id": _INT, "type": _STR, "media_type": _STR, "manifest_media_type": _STR,
            "artifact_type": {"type": "string", "nullable": True}, "project_id": _INT, "repository_id": _INT,
            "repository_name": _STR, "digest": _STR, "size": _INT, "icon": _STR, "push_time": _TIME,
            "pull_time": _TIME,
            "extra_attrs": {"type": "object", "description": "Images: architecture, os, author, created, config."},
            "annotations": {"type": "object", "additionalProperties": _STR},
            "labels": {"type": "array", "items": _ref("Label")},
            "tags": {"type": "array", "items": _ref("Tag")},
            "references": {"type": "array", "items": _ref("Reference")},
            "accessories": {"type": "array", "items": _ref("Accessory")}}},
        "Reference": {"type": "object", "properties": {
            "parent_id": _INT, "child_id": _INT, "child_digest": _STR, "platform": _ref("Platform"),
            "urls": {"type": "array", "items": _STR}}},
        "Platform": {"type": "object", "properties": {"architecture": _STR, "os": _STR, "variant": _STR}},
        "Accessory": {"type": "object", "properties": {
            "id": _INT, "artifact_id": _INT, "subject_artifact_id": {"type": "integer", "nullable": True},
            "subject_artifact_digest": _STR, "subject_artifact_repo": _STR, "digest": _STR, "size": _INT,
            "type": _STR, "icon": _STR, "creation_time": _TIME}},
        "Label": {"type": "object", "properties": {
            "id": _INT, "name": {"type": "string", "maxLength": 128}, "description": _STR,
            "color": {"type": "string", "description": "#RRGGBB or #RGB"},
            "scope": {"type": "string", "enum": ["g", "p"]}, "project_id": _INT, "creation_time": _TIME,
            "update_time": _TIME}},
        "Permission": {"type": "object", "properties": {"resource": _STR, "action": _STR}},
        "Permissions": {"type": "object", "properties": {"system": {"type": "array", "items": _ref("Permission")},
                                                         "project": {"type": "array",
                                                                     "items": _ref("Permission")}}},
        "StringConfigItem": {"type": "object", "properties": {"value": _STR, "editable": _BOOL}},
        "BoolConfigItem": {"type": "object", "properties": {"value": _BOOL, "editable": _BOOL}},
        "IntegerConfigItem": {"type": "object", "properties": {"value": _INT, "editable": _BOOL}},
        "ConfigurationsResponse": {"type": "object", "properties": {
            "auth_mode": _ref("StringConfigItem"), "primary_auth_mode": _ref("BoolConfigItem"),
            "self_registration": _ref("BoolConfigItem"), "project_creation_restriction": _ref("StringConfigItem"),
            "read_only": _ref("BoolConfigItem"), "notification_enable": _ref("BoolConfigItem"),
            "token_expiration": _ref("IntegerConfigItem"), "robot_name_prefix": _ref("StringConfigItem")}},
        "Configurations": {"type": "object", "description": "Refused: the appliance's settings are read-only here.",
                           "properties": {"self_registration": _BOOL, "read_only": _BOOL, "auth_mode": _STR}},
        "Access": access_item,
        "RobotPermission": permission,
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
            "permissions": {"type": "array", "items": _ref("RobotPermission")}}},
        "RobotCreated": {"type": "object", "properties": {
            "id": _INT, "name": _STR, "secret": _STR, "creation_time": _STR, "expires_at": _INT}},
        "Robot": {"type": "object", "properties": {
            "id": _INT, "name": _STR, "description": _STR, "level": _STR, "duration": _INT, "disable": _BOOL,
            "expires_at": _INT, "editable": _BOOL, "permissions": {"type": "array", "items": _ref("RobotPermission")},
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
                                                         "has_ca_root": _BOOL, "cargohold_version": _STR}},
        "SystemInfo": {"type": "object", "properties": {"storage": {"type": "array", "items": {
            "type": "object", "properties": {"total": _INT, "free": _INT}}}}},
        "OverallHealthStatus": {"type": "object", "properties": {"status": _STR, "components": {
            "type": "array", "items": {"type": "object", "properties": {"name": _STR, "status": _STR}}}}},
    }


def _labels_and_system(art: list[dict[str, Any]], repo: list[dict[str, Any]], lst: Any) -> dict[str, Any]:
    """Labels, copy artifact, getcert, configurations and permissions (registry.labels_api, registry.system_api)."""
    label_list = [_query("scope", "g (global) or p (project).", {"type": "string", "enum": ["g", "p"]}),
                  _query("project_id", "The project, with scope p.", {"type": "integer", "minimum": 1}),
                  _query("name", "Fuzzy name filter."), *_PAGING[:2]]
    artifacts = "/projects/{project_name_or_id}/repositories/{repository_name}/artifacts"
    return {
        "/labels": {
            "get": _op("List global labels (scope g) or a project's (scope p)", lst("Label"), label_list,
                       tag="label"),
            "post": _op("Create a label (global: admin; project: its admins and maintainers)",
                        {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 404, 409)}, body=_ref("Label"),
                        tag="label"),
        },
        "/labels/{label_id}": {
            "get": _op("Get a label", {**_ok(_ref("Label")), **_errors(401, 403, 404)}, [_LABEL], tag="label"),
            "put": _op("Change a label's name, description or colour",
                       {**_ok(None), **_errors(400, 401, 403, 404, 409)}, [_LABEL], _ref("Label"), tag="label"),
            "delete": _op("Delete a label (it leaves every artifact)", {**_ok(None), **_errors(401, 403, 404)},
                          [_LABEL], tag="label"),
        },
        artifacts + "/{reference}/labels": {
            "post": _op("Add a label to an artifact (who may push)",
                        {**_ok(None), **_errors(400, 401, 403, 404, 409)}, art,
                        {"type": "object", "required": ["id"], "properties": {"id": _INT}}, tag="artifact")},
        artifacts + "/{reference}/labels/{label_id}": {
            "delete": _op("Remove a label from an artifact", {**_ok(None), **_errors(400, 401, 403, 404)},
                          [*art, _LABEL], tag="artifact")},
        artifacts: {
            "post": _op("Copy an artifact here (pull on the source, push here; 412 for a protected tag)",
                        {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 404, 412)},
                        [*repo, {**_query("from", "<project>/<repository>:<tag> or <project>/<repository>@<digest>"),
                                 "required": True}], tag="artifact")},
        "/systeminfo/getcert": {"get": _op("The appliance's CA certificate (404 when it has none)", {
            "200": {"description": "The CA certificate, PEM, as a download",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            **_errors(404)}, tag="systeminfo")},
        "/configurations": {
            "get": _op("The settings that map to the appliance, read-only (admin)",
                       {**_ok(_ref("ConfigurationsResponse")), **_errors(401, 403)}, tag="configure"),
            "put": _op("Refused, naming the keys: the settings come from the appliance's configuration",
                       {**_ok(None), **_errors(400, 401, 403)}, body=_ref("Configurations"), tag="configure"),
        },
        "/permissions": {"get": _op("What robot accounts can be granted here",
                                    {**_ok(_ref("Permissions")), **_errors(401, 403)}, tag="permissions")},
    }


def openapi_document(server_url: str, sections: Sequence[Section] = ()) -> dict[str, Any]:
    """The document, with `server_url` (``<base>/api/v2.0``) as its server and the `sections` merged in."""
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
                        _query("with_accessory", "Include accessories.", _BOOL),
                        _query("with_label", "Accepted; labels are always included.", _BOOL)], tag="artifact")},
        "/projects/{project_name_or_id}/repositories/{repository_name}/artifacts/{reference}": {
            "get": _op("Get an artifact", {**_ok(_ref("Artifact")), **_errors(400, 401, 403, 404)},
                       [*art, _query("with_tag", "Include tags.", _BOOL),
                        _query("with_accessory", "Include accessories.", _BOOL),
                        _query("with_label", "Accepted; labels are always included.", _BOOL)], tag="artifact"),
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

    for source in (openapi_accounts.paths(), _labels_and_system(art, repo, lst), *(s.paths for s in sections)):
        for path, operations in source.items():  # copy artifact shares a path with the artifact list: merge
            paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.0.3",
        "info": {"title": "cargohold Harbor-compatible API", "version": "2.0",
                 "description": "The subset of Harbor's /api/v2.0 that cargohold implements."},
        "servers": [{"url": server_url}],
        "security": [{"basic": []}, {}],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
                       "schemas": {**_schemas(), **openapi_accounts.schemas(),
                                   **{k: v for s in sections for k, v in s.schemas.items()}}},
        "paths": paths,
    }
