"""The registry's tables, as sqlite-utils migrations.

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

from sqlite_utils import Database, Migrations

from registry.db import register_migrations

migrations = register_migrations(Migrations("registry"))


@migrations()
def m001_registry(db: Database) -> None:
    db.table("repositories").create(
        {"id": int, "name": str, "created_at": float}, pk="id", not_null={"name", "created_at"}
    )
    db.table("repositories").create_index(["name"], unique=True)
    db.table("blobs").create({"digest": str, "size": int, "created_at": float}, pk="digest", not_null={"size"})
    db.table("repository_blobs").create(
        {"repository_id": int, "digest": str, "created_at": float},
        pk=("repository_id", "digest"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db.table("repository_blobs").create_index(["digest"])
    db.table("manifests").create(
        {
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
    db.table("manifests").create_index(["repository_id", "subject"])
    db.table("manifests").create_index(["digest"])
    db.table("manifest_refs").create(
        {"repository_id": int, "manifest": str, "child": str, "kind": str, "media_type": str, "size": int,
         "platform": str},
        pk=("repository_id", "manifest", "child"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db.table("manifest_refs").create_index(["repository_id", "child"])
    db.table("manifest_refs").create_index(["child"])
    db.table("tags").create(
        {"repository_id": int, "name": str, "digest": str, "updated_at": float},
        pk=("repository_id", "name"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db.table("tags").create_index(["repository_id", "digest"])
    db.table("uploads").create(
        {"uuid": str, "repository": str, "offset": int, "hash_state": bytes, "created_at": float, "updated_at": float},
        pk="uuid",
    )
    db.table("users").create(
        {"id": int, "username": str, "password_hash": str, "admin": int, "created_at": float},
        pk="id",
    )
    db.table("users").create_index(["username"], unique=True)


@migrations()
def m002_access(db: Database) -> None:
    db.table("projects").create(
        {"id": int, "name": str, "public": int, "owner_id": int, "storage_limit": int, "created_at": float,
         "updated_at": float},
        pk="id", not_null={"name", "public", "created_at"},
    )
    db.table("projects").create_index(["name"], unique=True)
    db.table("project_members").create(
        {"id": int, "project_id": int, "user_id": int, "role": int, "created_at": float},
        pk="id", foreign_keys=[("project_id", "projects", "id"), ("user_id", "users", "id")],
    )
    db.table("project_members").create_index(["project_id", "user_id"], unique=True)
    db.table("robots").create(
        {"id": int, "name": str, "description": str, "secret_hash": str, "level": str, "project_id": int,
         "disabled": int, "duration": int, "expires_at": int, "permissions": str, "creator": str,
         "created_at": float, "updated_at": float},
        pk="id", not_null={"name", "secret_hash", "level"},
    )
    db.table("robots").create_index(["name"], unique=True)
    db.table("repository_meta").create({"name": str, "description": str, "updated_at": float}, pk="name")
    db.table("audit_logs").create(
        {"id": int, "username": str, "operation": str, "resource_type": str, "resource": str, "source_ip": str,
         "op_time": float},
        pk="id",
    )
    db.table("audit_logs").create_index(["op_time"])
    db.table("login_failures").create(
        {"key": str, "failures": int, "first_at": float, "locked_until": float, "seen": str}, pk="key",
    )


@migrations()
def m003_tag_protection(db: Database) -> None:
    db.table("immutable_rules").create(
        {"id": int, "project_id": int, "priority": int, "disabled": int, "repo_decoration": str,
         "repo_pattern": str, "tag_decoration": str, "tag_pattern": str, "created_at": float,
         "updated_at": float},
        pk="id", not_null={"project_id", "disabled", "repo_decoration", "repo_pattern", "tag_decoration",
                           "tag_pattern", "created_at"},
        foreign_keys=[("project_id", "projects", "id")],
    )
    db.table("immutable_rules").create_index(["project_id"])
    db.table("tag_overrides").create(
        {"id": int, "repository": str, "tag": str, "reason": str, "granted_by": str, "source_ip": str,
         "created_at": float, "expires_at": float, "used_at": float, "used_for": str},
        pk="id", not_null={"repository", "tag", "reason", "granted_by", "created_at", "expires_at"},
    )
    db.table("tag_overrides").create_index(["repository", "tag"])


@migrations()
def m004_login_backoff(db: Database) -> None:
    # Failures are now counted per account and address, with backoff; the old per-user rows mean nothing.
    db.execute("DELETE FROM login_failures")
    db.table("login_failures").add_column("last_at", float)


@migrations()
def m005_ui_sessions(db: Database) -> None:
    db.table("ui_sessions").create(
        {"id": str, "user_id": int, "created_at": float, "expires_at": float}, pk="id",
        not_null={"user_id", "expires_at"},
    )


@migrations()
def m006_content_trust(db: Database) -> None:
    db.table("project_metadata").create(
        {"project_id": int, "name": str, "value": str}, pk=("project_id", "name"),
        foreign_keys=[("project_id", "projects", "id")],
    )
    db.table("image_signing_keys").create(
        {"id": str, "key_type": str, "description": str, "public_pem": str, "added_at": float}, pk="id",
        not_null={"public_pem", "added_at"},
    )


@migrations()
def m007_health_heartbeat(db: Database) -> None:
    # One row that the readiness check (registry.health) rewrites: proof the database takes a write.
    db.table("health_heartbeat").create({"id": int, "checked_at": float, "pid": int}, pk="id")


@migrations()
def m008_user_profiles(db: Database) -> None:
    # Harbor's user profile (email, real name, comment) and when a user last changed (Harbor's update_time).
    users = db.table("users")
    for column in ("email", "realname", "comment"):
        users.add_column(column, str, not_null_default="")
    users.add_column("updated_at", float)


@migrations()
def m009_labels(db: Database) -> None:
    db.table("labels").create(
        {"id": int, "name": str, "description": str, "color": str, "scope": str, "project_id": int,
         "created_at": float, "updated_at": float},
        pk="id", not_null={"name", "scope", "project_id", "created_at", "updated_at"},
    )
    db.table("labels").create_index(["scope", "project_id", "name"], unique=True)
    db.table("artifact_labels").create(
        {"repository_id": int, "digest": str, "label_id": int, "created_at": float},
        pk=("repository_id", "digest", "label_id"),
        foreign_keys=[("repository_id", "repositories", "id"), ("label_id", "labels", "id")],
    )
    db.table("artifact_labels").create_index(["label_id"])
    # Triggers, so every path that deletes a manifest (/v2/, Harbor, GC, releases), a label or a project
    # takes the attachments with it. A re-push of the same digest (INSERT OR REPLACE) fires no delete
    # trigger (recursive_triggers is off): the artifact is the same, and Harbor keeps its labels too.
    db.execute("CREATE TRIGGER artifact_labels_manifest_gone AFTER DELETE ON manifests BEGIN "
               "DELETE FROM artifact_labels WHERE repository_id = OLD.repository_id AND digest = OLD.digest; END")
    db.execute("CREATE TRIGGER artifact_labels_label_gone AFTER DELETE ON labels BEGIN "
               "DELETE FROM artifact_labels WHERE label_id = OLD.id; END")
    db.execute("CREATE TRIGGER labels_project_gone AFTER DELETE ON projects BEGIN "
               "DELETE FROM labels WHERE scope = 'p' AND project_id = OLD.id; END")


@migrations()
def m010_appliance_versions(db: Database) -> None:
    # registry.upgrade: the last row is the version that last migrated the data directory; a newer one is refused.
    db.table("appliance_versions").create(
        {"id": int, "version": str, "previous": str, "migrated_at": float}, pk="id",
        not_null={"version", "migrated_at"},
    )
