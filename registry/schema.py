"""The registry's tables, as migrations both metadata engines apply (registry.dbengine).

repositories      one row per repository name
blobs             every blob the store holds: size and when it arrived (GC grace)
repository_blobs  which repository may serve which blob (pushes, mounts, manifests)
manifests         manifests per repository, with media type, artifactType and subject
manifest_refs     what each manifest references: layers/config (blob) or children (manifest)
tags              tag -> manifest digest per repository
uploads           open upload sessions with their resumable hash state
users             appliance users (passwords hashed with scrypt), with Harbor's profile: email, real name, comment
projects          Harbor projects: the first component of every repository name; public or private
project_members   users' roles in projects (Harbor role ids: 1 admin, 2 developer, 3 guest,
                  4 maintainer, 5 limited guest)
robots            robot accounts: scrypt secret, level, expiry, disable flag, permissions (JSON, Harbor's shape)
repository_meta   Harbor's per-repository description, keyed by repository name
audit_logs        every write: who, what, on which resource, when, from which address
login_failures    failed logins per (account, source address) and per source address, for rate limiting
                  across workers (registry.access.LoginLimiter)
immutable_rules   Harbor's per-project immutable tag rules: one repository and one tag selector each
                  (doublestar patterns, matches/excludes), priority, disabled flag (registry.immutable)
tag_overrides     one-shot, expiring grants a system administrator gives to move or remove one protected
                  tag once; who gave it, why, and when it was used (registry.protection)
ui_sessions       signed-in operator UI sessions by the SHA-256 of their id: sign-out deletes the row
project_metadata  Harbor project metadata beyond `public`, key -> "true"/"false" string as Harbor stores it
                  (enable_content_trust_cosign; registry.image_trust)
image_signing_keys public keys whose cosign signatures the content-trust policy accepts (registry.image_trust)
health_heartbeat  one row the readiness check rewrites to prove the database takes a write (registry.health)
labels            Harbor labels: global (scope g, project_id 0) or of one project (scope p); name unique per scope
                  and project (registry.labels)
artifact_labels   which label is on which artifact, keyed by (repository_id, digest) as manifests are; triggers
                  drop the rows with their manifest, their label, and a project's labels with the project
appliance_versions every cargohold version that migrated this database, newest last: version, the version
                  before it, when (registry.upgrade)
"""

from __future__ import annotations

from registry.db import register_migrations
from registry.dbengine import Database, Migrations

migrations = register_migrations(Migrations("registry"))


@migrations()
def m001_registry(db: Database) -> None:
    db.create_table(
        "repositories",
        {"id": int, "name": str, "created_at": float}, pk="id", not_null={"name", "created_at"}
    )
    db.create_index("repositories", ["name"], unique=True)
    db.create_table("blobs", {"digest": str, "size": int, "created_at": float}, pk="digest", not_null={"size"})
    db.create_table("repository_blobs", {"repository_id": int, "digest": str, "created_at": float},
        pk=("repository_id", "digest"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db.create_index("repository_blobs", ["digest"])
    db.create_table("manifests", {
            "repository_id": int,
            "digest": str,
            "media_type": str,
            "artifact_type": str,
            "subject": str,
            "size": int,
            "annotations": str,
            "created_at": float,
        },
        pk=("repository_id", "digest"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db.create_index("manifests", ["repository_id", "subject"])
    db.create_index("manifests", ["digest"])
    db.create_table(
        "manifest_refs",
        {"repository_id": int, "manifest": str, "child": str, "kind": str, "media_type": str, "size": int,
         "platform": str},
        pk=("repository_id", "manifest", "child"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db.create_index("manifest_refs", ["repository_id", "child"])
    db.create_index("manifest_refs", ["child"])
    db.create_table("tags", {"repository_id": int, "name": str, "digest": str, "updated_at": float},
        pk=("repository_id", "name"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db.create_index("tags", ["repository_id", "digest"])
    db.create_table(
        "uploads",
        {"uuid": str, "repository": str, "offset": int, "hash_state": bytes, "created_at": float, "updated_at": float},
        pk="uuid",
    )
    db.create_table("users", {"id": int, "username": str, "password_hash": str, "admin": int, "created_at": float},
        pk="id",
    )
    db.create_index("users", ["username"], unique=True)
    # SQLite's instr(), which the shared SQL uses to cut a repository name at its first '/' (its project).
    db.execute_ddl(postgresql=["CREATE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER "
                               "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS 'SELECT strpos(haystack, needle)'"])


@migrations()
def m002_access(db: Database) -> None:
    db.create_table(
        "projects",
        {"id": int, "name": str, "public": int, "owner_id": int, "storage_limit": int, "created_at": float,
         "updated_at": float},
        pk="id", not_null={"name", "public", "created_at"},
    )
    db.create_index("projects", ["name"], unique=True)
    db.create_table("project_members", {"id": int, "project_id": int, "user_id": int, "role": int, "created_at": float},
        pk="id", foreign_keys=[("project_id", "projects", "id"), ("user_id", "users", "id")],
    )
    db.create_index("project_members", ["project_id", "user_id"], unique=True)
    db.create_table(
        "robots",
        {"id": int, "name": str, "description": str, "secret_hash": str, "level": str, "project_id": int,
         "disabled": int, "duration": int, "expires_at": int, "permissions": str, "creator": str,
         "created_at": float, "updated_at": float},
        pk="id", not_null={"name", "secret_hash", "level"},
    )
    db.create_index("robots", ["name"], unique=True)
    db.create_table("repository_meta", {"name": str, "description": str, "updated_at": float}, pk="name")
    db.create_table(
        "audit_logs",
        {"id": int, "username": str, "operation": str, "resource_type": str, "resource": str, "source_ip": str,
         "op_time": float},
        pk="id",
    )
    db.create_index("audit_logs", ["op_time"])
    db.create_table(
        "login_failures",
        {"key": str, "failures": int, "first_at": float, "locked_until": float, "seen": str}, pk="key",
    )


@migrations()
def m003_tag_protection(db: Database) -> None:
    db.create_table(
        "immutable_rules",
        {"id": int, "project_id": int, "priority": int, "disabled": int, "repo_decoration": str,
         "repo_pattern": str, "tag_decoration": str, "tag_pattern": str, "created_at": float,
         "updated_at": float},
        pk="id", not_null={"project_id", "disabled", "repo_decoration", "repo_pattern", "tag_decoration",
                           "tag_pattern", "created_at"},
        foreign_keys=[("project_id", "projects", "id")],
    )
    db.create_index("immutable_rules", ["project_id"])
    db.create_table(
        "tag_overrides",
        {"id": int, "repository": str, "tag": str, "reason": str, "granted_by": str, "source_ip": str,
         "created_at": float, "expires_at": float, "used_at": float, "used_for": str},
        pk="id", not_null={"repository", "tag", "reason", "granted_by", "created_at", "expires_at"},
    )
    db.create_index("tag_overrides", ["repository", "tag"])


@migrations()
def m004_login_backoff(db: Database) -> None:
    # Failures are now counted per account and address, with backoff; the old per-user rows mean nothing.
    db.execute("DELETE FROM login_failures")
    db.add_column("login_failures", "last_at", float)


@migrations()
def m005_ui_sessions(db: Database) -> None:
    db.create_table("ui_sessions", {"id": str, "user_id": int, "created_at": float, "expires_at": float}, pk="id",
        not_null={"user_id", "expires_at"},
    )


@migrations()
def m006_content_trust(db: Database) -> None:
    db.create_table("project_metadata", {"project_id": int, "name": str, "value": str}, pk=("project_id", "name"),
        foreign_keys=[("project_id", "projects", "id")],
    )
    db.create_table(
        "image_signing_keys",
        {"id": str, "key_type": str, "description": str, "public_pem": str, "added_at": float}, pk="id",
        not_null={"public_pem", "added_at"},
    )


@migrations()
def m007_health_heartbeat(db: Database) -> None:
    # One row that the readiness check (registry.health) rewrites: proof the database takes a write.
    db.create_table("health_heartbeat", {"id": int, "checked_at": float, "pid": int}, pk="id")


@migrations()
def m008_user_profiles(db: Database) -> None:
    # Harbor's user profile (email, real name, comment) and when a user last changed (Harbor's update_time).
    for column in ("email", "realname", "comment"):
        db.add_column("users", column, str, not_null_default="")
    db.add_column("users", "updated_at", float)


@migrations()
def m009_labels(db: Database) -> None:
    db.create_table(
        "labels",
        {"id": int, "name": str, "description": str, "color": str, "scope": str, "project_id": int,
         "created_at": float, "updated_at": float},
        pk="id", not_null={"name", "scope", "project_id", "created_at", "updated_at"},
    )
    db.create_index("labels", ["scope", "project_id", "name"], unique=True)
    db.create_table("artifact_labels", {"repository_id": int, "digest": str, "label_id": int, "created_at": float},
        pk=("repository_id", "digest", "label_id"),
        foreign_keys=[("repository_id", "repositories", "id"), ("label_id", "labels", "id")],
    )
    db.create_index("artifact_labels", ["label_id"])
    # Triggers, so every path that deletes a manifest (/v2/, Harbor, GC, releases), a label or a project
    # takes the attachments with it. A re-push of the same digest (an upsert) deletes nothing, so fires
    # no trigger: the artifact is the same, and Harbor keeps its labels too.
    triggers = {  # name: (table, what deleting a row of it deletes too)
        "artifact_labels_manifest_gone": (
            "manifests", "DELETE FROM artifact_labels WHERE repository_id = OLD.repository_id AND digest = OLD.digest"),
        "artifact_labels_label_gone": ("labels", "DELETE FROM artifact_labels WHERE label_id = OLD.id"),
        "labels_project_gone": ("projects", "DELETE FROM labels WHERE scope = 'p' AND project_id = OLD.id"),
    }
    # PostgreSQL's triggers call a function: one PL/pgSQL function per trigger, with the same statement.
    db.execute_ddl(
        sqlite=[f"CREATE TRIGGER {name} AFTER DELETE ON {table} BEGIN {delete}; END"
                for name, (table, delete) in triggers.items()],
        postgresql=[statement for name, (table, delete) in triggers.items() for statement in (
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {delete}; RETURN OLD; END $$",
            f"CREATE TRIGGER {name} AFTER DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")])


@migrations()
def m010_appliance_versions(db: Database) -> None:
    # registry.upgrade: the last row is the version that last migrated the data directory; a newer one is refused.
    db.create_table("appliance_versions", {"id": int, "version": str, "previous": str, "migrated_at": float}, pk="id",
        not_null={"version", "migrated_at"},
    )


@migrations()
def m011_shared_secrets(db: Database) -> None:
    # registry.tokens.load_or_create_secret with PostgreSQL metadata: the token-signing key, UI session key,
    # token-binding and login-fingerprint keys every replica sharing the database must hold alike (SQLite
    # keeps them as files under keys/, where backups carry them).
    db.create_table("shared_secrets", {"name": str, "value": bytes, "created_at": float}, pk="name",
        not_null={"value", "created_at"},
    )


@migrations()
def m012_machine_leases(db: Database) -> None:
    # registry.leases: one row per machine (boot id) running replicas or jobs on shared PostgreSQL metadata.
    db.create_table("machine_leases", {"boot_id": str, "heartbeat_at": float}, pk="boot_id",
        not_null={"heartbeat_at"},
    )
