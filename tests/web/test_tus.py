"""The tus upload store (web.tus) without HTTP: dropped chunks, checksums, completion, expiry."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from registry.paths import DataPaths
from web.tus import TusError, TusUploads, parse_metadata


class Dropping(io.BytesIO):
    """A request body whose connection drops after `keep` bytes (as werkzeug raises ClientDisconnected)."""

    def __init__(self, data: bytes, keep: int) -> None:
        super().__init__(data[:keep])

    def read(self, n: int | None = -1) -> bytes:
        block = super().read(n)
        if not block:
            raise OSError("client disconnected")
        return block


@pytest.fixture
def uploads(tmp_path: Path) -> TusUploads:
    paths = DataPaths(tmp_path / "data")
    paths.ensure()
    return TusUploads(paths, expiry_seconds=3600, max_size=1 << 30)


def test_a_dropped_chunk_without_checksum_keeps_what_arrived_and_one_with_checksum_keeps_nothing(
        uploads: TusUploads) -> None:
    data = bytes(range(256)) * 400
    up = uploads.create(len(data), {"filename": "b.tar.zst"}, "admin")
    after = uploads.append(up.id, 0, Dropping(data[:40_000], 25_000), 40_000, None)
    assert after.offset == 25_000  # resumable from here
    digest = hashlib.sha256(data[25_000:60_000]).digest()
    with pytest.raises(TusError) as exc:
        uploads.append(up.id, 25_000, Dropping(data[25_000:60_000], 10_000), 35_000, digest)
    assert exc.value.status == 400 and "discarded" in exc.value.message
    assert uploads.get(up.id).offset == 25_000  # type: ignore[union-attr]
    with pytest.raises(TusError) as exc:
        uploads.append(up.id, 25_000, io.BytesIO(data[25_000:60_000]), 35_000, hashlib.sha256(b"x").digest())
    assert exc.value.status == 460
    assert uploads.directory(up.id).joinpath("data").stat().st_size == 25_000  # the bad chunk is cut off again
    done = uploads.append(up.id, 25_000, io.BytesIO(data[25_000:]), len(data) - 25_000,
                          hashlib.sha256(data[25_000:]).digest())
    assert done.complete and done.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert uploads.data_path(done).name == "b.tar.zst" and uploads.data_path(done).read_bytes() == data


def test_offsets_lengths_names_and_expiry(uploads: TusUploads) -> None:
    up = uploads.create(10, {"filename": "../../etc/passwd"}, "admin")
    with pytest.raises(TusError) as exc:
        uploads.append(up.id, 3, io.BytesIO(b"abc"), 3, None)
    assert exc.value.status == 409
    with pytest.raises(TusError) as exc:
        uploads.append(up.id, 0, io.BytesIO(b"x" * 11), 11, None)
    assert exc.value.status == 413
    done = uploads.append(up.id, 0, io.BytesIO(b"0123456789"), 10, None)
    assert uploads.data_path(done).parent == uploads.directory(up.id)  # no way out of the upload's directory
    assert uploads.data_path(done).name == "passwd"
    with pytest.raises(TusError):
        uploads.create(2 << 30, {}, "admin")
    assert uploads.expire(now=done.expires_at + 1) == 1
    assert uploads.get(up.id) is None and not uploads.directory(up.id).exists()
    with pytest.raises(TusError):
        parse_metadata("filename not*base64")
    assert parse_metadata("filename YS5iaW4=,empty") == {"filename": "a.bin", "empty": ""}
