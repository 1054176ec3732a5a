"""Protected tags: who may not move or remove a tag, how that is enforced, and the audited one-shot override.

A tag is *protected* when an owner claims it. Owners are functions
``(db, repository, tags) -> {tag: who protects it}``; `TagProtection` always
asks the project's immutable tag rules (`registry.immutable`), and the
application factory adds the owner of released tags (the promoted release,
`bundles.release_protection`), so this package never reads another's tables.

What is refused, for every client and every user (robots and system
administrators included), inside the write's own transaction:

- pointing a protected tag at another manifest (a /v2/ manifest PUT);
- deleting a protected tag (/v2/ DELETE of a tag, Harbor's tag DELETE);
- deleting content a protected tag needs: the manifest it points at, a child
  manifest of that index, or a blob link of either (/v2/ DELETE by digest,
  Harbor's artifact DELETE, /v2/ blob DELETE);
- deleting a repository that holds a protected tag (Harbor's repository DELETE).

Pushing the digest the tag already points at is not a change and succeeds
(clients re-push what they copy); so does creating a tag that does not exist
yet (Harbor's rules protect a tag from its first push on). The refusal is
`TagProtected`: OCI code ``DENIED`` with HTTP 412 on /v2/ (clients print the
message, which names the release or rule), Harbor's ``PRECONDITION`` (412)
on /api/v2.0/.

The override: a system administrator grants one change of one tag
(`grant_override`) with a reason; it expires after `ttl` seconds and is
used up by the first refused write of that tag it allows. Granting and
using are both written to the audit log, in the transaction of the write.
Promotion and rollback do not pass through here: they are how released tags
are meant to move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registry.audit import append as audit_append
from registry.dbengine import Database, insert_id
from registry.digest import Digest
from registry.errors import RegistryError
from registry.immutable import matching_rules

Owner = Callable[[Database, str, list[str]], dict[str, str]]
DEFAULT_OVERRIDE_TTL = 900
MAX_OVERRIDE_TTL = 86400


class TagProtected(RegistryError):
    """A write refused because it would move or remove a protected tag (OCI DENIED, HTTP 412)."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__("DENIED", message, detail=detail, status=412)


class OverrideRefused(Exception):
    """An override that cannot be granted; `status` and `code` say how to answer."""

    def __init__(self, message: str, status: int = 400, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


@dataclass(frozen=True)
class Override:
    """A one-shot permission to move or remove one protected tag."""

    id: int
    repository: str
    tag: str
    reason: str
    granted_by: str
    created_at: float
    expires_at: float
    used_at: float | None
    used_for: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "repository": self.repository, "tag": self.tag, "reason": self.reason,
                "grantedBy": self.granted_by, "createdAt": self.created_at, "expiresAt": self.expires_at,
                "usedAt": self.used_at, "usedFor": self.used_for}


_OVERRIDE_COLUMNS = "id, repository, tag, reason, granted_by, created_at, expires_at, used_at, used_for"


class TagProtection:
    """The owners of protected tags, and the checks the registry's writes call inside their transaction."""

    def __init__(self) -> None:
        self._owners: list[tuple[Owner, str]] = [
            (matching_rules, "A project administrator can change or disable the rule "
                             "(/api/v2.0/projects/{project}/immutabletagrules).")]

    def add_owner(self, owner: Owner, hint: str) -> None:
        """Let `owner` claim tags too (idempotent); `hint` tells a refused client how such tags do change."""
        if all(owner is not known for known, _ in self._owners):
            self._owners.append((owner, hint))

    def _claims(self, db: Database, repository: str, tags: list[str]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        if not tags:
            return out
        for owner, hint in self._owners:
            for tag, by in owner(db, repository, tags).items():
                out.setdefault(tag, []).append((by, hint))
        return out

    def protectors(self, db: Database, repository: str, tags: list[str]) -> dict[str, list[str]]:
        """tag -> who protects it, for the protected ones among `tags` of `repository`."""
        return {tag: [by for by, _ in claims] for tag, claims in self._claims(db, repository, tags).items()}

    # -- the checks (call inside the write's transaction; each raises TagProtected)

    def before_move(self, db: Database, repository_id: int, repository: str, tag: str, digest: Digest) -> None:
        """Before pointing `tag` at `digest`: refused if protected and it points elsewhere now."""
        row = db.execute("SELECT digest FROM tags WHERE repository_id = ? AND name = ?",
                         [repository_id, tag]).fetchone()
        if row is None or row[0] == str(digest):
            return
        self._enforce(db, repository, [tag], f"moving it from {row[0]} to {digest}")

    def before_remove_tags(self, db: Database, repository: str, tags: list[str]) -> None:
        """Before deleting `tags` (those that do not exist are left to the caller's not-found answer)."""
        existing = [t for t in tags if db.execute(
            "SELECT 1 FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = ? AND t.name = ?",
            [repository, t]).fetchone()]
        self._enforce(db, repository, existing, "deleting it")

    def before_remove_content(self, db: Database, repository_id: int | None, repository: str,
                              digest: Digest) -> None:
        """Before deleting a manifest or blob link: refused if a protected tag reaches `digest`."""
        if repository_id is None:
            return
        tags = [t for (t,) in db.execute(
            "WITH RECURSIVE up(d) AS (SELECT ? UNION SELECT f.manifest FROM manifest_refs f JOIN up "
            "ON f.child = up.d WHERE f.repository_id = ?) "
            "SELECT name FROM tags WHERE repository_id = ? AND digest IN (SELECT d FROM up) ORDER BY name",
            [str(digest), repository_id, repository_id])]
        self._enforce(db, repository, tags, f"deleting {digest}, which it needs")

    def before_remove_repository(self, db: Database, repository_id: int, repository: str) -> None:
        """Before deleting a whole repository."""
        tags = [t for (t,) in db.execute("SELECT name FROM tags WHERE repository_id = ? ORDER BY name",
                                         [repository_id])]
        self._enforce(db, repository, tags, "deleting its repository")

    def _enforce(self, db: Database, repository: str, tags: list[str], change: str) -> None:
        claims = self._claims(db, repository, tags)
        if not claims:
            return
        protected = {tag: [by for by, _ in c] for tag, c in claims.items()}
        now = time.time()
        grants: dict[str, int] = {}
        for tag in protected:
            row = db.execute("SELECT id FROM tag_overrides WHERE repository = ? AND tag = ? AND used_at IS NULL "
                             "AND expires_at > ? ORDER BY id LIMIT 1", [repository, tag, now]).fetchone()
            if row is not None:
                grants[tag] = int(row[0])
        missing = [t for t in protected if t not in grants]
        if missing:
            tag = missing[0]
            by = "; ".join(protected[tag])
            more = f" (and {len(missing) - 1} more protected tag(s))" if len(missing) > 1 else ""
            hints = " ".join(dict.fromkeys(h.replace("{project}", repository.split("/", 1)[0])
                                           for _, h in claims[tag]))
            raise TagProtected(
                f"tag {repository}:{tag} is protected by {by}; refused {change}{more}. {hints} A system "
                "administrator can allow one change with 'cargohold tag override' (POST "
                "/api/cargohold/v1/tag-overrides), which is audited",
                {"repository": repository, "tag": tag, "protectedBy": protected[tag],
                 "protectedTags": sorted(missing)})
        for tag, grant_id in grants.items():
            granted_by, reason = db.execute("SELECT granted_by, reason FROM tag_overrides WHERE id = ?",
                                            [grant_id]).fetchone()
            db.execute("UPDATE tag_overrides SET used_at = ?, used_for = ? WHERE id = ?", [now, change, grant_id])
            audit_append(db, granted_by, "update", "tag",
                         f"{repository}:{tag} protection override {grant_id} used: {change} "
                         f"(protected by {'; '.join(protected[tag])}; granted for: {reason})")

    # -- overrides

    def grant_override(self, db: Database, repository: str, tag: str, reason: Any, username: str,
                       source_ip: str = "", ttl: Any = DEFAULT_OVERRIDE_TTL) -> Override:
        """Allow one change of protected `repository:tag` within `ttl` seconds (inside a write transaction).

        Raises OverrideRefused: no reason, a bad ttl, an unknown tag, or a tag that is not protected.
        """
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
            raise OverrideRefused("an override needs a reason of 1 to 500 characters: it goes to the audit log")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_OVERRIDE_TTL:
            raise OverrideRefused(f"ttlSeconds must be a whole number of seconds from 1 to {MAX_OVERRIDE_TTL}")
        row = db.execute("SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                         "WHERE r.name = ? AND t.name = ?", [repository, tag]).fetchone()
        if row is None:
            raise OverrideRefused(f"tag {repository}:{tag} does not exist", 404, "NOT_FOUND")
        protected = self.protectors(db, repository, [tag])
        if not protected:
            raise OverrideRefused(f"tag {repository}:{tag} is not protected: no override is needed", 409,
                                  "CONFLICT")
        now = time.time()
        reason = reason.strip()
        grant_id = insert_id(db, "INSERT INTO tag_overrides (repository, tag, reason, granted_by, source_ip, "
                             "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [repository, tag, reason, username, source_ip, now, now + ttl])
        audit_append(db, username, "create", "tag",
                     f"{repository}:{tag} protection override {grant_id} granted for one change within {ttl}s "
                     f"(points at {row[0]}; protected by {'; '.join(protected[tag])}): {reason}", source_ip)
        return self.override(db, grant_id)

    @staticmethod
    def override(db: Database, grant_id: int) -> Override:
        row = db.execute(f"SELECT {_OVERRIDE_COLUMNS} FROM tag_overrides WHERE id = ?", [grant_id]).fetchone()
        return Override(*row)

    @staticmethod
    def overrides(db: Database, limit: int = 100) -> list[Override]:
        """The most recent grants, newest first."""
        return [Override(*r) for r in db.execute(
            f"SELECT {_OVERRIDE_COLUMNS} FROM tag_overrides ORDER BY id DESC LIMIT ?", [limit])]
