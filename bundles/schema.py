"""The bundles package's tables, as migrations both metadata engines apply (registry.dbengine).

Importing this module registers them with `registry.db`; `web.app.build_services`
imports it so `migrate` applies them with the registry's own.

cluster_definitions        one row per imported definition name: its parsed document (JSON),
                           the archive's sha256, where it came from, when
cluster_definition_checks  every readiness check run: verdict and the full result (JSON)
trusted_keys               public keys that may sign bundles (bundles.trust)
import_jobs                bundle imports: state, progress, final report, the process running it (bundles.jobs)
releases                   one row per imported bundle: name, version, source, key id, state, promotion
release_images             the images of a release: local repository, tag, manifest digest, whether the
                           tag move waits for promotion (pending)
release_definitions        the cluster definitions a release carries (a copy of each document, JSON)
release_files              charts and definition archives a release brought (blobs served by no repository)
seed_files                 one row per file set found in a seed directory (bundles.seed): its identity (path, total
                           size, newest mtime), the outcome of its one import, and the process working on it
seed_scans                 every scan of a seed directory: who started it, the process running it, its report (JSON)
maintenance_jobs           garbage collection and scrub runs in the background: state, progress, result (JSON), the
                           process running it (bundles.maintenance_jobs)
maintenance_schedule       per job kind: the schedule in force (an API override), the next and last scheduled run
                           (bundles.maintenance_schedule)
retention_policies         Harbor tag retention policies, one per project; retention_executions and retention_tasks
                           their runs, one task (with its log) per repository (bundles.retention)
release_events             every promote, rollback and discard in the order it committed, numbered by `seq`
                           (monotonic, never reused): what a follower appliance replays (bundles.follow)
follow_state               on a follower appliance: the primary it follows, the last event applied, the last
                           sync and error (one row; bundles.follow)
follow_releases            on a follower appliance: which local release holds each release of the primary
"""

from __future__ import annotations

from registry.db import register_migrations
from registry.dbengine import Database, Migrations

clusterdef_migrations = register_migrations(Migrations("bundles.clusterdefs"))


@clusterdef_migrations()
def m001_cluster_definitions(db: Database) -> None:
    db.create_table(
        "cluster_definitions",
        {"name": str, "version": str, "digest": str, "source": str, "document": str, "imported_at": float},
        pk="name", not_null={"digest", "document", "imported_at"},
    )
    db.create_table(
        "cluster_definition_checks",
        {"id": int, "definition": str, "definition_digest": str, "checked_at": float, "ready": int,
         "result": str},
        pk="id", not_null={"definition", "checked_at", "ready", "result"},
    )
    db.create_index("cluster_definition_checks", ["definition", "checked_at"])


@clusterdef_migrations()
def m002_trusted_keys_and_import_jobs(db: Database) -> None:
    # trusted_keys: public keys (never private ones) that may vouch for bundles; id is bundles.keys.key_id.
    db.create_table(
        "trusted_keys",
        {"id": str, "key_type": str, "description": str, "public_pem": str, "added_at": float},
        pk="id", not_null={"key_type", "public_pem", "added_at"},
    )
    # import_jobs: one row per bundle import (CLI or HTTP), readable while it runs.
    db.create_table(
        "import_jobs",
        {"id": str, "source": str, "state": str, "bytes_done": int, "bytes_total": int, "error": str,
         "report": str, "pid": int, "created_at": float, "updated_at": float},
        pk="id", not_null={"source", "state", "created_at", "updated_at"},
    )
    db.create_index("import_jobs", ["created_at"])


@clusterdef_migrations()
def m003_releases(db: Database) -> None:
    # bundles.releases: state is staged, promoted, superseded, rolled-back or discarded; previous_id is the
    # release that was promoted when this one was promoted (what a rollback returns to).
    db.create_table(
        "releases",
        {"id": int, "name": str, "version": str, "bundle": str, "bundle_digest": str, "key_id": str,
         "imported_at": float, "state": str, "promoted_at": float, "promoted_by": str, "previous_id": int,
         "forced": int, "reason": str, "bytes_written": int},
        pk="id", not_null={"name", "imported_at", "state"},
    )
    db.create_index("releases", ["bundle_digest"])
    db.create_table(
        "release_images",
        {"release_id": int, "repository": str, "tag": str, "digest": str, "media_type": str, "reference": str,
         "pending": int},
        pk=("release_id", "reference"), foreign_keys=[("release_id", "releases", "id")],
    )
    db.create_index("release_images", ["repository", "tag"])
    db.create_table(
        "release_definitions",
        {"release_id": int, "name": str, "version": str, "digest": str, "document": str},
        pk=("release_id", "name"), foreign_keys=[("release_id", "releases", "id")],
    )
    db.create_table("release_files", {"release_id": int, "path": str, "digest": str, "size": int},
        pk=("release_id", "path"), foreign_keys=[("release_id", "releases", "id")],
    )


@clusterdef_migrations()
def m004_import_job_process_start(db: Database) -> None:
    # import_jobs.pid_start: the boot and start time of the process `pid` names (registry.processes.process_start),
    # so a reused pid does not keep an interrupted job looking alive.
    db.add_column("import_jobs", "pid_start", str)


@clusterdef_migrations()
def m005_import_job_error_code(db: Database) -> None:
    # import_jobs.error_code: the refusal code of a failed import (bundles.importer.BundleRefused.code, INTERNAL,
    # INTERRUPTED), which the HTTP API and `bundle status --json` give as errorCode.
    db.add_column("import_jobs", "error_code", str)


@clusterdef_migrations()
def m006_seed(db: Database) -> None:
    # bundles.seed: what the zero-touch scan of a seed directory found and did. seed_files.path is the bundle
    # (or definition) path as found; size and mtime_ns identify the file set (all parts and the detached
    # signature), so a changed file is considered anew. state: importing (pid/pid_start own it), imported,
    # refused (error_code), interrupted. seed_scans.serve: the `cargohold serve` a start-up scan belongs to.
    db.create_table(
        "seed_files",
        {"path": str, "kind": str, "size": int, "mtime_ns": int, "parts": int, "signature": str, "state": str,
         "job_id": str, "error_code": str, "error": str, "digest": str, "result": str, "pid": int,
         "pid_start": str, "scan_id": int, "updated_at": float},
        pk="path", not_null={"kind", "size", "mtime_ns", "state", "updated_at"},
    )
    db.create_table(
        "seed_scans",
        {"id": int, "seed_dir": str, "trigger": str, "requested_by": str, "serve": str, "state": str, "pid": int,
         "pid_start": str, "report": str, "started_at": float, "finished_at": float},
        pk="id", not_null={"seed_dir", "trigger", "state", "started_at"},
    )
    db.create_index("seed_scans", ["serve", "trigger"])


@clusterdef_migrations()
def m007_maintenance_jobs(db: Database) -> None:
    # bundles.maintenance_jobs: garbage collection (kind gc, dry_run) and scrub runs in the background.
    # state: running (pid/pid_start own it), done (result JSON), failed (error), interrupted (its process ended).
    # done/total: progress in the job's own unit (blobs hashed for a scrub); phase: what it is doing now.
    db.create_table(
        "maintenance_jobs",
        {"id": str, "kind": str, "dry_run": int, "state": str, "phase": str, "done": int, "total": int,
         "result": str, "error": str, "requested_by": str, "pid": int, "pid_start": str, "created_at": float,
         "updated_at": float, "finished_at": float},
        pk="id", not_null={"kind", "state", "created_at", "updated_at"},
    )
    db.create_index("maintenance_jobs", ["created_at"])


@clusterdef_migrations()
def m008_maintenance_schedule(db: Database) -> None:
    # bundles.maintenance_schedule: one row per job kind with a schedule. `schedule` is the schedule
    # `next_run_at` was computed from (a changed setting recomputes it); `override` a schedule set through
    # the API (Harbor's /system/gc/schedule), which wins over the configured one; `parameters` (JSON) the
    # options scheduled runs get. A worker claims a due run by moving `next_run_at` on in the same write
    # transaction that records the job, so with several workers each due time runs once.
    db.create_table(
        "maintenance_schedule",
        {"kind": str, "schedule": str, "override": str, "parameters": str, "next_run_at": float,
         "last_run_at": float, "last_job_id": str, "updated_at": float},
        pk="kind", not_null={"updated_at"},
    )
    # maintenance_jobs.trigger: manual (API, UI, CLI) or schedule; options: the settings it ran with (JSON:
    # retain, grace, read-rate limit...), so a report shows the limits that applied.
    db.add_column("maintenance_jobs", "trigger", str)
    db.add_column("maintenance_jobs", "options", str)
    # seq: a job's number (1, 2, ...), the integer id Harbor's /system/gc history names it by.
    db.add_column("maintenance_jobs", "seq", int)
    db.execute("UPDATE maintenance_jobs SET seq = rowid")  # unique, in the order the jobs were recorded
    db.create_index("maintenance_jobs", ["seq"], unique=True)


@clusterdef_migrations()
def m009_retention(db: Database) -> None:
    # bundles.retention: Harbor's tag retention policies (one per project; rules JSON), their executions (dry run
    # or not) and one task per repository of an execution, with its log.
    db.create_table(
        "retention_policies",
        {"id": int, "project_id": int, "policy": str, "created_at": float, "updated_at": float},
        pk="id", not_null={"project_id", "policy", "created_at", "updated_at"},
    )
    db.create_index("retention_policies", ["project_id"], unique=True)
    db.create_table(
        "retention_executions",
        {"id": int, "policy_id": int, "dry_run": int, "status": str, "trigger": str, "requested_by": str,
         "start_time": float, "end_time": float},
        pk="id", not_null={"policy_id", "dry_run", "status", "start_time"},
    )
    db.create_index("retention_executions", ["policy_id"])
    db.create_table(
        "retention_tasks",
        {"id": int, "execution_id": int, "repository": str, "status": str, "total": int, "retained": int,
         "log": str, "start_time": float, "end_time": float},
        pk="id", not_null={"execution_id", "repository", "status"},
    )
    db.create_index("retention_tasks", ["execution_id"])


@clusterdef_migrations()
def m010_retention_id(db: Database) -> None:
    # bundles.retention now sets the project metadata retention_id (Harbor's) when it creates a policy: give the
    # policies created before it theirs. A new database has no policies yet (and the registry's tables may come
    # after these migrations there): nothing to do.
    if "project_metadata" not in db.table_names():
        return
    db.execute("INSERT INTO project_metadata (project_id, name, value) "
               "SELECT project_id, 'retention_id', CAST(id AS TEXT) FROM retention_policies "
               "WHERE project_id IN (SELECT id FROM projects) "
               "ON CONFLICT (project_id, name) DO UPDATE SET value = excluded.value")


@clusterdef_migrations()
def m011_release_events(db: Database) -> None:
    # bundles.releases writes one row per promote/rollback/discard in the transaction that makes it; `seq` is
    # the rowid (rows are never deleted, so it only grows). other_id: the release promoted before (promote)
    # or the one rolled back (rollback).
    db.create_table(
        "release_events", {"seq": int, "action": str, "release_id": int, "other_id": int, "username": str, "at": float,
         "forced": int, "reason": str},
        pk="seq", not_null={"action", "release_id", "at"},
    )
    # Decisions made before this table existed are in the audit log, written in the same transactions:
    # carry them over in their order, so a follower of an upgraded primary replays its whole history.
    if "audit_logs" in db.table_names():
        _backfill_release_events(db)
    db.create_table(
        "follow_state", {"id": int, "primary_url": str, "last_seq": int, "primary_seq": int, "last_sync_at": float,
         "last_attempt_at": float, "last_error": str, "interval_seconds": float},
        pk="id",
    )
    db.create_table(
        "follow_releases", {"primary_id": int, "local_id": int, "copied_at": float},
        pk="primary_id", not_null={"local_id", "copied_at"},
    )


def _backfill_release_events(db: Database) -> None:
    import re

    promote = re.compile(r"promote release (\d+) ")
    rollback = re.compile(r"roll back release (\d+) .* to release (\d+) ")
    discard = re.compile(r"discard release (\d+) ")
    rows = db.execute("SELECT username, resource, op_time FROM audit_logs WHERE resource_type = 'release' "
                      "ORDER BY id").fetchall()
    for username, resource, at in rows:
        if m := promote.match(resource):
            rid = int(m.group(1))
            forced = " (forced: " in resource
            reason = resource.split(" (forced: ", 1)[1][:-1] if " (forced: " in resource else None
            db.execute("INSERT INTO release_events (action, release_id, username, at, forced, reason) "
                       "VALUES ('promote', ?, ?, ?, ?, ?)", [rid, username, at, int(forced), reason])
        elif m := rollback.match(resource):
            db.execute("INSERT INTO release_events (action, release_id, other_id, username, at, forced) "
                       "VALUES ('rollback', ?, ?, ?, ?, 0)", [int(m.group(2)), int(m.group(1)), username, at])
        elif m := discard.match(resource):
            db.execute("INSERT INTO release_events (action, release_id, username, at, forced) "
                       "VALUES ('discard', ?, ?, ?, 0)", [int(m.group(1)), username, at])
