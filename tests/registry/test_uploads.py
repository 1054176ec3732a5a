"""Unit tests of registry.uploads: sessions, chunks, resume, finish and expiry, without a server."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from registry import hashstate
from registry.db import migrate
from registry.digest import Digest
from registry.errors import RegistryError
from registry.model import Registry
from registry.paths import DataPaths
from registry.uploads import ClientGone, Uploads


@pytest.fixture
def uploads(tmp_path: Path, database_url: str | None) -> Uploads:
    paths = DataPaths(tmp_path / "data", database_url)  # database_url: PostgreSQL with --db=postgres
    migrate(paths)  # as build_services does before anything runs
    return Uploads(Registry(paths))


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


class CutShort(io.RawIOBase):
    """A stream that delivers `n` bytes and then reads as a vanished client (EOF)."""

    def __init__(self, data: bytes, n: int) -> None:
        self.buf = io.BytesIO(data[:n])

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.buf.read(size)


def test_chunks_then_finish(uploads: Uploads) -> None:
    data = os.urandom(200_000)
    s = uploads.start("r/a")
    assert s.offset == 0 and uploads.paths.upload(s.uuid).exists()
    s = uploads.append(s, io.BytesIO(data[:70_000]), 0, 70_000)
    assert s.offset == 70_000
    s = uploads.append(s, io.BytesIO(data[70_000:150_000]))  # streamed: no range, no length
    assert uploads.get("r/a", s.uuid).offset == 150_000
    info = uploads.finish(s, digest_of(data), io.BytesIO(data[150_000:]), 50_000)
    assert info.digest == digest_of(data) and info.size == len(data)
    assert uploads.paths.blob(info.digest).read_bytes() == data
    assert uploads.registry.blob("r/a", info.digest) == info
    assert not uploads.paths.upload(s.uuid).exists()
    with pytest.raises(RegistryError) as exc:
        uploads.get("r/a", s.uuid)
    assert exc.value.code == "BLOB_UPLOAD_UNKNOWN"


def test_fresh_objects_continue_a_session(uploads: Uploads) -> None:
    # Another worker: a new Uploads over the same data directory, knowing only the uuid.
    data = os.urandom(10_000)
    s = uploads.start("r/a")
    uploads.append(s, io.BytesIO(data[:3333]), 0, 3333)
    other = Uploads(Registry(uploads.paths))
    s2 = other.get("r/a", s.uuid)
    assert s2.offset == 3333
    s2 = other.append(s2, io.BytesIO(data[3333:]), 3333, len(data) - 3333)
    assert Uploads(Registry(uploads.paths)).finish(s2, digest_of(data)).digest == digest_of(data)


def test_out_of_order_chunk_is_range_invalid_and_changes_nothing(uploads: Uploads) -> None:
    s = uploads.start("r/a")
    s = uploads.append(s, io.BytesIO(b"abc"), 0, 3)
    for start in (0, 2, 4, 100):
        with pytest.raises(RegistryError) as exc:
            uploads.append(s, io.BytesIO(b"zzz"), start, 3)
        assert exc.value.code == "RANGE_INVALID" and exc.value.status == 416
        assert exc.value.detail == {"offset": 3}
    assert uploads.get("r/a", s.uuid).offset == 3
    assert uploads.paths.upload(s.uuid).read_bytes() == b"abc"


def test_client_gone_keeps_what_arrived(uploads: Uploads) -> None:
    data = os.urandom(5000)
    s = uploads.start("r/a")
    with pytest.raises(ClientGone):
        uploads.append(s, CutShort(data, 1200), 0, 5000)  # type: ignore[arg-type]
    s = uploads.get("r/a", s.uuid)
    assert s.offset == 1200
    s = uploads.append(s, io.BytesIO(data[1200:]), 1200, 3800)
    assert uploads.finish(s, digest_of(data)).size == 5000


def test_wrong_digest_discards_the_session_and_stores_nothing(uploads: Uploads) -> None:
    s = uploads.start("r/a")
    uploads.append(s, io.BytesIO(b"content"), 0, 7)
    with pytest.raises(RegistryError) as exc:
        uploads.finish(s, digest_of(b"other"))
    assert exc.value.code == "DIGEST_INVALID"
    assert exc.value.detail == {"expected": str(digest_of(b"other")), "actual": str(digest_of(b"content"))}
    assert uploads.registry.store.stat(digest_of(b"content")) is None
    assert uploads.registry.store.stat(digest_of(b"other")) is None
    assert not uploads.paths.upload(s.uuid).exists()
    with pytest.raises(RegistryError):
        uploads.get("r/a", s.uuid)


def test_sha512_finish_rehashes_the_file(uploads: Uploads) -> None:
    data = os.urandom(3000)
    s = uploads.start("r/a")
    uploads.append(s, io.BytesIO(data), 0, len(data))
    expected = Digest("sha512", hashlib.sha512(data).hexdigest())
    assert uploads.finish(s, expected).digest == expected


@pytest.mark.parametrize("uuid", ["", "..", "../../x", "0" * 31, "0" * 32 + "\n", "G" * 32, "/etc/passwd"])
def test_uuids_that_are_not_ours_are_unknown(uploads: Uploads, uuid: str) -> None:
    with pytest.raises(RegistryError) as exc:
        uploads.get("r/a", uuid)
    assert exc.value.code == "BLOB_UPLOAD_UNKNOWN" and exc.value.status == 404


def test_session_belongs_to_its_repository(uploads: Uploads) -> None:
    s = uploads.start("r/a")
    with pytest.raises(RegistryError) as exc:
        uploads.get("r/b", s.uuid)
    assert exc.value.code == "BLOB_UPLOAD_UNKNOWN"


def test_cancel_is_idempotent(uploads: Uploads) -> None:
    s = uploads.start("r/a")
    uploads.append(s, io.BytesIO(b"abc"))
    uploads.cancel(s)
    uploads.cancel(s)
    assert not uploads.paths.upload(s.uuid).exists()
    with pytest.raises(RegistryError):
        uploads.get("r/a", s.uuid)


def test_append_to_a_finished_session_is_unknown(uploads: Uploads) -> None:
    s = uploads.start("r/a")
    uploads.finish(s, digest_of(b""))
    with pytest.raises(RegistryError) as exc:
        uploads.append(s, io.BytesIO(b"late"))
    assert exc.value.code == "BLOB_UPLOAD_UNKNOWN"


def test_expire_removes_idle_sessions_and_orphan_files(uploads: Uploads) -> None:
    idle = uploads.start("r/a")
    uploads.append(idle, io.BytesIO(b"x" * 100))
    fresh = uploads.start("r/a")
    orphan = uploads.paths.upload("f" * 32)
    orphan.write_bytes(b"y" * 10)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    uploads.registry.db.execute("UPDATE uploads SET updated_at = ? WHERE uuid = ?", [old, idle.uuid])
    count, freed = uploads.expire(max_age=60)
    assert count == 1 and freed == 110
    assert not uploads.paths.upload(idle.uuid).exists() and not orphan.exists()
    assert uploads.get("r/a", fresh.uuid).offset == 0


def test_hash_state_is_saved_per_chunk(uploads: Uploads) -> None:
    if not hashstate.available():
        pytest.skip("libcrypto not loadable; finish re-hashes the file instead")
    s = uploads.start("r/a")
    uploads.append(s, io.BytesIO(b"hello "))
    state = uploads.registry.db.execute("SELECT hash_state FROM uploads WHERE uuid = ?", [s.uuid]).fetchone()[0]
    h = hashstate.ResumableSha256(state)
    h.update(b"world")
    assert h.hexdigest() == hashlib.sha256(b"hello world").hexdigest()


def test_finish_with_a_final_chunk_at_the_wrong_offset_is_range_invalid(uploads: Uploads) -> None:
    s = uploads.start("r/a")
    s = uploads.append(s, io.BytesIO(b"abc"), 0, 3)
    with pytest.raises(RegistryError) as exc:
        uploads.finish(s, digest_of(b"abcdef"), io.BytesIO(b"def"), 3, start=2)
    assert exc.value.code == "RANGE_INVALID"
    # Nothing was written and the session is still open for the right chunk.
    assert uploads.get("r/a", s.uuid).offset == 3
    assert uploads.finish(s, digest_of(b"abcdef"), io.BytesIO(b"def"), 3, start=3).size == 6
