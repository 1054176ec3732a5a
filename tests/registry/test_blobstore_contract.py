"""The driver contract every blob store backend must pass (registry.blobstore.BlobStore).

Parametrized over the filesystem store and each real S3-compatible engine
(tests/s3engines.py): Ceph's RADOS Gateway from Debian's packages, and
SeaweedFS when a `weed` binary is installed (skipped otherwise, with the
reason). No fake S3 anywhere: every S3 case talks to a running engine.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from registry.blobstore import BlobStore, FilesystemBlobStore
from registry.digest import Digest
from registry.errors import RegistryError
from registry.paths import DataPaths
from registry.s3store import MIN_PART_SIZE, Credentials, S3BlobStore, StorageURL, iter_parts
from tests.s3engines import S3Engine

PART = MIN_PART_SIZE  # the smallest part S3 allows, so a multi-part blob stays small


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def s3_store(engine: S3Engine, bucket: str | None = None) -> S3BlobStore:
    url = StorageURL(bucket or engine.new_bucket(), "site/a", engine.endpoint, engine.region)
    return S3BlobStore(url, Credentials(engine.access_key, engine.secret_key), part_size=PART)


@pytest.fixture(params=["filesystem", "ceph-rgw", "seaweedfs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        paths = DataPaths(tmp_path / "data")
        paths.ensure()
        yield FilesystemBlobStore(paths)
        return
    engine: S3Engine = request.getfixturevalue(request.param.replace("-", "_"))
    yield s3_store(engine)


def pending_uploads(store: BlobStore) -> list[Any]:
    """Multipart uploads left open in the store's bucket (none for the filesystem store)."""
    if not isinstance(store, S3BlobStore):
        return []
    return list(store.client.list_multipart_uploads(Bucket=store.url.bucket).get("Uploads", []))


def leftovers(store: BlobStore) -> list[str]:
    """Anything a failed write could have left: files under tmp/ and blobs/, or objects in the bucket."""
    if isinstance(store, FilesystemBlobStore):
        return [str(p) for p in (store.paths.root / "tmp").rglob("*")] + \
            [str(p) for p in store.paths.blobs.rglob("*") if p.is_file()]
    assert isinstance(store, S3BlobStore)
    objects = store.client.list_objects_v2(Bucket=store.url.bucket).get("Contents", [])
    return [o["Key"] for o in objects] + [u["Key"] for u in pending_uploads(store)]


def read_all(store: BlobStore, digest: Digest, offset: int = 0) -> bytes:
    with store.open(digest, offset) as f:
        return f.read()


def test_absent_blob(store: BlobStore) -> None:
    d = digest_of(b"nothing here")
    assert store.stat(d) is None
    with pytest.raises(RegistryError) as err:
        store.open(d)
    assert err.value.code == "BLOB_UNKNOWN"
    assert store.delete(d) is False
    assert list(store.walk()) == []
    assert store.check() is None


def test_ingest_then_read_back(store: BlobStore) -> None:
    data = os.urandom(300_000)
    d = digest_of(data)
    info = store.ingest(io.BytesIO(data), d, len(data))
    assert (info.digest, info.size) == (d, len(data))
    got = store.stat(d)
    assert got is not None and got.size == len(data) and got.modified > 0
    assert read_all(store, d) == data
    assert read_all(store, d, 123_456) == data[123_456:]
    assert [(b.digest, b.size) for b in store.walk()] == [(d, len(data))]


def test_ingest_without_expected_digest(store: BlobStore) -> None:
    data = b'{"schemaVersion": 2}'
    info = store.ingest(io.BytesIO(data))
    assert info.digest == digest_of(data)
    assert read_all(store, info.digest) == data


@pytest.mark.parametrize("size", [1000, 2 * PART + 12_345], ids=["one-part", "multi-part"])
def test_digest_mismatch_leaves_nothing(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    wrong = digest_of(b"other bytes")
    with pytest.raises(RegistryError) as err:
        store.ingest(io.BytesIO(data), wrong, size)
    assert err.value.code == "DIGEST_INVALID"
    assert store.stat(wrong) is None and store.stat(digest_of(data)) is None
    assert leftovers(store) == []


@pytest.mark.parametrize("declared", [999, 1001, PART + 1], ids=["shorter", "longer", "much-longer"])
def test_size_mismatch_leaves_nothing(store: BlobStore, declared: int) -> None:
    data = os.urandom(1000) if declared != PART + 1 else os.urandom(2 * PART + 10)
    d = digest_of(data)
    with pytest.raises(RegistryError) as err:
        store.ingest(io.BytesIO(data), d, declared)
    assert err.value.code == "SIZE_INVALID"
    assert store.stat(d) is None
    assert leftovers(store) == []


def test_multi_part_blob(store: BlobStore) -> None:
    data = os.urandom(2 * PART + 777)  # three parts: two full, one short
    d = digest_of(data)
    info = store.ingest(io.BytesIO(data), d, len(data))
    assert info.size == len(data)
    got = read_all(store, d)
    assert len(got) == len(data) and hashlib.sha256(got).hexdigest() == d.encoded
    assert pending_uploads(store) == []


def test_reingest_is_idempotent_and_refreshes_age(store: BlobStore) -> None:
    data = os.urandom(5000)
    d = digest_of(data)
    store.ingest(io.BytesIO(data), d, len(data))
    first = store.stat(d)
    assert first is not None
    time.sleep(1.1)  # object stores keep whole seconds
    again = store.ingest(io.BytesIO(data), d, len(data))
    assert again.size == len(data)
    refreshed = store.stat(d)
    assert refreshed is not None and refreshed.modified > first.modified, "a reused blob must look fresh to GC"
    assert [b.digest for b in store.walk()] == [d]
    assert store.ingest_bytes(data, d).size == len(data)
    assert read_all(store, d) == data


def test_reingest_of_wrong_bytes_is_refused_and_keeps_the_blob(store: BlobStore) -> None:
    data = os.urandom(4000)
    d = digest_of(data)
    store.ingest(io.BytesIO(data), d, len(data))
    with pytest.raises(RegistryError):
        store.ingest(io.BytesIO(os.urandom(4000)), d, 4000)
    assert read_all(store, d) == data


def test_ingest_bytes(store: BlobStore) -> None:
    data = b'{"manifest": true}'
    assert store.ingest_bytes(data).digest == digest_of(data)
    with pytest.raises(RegistryError) as err:
        store.ingest_bytes(b"x", digest_of(b"y"))
    assert err.value.code == "DIGEST_INVALID"
    assert store.stat(digest_of(b"x")) is None


def test_adopt_moves_a_verified_file_in(store: BlobStore, tmp_path: Path) -> None:
    staged = (store.paths.tmp if isinstance(store, FilesystemBlobStore) else tmp_path) / "staged-blob"
    data = os.urandom(PART + 99)
    staged.write_bytes(data)
    d = digest_of(data)
    assert store.adopt(staged, d, len(data)).size == len(data)
    assert not staged.exists()
    assert read_all(store, d) == data
    staged.write_bytes(data)  # already stored: the file still goes
    store.adopt(staged, d, len(data))
    assert not staged.exists()


def test_delete(store: BlobStore) -> None:
    data = os.urandom(100)
    d = digest_of(data)
    store.ingest_bytes(data)
    assert store.delete(d) is True
    assert store.stat(d) is None
    assert store.delete(d) is False
    assert list(store.walk()) == []


def test_walk_lists_every_blob(store: BlobStore) -> None:
    blobs = {}
    for data in [os.urandom(n) for n in (1, 5, 50, 5000)]:
        blobs[store.ingest_bytes(data).digest] = len(data)
    assert {(b.digest, b.size) for b in store.walk()} == set(blobs.items())


def test_serve_hint_reaches_the_bytes(store: BlobStore) -> None:
    data = os.urandom(70_000)
    d = store.ingest_bytes(data).digest
    hint = store.serve_hint(d, 60)
    if hint.path is not None:
        assert hint.path.read_bytes() == data
        return
    assert hint.url is not None
    whole = requests.get(hint.url, timeout=10)
    assert whole.status_code == 200 and whole.content == data
    part = requests.get(hint.url, headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert part.status_code == 206 and part.content == data[1000:2000]


def test_quarantine(store: BlobStore) -> None:
    data = os.urandom(200)
    d = store.ingest_bytes(data).digest
    where = store.quarantine(d, f"sha256-{d.encoded}-1")
    assert where is not None and d.encoded in where
    assert store.stat(d) is None
    assert store.quarantine(d, "again") is None


# -- S3 specifics ---------------------------------------------------------------------------------------------


def test_parts_reuse_one_buffer() -> None:
    """The part buffer logic behind bounded memory: every part is a view of one buffer, never larger than it."""
    data = os.urandom(3 * 1024 + 100)
    buffer = bytearray(1024)
    seen = []
    for part in iter_parts(io.BytesIO(data), 1024, buffer):
        assert part.obj is buffer and len(part) <= 1024
        seen.append(bytes(part))
    assert b"".join(seen) == data and [len(p) for p in seen] == [1024, 1024, 1024, 100]


@pytest.mark.parametrize("engine_name", ["ceph_rgw", "seaweedfs"])
def test_s3_reads_at_most_one_part_ahead(request: pytest.FixtureRequest, engine_name: str) -> None:
    """While a large blob streams in, the store never holds more than one part read from the client."""
    store = s3_store(request.getfixturevalue(engine_name))
    data = os.urandom(3 * PART + 5)
    source = io.BytesIO(data)
    ahead: list[int] = []
    uploaded = [0]
    original = store._upload_part

    def watched(key: str, upload_id: str, number: int, part: Any) -> dict[str, Any]:
        ahead.append(source.tell() - uploaded[0])
        uploaded[0] += len(part)
        return original(key, upload_id, number, part)

    store._upload_part = watched  # type: ignore[method-assign]
    store.ingest(source, digest_of(data), len(data))
    assert len(ahead) == 4 and max(ahead) <= PART, ahead


@pytest.mark.parametrize("engine_name", ["ceph_rgw", "seaweedfs"])
def test_s3_check_names_a_missing_bucket(request: pytest.FixtureRequest, engine_name: str) -> None:
    engine = request.getfixturevalue(engine_name)
    store = s3_store(engine, bucket="no-such-bucket-here")
    problem = store.check()
    assert problem is not None and "no-such-bucket-here" in problem and "does not exist" in problem
    wrong_keys = S3BlobStore(StorageURL(engine.new_bucket(), "", engine.endpoint, engine.region),
                             Credentials("WRONGKEY", "wrong-secret"))
    problem = wrong_keys.check()
    assert problem is not None and "denied" in problem and "wrong-secret" not in problem


@pytest.mark.parametrize("engine_name", ["ceph_rgw", "seaweedfs"])
def test_s3_keys_mirror_the_filesystem_layout(request: pytest.FixtureRequest, engine_name: str) -> None:
    store = s3_store(request.getfixturevalue(engine_name))
    d = store.ingest_bytes(b"layout").digest
    keys = [o["Key"] for o in store.client.list_objects_v2(Bucket=store.url.bucket)["Contents"]]
    assert keys == [f"site/a/blobs/sha256/{d.encoded[:2]}/{d.encoded}"]


def test_s3_store_that_does_not_answer_is_a_503_naming_the_operation(tmp_path: Path) -> None:
    """No engine needed: nothing listens on the port. Every call fails as "retry later", never as a 500 or a hang."""
    from tests.appliance import free_port

    store = S3BlobStore(StorageURL("some-bucket", "", f"http://127.0.0.1:{free_port()}"),
                        Credentials("KEY", "secret-value"))
    d = digest_of(b"x")
    for call in (lambda: store.stat(d), lambda: store.open(d), lambda: store.ingest_bytes(b"x"),
                 lambda: list(store.walk()), lambda: store.delete(d)):
        with pytest.raises(RegistryError) as err:
            call()
        assert err.value.status == 503 and "the object store failed" in err.value.message
        assert "secret-value" not in err.value.message and "127.0.0.1" not in err.value.message
    assert store.check() is not None and "cannot be reached" in str(store.check())
