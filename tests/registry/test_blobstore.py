"""Unit tests of registry.blobstore: ingest verifies, failures leave nothing, repeats are harmless."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from registry.blobstore import CHUNK, FilesystemBlobStore
from registry.digest import Digest
from registry.errors import RegistryError
from registry.paths import DataPaths


@pytest.fixture
def store(tmp_path: Path) -> FilesystemBlobStore:
    paths = DataPaths(tmp_path / "data")
    paths.ensure()
    return FilesystemBlobStore(paths)


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def files(store: FilesystemBlobStore) -> set[Path]:
    return {p for p in store.paths.root.rglob("*") if p.is_file()}


class Dribble(io.RawIOBase):
    """A stream that returns a few bytes per read, as a slow socket does."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = self.data[self.pos:self.pos + min(self.step, n if n >= 0 else self.step)]
        self.pos += len(out)
        return out


def test_ingest_stores_verified_bytes_under_their_digest(store: FilesystemBlobStore) -> None:
    data = os.urandom(3 * CHUNK + 17)
    info = store.ingest(io.BytesIO(data), digest_of(data), len(data))
    assert info.digest == digest_of(data) and info.size == len(data)
    path = store.paths.blob(info.digest)
    assert path.read_bytes() == data
    assert path.parent.name == info.digest.encoded[:2]
    assert store.stat(info.digest) == info
    with store.open(info.digest) as f:
        assert f.read() == data
    assert store.local_path(info.digest) == path
    assert list(store.paths.tmp.iterdir()) == []


def test_ingest_without_expectations_computes_the_digest(store: FilesystemBlobStore) -> None:
    data = b"x" * 1000
    info = store.ingest(Dribble(data))  # type: ignore[arg-type]
    assert info.digest == digest_of(data) and info.size == 1000


@pytest.mark.parametrize(("expected_size", "code"), [(None, "DIGEST_INVALID"), (999, "SIZE_INVALID"),
                                                      (1001, "SIZE_INVALID")])
def test_failed_ingest_leaves_no_file(store: FilesystemBlobStore, expected_size: int | None, code: str) -> None:
    data = os.urandom(1000)
    before = files(store)
    wrong = digest_of(b"other")
    expected = wrong if code == "DIGEST_INVALID" else digest_of(data)
    with pytest.raises(RegistryError) as exc:
        store.ingest(io.BytesIO(data), expected, expected_size)
    assert exc.value.code == code
    assert files(store) == before
    assert store.stat(digest_of(data)) is None and store.stat(wrong) is None


def test_ingest_is_idempotent(store: FilesystemBlobStore) -> None:
    data = os.urandom(5000)
    first = store.ingest(io.BytesIO(data), digest_of(data))
    before = store.paths.blob(first.digest).stat()
    second = store.ingest(io.BytesIO(data), digest_of(data))
    assert first == second
    # The existing file is kept, not replaced (same inode, same bytes); only its mtime is refreshed, so garbage
    # collection's grace period covers a blob a client has just pushed again (registry.gc).
    after = store.paths.blob(first.digest).stat()
    assert after.st_ino == before.st_ino and after.st_mtime_ns >= before.st_mtime_ns
    assert store.paths.blob(first.digest).read_bytes() == data
    assert store.ingest_bytes(data, digest_of(data)) == first
    assert list(store.paths.tmp.iterdir()) == []


def test_ingest_bytes_verifies(store: FilesystemBlobStore) -> None:
    with pytest.raises(RegistryError) as exc:
        store.ingest_bytes(b"abc", digest_of(b"abd"))
    assert exc.value.code == "DIGEST_INVALID"
    assert store.stat(digest_of(b"abc")) is None
    info = store.ingest_bytes(b"abc")
    assert store.paths.blob(info.digest).read_bytes() == b"abc"


def test_sha512_blobs(store: FilesystemBlobStore) -> None:
    data = b"sha512 content"
    expected = Digest("sha512", hashlib.sha512(data).hexdigest())
    info = store.ingest(io.BytesIO(data), expected)
    assert store.paths.blob(info.digest).parts[-3] == "sha512"


def test_adopt_moves_a_verified_file(store: FilesystemBlobStore) -> None:
    data = os.urandom(100)
    src = store.paths.uploads / "u"
    src.write_bytes(data)
    info = store.adopt(src, digest_of(data), len(data))
    assert not src.exists() and store.paths.blob(info.digest).read_bytes() == data
    # Adopting bytes already stored drops the duplicate and keeps the original.
    src.write_bytes(data)
    assert store.adopt(src, digest_of(data), len(data)) == info
    assert not src.exists()


def test_open_missing_is_blob_unknown_and_delete_is_idempotent(store: FilesystemBlobStore) -> None:
    missing = digest_of(b"nope")
    with pytest.raises(RegistryError) as exc:
        store.open(missing)
    assert exc.value.code == "BLOB_UNKNOWN"
    assert store.local_path(missing) is None
    info = store.ingest_bytes(b"here")
    assert store.delete(info.digest) is True
    assert store.delete(info.digest) is False
    assert store.stat(info.digest) is None


def test_walk_lists_every_blob_and_skips_strays(store: FilesystemBlobStore) -> None:
    infos = {store.ingest_bytes(os.urandom(10 + i)) for i in range(5)}
    stray = store.paths.blobs / "sha256" / "zz" / "not-a-digest"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    assert set(store.walk()) == infos
