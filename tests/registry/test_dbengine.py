"""The metadata engines (registry.dbengine, registry.db) on a real PostgreSQL 15 and on SQLite.

The PostgreSQL tests run on Debian's PostgreSQL started by tests/pgengine.py
(whatever ``--db`` says) and skip, saying why, only when its binaries are
missing. They check what the rest of the code relies on: one migration list
that gives both engines the same tables and columns, writers that queue
behind one another across connections as on SQLite, the advisory locks that
replace the data directory's file locks, and the refusal of a database whose
text ordering is not byte order.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import psycopg
import pytest

from registry.db import cluster_lock, connect, migrate, open_database, write_transaction
from registry.dbengine import MIGRATIONS_TABLE, translate
from registry.gc import GarbageCollector, import_guard
from registry.model import Registry
from registry.paths import DataPaths
from tests.pgengine import PostgresServer


def test_the_shared_sql_is_translated_for_psycopg_outside_quotes_only() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c LIKE ? ESCAPE '\\'") == \
        "SELECT a FROM t WHERE b = %s AND c ILIKE %s ESCAPE '\\'"
    assert translate("SELECT '50% ?', \"odd?col\" FROM t WHERE x = ?") == \
        "SELECT '50%% ?', \"odd?col\" FROM t WHERE x = %s"
    assert translate("SELECT 1 LIMIT ? OFFSET ?") == "SELECT 1 LIMIT NULLIF(GREATEST(%s::bigint, -1), -1) OFFSET %s"


def _schema(paths: DataPaths) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    db = connect(paths)
    try:
        tables = {t: sorted(c for c in db.column_names(t) if c != "rowid") for t in db.table_names()}
        applied = sorted(tuple(r) for r in db.execute(f"SELECT migration_set, name FROM {MIGRATIONS_TABLE}"))
    finally:
        db.close()
    return tables, applied


def test_one_migration_list_gives_both_engines_the_same_schema(tmp_path: Path, postgres: PostgresServer) -> None:
    import bundles.schema  # noqa: F401  (registers every package's migrations, as build_services does)
    import web.tus  # noqa: F401

    lite = DataPaths(tmp_path / "lite")
    pg = DataPaths(tmp_path / "pg", postgres.create_database())
    for paths in (lite, pg, pg):  # the second run on PostgreSQL finds nothing to do
        migrate(paths, notify=lambda _: None)
    lite_tables, lite_applied = _schema(lite)
    pg_tables, pg_applied = _schema(pg)
    lite_tables.pop("sqlite_sequence", None)
    assert pg_tables == lite_tables
    assert pg_applied == lite_applied and len(pg_applied) > 20
    assert not (tmp_path / "pg" / "cargohold.db").exists()  # the metadata is in PostgreSQL only


def test_triggers_and_upserts_behave_alike(tmp_path: Path, postgres: PostgresServer) -> None:
    """A re-push keeps the artifact's labels (an upsert deletes nothing); deleting the manifest takes them."""
    for paths in (DataPaths(tmp_path / "lite"), DataPaths(tmp_path / "pg", postgres.create_database())):
        reg = Registry(paths)
        paths.ensure()
        info = reg.store.ingest(io.BytesIO(b"{}"))
        reg.link_blob("p/app", info)
        body = (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": '
                b'{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "' + str(info.digest).encode() +
                b'", "size": 2}, "layers": []}')
        parsed = reg.put_manifest("p/app", "1", body, "application/vnd.oci.image.manifest.v1+json")
        db = reg.db
        with write_transaction(db):
            label = db.execute("INSERT INTO labels (name, scope, project_id, created_at, updated_at) "
                               "VALUES ('l', 'g', 0, 0, 0) RETURNING id").fetchall()[0][0]
            repo_id = reg.repository_id("p/app")
            db.execute("INSERT INTO artifact_labels (repository_id, digest, label_id, created_at) VALUES (?, ?, ?, 0)",
                       [repo_id, str(parsed.digest), label])
        reg.put_manifest("p/app", "2", body, "application/vnd.oci.image.manifest.v1+json")  # the same digest again
        assert db.execute("SELECT COUNT(*) FROM artifact_labels").fetchone()[0] == 1, paths
        reg.delete_manifest("p/app", parsed.digest)
        assert db.execute("SELECT COUNT(*) FROM artifact_labels").fetchone()[0] == 0, paths


def test_writers_queue_across_connections_on_postgresql(tmp_path: Path, postgres: PostgresServer) -> None:
    paths = DataPaths(tmp_path / "data", postgres.create_database())
    migrate(paths, notify=lambda _: None)
    first, second = connect(paths), connect(paths)
    entered = threading.Event()

    def other_writer() -> None:
        with write_transaction(second):
            entered.set()

    try:
        with write_transaction(first):
            thread = threading.Thread(target=other_writer)
            thread.start()
            assert not entered.wait(1.0), "a second writer got in while the first held the write lock"
        assert entered.wait(30), "the second writer never got the lock after the first committed"
        thread.join(30)
    finally:
        first.close()
        second.close()


def test_advisory_locks_stand_in_for_the_file_locks(tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database()
    one, other = DataPaths(tmp_path / "one", url), DataPaths(tmp_path / "other", url)  # two machines' directories
    migrate(one, notify=lambda _: None)
    with cluster_lock(one, "gc", shared=True) as taken:
        assert taken
        with cluster_lock(other, "gc", wait=False) as exclusive:
            assert not exclusive  # an import on one appliance holds off the sweep on another
        with cluster_lock(other, "gc", shared=True, wait=False) as shared:
            assert shared  # imports on both run together
    with cluster_lock(other, "gc", wait=False) as exclusive:
        assert exclusive  # released with its session
    assert not (tmp_path / "one" / "gc.lock").exists()

    reg = Registry(other)
    with import_guard(one):
        report = GarbageCollector(reg, grace_seconds=0).run()
    assert report.deferred and "import is running" in report.deferred


def test_a_database_without_byte_order_collation_is_refused(tmp_path: Path, postgres: PostgresServer) -> None:
    name = f"coll_{int(time.time() * 1000)}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'")
    paths = DataPaths(tmp_path / "data", postgres.url(name))
    with pytest.raises(RuntimeError, match=r"collation is 'C\.UTF-8'.*LC_COLLATE 'C'"):
        migrate(paths, notify=lambda _: None)
    with psycopg.connect(postgres.url(name)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
                            ).fetchone()[0] == 0  # nothing was created


def test_each_thread_and_process_has_its_own_connection(tmp_path: Path, postgres: PostgresServer) -> None:
    paths = DataPaths(tmp_path / "data", postgres.create_database())
    mine = open_database(paths)
    assert open_database(paths) is mine
    theirs: list[object] = []
    thread = threading.Thread(target=lambda: theirs.append(open_database(paths)))
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine
    assert mine.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0


def test_a_job_another_machine_runs_is_not_declared_interrupted_here(tmp_path: Path, postgres: PostgresServer) -> None:
    """Appliances share the metadata: a job whose process is on another machine (another boot id) is left alone
    while that machine's lease is fresh (registry.leases; tests/bundles/test_job_leases.py: once it ran out)."""
    from bundles.jobs import ImportJobs

    paths = DataPaths(tmp_path / "data", postgres.create_database())
    migrate(paths, notify=lambda _: None)
    jobs = ImportJobs(paths)
    mine = jobs.create("here.tar.zst")
    theirs = jobs.create("there.tar.zst")
    dead = jobs.create("dead.tar.zst")
    with write_transaction(open_database(paths)) as db:
        db.execute("UPDATE import_jobs SET pid_start = ? WHERE id = ?", ["another-boot-id:12345", theirs.id])
        db.execute("INSERT INTO machine_leases (boot_id, heartbeat_at) VALUES (?, ?)", ["another-boot-id", time.time()])
        db.execute("UPDATE import_jobs SET pid = 999999999 WHERE id = ?", [dead.id])  # this machine's, gone
    assert jobs.get(mine.id).state == "verifying"  # type: ignore[union-attr]
    assert jobs.get(theirs.id).state == "verifying"  # type: ignore[union-attr]
    assert jobs.get(dead.id).error_code == "INTERRUPTED"  # type: ignore[union-attr]


def test_backup_and_restore_refuse_postgresql_metadata_and_change_nothing(tmp_path: Path,
                                                                          postgres: PostgresServer) -> None:
    from registry.backup import BackupError, backup, restore

    paths = DataPaths(tmp_path / "data", postgres.create_database())
    migrate(paths, notify=lambda _: None)
    with pytest.raises(BackupError, match=r"PostgreSQL.*pg_dump"):
        backup(paths, tmp_path / "backup")
    with pytest.raises(BackupError, match=r"PostgreSQL.*pg_dump"):
        restore(tmp_path / "backup", DataPaths(tmp_path / "restored", paths.database_url))
    assert not (tmp_path / "backup").exists() and not (tmp_path / "restored").exists()


def test_a_dropped_session_is_replaced_on_next_use(tmp_path: Path, postgres: PostgresServer) -> None:
    paths = DataPaths(tmp_path / "data", postgres.create_database())
    first = open_database(paths)
    pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(psycopg.OperationalError):
        first.execute("SELECT 1")  # the request that finds it gone fails...
    again = open_database(paths)  # ...and the next one works on a new session
    assert again is not first and again.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0


def test_on_sqlite_a_job_from_before_a_reboot_is_interrupted(tmp_path: Path) -> None:
    """One machine (SQLite): another boot id means the process ran before a reboot, and is gone."""
    from bundles.jobs import ImportJobs

    paths = DataPaths(tmp_path / "data")
    migrate(paths, notify=lambda _: None)
    jobs = ImportJobs(paths)
    before = jobs.create("before-reboot.tar.zst")
    with write_transaction(open_database(paths)) as db:
        db.execute("UPDATE import_jobs SET pid_start = ? WHERE id = ?", ["an-earlier-boot-id:12345", before.id])
    assert jobs.get(before.id).error_code == "INTERRUPTED"  # type: ignore[union-attr]
