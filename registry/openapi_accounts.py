"""The OpenAPI paths and schemas of users, project metadata/artifacts/logs and quotas (`registry.openapi` merges them).

Kept beside `registry.openapi` so the routes of `registry.harbor_users`,
`registry.harbor_projects` and `registry.harbor_quotas` are described in one
place, with Harbor's operation shapes (UserResp, UserCreationReq,
UserProfile, PasswordReq, UserSysAdminFlag, Permission, ProjectDeletable,
Quota, QuotaUpdateReq).
"""

from __future__ import annotations

from typing import Any


def schemas() -> dict[str, Any]:
    from registry.openapi import _BOOL, _INT, _STR

    storage = {"type": "object", "properties": {"storage": {"type": "integer", "format": "int64"}}}
    return {
        "UserResp": {"type": "object", "properties": {
            "user_id": _INT, "username": _STR, "email": _STR, "realname": _STR, "comment": _STR,
            "sysadmin_flag": _BOOL, "admin_role_in_auth": _BOOL, "creation_time": _STR, "update_time": _STR}},
        "UserSearchRespItem": {"type": "object", "properties": {"user_id": _INT, "username": _STR}},
        "UserCreationReq": {"type": "object", "required": ["username", "password"], "properties": {
            "username": {"type": "string", "maxLength": 255}, "password": {"type": "string", "maxLength": 1024},
            "email": {"type": "string", "maxLength": 255}, "realname": {"type": "string", "maxLength": 255},
            "comment": {"type": "string", "maxLength": 1024}}},
        "UserProfile": {"type": "object", "properties": {
            "email": {"type": "string", "maxLength": 255}, "realname": {"type": "string", "maxLength": 255},
            "comment": {"type": "string", "maxLength": 1024}}},
        "PasswordReq": {"type": "object", "properties": {"old_password": _STR, "new_password": _STR}},
        "UserSysAdminFlag": {"type": "object", "properties": {"sysadmin_flag": _BOOL}},
        "UserPermission": {"type": "object", "properties": {"resource": _STR, "action": _STR}},
        "ProjectMetadataMap": {"type": "object", "additionalProperties": _STR},
        "ProjectDeletable": {"type": "object", "properties": {"deletable": _BOOL, "message": _STR}},
        "Quota": {"type": "object", "properties": {
            "id": _INT, "ref": {"type": "object", "properties": {"id": _INT, "name": _STR, "owner_name": _STR}},
            "hard": storage, "used": storage, "creation_time": _STR, "update_time": _STR}},
        "QuotaUpdateReq": {"type": "object", "properties": {"hard": storage}},
    }


def paths() -> dict[str, Any]:
    from registry.openapi import _BOOL, _IS_NAME, _PAGING, _PROJECT, _errors, _ok, _op, _path, _query, _ref

    project = [_PROJECT, _IS_NAME]
    user = _path("user_id", "User id.", {"type": "integer", "minimum": 1})
    meta = _path("meta_name", "Metadata key (public, auto_scan, severity, ...).")
    quota = _path("id", "Quota id (the project's id).", {"type": "integer", "minimum": 1})

    def lst(schema: str) -> dict[str, Any]:
        return {**_ok({"type": "array", "items": _ref(schema)}, listed=True), **_errors(400, 401, 403, 404)}

    done = {**_ok(None), **_errors(400, 401, 403, 404)}
    metadata_list = {
        "get": _op("A project's metadata", {**_ok(_ref("ProjectMetadataMap")), **_errors(401, 403, 404)}, project,
                   tag="projectMetadata"),
        "post": _op("Add or replace metadata keys (project admin)", done, project, _ref("ProjectMetadataMap"),
                    tag="projectMetadata"),
    }
    return {
        "/users": {
            "get": _op("List users (admin)", lst("UserResp"), [*_PAGING, _query("username", "Fuzzy name filter.")],
                       tag="user"),
            "post": _op("Create a user (admin); the appliance's password policy applies",
                        {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 409)}, body=_ref("UserCreationReq"),
                        tag="user"),
        },
        "/users/search": {"get": _op("Search users by name (ids and names only)", lst("UserSearchRespItem"),
                                     [{**_query("username", "Text in the user name."), "required": True},
                                      *_PAGING[:2]], tag="user")},
        "/users/current": {"get": _op("The current user", {**_ok(_ref("UserResp")), **_errors(401, 403)},
                                      tag="user")},
        "/users/current/permissions": {"get": _op(
            "What the current user may do in a scope",
            {**_ok({"type": "array", "items": _ref("UserPermission")}), **_errors(400, 401, 404)},
            [_query("scope", "/system or /project/<id>."), _query("relative", "Resources without the scope.",
                                                                   _BOOL)], tag="user")},
        "/users/{user_id}": {
            "get": _op("Get a user (admin or the user)", {**_ok(_ref("UserResp")), **_errors(401, 403, 404)}, [user],
                       tag="user"),
            "put": _op("Update a user's profile (admin or the user)", done, [user], _ref("UserProfile"), tag="user"),
            "delete": _op("Delete a user (admin; not yourself, not the last admin)",
                          {**_ok(None), **_errors(401, 403, 404, 412)}, [user], tag="user"),
        },
        "/users/{user_id}/password": {"put": _op(
            "Set a password (the user with old_password, or an admin)", {**done, **_errors(429)}, [user],
            _ref("PasswordReq"), tag="user")},
        "/users/{user_id}/sysadmin": {"put": _op(
            "Grant or revoke system administrator (admin; not the last one)", {**done, **_errors(412)}, [user],
            _ref("UserSysAdminFlag"), tag="user")},
        "/projects/{project_name_or_id}/metadatas": metadata_list,
        "/projects/{project_name_or_id}/metadatas/": metadata_list,
        "/projects/{project_name_or_id}/metadatas/{meta_name}": {
            "get": _op("One metadata key", {**_ok(_ref("ProjectMetadataMap")), **_errors(401, 403, 404)},
                       [*project, meta], tag="projectMetadata"),
            "put": _op("Set one metadata key (project admin)", done, [*project, meta], _ref("ProjectMetadataMap"),
                       tag="projectMetadata"),
            "delete": _op("Remove one metadata key (project admin)", {**_ok(None), **_errors(401, 403, 404)},
                          [*project, meta], tag="projectMetadata"),
        },
        "/projects/{project_name_or_id}/_deletable": {"get": _op(
            "Can the project be deleted?", {**_ok(_ref("ProjectDeletable")), **_errors(401, 403, 404)}, project,
            tag="project")},
        "/projects/{project_name_or_id}/artifacts": {"get": _op(
            "Artifacts of every repository of the project", lst("Artifact"),
            [*project, *_PAGING, _query("latest", "Only each repository's newest.", _BOOL),
             _query("with_tag", "Include tags.", _BOOL), _query("with_accessory", "Include accessories.", _BOOL)],
            tag="project")},
        "/projects/{project_name_or_id}/logs": {"get": _op(
            "The project's audit log (project admin or maintainer)", lst("AuditLog"), [*project, *_PAGING],
            tag="project")},
        "/quotas": {"get": _op("List project quotas (admin)", lst("Quota"),
                               [*_PAGING[:2], _query("reference", "project."),
                                _query("reference_id", "A project id."),
                                _query("sort", "id, creation_time, update_time, hard.storage or used.storage; "
                                               "- for descending.")], tag="quota")},
        "/quotas/{id}": {
            "get": _op("Get a quota (admin)", {**_ok(_ref("Quota")), **_errors(401, 403, 404)}, [quota], tag="quota"),
            "put": _op("Set a quota's storage limit (admin; -1 unlimited)", done, [quota], _ref("QuotaUpdateReq"),
                       tag="quota"),
        },
    }
