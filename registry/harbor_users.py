"""Harbor's user endpoints, added to the /api/v2.0 blueprint of `registry.harbor`.

    GET POST            /users                         (admin; GET takes q=username=... or username=~...)
    GET                 /users/search?username=        (any signed-in user: ids and names only)
    GET                 /users/current
    GET                 /users/current/permissions     (scope=/system or /project/{id}, relative=true)
    GET PUT DELETE      /users/{user_id}               (GET/PUT: admin or the user; DELETE: admin)
    PUT                 /users/{user_id}/password      (admin, or the user with old_password)
    PUT                 /users/{user_id}/sysadmin      (admin)

Users are `registry.auth.Users`, the same service as ``cargohold admin
add-user`` / ``set-password`` and the UI's password page, so one password
policy (`registry.passwords`) applies everywhere. A changed password ends the
user's UI sessions and bearer tokens (both are bound to the password hash);
a deleted user's go with the account, and so do its project memberships.
Nobody can delete their own account, or delete or demote the last system
administrator (412). Bodies are Harbor's UserCreationReq, UserProfile,
PasswordReq and UserSysAdminFlag; answers UserResp, UserSearchRespItem and
Permission. Every change is audited (resource type ``user``), never with a
password.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from registry.access import ROLES, TooManyAttempts
from registry.artifacts import rfc3339
from registry.auth import Principal, UserError
from registry.errors import RegistryError
from registry.harbor_context import RouteContext
from registry.passwords import PasswordPolicyError

_STATUS = {"BAD_REQUEST": 400, "NOT_FOUND": 404, "CONFLICT": 409, "PRECONDITION": 412}

# Harbor's RBAC vocabulary, for /users/current/permissions: what each project role may do.
_READ = [("project", "read"), ("repository", "list"), ("repository", "read"), ("repository", "pull"),
         ("artifact", "list"), ("artifact", "read"), ("tag", "list"), ("metadata", "list"), ("metadata", "read"),
         ("quota", "read"), ("immutable-tag", "list"), ("accessory", "list")]
_PUSH = [("repository", "push"), ("artifact", "create"), ("tag", "create"), ("repository", "update")]
_DELETE = [("repository", "delete"), ("artifact", "delete"), ("tag", "delete"), ("log", "list"),
           ("member", "list"), ("member", "read"), ("immutable-tag", "create"), ("immutable-tag", "update"),
           ("immutable-tag", "delete"), ("robot", "list"), ("robot", "read")]
_ADMIN = [("project", "update"), ("project", "delete"), ("member", "create"), ("member", "update"),
          ("member", "delete"), ("metadata", "create"), ("metadata", "update"), ("metadata", "delete"),
          ("robot", "create"), ("robot", "update"), ("robot", "delete")]
ROLE_PERMISSIONS: dict[int, list[tuple[str, str]]] = {
    1: _READ + _PUSH + _DELETE + _ADMIN, 4: _READ + _PUSH + _DELETE, 2: _READ + _PUSH,
    3: [*_READ, ("member", "list")], 5: _READ}
SYSTEM_PERMISSIONS = [("audit-log", "list"), ("project", "create"), ("project", "list"), ("user", "create"),
                      ("user", "list"), ("user", "read"), ("user", "update"), ("user", "delete"),
                      ("quota", "list"), ("quota", "read"), ("quota", "update"), ("robot", "create"),
                      ("robot", "list"), ("robot", "read"), ("robot", "update"), ("robot", "delete"),
                      ("catalog", "read")]


def user_json(user: dict[str, object]) -> dict[str, Any]:
    """Harbor's UserResp for a `registry.auth.Users` record."""
    return {"user_id": user["user_id"], "username": user["username"], "email": user["email"],
            "realname": user["realname"], "comment": user["comment"], "sysadmin_flag": user["sysadmin_flag"],
            "admin_role_in_auth": False, "creation_time": rfc3339(float(user["creation_time"])),  # type: ignore[arg-type]
            "update_time": rfc3339(float(user["update_time"]))}  # type: ignore[arg-type]


def add_routes(bp: Blueprint, ctx: RouteContext) -> None:
    """Register the user routes on Harbor's blueprint `bp`."""
    # registry.harbor imports this module; its request helpers are read once it has loaded.
    from registry.harbor import (
        PREFIX,
        HarborError,
        _bad,
        _bool_arg,
        _created,
        _json_body,
        _listed,
        _paging,
        _parse_id,
        harbor_error,
        parse_q,
    )

    users = ctx.access.users

    @bp.errorhandler(UserError)
    def _user_error(exc: UserError) -> Response:
        return harbor_error(exc.code, exc.message, _STATUS.get(exc.code, 400))

    @bp.errorhandler(PasswordPolicyError)
    def _policy(exc: PasswordPolicyError) -> Response:
        return harbor_error("BAD_REQUEST", f"the password is refused: {exc}", 400)  # never quotes the password

    def person() -> Principal:
        p = ctx.require_login()
        if p.kind != "user":
            raise HarborError("FORBIDDEN", f"{p.username} is a robot account, not a user", 403)
        return p

    def found(user_id: str) -> dict[str, object]:
        user = users.get(user_id=_parse_id(user_id, "user"))
        if user is None:
            raise HarborError("NOT_FOUND", f"user {user_id[:40]} not found", 404)
        return user

    def self_or_admin(user_id: str) -> tuple[Principal, dict[str, object]]:
        p = person()
        user = found(user_id) if p.admin else None
        if user is None:
            if not is_ascii_id(user_id) or int(user_id) != p.id:
                raise HarborError("FORBIDDEN", "only system administrators may see or change other users", 403)
            user = found(user_id)
        return p, user

    def is_ascii_id(text: str) -> bool:
        return text.isascii() and text.isdigit() and len(text) < 20

    def text_field(body: dict[str, Any], name: str) -> str | None:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise _bad(f"{name} must be a string")
        return value

    @bp.get("/users")
    def list_users() -> Response:
        ctx.require_admin()
        page, size, offset = _paging()
        q = parse_q(("username",))
        name = request.args.get("username")
        total, found_users = users.list(("fuzzy", name) if name else q.get("username"), offset, size)
        return _listed([user_json(u) for u in found_users], total, page, size)

    @bp.post("/users")
    def create_user() -> Response:
        ctx.require_admin()
        body = _json_body()
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not username:
            raise _bad("username is required")
        if not isinstance(password, str) or not password:
            raise _bad("password is required")
        user_id = users.add_user(username, password, False, text_field(body, "email") or "",
                                 text_field(body, "realname") or "", text_field(body, "comment") or "")
        ctx.record("create", "user", username)
        return _created(None, f"{PREFIX}/users/{user_id}")

    @bp.get("/users/search")
    def search_users() -> Response:
        person()
        name = request.args.get("username")
        if not name:
            raise _bad("username is required: the text to look for in user names")
        page, size, offset = _paging()
        total, found_users = users.list(("fuzzy", name), offset, size)
        return _listed([{"user_id": u["user_id"], "username": u["username"]} for u in found_users], total, page,
                       size)

    @bp.get("/users/current")
    def current_user() -> Response:
        p = person()
        user = users.get(user_id=p.id)
        if user is None:
            raise HarborError("NOT_FOUND", "the user no longer exists", 404)
        return jsonify(user_json(user))

    @bp.get("/users/current/permissions")
    def current_permissions() -> Response:
        p = ctx.require_login()
        scope = request.args.get("scope") or "/system"
        relative = _bool_arg("relative", False)
        pairs: list[tuple[str, str]]
        if scope == "/system":
            pairs = SYSTEM_PERMISSIONS if p.admin else [("project", "list")]
        elif scope.startswith("/project/"):
            project = ctx.find_project(scope.removeprefix("/project/"))
            pairs = permissions_in(p, project)
        else:
            raise _bad(f"scope must be /system or /project/<id or name>, not {scope[:80]!r}")
        prefix = "" if relative else scope.rstrip("/") + "/"
        return jsonify([{"resource": prefix + resource, "action": action} for resource, action in pairs])

    def permissions_in(p: Principal, project: Any) -> list[tuple[str, str]]:
        if p.admin:
            return ROLE_PERMISSIONS[1]
        if p.kind == "robot":
            granted = [(ns, action) for ns, action in p.grants if ns in (project.name, "*")]
            out = list(_READ) if any(a == "pull" for _, a in granted) else []
            if any(a == "push" for _, a in granted):
                out += _PUSH
            if any(a == "delete" for _, a in granted):
                out += [("repository", "delete"), ("artifact", "delete"), ("tag", "delete")]
            return out
        role = ctx.access.role_of(p, project)
        if role in ROLES:
            return ROLE_PERMISSIONS[role]
        return [pair for pair in _READ if pair[1] in ("read", "list", "pull")] if project.public else []

    @bp.get("/users/<user_id>")
    def get_user(user_id: str) -> Response:
        return jsonify(user_json(self_or_admin(user_id)[1]))

    @bp.put("/users/<user_id>")
    def update_user(user_id: str) -> Response:
        _, user = self_or_admin(user_id)
        body = _json_body()
        users.update_profile(int(user["user_id"]), text_field(body, "email"),  # type: ignore[call-overload]
                             text_field(body, "realname"), text_field(body, "comment"))
        ctx.record("update", "user", str(user["username"]))
        return Response(status=200)

    @bp.delete("/users/<user_id>")
    def delete_user(user_id: str) -> Response:
        p = ctx.require_admin()
        user = found(user_id)
        name = users.delete(int(user["user_id"]), p.id if p.kind == "user" else None)  # type: ignore[call-overload]
        ctx.record("delete", "user", name)
        return Response(status=200)

    @bp.put("/users/<user_id>/password")
    def set_password(user_id: str) -> Response:
        p, user = self_or_admin(user_id)
        body = _json_body()
        new, old = body.get("new_password"), body.get("old_password")
        if not isinstance(new, str) or not new:
            raise _bad("new_password is required")
        username = str(user["username"])
        if user["user_id"] == p.id:
            # Your own password: prove you know the current one (a stolen session must not lock you out).
            if not isinstance(old, str) or not old:
                raise _bad("old_password is required to change your own password")
            try:
                ctx.access.authenticate(username, old, request.remote_addr or "")
            except TooManyAttempts:
                raise
            except RegistryError:
                raise HarborError("FORBIDDEN", "the old password is wrong; nothing was changed", 403) from None
            if new == old:
                raise _bad("the new password is the same as the old one; nothing was changed")
        users.set_password(username, new)
        ctx.record("update", "user-password", username)
        return Response(status=200)

    @bp.put("/users/<user_id>/sysadmin")
    def set_sysadmin(user_id: str) -> Response:
        ctx.require_admin()
        user = found(user_id)
        flag = _json_body().get("sysadmin_flag")
        if not isinstance(flag, bool):
            raise _bad("sysadmin_flag must be true or false")
        users.set_admin(int(user["user_id"]), flag)  # type: ignore[call-overload]
        ctx.record("update", "user", f"{user['username']} (sysadmin_flag={str(flag).lower()})")
        return Response(status=200)
