"""The registry's tables, as sqlite-utils migrations.

repositories      one row per repository name
blobs             every blob the store holds: size and when it arrived (GC grace)
repository_blobs  which repository may serve which blob (pushes, mounts, manifests)
manifests         manifests per repository, with media type, artifactType and subject
manifest_refs     what each manifest references: layers/config (blob) or children (manifest)
tags              tag -> manifest digest per repository
uploads           open upload sessions with their resumable hash state
users             appliance users (passwords hashed with scrypt)
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

from registry.db import register_migrations

migrations = register_migrations(Migrations("registry"))


@migrations()
def m001_registry(db: Database) -> None:
    db["repositories"].create(
        {"id": int, "name": str, "created_at": float}, pk="id", not_null={"name", "created_at"}
    )
    db["repositories"].create_index(["name"], unique=True)
    db["blobs"].create({"digest": str, "size": int, "created_at": float}, pk="digest", not_null={"size"})
    db["repository_blobs"].create(
        {"repository_id": int, "digest": str, "created_at": float},
        pk=("repository_id", "digest"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db["repository_blobs"].create_index(["digest"])
    db["manifests"].create(
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
    db["manifests"].create_index(["repository_id", "subject"])
    db["manifests"].create_index(["digest"])
    db["manifest_refs"].create(
        {"repository_id": int, "manifest": str, "child": str, "kind": str, "media_type": str, "size": int, "platform": str},
        pk=("repository_id", "manifest", "child"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db["manifest_refs"].create_index(["repository_id", "child"])
    db["manifest_refs"].create_index(["child"])
    db["tags"].create(
        {"repository_id": int, "name": str, "digest": str, "updated_at": float},
        pk=("repository_id", "name"),
        foreign_keys=[("repository_id", "repositories", "id")],
    )
    db["tags"].create_index(["repository_id", "digest"])
    db["uploads"].create(
        {"uuid": str, "repository": str, "offset": int, "hash_state": bytes, "created_at": float, "updated_at": float},
        pk="uuid",
    )
    db["users"].create(
        {"id": int, "username": str, "password_hash": str, "admin": int, "created_at": float},
        pk="id",
    )
    db["users"].create_index(["username"], unique=True)
