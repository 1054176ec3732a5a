"""The garbage collector's rules, on a real data directory (SQLite and blob files), without a server.

Time is simulated by moving rows' timestamps and files' mtimes back
(`_age`), so the grace period can be tested without waiting an hour. The
end-to-end runs (concurrent push and import, retention, a running cluster)
are in tests/bundles/test_releases*.py.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from registry.blobstore import BlobInfo
from registry.db import write_transaction
from registry.digest import Digest
from registry.errors import RegistryError
from registry.gc import GarbageCollector, GcRoots, import_guard, parse_grace
from registry.manifests import OCI_INDEX, OCI_MANIFEST
from registry.model import Registry
from registry.paths import DataPaths
from registry.uploads import Uploads

CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture
def reg(tmp_path: Path, database_url: str | None) -> Registry:
    paths = DataPaths(tmp_path / "data", database_url)  # database_url: PostgreSQL with --db=postgres
    paths.ensure()
    return Registry(paths)


def _blob(reg: Registry, repo: str, data: bytes) -> dict[str, object]:
    info = reg.store.ingest(io.BytesIO(data))
    reg.link_blob(repo, info)
    return {"mediaType": LAYER, "digest": str(info.digest), "size": info.size}


def _image(reg: Registry, repo: str, tag: str | None, seed: str, shared: bytes | None = None,
           subject: dict[str, object] | None = None) -> tuple[str, list[str]]:
    """Push an image like a client: blobs, then the manifest; returns (manifest digest, blob digests)."""
    config = _blob(reg, repo, json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode())
    config["mediaType"] = CONFIG
    layers = [_blob(reg, repo, f"layer {seed}".encode() * 1000)]
    if shared is not None:
        layers.append(_blob(reg, repo, shared))
    doc: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    if subject is not None:
        doc["subject"] = subject
        doc["artifactType"] = "application/example"
    body = json.dumps(doc).encode()
    digest = str(Digest.of_bytes(body))
    reg.put_manifest(repo, tag or digest, body, OCI_MANIFEST)
    return digest, [str(config["digest"]), *(str(la["digest"]) for la in layers)]


def _index(reg: Registry, repo: str, tag: str | None, children: list[str]) -> str:
    entries = []
    for child in children:
        record = reg.resolve(repo, child)
        entries.append({"mediaType": record.media_type, "digest": child, "size": record.size,
                        "platform": {"architecture": "amd64", "os": "linux"}})
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    digest = str(Digest.of_bytes(body))
    reg.put_manifest(repo, tag or digest, body, OCI_INDEX)
    return digest


def _age(reg: Registry, seconds: float = 7200) -> None:
    db = reg.db
    with write_transaction(db):
        for table in ("blobs", "repository_blobs", "manifests"):
            db.execute(f"UPDATE {table} SET created_at = created_at - ?", [seconds])
    old = time.time() - seconds
    for path in reg.paths.blobs.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def _on_disk(reg: Registry, digest: str) -> bool:
    return reg.store.stat(Digest.parse(digest)) is not None


def test_untagged_content_goes_tagged_and_shared_content_stays_and_dry_run_changes_nothing(reg: Registry) -> None:
    shared = b"shared layer" * 500
    kept, kept_blobs = _image(reg, "p/app", "1", "kept", shared)
    gone, gone_blobs = _image(reg, "p/app", "2", "gone", shared)
    reg.delete_tag("p/app", "2")
    _age(reg)
    gc = GarbageCollector(reg, grace_seconds=3600)
    before = sorted(reg.db.execute("SELECT digest FROM blobs").fetchall())

    dry = gc.run(dry_run=True)
    assert [m["digest"] for m in dry.manifests] == [gone]
    only_gone = {gone, *gone_blobs} - set(kept_blobs)
    assert {b["digest"] for b in dry.blobs} == only_gone
    sizes = {d: reg.paths.blob(Digest.parse(d)).stat().st_size for d in only_gone}
    assert dry.bytes_reclaimed == sum(sizes.values())
    assert sorted(reg.db.execute("SELECT digest FROM blobs").fetchall()) == before
    assert all(_on_disk(reg, d) for d in only_gone)

    done = gc.run()
    assert [m["digest"] for m in done.manifests] == [gone]
    assert {b["digest"] for b in done.blobs} == only_gone
    assert done.bytes_reclaimed == dry.bytes_reclaimed and done.files == len(only_gone)
    assert not any(_on_disk(reg, d) for d in only_gone)
    assert all(_on_disk(reg, d) for d in [kept, *kept_blobs])
    assert reg.resolve("p/app", "1").digest == Digest.parse(kept)
    with pytest.raises(RegistryError):
        reg.resolve("p/app", gone)
    assert gc.run().manifests == []  # idempotent: nothing left to take


def test_index_children_and_referrers_of_kept_manifests_stay(reg: Registry) -> None:
    child, child_blobs = _image(reg, "p/multi", None, "child")
    index = _index(reg, "p/multi", "1", [child])
    record = reg.resolve("p/multi", child)
    subject = {"mediaType": record.media_type, "digest": child, "size": record.size}
    sbom, sbom_blobs = _image(reg, "p/multi", None, "sbom", subject=subject)
    orphan, _ = _image(reg, "p/multi", None, "orphan")
    _age(reg)
    report = GarbageCollector(reg, grace_seconds=60).run()
    assert [m["digest"] for m in report.manifests] == [orphan]
    for digest in (index, child, sbom, *child_blobs, *sbom_blobs):
        assert _on_disk(reg, digest)
    assert [str(d.digest) for d in reg.referrers("p/multi", Digest.parse(child))] == [sbom]

    reg.delete_tag("p/multi", "1")  # now the index, its child and the child's referrer are all unreachable
    report = GarbageCollector(reg, grace_seconds=0).run()
    assert {m["digest"] for m in report.manifests} == {index, child, sbom}
    assert reg.db.execute("SELECT COUNT(*) FROM manifests").fetchone()[0] == 0
    assert reg.db.execute("SELECT COUNT(*) FROM manifest_refs").fetchone()[0] == 0
    assert reg.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0
    assert list(reg.store.walk()) == []


def test_the_grace_period_protects_a_push_in_progress_and_recent_untagged_manifests(reg: Registry) -> None:
    layer = _blob(reg, "p/slow", b"uploaded, manifest not pushed yet" * 100)
    untagged, blobs = _image(reg, "p/slow", None, "child-before-index")
    report = GarbageCollector(reg, grace_seconds=3600).run()
    assert report.manifests == [] and report.blobs == [] and report.files == 0
    assert _on_disk(reg, str(layer["digest"])) and all(_on_disk(reg, d) for d in [untagged, *blobs])
    _age(reg)
    report = GarbageCollector(reg, grace_seconds=3600).run()
    assert {b["digest"] for b in report.blobs} == {str(layer["digest"]), untagged, *blobs}
    assert not _on_disk(reg, str(layer["digest"]))


def test_roots_from_the_caller_keep_untagged_content(reg: Registry) -> None:
    released, released_blobs = _image(reg, "p/rel", None, "release")
    running, running_blobs = _image(reg, "p/other", None, "running")
    chart = reg.store.ingest(io.BytesIO(b"a chart no repository serves"))
    with write_transaction(reg.db):
        reg.register_blob(reg.db, chart)
    _age(reg)
    roots = GcRoots(manifests=frozenset({("p/rel", released)}), digests=frozenset({running}),
                    blobs=frozenset({str(chart.digest)}))
    report = GarbageCollector(reg, grace_seconds=60).run(roots)
    assert report.manifests == [] and report.blobs == []
    for digest in (released, running, str(chart.digest), *released_blobs, *running_blobs):
        assert _on_disk(reg, digest)
    report = GarbageCollector(reg, grace_seconds=60).run(lambda db: GcRoots())
    assert {m["digest"] for m in report.manifests} == {released, running}
    assert str(chart.digest) in {b["digest"] for b in report.blobs}


def test_orphan_files_go_after_the_grace_period_and_wait_for_a_running_import(reg: Registry) -> None:
    old = reg.store.ingest(io.BytesIO(b"left behind by a crash" * 50))  # a file with no row
    young = reg.store.ingest(io.BytesIO(b"just written, row on the way"))
    past = time.time() - 7200
    os.utime(reg.paths.blob(old.digest), (past, past))
    with import_guard(reg.paths):
        report = GarbageCollector(reg, grace_seconds=60).run()
        assert report.deferred is not None and "import is running" in report.deferred
        assert report.files == 0 and _on_disk(reg, str(old.digest))
    report = GarbageCollector(reg, grace_seconds=60).run()
    assert report.deferred is None and report.files == 1 and report.bytes_reclaimed == old.size
    assert not _on_disk(reg, str(old.digest)) and _on_disk(reg, str(young.digest))


def test_a_blob_reused_by_a_push_gets_a_fresh_mtime_and_rows_never_point_at_a_missing_file(reg: Registry) -> None:
    data = b"an old orphan a client pushes again" * 10
    info = reg.store.ingest(io.BytesIO(data))
    past = time.time() - 7200
    os.utime(reg.paths.blob(info.digest), (past, past))
    reg.store.ingest(io.BytesIO(data))  # the push finds the file already there
    assert reg.paths.blob(info.digest).stat().st_mtime > time.time() - 60  # so the file sweep leaves it alone
    reg.store.delete(info.digest)
    with pytest.raises(RegistryError) as exc:
        reg.link_blob("p/x", BlobInfo(info.digest, info.size))
    assert exc.value.code == "BLOB_UNKNOWN" and "garbage collection" in exc.value.message
    assert reg.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0


def test_stale_upload_sessions_are_removed_and_counted(reg: Registry) -> None:
    uploads = Uploads(reg, expiry_seconds=600)
    stale = uploads.start("p/up")
    uploads.append(stale, io.BytesIO(b"x" * 5000))
    fresh = uploads.start("p/up")
    uploads.append(fresh, io.BytesIO(b"y" * 10))
    with write_transaction(reg.db):
        reg.db.execute("UPDATE uploads SET updated_at = updated_at - 3600 WHERE uuid = ?", [stale.uuid])
    dry = GarbageCollector(reg, uploads, grace_seconds=60).run(dry_run=True)
    assert (dry.uploads_expired, dry.upload_bytes) == (1, 5000)
    assert reg.paths.upload(stale.uuid).exists()
    done = GarbageCollector(reg, uploads, grace_seconds=60).run()
    assert (done.uploads_expired, done.upload_bytes) == (1, 5000)
    assert not reg.paths.upload(stale.uuid).exists() and reg.paths.upload(fresh.uuid).exists()


def test_grace_parsing_names_bad_values(reg: Registry) -> None:
    assert parse_grace("90") == 90 and parse_grace("15m") == 900 and parse_grace("2h") == 7200
    assert parse_grace("1d") == 86400 and parse_grace("0") == 0
    for bad in ("soon", "-5", "h", ""):
        with pytest.raises(ValueError, match="grace period"):
            parse_grace(bad)
    with pytest.raises(ValueError, match="negative"):
        GarbageCollector(reg, grace_seconds=-1)
