"""Harbor's access model: projects, members, robot accounts, and who may do what.

- A repository's first name component is its project. Public projects allow
  anonymous pull; private ones only members, robots granted the project, and
  admins. Pushing needs an existing project (as in Harbor).
- Members are users with a Harbor role: projectAdmin (1), developer (2),
  guest (3), maintainer (4), limitedGuest (5). Every role pulls; projectAdmin,
  maintainer and developer push; projectAdmin and maintainer delete.
- Robots are ``robot$<name>`` (system level) or ``robot$<project>+<name>``
  (project level) with Harbor's permission list
  ``[{"kind": "project", "namespace": "<project>|*", "access": [{"resource", "action"}]}]``;
  a system-level ``{"kind": "system", "namespace": "/", "access": [{"resource": "*", "action": "*"}]}``
  makes the robot a system admin. Secrets are scrypt-hashed and shown once.
- Failed logins are counted in SQLite per (account name, source address)
  and per source address, so every gunicorn worker sees the same counts and a
  restart does not reset them; past a limit, logins of that name from that
  address answer 429 with Retry-After, for a time that doubles with each
  further failure (`LoginLimiter`). Failures from one address never lock out
  a correct credential presented from another, and an address that failed
  with many names still lets in the names that did not fail there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from registry import logcontext
from registry.auth import ROBOT_PREFIX, Principal, Users, VerifiedCache, hash_password
from registry.db import write_transaction
from registry.dbengine import insert_id
from registry.errors import RegistryError
from registry.model import Registry
from registry.sessions import Sessions
from registry.tokens import Scope, load_or_create_secret

PROJECT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
ROBOT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
ROLES = {1: "projectAdmin", 2: "developer", 3: "guest", 4: "maintainer", 5: "limitedGuest"}
_ROLE_ACTIONS = {1: {"pull", "push", "delete"}, 4: {"pull", "push", "delete"}, 2: {"pull", "push"},
                 3: {"pull"}, 5: {"pull"}}
PROJECT_RESOURCES = ("repository", "artifact", "tag", "*")
ROBOT_ACTIONS = ("pull", "push", "delete", "list", "read", "create", "*")
NEVER = -1
_log = logging.getLogger("cargohold.login")
Permissions = list[dict[str, Any]]


class AccessError(Exception):
    """A management request that cannot be done, with Harbor's error code."""

    STATUS = {"BAD_REQUEST": 400, "UNAUTHORIZED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404, "CONFLICT": 409,
              "PRECONDITION": 412}

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = self.STATUS[code]


class TooManyAttempts(RegistryError):
    """Logins refused for a while after too many failures."""

    def __init__(self, retry_after: int, reason: str = "too many failed logins") -> None:
        super().__init__("TOOMANYREQUESTS", f"{reason}; try again in {retry_after} seconds")
        self.retry_after = retry_after


def project_of(repository: str) -> str:
    return repository.split("/", 1)[0]


@dataclass(frozen=True)
class Project:
    """A Harbor project."""

    id: int
    name: str
    public: bool
    owner_id: int | None
    storage_limit: int
    created_at: float
    updated_at: float


def validate_project_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or not PROJECT_NAME.match(name):
        raise AccessError("BAD_REQUEST", f"invalid project name {name!r}: lowercase letters, digits and "
                          "single '.', '_' or '-' between them, at most 255 characters")
    return name


class Projects:
    """The projects table."""

    _COLUMNS = "id, name, public, owner_id, storage_limit, created_at, updated_at"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @staticmethod
    def _row(row: Any) -> Project:
        return Project(int(row[0]), row[1], bool(row[2]), row[3], int(row[4] if row[4] is not None else -1),
                       float(row[5]), float(row[6] or row[5]))

    def get(self, name: str) -> Project | None:
        row = self.registry.db.execute(f"SELECT {self._COLUMNS} FROM projects WHERE name = ?", [name]).fetchone()
        return self._row(row) if row else None

    def get_by_id(self, project_id: int) -> Project | None:
        row = self.registry.db.execute(f"SELECT {self._COLUMNS} FROM projects WHERE id = ?", [project_id]).fetchone()
        return self._row(row) if row else None

    def create(self, name: str, public: bool, owner_id: int | None, storage_limit: int = -1) -> Project:
        """A new project; raises AccessError CONFLICT if the name is taken, BAD_REQUEST if invalid."""
        validate_project_name(name)
        now = time.time()
        with write_transaction(self.registry.db) as db:
            if db.execute("SELECT 1 FROM projects WHERE name = ?", [name]).fetchone():
                raise AccessError("CONFLICT", f"project {name} already exists")
            db.execute("INSERT INTO projects (name, public, owner_id, storage_limit, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", [name, int(public), owner_id, storage_limit, now, now])
        project = self.get(name)
        assert project is not None
        return project

    def ensure(self, name: str, public: bool) -> Project:
        """The project `name`, created with `public` if missing (an existing one is left as it is)."""
        found = self.get(name)
        if found is not None:
            return found
        try:
            return self.create(name, public, None)
        except AccessError as exc:  # another worker created it first
            if exc.code != "CONFLICT":
                raise
            found = self.get(name)
            assert found is not None
            return found

    def update(self, project: Project, public: bool | None, storage_limit: int | None) -> Project:
        with write_transaction(self.registry.db) as db:
            db.execute("UPDATE projects SET public = COALESCE(?, public), storage_limit = COALESCE(?, storage_limit), "
                       "updated_at = ? WHERE id = ?",
                       [None if public is None else int(public), storage_limit, time.time(), project.id])
        updated = self.get_by_id(project.id)
        if updated is None:
            raise AccessError("NOT_FOUND", f"project {project.name} was deleted meanwhile")
        return updated

    def repository_count(self, name: str) -> int:
        prefix = f"{name}/"
        row = self.registry.db.execute("SELECT COUNT(*) FROM repositories WHERE substr(name, 1, ?) = ?",
                                       [len(prefix), prefix]).fetchone()
        return int(row[0])

    def delete(self, project: Project) -> None:
        """Delete an empty project with its members and robots; PRECONDITION if it holds repositories."""
        with write_transaction(self.registry.db) as db:
            prefix = f"{project.name}/"
            if db.execute("SELECT 1 FROM repositories WHERE substr(name, 1, ?) = ? LIMIT 1",
                          [len(prefix), prefix]).fetchone():
                raise AccessError("PRECONDITION", f"project {project.name} still holds repositories; "
                                  "delete them first")
            db.execute("DELETE FROM project_members WHERE project_id = ?", [project.id])
            db.execute("DELETE FROM immutable_rules WHERE project_id = ?", [project.id])
            db.execute("DELETE FROM project_metadata WHERE project_id = ?", [project.id])
            db.execute("DELETE FROM robots WHERE project_id = ?", [project.id])
            # System robots lose their grants on it, so a new project of the same name starts clean.
            for robot_id, perms in db.execute("SELECT id, permissions FROM robots WHERE level = 'system'").fetchall():
                kept = [p for p in json.loads(perms or "[]") if p.get("namespace") != project.name]
                db.execute("UPDATE robots SET permissions = ? WHERE id = ?", [json.dumps(kept), robot_id])
            db.execute("DELETE FROM projects WHERE id = ?", [project.id])

    def list(self, where: list[str], params: list[Any], offset: int, limit: int) -> tuple[int, list[Project]]:
        """(total, page) of projects matching SQL conditions over the projects table (alias p)."""
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        db = self.registry.db
        total = int(db.execute(f"SELECT COUNT(*) FROM projects p{clause}", params).fetchone()[0])
        rows = db.execute(f"SELECT {self._COLUMNS} FROM projects p{clause} ORDER BY name LIMIT ? OFFSET ?",
                          [*params, limit, offset]).fetchall()
        return total, [self._row(r) for r in rows]


@dataclass(frozen=True)
class Member:
    id: int
    project_id: int
    user_id: int
    username: str
    role: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "project_id": self.project_id, "entity_id": self.user_id,
                "entity_name": self.username, "entity_type": "u", "role_id": self.role,
                "role_name": ROLES.get(self.role, str(self.role))}


class Members:
    """Users' roles in projects."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def role(self, user_id: int, project: str) -> int | None:
        row = self.registry.db.execute(
            "SELECT m.role FROM project_members m JOIN projects p ON p.id = m.project_id "
            "WHERE m.user_id = ? AND p.name = ?", [user_id, project]).fetchone()
        return int(row[0]) if row else None

    def list(self, project: Project) -> list[Member]:
        rows = self.registry.db.execute(
            "SELECT m.id, m.project_id, m.user_id, u.username, m.role FROM project_members m "
            "JOIN users u ON u.id = m.user_id WHERE m.project_id = ? ORDER BY m.id", [project.id]).fetchall()
        return [Member(*r) for r in rows]

    def get(self, project: Project, member_id: int) -> Member | None:
        return next((m for m in self.list(project) if m.id == member_id), None)

    def add(self, project: Project, user_id: int, role: int) -> Member:
        if role not in ROLES:
            raise AccessError("BAD_REQUEST", f"invalid role_id {role!r}: one of {sorted(ROLES)}")
        with write_transaction(self.registry.db) as db:
            if db.execute("SELECT 1 FROM project_members WHERE project_id = ? AND user_id = ?",
                          [project.id, user_id]).fetchone():
                raise AccessError("CONFLICT", "the user is already a member of the project")
            member_id = insert_id(db, "INSERT INTO project_members (project_id, user_id, role, created_at) "
                                  "VALUES (?, ?, ?, ?)", [project.id, user_id, role, time.time()])
        member = self.get(project, member_id)
        assert member is not None
        return member

    def update(self, member: Member, role: int) -> None:
        if role not in ROLES:
            raise AccessError("BAD_REQUEST", f"invalid role_id {role!r}: one of {sorted(ROLES)}")
        with write_transaction(self.registry.db) as db:
            db.execute("UPDATE project_members SET role = ? WHERE id = ?", [role, member.id])

    def remove(self, member: Member) -> None:
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM project_members WHERE id = ?", [member.id])


# -- robots ---------------------------------------------------------------------------


def validate_secret(secret: Any) -> str:
    """Harbor's rule for a chosen secret: 8-128 characters with upper, lower case and a digit."""
    if (not isinstance(secret, str) or not 8 <= len(secret) <= 128 or not re.search(r"[A-Z]", secret)
            or not re.search(r"[a-z]", secret) or not re.search(r"[0-9]", secret)):
        raise AccessError("BAD_REQUEST", "a robot secret needs 8-128 characters with at least one upper-case "
                          "letter, one lower-case letter and one digit")
    return secret


def generate_secret() -> str:
    while True:
        secret = secrets.token_urlsafe(24)
        if re.search(r"[A-Z]", secret) and re.search(r"[a-z]", secret) and re.search(r"[0-9]", secret):
            return secret


@dataclass(frozen=True)
class Robot:
    """A robot account (its secret hash stays in the database)."""

    id: int
    name: str
    description: str
    level: str
    project_id: int | None
    disabled: bool
    duration: int
    expires_at: int
    permissions: list[dict[str, Any]]
    creator: str
    created_at: float
    updated_at: float

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at != NEVER and (time.time() if now is None else now) >= self.expires_at

    def grants(self) -> tuple[bool, frozenset[tuple[str, str]]]:
        """(system admin?, {(namespace, action)}) from the permission list."""
        admin = False
        grants: set[tuple[str, str]] = set()
        for perm in self.permissions:
            for item in perm.get("access", []):
                resource, action = item.get("resource"), item.get("action")
                if perm.get("kind") == "system":
                    admin = admin or (resource == "*" and action == "*")
                    continue
                namespace = perm.get("namespace", "")
                if action == "*" and resource in ("*", "repository"):
                    grants |= {(namespace, "pull"), (namespace, "push"), (namespace, "delete")}
                elif resource == "repository" and action in ("pull", "push"):
                    grants.add((namespace, action))
                elif resource in ("repository", "artifact", "tag", "*") and action == "delete":
                    grants.add((namespace, "delete"))
        return admin, frozenset(grants)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description, "level": self.level,
                "duration": self.duration, "editable": True, "disable": self.disabled,
                "expires_at": self.expires_at, "permissions": self.permissions,
                "creator": self.creator, "creation_time": _rfc3339(self.created_at),
                "update_time": _rfc3339(self.updated_at)}


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Robots:
    """The robots table."""

    _COLUMNS = ("id, name, description, level, project_id, disabled, duration, expires_at, permissions, creator, "
                "created_at, updated_at")

    def __init__(self, registry: Registry, projects: Projects) -> None:
        self.registry = registry
        self.projects = projects

    @staticmethod
    def _row(row: Any) -> Robot:
        return Robot(int(row[0]), row[1], row[2] or "", row[3], row[4], bool(row[5]), int(row[6]), int(row[7]),
                     json.loads(row[8] or "[]"), row[9] or "", float(row[10]), float(row[11] or row[10]))

    def get(self, robot_id: int) -> Robot | None:
        row = self.registry.db.execute(f"SELECT {self._COLUMNS} FROM robots WHERE id = ?", [robot_id]).fetchone()
        return self._row(row) if row else None

    def stored(self, name: str) -> tuple[Robot, str] | None:
        """A robot and its secret hash, by full name."""
        row = self.registry.db.execute(f"SELECT {self._COLUMNS}, secret_hash FROM robots WHERE name = ?",
                                       [name]).fetchone()
        return (self._row(row), str(row[12])) if row else None

    def stored_by_id(self, robot_id: int) -> tuple[Robot, str] | None:
        """A robot and its secret hash, by id."""
        row = self.registry.db.execute(f"SELECT {self._COLUMNS}, secret_hash FROM robots WHERE id = ?",
                                       [robot_id]).fetchone()
        return (self._row(row), str(row[12])) if row else None

    def list(self, where: list[str], params: list[Any], offset: int, limit: int) -> tuple[int, list[Robot]]:
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        db = self.registry.db
        total = int(db.execute(f"SELECT COUNT(*) FROM robots r{clause}", params).fetchone()[0])
        rows = db.execute(f"SELECT {self._COLUMNS} FROM robots r{clause} ORDER BY id LIMIT ? OFFSET ?",
                          [*params, limit, offset]).fetchall()
        return total, [self._row(r) for r in rows]

    def validate(self, body: dict[str, Any], existing: Robot | None = None
                 ) -> tuple[str, int | None, int, Permissions]:
        """(level, project id, duration, normalised permissions) from a create/update body."""
        level = body.get("level", existing.level if existing else None)
        if level not in ("system", "project"):
            raise AccessError("BAD_REQUEST", f"invalid level {level!r}: 'system' or 'project'")
        if existing is not None and level != existing.level:
            raise AccessError("BAD_REQUEST", "a robot's level cannot change")
        duration = body.get("duration", existing.duration if existing else NEVER)
        if not isinstance(duration, int) or isinstance(duration, bool) or not (duration == NEVER
                                                                               or 1 <= duration <= 36500):
            raise AccessError("BAD_REQUEST", f"invalid duration {duration!r}: -1 (never expires) or 1-36500 days")
        raw = body.get("permissions", existing.permissions if existing else None)
        if not isinstance(raw, list) or not raw:
            raise AccessError("BAD_REQUEST", "permissions must be a non-empty list")
        perms: Permissions = []
        project_id: int | None = None
        for perm in raw:
            if not isinstance(perm, dict):
                raise AccessError("BAD_REQUEST", "each permission must be an object with kind, namespace, access")
            kind, namespace, access = perm.get("kind"), perm.get("namespace"), perm.get("access")
            if not isinstance(access, list) or not access:
                raise AccessError("BAD_REQUEST", "each permission needs a non-empty access list")
            items = []
            for item in access:
                if not isinstance(item, dict):
                    raise AccessError("BAD_REQUEST", "each access entry must be an object with resource and action")
                resource, action = item.get("resource"), item.get("action")
                if kind == "system":
                    if resource != "*" or action != "*":
                        raise AccessError("BAD_REQUEST", "system permissions support only "
                                          "{\"resource\": \"*\", \"action\": \"*\"} (system admin)")
                elif resource not in PROJECT_RESOURCES or action not in ROBOT_ACTIONS:
                    raise AccessError("BAD_REQUEST", f"unsupported access {resource!r}/{action!r}: resource one of "
                                      f"{', '.join(PROJECT_RESOURCES)}, action one of {', '.join(ROBOT_ACTIONS)}")
                items.append({"resource": resource, "action": action})
            if kind == "system":
                if level != "system" or namespace != "/":
                    raise AccessError("BAD_REQUEST", "system permissions need level 'system' and namespace '/'")
            elif kind == "project":
                if namespace == "*":
                    if level != "system":
                        raise AccessError("BAD_REQUEST", "only system-level robots may cover every project ('*')")
                else:
                    if not isinstance(namespace, str):
                        raise AccessError("BAD_REQUEST", "namespace must be a project name")
                    project = self.projects.get(namespace)
                    if project is None:
                        raise AccessError("NOT_FOUND", f"project {namespace} does not exist")
                    if level == "project":
                        if project_id is not None and project_id != project.id:
                            raise AccessError("BAD_REQUEST", "a project-level robot covers exactly one project")
                        project_id = project.id
            else:
                raise AccessError("BAD_REQUEST", f"invalid permission kind {kind!r}: 'project' or 'system'")
            perms.append({"kind": kind, "namespace": namespace, "access": items})
        if level == "project" and project_id is None:
            raise AccessError("BAD_REQUEST", "a project-level robot needs a permission on its project")
        if existing is not None and existing.project_id != project_id:
            raise AccessError("BAD_REQUEST", "a project-level robot's project cannot change")
        return level, project_id, duration, perms

    def create(self, body: dict[str, Any], creator: str) -> tuple[Robot, str]:
        """A new robot and its secret (shown once); raises AccessError."""
        short = body.get("name")
        if not isinstance(short, str) or not 1 <= len(short) <= 128 or not ROBOT_NAME.match(short):
            raise AccessError("BAD_REQUEST", f"invalid robot name {short!r}: lowercase letters, digits and single "
                              "'.', '_' or '-' between them")
        description = body.get("description") or ""
        if not isinstance(description, str) or len(description) > 1024:
            raise AccessError("BAD_REQUEST", "description must be a string of at most 1024 characters")
        disable = body.get("disable", False)
        if not isinstance(disable, bool):
            raise AccessError("BAD_REQUEST", "disable must be true or false")
        level, project_id, duration, perms = self.validate(body)
        secret = validate_secret(body["secret"]) if body.get("secret") is not None else generate_secret()
        if level == "project":
            project = self.projects.get_by_id(project_id or 0)
            assert project is not None
            name = f"{ROBOT_PREFIX}{project.name}+{short}"
        else:
            name = f"{ROBOT_PREFIX}{short}"
        now = time.time()
        expires = NEVER if duration == NEVER else int(now) + duration * 86400
        with write_transaction(self.registry.db) as db:
            if db.execute("SELECT 1 FROM robots WHERE name = ?", [name]).fetchone():
                raise AccessError("CONFLICT", f"robot account {name} already exists")
            robot_id = insert_id(
                db, "INSERT INTO robots (name, description, secret_hash, level, project_id, disabled, duration, "
                "expires_at, permissions, creator, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, description, hash_password(secret), level, project_id, int(disable), duration, expires,
                 json.dumps(perms), creator, now, now])
        robot = self.get(robot_id)
        assert robot is not None
        return robot, secret

    def update(self, robot: Robot, body: dict[str, Any]) -> Robot:
        """Change description, disable, duration and permissions; the name and level stay."""
        if "name" in body and body["name"] not in (robot.name, robot.name.split("+")[-1].removeprefix(ROBOT_PREFIX)):
            raise AccessError("BAD_REQUEST", "a robot's name cannot change")
        description = body.get("description", robot.description)
        if not isinstance(description, str) or len(description) > 1024:
            raise AccessError("BAD_REQUEST", "description must be a string of at most 1024 characters")
        disable = body.get("disable", robot.disabled)
        if not isinstance(disable, bool):
            raise AccessError("BAD_REQUEST", "disable must be true or false")
        _, _, duration, perms = self.validate(body, robot)
        expires = NEVER if duration == NEVER else int(robot.created_at) + duration * 86400
        with write_transaction(self.registry.db) as db:
            db.execute("UPDATE robots SET description = ?, disabled = ?, duration = ?, expires_at = ?, "
                       "permissions = ?, updated_at = ? WHERE id = ?",
                       [description, int(disable), duration, expires, json.dumps(perms), time.time(), robot.id])
        updated = self.get(robot.id)
        if updated is None:
            raise AccessError("NOT_FOUND", f"robot {robot.name} was deleted meanwhile")
        return updated

    def refresh(self, robot: Robot, secret: str | None) -> str:
        """Replace the secret (a chosen one, or a generated one); the old one stops working at once."""
        secret = validate_secret(secret) if secret is not None else generate_secret()
        with write_transaction(self.registry.db) as db:
            db.execute("UPDATE robots SET secret_hash = ?, updated_at = ? WHERE id = ?",
                       [hash_password(secret), time.time(), robot.id])
        return secret

    def delete(self, robot: Robot) -> None:
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM robots WHERE id = ?", [robot.id])


# -- login rate limiting ----------------------------------------------------------------


class LoginLimiter:
    """Failed logins per (account name, source address) and per address, in SQLite, with exponential backoff.

    - `per_account` distinct wrong passwords for one name from one address lock
      that pair for `lockout` seconds; each further wrong password once a lock
      has passed doubles it, up to `MAX_LOCK_FACTOR` times `lockout`. While a
      pair is locked, every login as that name from that address answers 429,
      the right password too (else the lock would still tell a guesser when a
      guess is right). The same name from any other address is not affected.
    - `per_address` distinct failed logins from one address, whatever the names
      (the cap on spraying unknown or many names), hold the address for the
      same backoff. A held address keeps working for correct credentials of
      names that have not failed from it (a robot with valid credentials behind
      the same NAT): they are checked as usual and get in. Wrong ones answer
      429 instead of 401, and a name that has failed from a held address
      answers 429 without being checked.
    - Below its limit a counter is forgotten after `window` seconds without a
      failure; past it, after the longest lock without one. A successful login
      clears its (name, address) counter.

    Unknown names count exactly like real ones, so the answers never tell
    which names exist. 0 turns a limit off. Only distinct wrong passwords
    count (a keyed 32-bit fingerprint of name and password): a client retrying
    one stale password on every request is one failure.
    """

    MAX_LOCK_FACTOR = 64

    def __init__(self, registry: Registry, per_account: int = 10, per_address: int = 30, window: float = 300.0,
                 lockout: float = 300.0) -> None:
        self.registry = registry
        self.per_account, self.per_address = per_account, per_address
        self.window, self.lockout = window, lockout
        self._key = load_or_create_secret(registry.paths, "login-fingerprint.key")

    @staticmethod
    def _pair(username: str, address: str) -> str:
        return f"acct:{address} {username}"  # no address holds a space: the name is all that follows it

    def _keys(self, username: str, address: str) -> list[tuple[str, int]]:
        return [(self._pair(username, address), self.per_account), (f"addr:{address}", self.per_address)]

    def check(self, username: str, address: str) -> int:
        """Seconds the address is still held (0: not held) for a login as `username` from `address`.

        Raises TooManyAttempts while (username, address) is locked, or while the
        address is held and the name has failed from it.
        """
        now = time.time()
        keys = [k for k, limit in self._keys(username, address) if limit > 0]
        if not keys:
            return 0
        rows = {str(r[0]): (int(r[1]), float(r[2] or 0)) for r in self.registry.db.execute(
            f"SELECT key, failures, locked_until FROM login_failures WHERE key IN ({','.join('?' * len(keys))})",
            keys).fetchall()}
        pair = rows.get(self._pair(username, address))
        if pair is not None and pair[1] > now:
            raise TooManyAttempts(max(1, math.ceil(pair[1] - now)),
                                  f"too many failed logins as {username} from this address")
        held = rows.get(f"addr:{address}")
        if held is None or held[1] <= now:
            return 0
        retry_after = max(1, math.ceil(held[1] - now))
        if pair is not None and pair[0] > 0:
            raise TooManyAttempts(retry_after, "too many failed logins from this address")
        return retry_after

    def _lock(self, failures: int, limit: int) -> float:
        """How long `failures` against `limit` lock out: none below it, then `lockout` doubling each time."""
        if failures < limit:
            return 0.0
        return self.lockout * min(1 << min(failures - limit, 16), self.MAX_LOCK_FACTOR)

    def failed(self, username: str, address: str, password: str) -> None:
        """Count a failed login, once per distinct (username, password) for each counter."""
        now = time.time()
        # Short on purpose: enough to tell retries apart, useless as a password oracle.
        mark = hmac.new(self._key, f"{username}\0{password}".encode(), hashlib.sha256).hexdigest()[:8]
        longest = self.lockout * self.MAX_LOCK_FACTOR
        with write_transaction(self.registry.db) as db:
            # Counters nobody has failed against for longer than any of them lasts: gone (bounds the table).
            db.execute("DELETE FROM login_failures WHERE COALESCE(last_at, first_at) < ? AND locked_until <= ?",
                       [now - max(longest, self.window), now])
            for key, limit in self._keys(username, address):
                if limit <= 0:
                    continue
                row = db.execute("SELECT failures, first_at, seen, locked_until, last_at FROM login_failures "
                                 "WHERE key = ?", [key]).fetchone()
                if row is not None:
                    failures, last = int(row[0]), float(row[4] or row[1])
                    quiet = now - max(last, float(row[3] or 0))
                    if quiet > (self.window if failures < limit else longest):
                        row = None
                if row is None:
                    failures, first, seen = 1, now, [mark]
                else:
                    seen = (row[2] or "").split()
                    if mark in seen:
                        continue
                    failures, first, seen = int(row[0]) + 1, float(row[1]), [*seen, mark][-max(limit + 1, 64):]
                lock = self._lock(failures, limit)
                db.execute("INSERT INTO login_failures (key, failures, first_at, locked_until, seen, last_at) "
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, "
                           "first_at = excluded.first_at, locked_until = excluded.locked_until, "
                           "seen = excluded.seen, last_at = excluded.last_at",
                           [key, failures, first, now + lock if lock else 0.0, " ".join(seen), now])

    def succeeded(self, username: str, address: str) -> None:
        """A correct login clears its (name, address) counter (not the address's: other names failed there)."""
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM login_failures WHERE key = ?", [self._pair(username, address)])


def _log_login(event: str, username: str, address: str, level: int = logging.INFO) -> None:
    """A login event: the name as given (printable, bounded) and the address; never the password."""
    name = username if len(username) <= 256 else username[:256] + "…"
    _log.log(level, "%s: %s from %s", event, name, address or "-",
             extra={"event": event, "username": name, "client": address or None})


# -- the decisions ----------------------------------------------------------------------


class Access:
    """Authentication of users and robots, and the pull/push/delete decisions."""

    def __init__(self, registry: Registry, users: Users, limiter: LoginLimiter) -> None:
        self.registry = registry
        self.users = users
        self.projects = Projects(registry)
        self.members = Members(registry)
        self.robots = Robots(registry, self.projects)
        self.sessions = Sessions(registry)
        self.limiter = limiter
        self._verified = VerifiedCache()
        self._dummy_hash: str | None = None

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password(secrets.token_urlsafe(16))
        return self._dummy_hash

    # -- authentication

    def authenticate(self, username: str, password: str, address: str, sign_in: bool = False) -> Principal:
        """The principal for a user's or robot's Basic credentials.

        Raises UNAUTHORIZED for wrong credentials or a disabled or expired
        robot, TooManyAttempts while this name is locked out at `address` or
        the address is held (`LoginLimiter`).
        """
        robot: Robot | None = None
        stored: str | None = None
        if username.startswith(ROBOT_PREFIX):
            found = self.robots.stored(username)
            if found is not None:
                robot, stored = found
        else:
            user = self.users.stored(username)
            stored = user[1] if user else None
        cache = self.users.verified if robot is None else self._verified
        # Before the credentials, even remembered ones: a locked (name, address) must not learn that a guess is right.
        try:
            held = self.limiter.check(username, address)
        except TooManyAttempts:
            _log_login("login refused, locked out", username, address, logging.WARNING)
            raise
        verified = False
        if stored is None or not cache.cached(username, password, stored):
            if stored is None:
                # Same cost as a real check, so response times do not tell which names exist.
                cache.check(username, password, self._dummy())
            if stored is None or not cache.check(username, password, stored):
                self.limiter.failed(username, address, password)
                _log_login("login failed", username, address, logging.WARNING if held else logging.INFO)
                if held:
                    raise TooManyAttempts(held, "too many failed logins from this address")
                raise RegistryError("UNAUTHORIZED", "invalid username or password")
            self.limiter.succeeded(username, address)
            verified = True
        if robot is None:
            user = self.users.stored(username)
            assert user is not None
            principal = Principal(username, user[2], "user", user[0])
        else:
            if robot.disabled:
                _log_login("login refused, robot account disabled", username, address)
                raise RegistryError("UNAUTHORIZED", f"robot account {username} is disabled")
            if robot.expired():
                _log_login("login refused, robot account expired", username, address)
                raise RegistryError("UNAUTHORIZED", f"robot account {username} has expired")
            admin, grants = robot.grants()
            principal = Principal(username, admin, "robot", robot.id, grants)
        # Logged once per password check (a client sending Basic on every request is not a login each time),
        # and at every UI sign-in (`sign_in`), which starts a session whether or not the check was remembered.
        if verified or sign_in:
            _log_login("UI sign-in" if sign_in else "login", username, address)
        logcontext.note_principal(username)
        return principal

    # -- authorization

    def allowed(self, principal: Principal | None, action: str, repository: str | None) -> bool:
        """May `principal` (None: anonymous) do `action` (pull, push, delete, catalog) on `repository`?"""
        if action == "catalog" or repository is None:
            if principal is None:
                return False
            if principal.kind == "token":
                return ("registry:catalog", "*") in principal.grants and self.allowed(principal.holder, action, None)
            return principal.admin
        found = self.projects.get(project_of(repository))
        if found is None:
            return False  # Harbor: the project must exist, even for an admin's push
        return self._allowed_in(found, principal, action, repository)

    def _allowed_in(self, found: Project, principal: Principal | None, action: str, repository: str) -> bool:
        """`allowed` for a repository of the existing project `found`."""
        project = found.name
        if action == "pull" and found.public:
            return True
        if principal is None:
            return False
        if principal.admin:
            return True
        if principal.kind == "token":
            # Granted at issue, and still held by the token's holder now: a removed member, a robot whose
            # permissions were cut or a project made private loses the access its tokens named, at once.
            return (((repository, action) in principal.grants or (repository, "*") in principal.grants)
                    and self._allowed_in(found, principal.holder, action, repository))
        if principal.kind == "robot":
            return (project, action) in principal.grants or ("*", action) in principal.grants
        role = self.members.role(principal.id or 0, project)
        return role is not None and action in _ROLE_ACTIONS.get(role, set())

    def authorize(self, principal: Principal | None, action: str, repository: str | None) -> None:
        """Allow `action` or raise: UNAUTHORIZED (no or insufficient credentials), DENIED, NAME_UNKNOWN."""
        if self.allowed(principal, action, repository):
            return
        target = f" {repository}" if repository else ""
        if repository is not None and action != "pull" and self.projects.get(project_of(repository)) is None \
                and principal is not None and principal.admin:
            raise RegistryError("NAME_UNKNOWN", f"project {project_of(repository)} does not exist; create it "
                                "first (POST /api/v2.0/projects)", detail={"name": repository})
        if principal is None:
            raise RegistryError("UNAUTHORIZED", f"authentication required to {action}{target}")
        if principal.kind == "token":
            # insufficient_scope: the client may ask the token service again with other credentials
            name = repository if repository is not None else "registry:catalog"
            if any(grant in principal.grants for grant in ((name, action), (name, "*"))):
                raise RegistryError("UNAUTHORIZED", f"the token was issued to {principal.username or 'anonymous'}, "
                                    f"who may no longer {action}{target or ' the catalog'}")
            raise RegistryError("UNAUTHORIZED", f"the token does not grant {action} on{target or ' the catalog'}")
        raise RegistryError("DENIED", f"{principal.username} may not {action}{target}")

    def grant(self, principal: Principal | None, scopes: list[Scope]) -> list[Scope]:
        """The part of the requested `scopes` that `principal` holds (for a token)."""
        granted: list[Scope] = []
        for scope in scopes:
            if scope.type == "registry":
                if scope.name == "catalog" and principal is not None and principal.admin:
                    granted.append(Scope("registry", "catalog", ("*",)))
                continue
            wanted = ("pull", "push", "delete") if "*" in scope.actions else scope.actions
            actions = tuple(a for a in dict.fromkeys(wanted) if a in ("pull", "push", "delete")
                            and self.allowed(principal, a, scope.name))
            if actions:
                granted.append(Scope("repository", scope.name, actions))
        return granted

    def may_manage(self, principal: Principal | None, project: Project | None) -> bool:
        """Admins manage everything; a project's projectAdmin members manage that project."""
        if principal is None:
            return False
        if principal.admin:
            return True
        if project is None or principal.kind != "user":
            return False
        return self.members.role(principal.id or 0, project.name) == 1

    def visible(self, principal: Principal | None, project: Project) -> bool:
        """May `principal` see `project` (and its repositories) at all?"""
        return project.public or self.allowed(principal, "pull", f"{project.name}/x")

    def role_of(self, principal: Principal | None, project: Project) -> int | None:
        if principal is None or principal.kind != "user":
            return None
        return self.members.role(principal.id or 0, project.name)
