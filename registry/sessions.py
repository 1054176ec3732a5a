"""Server-side records of signed-in operator UI sessions, so that signing out really ends one.

The UI's session cookie is signed, not stored: on its own, a copy of it
taken before sign-out would keep working until it expired. So every sign-in
gets a random session id, kept in the cookie and, as its SHA-256 (a leaked
database does not hand out live sessions), in the ``ui_sessions`` table; a
cookie counts only while its row exists and has not expired. Sign-out deletes
the row. Each check is one read by primary key.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from registry.db import write_transaction
from registry.model import Registry


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The ``ui_sessions`` table."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def start(self, user_id: int, lifetime: float) -> str:
        """Record a new session of `user_id` lasting `lifetime` seconds; returns its id (for the cookie only)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM ui_sessions WHERE expires_at <= ?", [now])  # keeps the table small
            db.execute("INSERT INTO ui_sessions (id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                       [_key(session_id), user_id, now, now + lifetime])
        return session_id

    def active(self, session_id: str, user_id: int) -> bool:
        """True while the session `session_id` of `user_id` has neither ended nor expired."""
        row = self.registry.db.execute("SELECT user_id, expires_at FROM ui_sessions WHERE id = ?",
                                       [_key(session_id)]).fetchone()
        return row is not None and int(row[0]) == user_id and float(row[1]) > time.time()

    def end(self, session_id: str) -> None:
        """End one session; idempotent."""
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM ui_sessions WHERE id = ?", [_key(session_id)])

    def end_others(self, user_id: int, keep: str) -> int:
        """End every session of `user_id` but `keep` (after a password change); returns how many ended."""
        with write_transaction(self.registry.db) as db:
            return int(db.execute("DELETE FROM ui_sessions WHERE user_id = ? AND id != ?",
                                  [user_id, _key(keep)]).rowcount)
