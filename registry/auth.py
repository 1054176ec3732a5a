"""Appliance users and the decision who may pull, push and delete.

Passwords are hashed with scrypt. Verifying scrypt costs tens of
milliseconds by design, and registry clients send Basic credentials on every
request, so a successful check is remembered in-process for a few minutes
under a keyed hash of the password (never the password itself).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from registry.db import write_transaction
from registry.errors import RegistryError
from registry.model import Registry

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_CACHE_SECONDS = 300
ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    username: str
    admin: bool = False


def hash_password(password: str) -> str:
    """A self-describing scrypt hash of `password`."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return "scrypt${}${}${}${}${}".format(_SCRYPT_N, _SCRYPT_R, _SCRYPT_P,
                                         base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def check_password(password: str, stored: str) -> bool:
    """True if `password` matches a hash made by `hash_password`."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=256 << 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class Users:
    """The users table and credential checks."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, bytes], tuple[float, Principal]] = {}
        self._cache_key = secrets.token_bytes(32)
        self._lock = threading.Lock()

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
            db.execute("INSERT OR IGNORE INTO users (username, password_hash, admin, created_at) VALUES (?, ?, 1, ?)",
                       [ADMIN, hash_password(password), time.time()])
        return password if generated else None

    def set_password(self, username: str, password: str) -> None:
        """Set a user's password (creating a non-admin user if new)."""
        with write_transaction(self.registry.db) as db:
            db.execute("INSERT INTO users (username, password_hash, admin, created_at) VALUES (?, ?, 0, ?) "
                       "ON CONFLICT(username) DO UPDATE SET password_hash = excluded.password_hash",
                       [username, hash_password(password), time.time()])
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != username}

    def authenticate(self, username: str, password: str) -> Principal:
        """The principal for valid credentials; raises UNAUTHORIZED otherwise."""
        key = (username, hmac.new(self._cache_key, password.encode(), hashlib.sha256).digest())
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        row = self.registry.db.execute("SELECT password_hash, admin FROM users WHERE username = ?",
                                       [username]).fetchone()
        if row is None or not check_password(password, row[0]):
            raise RegistryError("UNAUTHORIZED", "invalid username or password")
        principal = Principal(username, bool(row[1]))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + _CACHE_SECONDS, principal)
        return principal


def authorize(principal: Principal | None, action: str, repository: str | None) -> None:
    """Allow or refuse `action` (pull, push, delete, catalog) on `repository`.

    Pulls are anonymous; pushes, deletes and the catalog need an admin.
    Raises UNAUTHORIZED when no credentials were given, DENIED when the
    given ones are not enough.
    """
    if action == "pull":
        return
    if principal is None:
        raise RegistryError("UNAUTHORIZED", f"authentication required to {action}"
                            + (f" {repository}" if repository else ""))
    if not principal.admin:
        raise RegistryError("DENIED", f"user {principal.username} may not {action}"
                            + (f" {repository}" if repository else ""))
