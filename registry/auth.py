"""Appliance users, credential checks, and who a request acts as.

Passwords and robot secrets are hashed with scrypt. Verifying scrypt costs
tens of milliseconds by design, and registry clients send Basic credentials
on every request, so a successful check is remembered in-process for a few
minutes under a keyed hash of the secret (never the secret itself) together
with the stored hash it matched: a changed password or refreshed secret no
longer matches, in every worker, at once. Deciding what a principal may do
is `registry.access`.

Each scrypt computation holds 16 MiB, which glibc keeps in the worker after
it is freed. When many clients present credentials at once (edge hosts
starting together after a power cut), every gunicorn thread used to run its
own check of the very same password: a worker's RSS jumped from 65 to 330 MB
(docs/performance.md). So concurrent checks of the same credentials wait for
the first one's verdict, and at most `_SCRYPT_SLOTS` computations run at a
time in a process; scrypt is CPU-bound, so more would not finish sooner.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry.db import write_transaction
from registry.dbengine import insert_id
from registry.errors import RegistryError
from registry.model import Registry
from registry.passwords import check_password_policy

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_CACHE_SECONDS = 300
_SCRYPT_SLOTS = threading.BoundedSemaphore(2)  # per process: bounds scrypt's memory, not its throughput
ADMIN = "admin"
ROBOT_PREFIX = "robot$"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as.

    `kind` is ``user``, ``robot`` or ``token`` (a bearer token from the token
    service). `grants` holds (namespace, action) pairs for robots, where the
    namespace is a project or ``*``, and (repository, action) pairs for
    tokens, where ``registry:catalog`` stands for the catalog. A token's
    `holder` is the account it was issued to as that account stands now (None
    for an anonymous caller's token): a token never grants more than its holder
    may do at the moment of the request.
    """

    username: str
    admin: bool = False
    kind: str = "user"
    id: int | None = None
    grants: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    holder: Principal | None = None


def hash_password(password: str) -> str:
    """A self-describing scrypt hash of `password`."""
    salt = secrets.token_bytes(16)
    with _SCRYPT_SLOTS:
        digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return (f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def check_password(password: str, stored: str) -> bool:
    """True if `password` matches a hash made by `hash_password`."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        with _SCRYPT_SLOTS:
            actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                    dklen=len(expected), maxmem=256 << 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class VerifiedCache:
    """Remembers which (name, secret) pairs matched which stored hash, for a few minutes."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._seen: dict[tuple[str, str, bytes], float] = {}
        self._lock = threading.Lock()
        # Checks in progress: one lock per credentials, and how many threads want it.
        self._pending: dict[tuple[str, str, bytes], tuple[threading.Lock, int]] = {}

    def _fresh(self, key: tuple[str, str, bytes]) -> bool:
        with self._lock:
            expiry = self._seen.get(key)
        return expiry is not None and expiry > time.monotonic()

    def check(self, name: str, secret: str, stored: str) -> bool:
        """True if `secret` matches `stored` (scrypt once, then from memory).

        Threads checking the same credentials at once wait for the first
        one: a match is then answered from memory, a mismatch is computed
        again by each (it is not remembered).
        """
        key = (name, stored, hmac.new(self._key, secret.encode(), hashlib.sha256).digest())
        if self._fresh(key):
            return True
        with self._lock:
            gate, waiting = self._pending.get(key, (threading.Lock(), 0))
            self._pending[key] = (gate, waiting + 1)
        try:
            with gate:
                if self._fresh(key):
                    return True
                if not check_password(secret, stored):
                    return False
                with self._lock:
                    if len(self._seen) > 10_000:
                        self._seen.clear()
                    self._seen[key] = time.monotonic() + _CACHE_SECONDS
                return True
        finally:
            with self._lock:
                gate, waiting = self._pending[key]
                if waiting <= 1:
                    del self._pending[key]
                else:
                    self._pending[key] = (gate, waiting - 1)

    def cached(self, name: str, secret: str, stored: str) -> bool:
        """True if this exact pair was verified recently (no scrypt)."""
        key = (name, stored, hmac.new(self._key, secret.encode(), hashlib.sha256).digest())
        with self._lock:
            expiry = self._seen.get(key)
        return expiry is not None and expiry > time.monotonic()


def validate_username(username: str) -> str:
    """Return `username` if it may name a user; robots' ``robot$`` names are reserved (UserError BAD_REQUEST)."""
    if not isinstance(username, str) or not _USERNAME.match(username or ""):
        raise UserError("BAD_REQUEST", f"invalid username {username!r}: 1-255 of [A-Za-z0-9._@-], starting with "
                        "a letter or digit")
    return username


class Users:
    """The users table and credential checks."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.verified = VerifiedCache()
        # Called with the user name after each password change (the web layer voids the first-start password).
        self.on_password_set: list[Callable[[str], None]] = []

    def bootstrap_admin(self, password: str | None) -> str | None:
        """Create the admin user on first start.

        Uses `password` if given, else generates one and returns it so the
        caller can show it once. Returns None when the admin already exists.
        """
        db = self.registry.db
        if db.execute("SELECT 1 FROM users WHERE username = ?", [ADMIN]).fetchone():
            return None
        generated = password is None
        password = password or secrets.token_urlsafe(18)
        with write_transaction(db):
            db.execute("INSERT INTO users (username, password_hash, admin, created_at) VALUES (?, ?, 1, ?) "
                       "ON CONFLICT (username) DO NOTHING", [ADMIN, hash_password(password), time.time()])
        return password if generated else None

    def add_user(self, username: str, password: str, admin: bool = False, email: str = "", realname: str = "",
                 comment: str = "") -> int:
        """Create a user and return its id.

        Raises UserError (a ValueError): BAD_REQUEST for a bad name, a bad
        profile field or a password the policy refuses, CONFLICT for a name
        or email already taken.
        """
        validate_username(username)
        profile = validate_profile(email, realname, comment)
        check_password_policy(username, password)
        hashed = hash_password(password)  # before the write lock: scrypt takes tens of milliseconds
        with write_transaction(self.registry.db) as db:
            taken = db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone()
            if taken:
                raise UserError("CONFLICT", f"user {username!r} already exists; change its password with "
                                "`cargohold admin set-password`")
            self._email_free(db, profile[0], None)
            now = time.time()
            return insert_id(db, "INSERT INTO users (username, password_hash, admin, created_at, updated_at, email, "
                             "realname, comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [username, hashed, int(admin), now, now, *profile])

    @staticmethod
    def _email_free(db: Any, email: str, user_id: int | None) -> None:
        other = "" if user_id is None else " AND id <> ?"
        if email and db.execute(f"SELECT 1 FROM users WHERE lower(email) = lower(?){other}",
                                [email] + ([] if user_id is None else [user_id])).fetchone():
            raise UserError("CONFLICT", f"the email {email!r} is already another user's")

    def update_profile(self, user_id: int, email: str | None, realname: str | None, comment: str | None) -> None:
        """Change a user's email, real name or comment (None: unchanged); raises UserError."""
        current = self.get(user_id=user_id)
        if current is None:
            raise UserError("NOT_FOUND", f"user {user_id} not found")
        profile = validate_profile(*(str(current[k]) if v is None else v for k, v in
                                     (("email", email), ("realname", realname), ("comment", comment))))
        with write_transaction(self.registry.db) as db:
            self._email_free(db, profile[0], user_id)
            db.execute("UPDATE users SET email = ?, realname = ?, comment = ?, updated_at = ? WHERE id = ?",
                       [*profile, time.time(), user_id])

    def set_admin(self, user_id: int, admin: bool) -> None:
        """Grant or take away the system administrator flag; PRECONDITION for the last administrator."""
        with write_transaction(self.registry.db) as db:
            row = db.execute("SELECT admin, username FROM users WHERE id = ?", [user_id]).fetchone()
            if row is None:
                raise UserError("NOT_FOUND", f"user {user_id} not found")
            if bool(row[0]) and not admin and self._admins(db) <= 1:
                raise UserError("PRECONDITION", f"{row[1]} is the last system administrator; make another user "
                                "an administrator first")
            db.execute("UPDATE users SET admin = ?, updated_at = ? WHERE id = ?", [int(admin), time.time(), user_id])

    @staticmethod
    def _admins(db: Any) -> int:
        return int(db.execute("SELECT COUNT(*) FROM users WHERE admin = 1").fetchone()[0])

    def delete(self, user_id: int, acting_user_id: int | None) -> str:
        """Delete a user with its project memberships and UI sessions; returns its name.

        Its bearer tokens stop working at once (`registry.token_api.token_holder`
        finds no account). Raises UserError: NOT_FOUND; PRECONDITION for the
        caller's own account or the last system administrator.
        """
        with write_transaction(self.registry.db) as db:
            row = db.execute("SELECT username, admin FROM users WHERE id = ?", [user_id]).fetchone()
            if row is None:
                raise UserError("NOT_FOUND", f"user {user_id} not found")
            if user_id == acting_user_id:
                raise UserError("PRECONDITION", "you cannot delete your own account")
            if bool(row[1]) and self._admins(db) <= 1:
                raise UserError("PRECONDITION", f"{row[0]} is the last system administrator and cannot be deleted")
            db.execute("DELETE FROM project_members WHERE user_id = ?", [user_id])
            db.execute("DELETE FROM ui_sessions WHERE user_id = ?", [user_id])
            db.execute("DELETE FROM users WHERE id = ?", [user_id])
        return str(row[0])

    def list(self, username: tuple[str, str] | None, offset: int, limit: int) -> tuple[int, list[dict[str, object]]]:
        """(total, one page) of users by name; `username` filters ("exact"|"fuzzy", text)."""
        where, params = "", []
        if username is not None:
            if username[0] == "fuzzy":
                where = " WHERE username LIKE ? ESCAPE '\\'"
                params.append("%" + username[1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                              + "%")
            else:
                where = " WHERE username = ?"
                params.append(username[1])
        db = self.registry.db
        total = int(db.execute(f"SELECT COUNT(*) FROM users{where}", params).fetchone()[0])
        rows = db.execute(f"SELECT {_PUBLIC} FROM users{where} ORDER BY id LIMIT ? OFFSET ?",
                          [*params, limit, offset]).fetchall()
        return total, [_public(r) for r in rows]

    def set_password(self, username: str, password: str) -> None:
        """Change an existing user's password; raises ValueError for an unknown user or a refused password.

        Never creates a user: a mistyped name must not become a new account (`add_user` does that).
        """
        validate_username(username)
        check_password_policy(username, password)
        hashed = hash_password(password)
        with write_transaction(self.registry.db) as db:
            changed = db.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE username = ?",
                                 [hashed, time.time(), username]).rowcount
            if not changed:
                raise UserError("NOT_FOUND", f"no user {username!r}; create it with `cargohold admin add-user`")
        for hook in self.on_password_set:
            hook(username)

    def stored(self, username: str) -> tuple[int, str, bool] | None:
        """(id, password hash, admin) of a user, or None."""
        row = self.registry.db.execute("SELECT id, password_hash, admin FROM users WHERE username = ?",
                                       [username]).fetchone()
        return (int(row[0]), str(row[1]), bool(row[2])) if row else None

    def stored_by_id(self, user_id: int) -> tuple[str, str, bool] | None:
        """(username, password hash, admin) of a user, or None."""
        row = self.registry.db.execute("SELECT username, password_hash, admin FROM users WHERE id = ?",
                                       [user_id]).fetchone()
        return (str(row[0]), str(row[1]), bool(row[2])) if row else None

    def authenticate(self, username: str, password: str) -> Principal:
        """The principal for valid credentials; raises UNAUTHORIZED otherwise."""
        row = self.stored(username)
        if row is None or not self.verified.check(username, password, row[1]):
            raise RegistryError("UNAUTHORIZED", "invalid username or password")
        return Principal(username, row[2], "user", row[0])

    def get(self, user_id: int | None = None, username: str | None = None) -> dict[str, object] | None:
        """A user's public fields (never the hash), by id or name."""
        sql = f"SELECT {_PUBLIC} FROM users WHERE " + ("id = ?" if user_id is not None else "username = ?")
        row = self.registry.db.execute(sql, [user_id if user_id is not None else username]).fetchone()
        return _public(row) if row is not None else None


_PUBLIC = "id, username, admin, created_at, email, realname, comment, updated_at"


def _public(row: Any) -> dict[str, object]:
    """A users row's public fields: Harbor's names, the times as epoch seconds."""
    return {"user_id": row[0], "username": row[1], "sysadmin_flag": bool(row[2]), "creation_time": row[3],
            "email": row[4] or "", "realname": row[5] or "", "comment": row[6] or "",
            "update_time": row[7] if row[7] is not None else row[3]}


class UserError(ValueError):
    """A user change that cannot be made; `code` is Harbor's (BAD_REQUEST, CONFLICT, NOT_FOUND, PRECONDITION)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def validate_profile(email: object, realname: object, comment: object) -> tuple[str, str, str]:
    """(email, realname, comment) as stored; UserError BAD_REQUEST naming a bad field."""
    for name, value, cap in (("email", email, 255), ("realname", realname, 255), ("comment", comment, 1024)):
        if not isinstance(value, str) or len(value) > cap or any(ord(c) < 32 for c in value):
            raise UserError("BAD_REQUEST", f"{name} must be a string of at most {cap} printable characters")
    assert isinstance(email, str) and isinstance(realname, str) and isinstance(comment, str)
    if email and not _EMAIL.match(email):
        raise UserError("BAD_REQUEST", f"email {email!r} is not an email address")
    return email, realname, comment


def parse_basic(value: str) -> tuple[str, str] | None:
    """(username, password) from the part of a Basic Authorization header after ``Basic``.

    Returns None for empty credentials (containers/image answers a Basic
    challenge with them when it has none); raises UNAUTHORIZED when malformed.
    """
    try:
        username, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise RegistryError("UNAUTHORIZED", "malformed Basic credentials") from None
    if not sep:
        raise RegistryError("UNAUTHORIZED", "malformed Basic credentials")
    if not username and not password:
        return None
    return username, password
