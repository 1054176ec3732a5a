"""Pushing blobs over /v2/: monolithic, chunked, resumed, cancelled, mounted, and refused.

Plain HTTP against the real appliance, checked against the OCI Distribution
Specification v1.1 "Push" section. Every refusal is also checked to leave
the store as it was.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.appliance import Appliance
from tests.registry.v2client import V2, error_codes, sha256


@pytest.fixture
def v2(appliance: Appliance) -> V2:
    return V2(appliance)


def stored(appliance: Appliance, digest: str) -> bool:
    """True if the blob store holds a file (or, on an object store: --replicas, an object) for `digest`."""
    algorithm, encoded = digest.split(":", 1)
    if "CARGOHOLD_STORAGE_URL" in appliance.env:
        return bool(object_keys(appliance, f"blobs/{algorithm}/{encoded[:2]}/{encoded}"))
    return (appliance.data_dir / "blobs" / algorithm / encoded[:2] / encoded).exists()


def upload_files(appliance: Appliance) -> set[str]:
    """The sessions that hold bytes: files in uploads/, or on an object store their chunk objects."""
    if "CARGOHOLD_STORAGE_URL" in appliance.env:
        return {key.split("/")[-2] for key in object_keys(appliance, "uploads/")}
    return {p.name for p in (appliance.data_dir / "uploads").iterdir()}


def object_keys(appliance: Appliance, under: str) -> list[str]:
    """Keys under `under` in the appliance's object store, read with boto3 directly."""
    import boto3

    from registry.s3store import StorageURL

    url = StorageURL.parse(appliance.env["CARGOHOLD_STORAGE_URL"])
    s3 = boto3.client("s3", endpoint_url=url.endpoint, region_name=url.region,
                      aws_access_key_id=appliance.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=appliance.env["AWS_SECRET_ACCESS_KEY"])
    prefix = f"{url.prefix}/{under}" if url.prefix else under
    found = s3.list_objects_v2(Bucket=url.bucket, Prefix=prefix).get("Contents", [])
    return [str(o["Key"]) for o in found]


def raw_http(appliance: Appliance, head: str, body: bytes = b"", half_close: bool = True) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side URL clean-up, truncated bodies); return (status, response)."""
    with socket.create_connection(("127.0.0.1", appliance.port), timeout=30) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    return (int(response.split(b" ", 2)[1]) if response else 0), response


def basic(appliance: Appliance) -> str:
    import base64

    return "Basic " + base64.b64encode(appliance.creds.encode()).decode()


# -- monolithic -----------------------------------------------------------------------


def test_monolithic_post_then_put(v2: V2, repo: str) -> None:
    data = os.urandom(100_000)
    r = v2.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    uuid = r.headers["Docker-Upload-UUID"]
    assert location == f"/v2/{repo}/blobs/uploads/{uuid}"
    assert r.headers["Range"] == "0-0"
    r = v2.request("PUT", location, params={"digest": sha256(data)}, data=data)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
    assert r.headers["Docker-Content-Digest"] == sha256(data)
    assert v2.request("GET", r.headers["Location"]).content == data
    # The session is finished: its uuid is gone.
    assert v2.request("GET", location).status_code == 404


def test_monolithic_post_with_digest_in_one_request(v2: V2, repo: str) -> None:
    data = os.urandom(50_000)
    r = v2.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, data=data,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
    assert r.headers["Docker-Content-Digest"] == sha256(data)
    assert v2.request("GET", f"/v2/{repo}/blobs/{sha256(data)}").content == data
    # Pushing the same blob again is idempotent.
    r = v2.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, data=data)
    assert r.status_code == 201


def test_post_with_wrong_digest_is_refused_and_stores_nothing(appliance: Appliance, v2: V2, repo: str) -> None:
    data = os.urandom(20_000)
    claimed = sha256(b"something else" + os.urandom(4))
    r = v2.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": claimed}, data=data)
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert not stored(appliance, claimed) and not stored(appliance, sha256(data))
    assert v2.request("GET", f"/v2/{repo}/blobs/{claimed}").status_code == 404
    r = v2.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": "sha256:nothex"}, data=data)
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


def test_finish_with_wrong_digest_is_refused_and_stores_nothing(appliance: Appliance, v2: V2, repo: str) -> None:
    data = os.urandom(30_000)
    location = v2.start_upload(repo)
    uuid = location.rsplit("/", 1)[1]
    r = v2.request("PATCH", location, data=data, headers={"Content-Range": f"0-{len(data) - 1}"})
    assert r.status_code == 202
    claimed = sha256(os.urandom(8))
    r = v2.request("PUT", location, params={"digest": claimed})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert r.json()["errors"][0]["detail"] == {"expected": claimed, "actual": sha256(data)}
    assert not stored(appliance, claimed) and not stored(appliance, sha256(data))
    assert uuid not in upload_files(appliance)
    assert v2.request("GET", f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    # Finishing needs a digest at all.
    location = v2.start_upload(repo)
    r = v2.request("PUT", location, data=b"abc")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


# -- chunked ------------------------------------------------------------------------------


def test_chunked_upload_with_status_and_final_chunk(v2: V2, repo: str) -> None:
    data = os.urandom(300_000)
    parts = [data[:100_000], data[100_000:250_000], data[250_000:]]
    location = v2.start_upload(repo)
    offset = 0
    for part in parts[:2]:
        r = v2.request("PATCH", location, data=part,
                       headers={"Content-Range": f"{offset}-{offset + len(part) - 1}",
                                "Content-Type": "application/octet-stream"})
        assert r.status_code == 202, r.text
        offset += len(part)
        assert r.headers["Range"] == f"0-{offset - 1}"
        assert r.headers["Location"] == location
        assert r.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
        s = v2.request("GET", location)
        assert s.status_code == 204
        assert s.headers["Range"] == f"0-{offset - 1}"
        assert s.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
        assert s.headers["Location"] == location
    # The last chunk rides on the closing PUT.
    r = v2.request("PUT", location, params={"digest": sha256(data)}, data=parts[2],
                   headers={"Content-Range": f"{offset}-{len(data) - 1}"})
    assert r.status_code == 201, r.text
    assert v2.request("GET", f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_streamed_patch_without_content_range(v2: V2, repo: str) -> None:
    data = os.urandom(200_000)
    location = v2.start_upload(repo)
    r = v2.request("PATCH", location, data=iter([data[:70_000], data[70_000:]]))  # chunked transfer encoding
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = v2.request("PUT", location, params={"digest": sha256(data)})
    assert r.status_code == 201, r.text


def test_out_of_order_and_stale_chunks_are_416_and_upload_resumes(v2: V2, repo: str) -> None:
    data = os.urandom(90_000)
    location = v2.start_upload(repo)
    r = v2.request("PATCH", location, data=data[:30_000], headers={"Content-Range": "0-29999"})
    assert r.status_code == 202
    # Skipping ahead leaves a gap. The 416 says where the upload stands.
    r = v2.request("PATCH", location, data=data[60_000:], headers={"Content-Range": "60000-89999"})
    assert r.status_code == 416 and error_codes(r) == ["RANGE_INVALID"]
    assert r.headers["Range"] == "0-29999" and r.headers["Location"] == location
    # Re-sending the first chunk is stale.
    r = v2.request("PATCH", location, data=data[:30_000], headers={"Content-Range": "0-29999"})
    assert r.status_code == 416 and error_codes(r) == ["RANGE_INVALID"]
    # A Content-Range that disagrees with Content-Length, or does not parse.
    r = v2.request("PATCH", location, data=data[30_000:40_000], headers={"Content-Range": "30000-30004"})
    assert r.status_code == 416 and error_codes(r) == ["RANGE_INVALID"]
    r = v2.request("PATCH", location, data=b"x", headers={"Content-Range": "junk"})
    assert r.status_code == 416 and error_codes(r) == ["RANGE_INVALID"]
    # The client asks where the upload stands and resumes from there.
    s = v2.request("GET", location)
    assert s.status_code == 204 and s.headers["Range"] == "0-29999"
    end = int(s.headers["Range"].split("-")[1])
    r = v2.request("PATCH", location, data=data[end + 1:], headers={"Content-Range": f"{end + 1}-89999"})
    assert r.status_code == 202 and r.headers["Range"] == "0-89999"
    # A closing PUT whose Content-Range starts elsewhere is refused too.
    r = v2.request("PUT", location, params={"digest": sha256(data)}, data=b"x", headers={"Content-Range": "5-5"})
    assert r.status_code == 416 and error_codes(r) == ["RANGE_INVALID"]
    assert r.headers["Range"] == "0-89999"
    r = v2.request("PUT", location, params={"digest": sha256(data)})
    assert r.status_code == 201, r.text
    assert v2.request("GET", f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_cancel_upload_then_unknown(appliance: Appliance, v2: V2, repo: str) -> None:
    location = v2.start_upload(repo)
    uuid = location.rsplit("/", 1)[1]
    assert v2.request("PATCH", location, data=b"abc").status_code == 202
    assert uuid in upload_files(appliance)
    r = v2.request("DELETE", location)
    assert r.status_code == 204
    assert uuid not in upload_files(appliance)
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        r = v2.request(method, location, params={"digest": sha256(b"abc")} if method == "PUT" else None, data=b"")
        assert r.status_code == 404, (method, r.text)
        assert error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]


def test_upload_of_another_repository_is_unknown(v2: V2, repo: str) -> None:
    location = v2.start_upload(repo)
    uuid = location.rsplit("/", 1)[1]
    r = v2.request("GET", f"/v2/{repo}-other/blobs/uploads/{uuid}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]


@pytest.mark.parametrize("uuid", ["..", "...", "ZZZZ", "0" * 31, "0" * 33, "A" * 32, "%2e%2e", "..%2F..%2Fx"])
def test_upload_uuid_that_is_not_hex_is_404(appliance: Appliance, v2: V2, repo: str, uuid: str) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        status, response = raw_http(
            appliance,
            f"{method} /v2/{repo}/blobs/uploads/{uuid}?digest={sha256(b'')} HTTP/1.1\n"
            f"Host: {appliance.host}\nAuthorization: {basic(appliance)}\nContent-Length: 0\nConnection: close\n")
        assert status == 404, (method, uuid, response)
        assert b'"code":' in response, response
    assert not (appliance.data_dir.parent / "x").exists()


def test_path_traversal_in_upload_uuid_never_touches_files(appliance: Appliance, repo: str) -> None:
    status, response = raw_http(
        appliance,
        f"PATCH /v2/{repo}/blobs/uploads/../../../../x HTTP/1.1\nHost: {appliance.host}\n"
        f"Authorization: {basic(appliance)}\nContent-Length: 3\nConnection: close\n", b"abc")
    assert status == 404, response
    assert b'"code":' in response
    assert not (appliance.data_dir / "x").exists()
    assert not (appliance.data_dir.parent / "x").exists()


# -- truncated bodies ------------------------------------------------------------------------


def _truncated_post(appliance: Appliance, repo: str, data: bytes) -> tuple[int, bytes]:
    return raw_http(
        appliance,
        f"POST /v2/{repo}/blobs/uploads/?digest={sha256(data)} HTTP/1.1\nHost: {appliance.host}\n"
        f"Authorization: {basic(appliance)}\nContent-Length: {len(data)}\nConnection: close\n", data[:4000])


def _truncated_patch(appliance: Appliance, location: str, data: bytes) -> tuple[int, bytes]:
    return raw_http(
        appliance,
        f"PATCH {location} HTTP/1.1\nHost: {appliance.host}\nAuthorization: {basic(appliance)}\n"
        f"Content-Range: 0-{len(data) - 1}\nContent-Length: {len(data)}\nConnection: close\n", data[:20_000])


def _offset_reaches(v2: V2, location: str, expected: str, timeout: float = 10) -> str:
    """The upload's Range once it says `expected` (the app finishes a cut-off request after the front gave up)."""
    deadline = time.monotonic() + timeout
    while True:
        s = v2.request("GET", location)
        assert s.status_code == 204, s.text
        if s.headers["Range"] == expected or time.monotonic() > deadline:
            return s.headers["Range"]
        time.sleep(0.05)


def _settled_offset(v2: V2, location: str, timeout: float = 10) -> int:
    """The upload's offset once it stops moving (checked over half a second)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        s = v2.request("GET", location)
        assert s.status_code == 204, s.text
        current = int(s.headers["Range"].split("-")[1]) + 1 if s.headers["Range"] != "0-0" else 0
        if current == last or time.monotonic() > deadline:
            return current
        last = current
        time.sleep(0.5)


def test_truncated_monolithic_body_stores_nothing(appliance: Appliance, repo: str) -> None:
    data = os.urandom(10_000)
    status, response = _truncated_post(appliance, repo, data)
    # The front sees the body end early and closes: a 400, or no answer to a client it takes as gone.
    assert status in (0, 400), response
    time.sleep(0.5)  # give the app time to (wrongly) store something from the cut-off stream
    assert not stored(appliance, sha256(data))


def test_truncated_chunk_keeps_what_arrived_and_resumes(appliance: Appliance, v2: V2, repo: str) -> None:
    data = os.urandom(50_000)
    location = v2.start_upload(repo)
    status, response = _truncated_patch(appliance, location, data)
    assert status in (0, 400), response
    # What reached the app is kept; nginx may drop what it still held when the client vanished
    # (at most its 128 KiB body buffer). The client resumes from the offset the registry reports.
    kept = _settled_offset(v2, location)
    assert 0 <= kept <= 20_000
    r = v2.request("PUT", location, params={"digest": sha256(data)}, data=data[kept:],
                   headers={"Content-Range": f"{kept}-{len(data) - 1}"})
    assert r.status_code == 201, r.text
    assert v2.request("GET", f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_truncated_bodies_are_refused_in_the_spec_shape_by_the_app(
        appliance_factory: Callable[..., Appliance], repo: str) -> None:
    """What the app itself answers a cut-off body (gunicorn alone, so nothing in between closes first)."""
    appliance = appliance_factory("--front", "none")
    v2 = V2(appliance)
    data = os.urandom(10_000)
    status, response = _truncated_post(appliance, repo, data)
    assert status == 400, response
    assert b"SIZE_INVALID" in response
    assert not stored(appliance, sha256(data))
    data = os.urandom(50_000)
    location = v2.start_upload(repo)
    status, response = _truncated_patch(appliance, location, data)
    assert status == 400 and b"BLOB_UPLOAD_INVALID" in response, response
    assert _offset_reaches(v2, location, "0-19999") == "0-19999"


# -- cross-repository mount ----------------------------------------------------------------------


def test_mount_from_a_repository_that_has_the_blob(v2: V2, repo: str) -> None:
    data = os.urandom(4000)
    digest = v2.push_blob(f"{repo}/source", data)
    r = v2.request("POST", f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/source"})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/{repo}/target/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert v2.request("GET", f"/v2/{repo}/target/blobs/{digest}").content == data


def test_mount_from_a_repository_without_the_blob_starts_an_upload(v2: V2, repo: str) -> None:
    v2.push_blob(f"{repo}/source", b"something")
    missing = sha256(os.urandom(8))
    for source in (f"{repo}/source", f"{repo}/nonexistent"):
        r = v2.request("POST", f"/v2/{repo}/target/blobs/uploads/", params={"mount": missing, "from": source})
        assert r.status_code == 202, r.text
        assert r.headers["Location"].startswith(f"/v2/{repo}/target/blobs/uploads/")
        assert v2.request("GET", r.headers["Location"]).status_code == 204
    assert v2.request("GET", f"/v2/{repo}/target/blobs/{missing}").status_code == 404


@pytest.mark.parametrize(("mount", "source"), [
    ("sha256:zz", "{repo}/source"),  # malformed digest
    ("md5:" + "0" * 32, "{repo}/source"),  # unsupported algorithm
    ("{digest}", "Bad/Name"),  # malformed source name
    ("{digest}", "no-such-project/x"),  # a source the client cannot read
])
def test_mount_with_invalid_arguments_falls_back_to_an_upload(v2: V2, repo: str, mount: str, source: str) -> None:
    # The spec: "If a mount fails due to invalid repository or digest arguments, the
    # registry will fall back to the standard upload behavior and return a 202 Accepted".
    digest = v2.push_blob(f"{repo}/source", b"mountable")
    r = v2.request("POST", f"/v2/{repo}/target/blobs/uploads/",
                   params={"mount": mount.format(digest=digest), "from": source.format(repo=repo)})
    assert r.status_code == 202, r.text
    assert r.headers["Location"].startswith(f"/v2/{repo}/target/blobs/uploads/")
    assert v2.request("GET", f"/v2/{repo}/target/blobs/{digest}").status_code == 404


def test_mount_without_from_starts_an_upload(v2: V2, repo: str) -> None:
    digest = v2.push_blob(f"{repo}/source", b"no automatic discovery")
    r = v2.request("POST", f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 202, r.text
    assert v2.request("GET", f"/v2/{repo}/target/blobs/{digest}").status_code == 404


# -- uploads across gunicorn workers ---------------------------------------------------------------


def _workers(appliance: Appliance, expected: int = 2) -> list[int]:
    """The gunicorn worker pids, once all `expected` have booted (the fixture returns when the first answers)."""
    return appliance.worker_pids(expected)


def _written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in /proc/{pid}/io")


def test_chunks_continued_by_different_workers_finish_with_the_right_digest(
        appliance_factory: Callable[..., Appliance], repo: str) -> None:
    """The appliance runs two gunicorn workers; each chunk comes on a fresh connection.

    Behind the nginx front, chunks travel on nginx's kept-alive connections to
    the app and tend to reach one worker; whichever worker a request reaches
    must carry on an upload, so this runs gunicorn alone (``--front none``),
    where the kernel hands each fresh connection to either worker.

    Which worker wrote a chunk is seen from /proc/<pid>/io: the one whose
    written-bytes counter grew by the chunk's size. The test goes on until
    both workers have written chunks of the same upload (bounded), then
    checks the digest the server computed from its SQLite-held hash state.
    """
    v2 = V2(appliance_factory("--front", "none"))
    workers = _workers(v2.appliance)
    assert len(workers) == 2, workers
    chunk_size = 64 * 1024
    location = v2.start_upload(repo)
    h = hashlib.sha256()
    writers: list[int] = []
    offset = 0
    deadline = time.monotonic() + 30
    while (len(set(writers)) < 2 or len(writers) < 6) and len(writers) < 200 and time.monotonic() < deadline:
        chunk = os.urandom(chunk_size)
        before = {pid: _written(pid) for pid in workers}
        r = v2.request("PATCH", location, data=chunk, headers={"Content-Range": f"{offset}-{offset + chunk_size - 1}"})
        assert r.status_code == 202, r.text
        grew = [pid for pid in workers if _written(pid) - before[pid] >= chunk_size]
        assert len(grew) == 1, (before, grew)
        writers.append(grew[0])
        offset += chunk_size
        h.update(chunk)
    print("chunk writers:", writers)
    assert set(writers) == set(workers), f"every chunk went to one worker: {writers}"
    digest = f"sha256:{h.hexdigest()}"
    r = v2.request("PUT", location, params={"digest": digest})
    assert r.status_code == 201, r.text
    got = hashlib.sha256(v2.request("GET", f"/v2/{repo}/blobs/{digest}").content).hexdigest()
    assert f"sha256:{got}" == digest


# -- concurrency ------------------------------------------------------------------------------------


def test_racing_chunks_for_the_same_range_one_wins(v2: V2, repo: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = os.urandom(2_000_000)
    location = v2.start_upload(repo)

    def send(_: int) -> int:
        return v2.request("PATCH", location, data=data,
                          headers={"Content-Range": f"0-{len(data) - 1}"}).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(send, range(4)))
    assert statuses == [202, 416, 416, 416]
    r = v2.request("PUT", location, params={"digest": sha256(data)})
    assert r.status_code == 201, r.text


def test_concurrent_pushes_of_the_same_blob(appliance: Appliance, v2: V2, repo: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = os.urandom(500_000)

    def push(i: int) -> int:
        return v2.request("POST", f"/v2/{repo}/r{i}/blobs/uploads/", params={"digest": sha256(data)},
                          data=data).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(push, range(6))) == [201] * 6
    assert stored(appliance, sha256(data))
    for i in range(6):
        assert v2.request("GET", f"/v2/{repo}/r{i}/blobs/{sha256(data)}").content == data
    assert list((appliance.data_dir / "tmp").iterdir()) == []


def test_mount_within_the_same_repository(v2: V2, repo: str) -> None:
    digest = v2.push_blob(repo, b"self")
    r = v2.request("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert r.status_code == 201


def test_upload_survives_an_appliance_restart(appliance_factory: Callable[..., Appliance]) -> None:
    """The session's offset and SHA-256 state are in SQLite: a restarted appliance finishes the upload."""
    first = appliance_factory(name="restart")
    repo = "spectro-images/test/restart"
    data = os.urandom(300_000)
    v2 = V2(first)
    location = v2.start_upload(repo)
    assert v2.request("PATCH", location, data=data[:100_001], headers={"Content-Range": "0-100000"}).status_code == 202
    first.stop()
    second = appliance_factory(name="restart")
    assert second.data_dir == first.data_dir
    v2 = V2(second)
    s = v2.request("GET", location)
    assert s.status_code == 204 and s.headers["Range"] == "0-100000"
    r = v2.request("PUT", location, params={"digest": sha256(data)}, data=data[100_001:],
                   headers={"Content-Range": f"100001-{len(data) - 1}"})
    assert r.status_code == 201, r.text
    assert v2.request("GET", f"/v2/{repo}/blobs/{sha256(data)}").content == data
