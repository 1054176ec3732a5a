"""The tus upload store (web.tus) without HTTP: dropped chunks, checksums, completion, expiry, concatenation."""

from __future__ import annotations

import hashlib
import io
import itertools
from pathlib import Path
from typing import Any

import pytest

import web.tus
from registry import hashstate
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


def _partial(uploads: TusUploads, data: bytes, owner: str = "admin", chunk: int = 40_000) -> str:
    """A complete partial upload of `data`, sent in chunks; returns its id."""
    up = uploads.create(len(data), {}, owner, partial=True)
    for start in range(0, len(data), chunk):
        up = uploads.append(up.id, start, io.BytesIO(data[start:start + chunk]), len(data[start:start + chunk]), None)
    assert up.complete
    return up.id


def test_partials_concatenate_in_order_into_one_file_with_the_whole_files_digest(uploads: TusUploads) -> None:
    data = bytes(range(256)) * 1200
    cuts = [0, 100_000, 100_000, 250_000, len(data)]  # one part is empty
    started: list[str] = []
    ids = [_partial(uploads, data[a:b]) for a, b in itertools.pairwise(cuts)]
    for part_id in ids:  # a partial upload completes into nothing: no file name, no import
        part = uploads.get(part_id)
        assert part is not None and part.complete and part.concat == "partial" and part.filename is None
        assert uploads.directory(part_id).joinpath("data").exists()

    final = uploads.concatenate(ids, {"filename": "site.tar.zst"}, "admin", lambda u: started.append(u.id))
    assert final.complete and final.concat == "final" and final.parts == tuple(ids)
    assert final.length == len(data) and final.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert uploads.data_path(final).name == "site.tar.zst" and uploads.data_path(final).read_bytes() == data
    assert started == [final.id]  # the import starts once, when the final upload is assembled
    for part_id in ids:  # the bytes moved into the final upload; the records stay, complete, naming it
        assert not uploads.directory(part_id).exists()
        part = uploads.get(part_id)
        assert part is not None and part.complete and part.final_id == final.id

    # The same request again (a client whose answer was lost) gets the same final upload; nothing restarts.
    again = uploads.concatenate(ids, {"filename": "site.tar.zst"}, "admin", lambda u: started.append(u.id))
    assert again.id == final.id
    assert started == [final.id]
    with pytest.raises(TusError) as exc:  # a part goes into one final upload only
        uploads.concatenate(ids[:2], {}, "admin")
    assert exc.value.status == 409 and final.id in exc.value.message
    with pytest.raises(TusError) as exc:
        uploads.append(final.id, 0, io.BytesIO(b"x"), 1, None)
    assert exc.value.status == 403
    uploads.delete(final.id)  # terminating the final upload removes its partials
    assert all(uploads.get(part_id) is None for part_id in ids)
    assert not uploads.directory(final.id).exists()


def test_a_final_upload_needs_complete_partials_of_its_owner_and_refusals_keep_them(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    paths.ensure()
    uploads = TusUploads(paths, expiry_seconds=3600, max_size=100)
    a = _partial(uploads, b"a" * 60)
    b = _partial(uploads, b"b" * 30)
    theirs = _partial(uploads, b"t" * 5, owner="robot$other")
    plain = uploads.create(3, {}, "admin")
    uploads.append(plain.id, 0, io.BytesIO(b"abc"), 3, None)
    unfinished = uploads.create(10, {}, "admin", partial=True)
    big = _partial(uploads, b"z" * 50)

    def refused(part_ids: list[str]) -> TusError:
        with pytest.raises(TusError) as exc:
            uploads.concatenate(part_ids, {}, "admin")
        return exc.value

    assert refused([]).status == 400
    assert refused([a, a]).status == 400
    assert refused([a, "0" * 32]).status == 404
    assert refused([a, "../../etc"]).status == 404
    assert refused([a, theirs]).status == 404  # never another user's bytes; to others it does not exist
    assert refused([a, plain.id]).status == 400
    error = refused([a, unfinished.id])
    assert error.status == 400 and "not complete" in error.message
    assert refused([a, b, big]).status == 413  # 140 bytes, over max_size

    def no_room(needed: int) -> None:
        assert needed == 30  # the largest part after the first, which is renamed, not copied
        raise TusError(507, "no room")

    with pytest.raises(TusError) as exc:
        uploads.concatenate([a, b], {}, "admin", check_space=no_room)
    assert exc.value.status == 507
    # Nothing was claimed or lost by any refusal: the same parts make a final upload now.
    final = uploads.concatenate([a, b], {"filename": "ab"}, "admin")
    assert uploads.data_path(final).read_bytes() == b"a" * 60 + b"b" * 30


def test_an_assembly_cut_short_continues_when_the_same_final_is_asked_for_again(
        uploads: TusUploads, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 600
    cuts = [0, 50_000, 100_000, len(data)]
    ids = [_partial(uploads, data[a:b]) for a, b in itertools.pairwise(cuts)]
    real = web.tus._append_file
    calls: list[int] = []

    def disk_gone_once(*args: Any) -> bytes | None:
        calls.append(1)
        if len(calls) == 2:  # the third part: the worker dies, say
            raise OSError("the disk went away")
        return real(*args)

    monkeypatch.setattr(web.tus, "_append_file", disk_gone_once)
    with pytest.raises(OSError):
        uploads.concatenate(ids, {"filename": "b.bin"}, "admin")
    final_id = uploads.get(ids[0]).final_id  # type: ignore[union-attr]
    assert final_id is not None
    half = uploads.get(final_id)
    assert half is not None and not half.complete and half.offset == 100_000  # two parts in, saved
    assert not uploads.directory(ids[1]).exists() and uploads.directory(ids[2]).exists()
    final = uploads.concatenate(ids, {"filename": "b.bin"}, "admin")
    assert final.id == final_id and final.complete
    assert final.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert uploads.data_path(final).read_bytes() == data


def test_without_resumable_hashing_the_final_file_is_hashed_once_assembled(
        uploads: TusUploads, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashstate, "available", lambda: False)
    data = bytes(range(256)) * 500
    ids = [_partial(uploads, data[:70_000]), _partial(uploads, data[70_000:])]
    final = uploads.concatenate(ids, {}, "admin")
    assert final.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert uploads.data_path(final).read_bytes() == data


def test_expiry_removes_partials_whether_or_not_they_were_concatenated(uploads: TusUploads) -> None:
    lone = _partial(uploads, b"x" * 1000)
    unfinished = uploads.create(10, {}, "admin", partial=True)
    ids = [_partial(uploads, b"y" * 1000), _partial(uploads, b"z" * 1000)]
    final = uploads.concatenate(ids, {"filename": "f"}, "admin")
    assert uploads.expire(now=final.expires_at + 1) == 5
    for gone in (lone, unfinished.id, final.id, *ids):
        assert uploads.get(gone) is None and not uploads.directory(gone).exists()
    assert list(uploads.root.iterdir()) == []
