"""The tus 1.0 endpoint driven by tuspy, the Python tus client, and by hand for the protocol's edges.

A real bundle goes up through /api/v1/uploads in two sessions (part of it,
then a new client continuing from the stored URL), with a per-chunk SHA-256;
the import it starts completes, and the server's file has the bundle's digest.
Concatenation: partial uploads from tuspy joined by a final upload import the
same way; bad final requests get the tus statuses and lose nothing; a large
assembly keeps memory flat.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tusclient import client as tus_client
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader.uploader import Uploader

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.layouts import sha256_file
from tests.registry.harborapi import Harbor
from tests.web.uiutil import build_bundle, detached_signature

TUS = {"Tus-Resumable": "1.0.0"}


class Sha256Uploader(Uploader):
    """tuspy's uploader with SHA-256 chunk checksums (its default is SHA-1, which this server refuses)."""

    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


def _wait_job(app: Appliance, job_id: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{app.url}/api/v1/imports/{job_id}", auth=app.admin, timeout=10).json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)


def _basic(app: Appliance) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{app.admin[0]}:{app.admin[1]}".encode()).decode()}


def test_tuspy_uploads_a_signed_bundle_with_a_resume_and_the_import_runs(ui_app: Appliance, tmp_path: Path,
                                                                         key_pair: tuple[Path, Path]) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    bundle, digests = build_bundle(tmp_path, private, "tuspy", "1", {"docker.io/cargotest/tus:1": 1_200_000},
                                   seed=101)
    signature = detached_signature(bundle, private)
    client = tus_client.TusClient(f"{ui_app.url}/api/v1/uploads", headers=_basic(ui_app))

    sig = Sha256Uploader(str(signature), client=client, metadata={"filename": signature.name, "kind": "signature"},
                         upload_checksum=True)
    sig.upload()
    assert sig.url is not None
    sig_id = sig.url.rsplit("/", 1)[1]

    storage = FileStorage(str(tmp_path / "tus-urls.json"))
    metadata = {"filename": bundle.name, "kind": "bundle", "signature": sig_id}
    first = Sha256Uploader(str(bundle), client=client, chunk_size=256 << 10, metadata=metadata, upload_checksum=True,
                           store_url=True, url_storage=storage)
    first.upload(stop_at=3 * (256 << 10))  # part of it, then this client is gone
    assert first.offset == 3 * (256 << 10) and first.url is not None
    head = requests.head(first.url, headers={**TUS, **_basic(ui_app)}, timeout=10)
    assert int(head.headers["Upload-Offset"]) == first.offset and "Cargohold-Import-Job" not in head.headers

    second = Sha256Uploader(str(bundle), client=tus_client.TusClient(f"{ui_app.url}/api/v1/uploads",
                                                                     headers=_basic(ui_app)),
                            chunk_size=256 << 10, metadata=metadata, upload_checksum=True, store_url=True,
                            url_storage=storage)
    assert second.url == first.url and second.offset == first.offset  # resumed from the stored URL
    second.upload()
    assert second.offset == bundle.stat().st_size and second.url is not None

    head = requests.head(second.url, headers={**TUS, **_basic(ui_app)}, timeout=10)
    assert head.headers["Cargohold-Upload-Sha256"] == sha256_file(bundle)
    job = _wait_job(ui_app, head.headers["Cargohold-Import-Job"])
    assert job["state"] == "done", job
    report = job["report"]
    assert isinstance(report, dict)
    assert {s["kind"] for s in report["signatures"]} == {"embedded", "detached"}
    assert [i["digest"] for i in report["images"]] == list(digests.values())
    # The import removed the uploaded copy; the record (digest, job) stays until it expires.
    assert not (ui_app.data_dir / "imports" / "tus" / second.url.rsplit("/", 1)[1] / bundle.name).exists()


def test_protocol_options_offsets_checksums_termination_and_auth(ui_app: Appliance) -> None:
    base = f"{ui_app.url}/api/v1/uploads"
    opts = requests.options(base, timeout=10)
    assert opts.status_code == 204
    assert opts.headers["Tus-Version"] == "1.0.0" and opts.headers["Tus-Resumable"] == "1.0.0"
    assert set(opts.headers["Tus-Extension"].split(",")) >= {"creation", "checksum", "termination", "expiration"}
    assert opts.headers["Tus-Checksum-Algorithm"] == "sha256" and int(opts.headers["Tus-Max-Size"]) > 0

    assert requests.post(base, headers={**TUS, "Upload-Length": "5"}, timeout=10).status_code == 401
    auth = {**TUS, **_basic(ui_app)}
    assert requests.post(base, headers={**_basic(ui_app), "Upload-Length": "5"}, timeout=10).status_code == 412
    assert requests.post(base, headers={**auth, "Upload-Length": "x"}, timeout=10).status_code == 400
    bad_meta = requests.post(base, headers={**auth, "Upload-Length": "5", "Upload-Metadata": "filename !!"},
                             timeout=10)
    assert bad_meta.status_code == 400 and "base64" in bad_meta.text

    created = requests.post(base, headers={**auth, "Upload-Length": "10", "Upload-Metadata": "filename eC5iaW4="},
                            timeout=10)
    assert created.status_code == 201 and created.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Expires" in created.headers
    url = ui_app.url + created.headers["Location"]
    patch = {**auth, "Content-Type": "application/offset+octet-stream"}

    def chunk_sum(data: bytes) -> str:
        return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()

    r = requests.patch(url, data=b"hello", headers={**patch, "Upload-Offset": "0",
                                                    "Upload-Checksum": chunk_sum(b"HELLO")}, timeout=10)
    assert r.status_code == 460  # the chunk is discarded
    assert requests.head(url, headers=auth, timeout=10).headers["Upload-Offset"] == "0"
    r = requests.patch(url, data=b"hello", headers={**patch, "Upload-Offset": "0",
                                                    "Upload-Checksum": chunk_sum(b"hello")}, timeout=10)
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "5"
    r = requests.patch(url, data=b"world", headers={**patch, "Upload-Offset": "3"}, timeout=10)
    assert r.status_code == 409
    r = requests.patch(url, data=b"world", headers={**auth, "Content-Type": "text/plain", "Upload-Offset": "5"},
                       timeout=10)
    assert r.status_code == 415
    r = requests.patch(url, data=b"world!!", headers={**patch, "Upload-Offset": "5"}, timeout=10)
    assert r.status_code == 413  # past Upload-Length
    r = requests.patch(url, data=b"sha1x", headers={**patch, "Upload-Offset": "5",
                                                    "Upload-Checksum": "sha1 AAAA"}, timeout=10)
    assert r.status_code == 400
    head = requests.head(url, headers=auth, timeout=10)
    assert head.headers["Upload-Offset"] == "5" and head.headers["Upload-Length"] == "10"
    assert head.headers["Cache-Control"] == "no-store"

    assert requests.delete(url, headers=auth, timeout=10).status_code == 204
    assert requests.head(url, headers=auth, timeout=10).status_code == 404
    assert requests.patch(url, data=b"world", headers={**patch, "Upload-Offset": "5"}, timeout=10).status_code == 404


def test_a_signature_upload_is_limited_and_a_bundle_must_name_a_completed_one(ui_app: Appliance) -> None:
    base = f"{ui_app.url}/api/v1/uploads"
    auth = {**TUS, **_basic(ui_app)}
    meta = "kind " + base64.b64encode(b"signature").decode()
    assert requests.post(base, headers={**auth, "Upload-Length": str(1 << 20), "Upload-Metadata": meta},
                         timeout=10).status_code == 413
    pending = requests.post(base, headers={**auth, "Upload-Length": "10", "Upload-Metadata": meta}, timeout=10)
    sig_id = pending.headers["Location"].rsplit("/", 1)[1]
    r = requests.post(base, headers={**auth, "Upload-Length": "100",
                                     "Upload-Metadata": "signature " + base64.b64encode(sig_id.encode()).decode()},
                      timeout=10)
    assert r.status_code == 400 and "completed signature upload" in r.text


def _worker_peaks(app: Appliance) -> dict[int, int]:
    """VmHWM (peak resident KiB) of each gunicorn worker of the appliance."""
    peaks = {}
    for child in Path(f"/proc/{app.process.pid}/task/{app.process.pid}/children").read_text().split():
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[int(child)] = int(line.split()[1])
    return peaks


def test_a_large_chunk_streams_to_disk_with_flat_memory(ui_app: Appliance, tmp_path: Path) -> None:
    size = 160 << 20
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    auth = {**TUS, **_basic(ui_app)}
    created = requests.post(f"{ui_app.url}/api/v1/uploads", timeout=10,
                            headers={**auth, "Upload-Length": str(size), "Upload-Metadata": "kind c2lnbmF0dXJl"})
    assert created.status_code == 413  # a signature that large is refused up front
    created = requests.post(f"{ui_app.url}/api/v1/uploads", timeout=10,
                            headers={**auth, "Upload-Length": str(size), "Upload-Metadata": "filename YmlnLmJpbg=="})
    url = ui_app.url + created.headers["Location"]
    before = _worker_peaks(ui_app)
    with source.open("rb") as body:  # requests streams a file object with its Content-Length
        r = requests.patch(url, data=body, timeout=120,
                           headers={**auth, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
    assert r.status_code == 204 and int(r.headers["Upload-Offset"]) == size
    after = _worker_peaks(ui_app)
    grown = max(after[pid] - before.get(pid, after[pid]) for pid in after)
    assert grown < 48 * 1024, f"a worker's peak memory grew by {grown // 1024} MiB for a {size >> 20} MiB chunk"
    assert r.headers["Cargohold-Upload-Sha256"] == sha256_file(source)
    requests.delete(url, headers=auth, timeout=10)


def _partials_with_tuspy(app: Appliance, data: bytes, cuts: list[int],
                         auth: tuple[str, str] | None = None) -> list[str]:
    """Upload data[a:b] for each pair of `cuts` as a tus partial upload with tuspy (chunked, with checksums);
    returns their absolute URLs."""
    who = auth or app.admin
    headers = {"Authorization": "Basic " + base64.b64encode(f"{who[0]}:{who[1]}".encode()).decode(),
               "Upload-Concat": "partial"}
    client = tus_client.TusClient(f"{app.url}/api/v1/uploads", headers=headers)
    urls: list[str] = []
    for a, b in itertools.pairwise(cuts):
        part = Sha256Uploader(file_stream=io.BytesIO(data[a:b]), client=client, chunk_size=256 << 10,
                              upload_checksum=True)
        part.upload()
        assert part.url is not None and part.offset == b - a
        urls.append(part.url)
    return urls


def _final(app: Appliance, urls: list[str], metadata: dict[str, str] | None = None,
           headers: dict[str, str] | None = None) -> requests.Response:
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in (metadata or {}).items())
    return requests.post(f"{app.url}/api/v1/uploads", timeout=120,
                         headers={**TUS, **_basic(app), "Upload-Concat": "final;" + " ".join(urls),
                                  **({"Upload-Metadata": meta} if meta else {}), **(headers or {})})


def test_partial_uploads_from_tuspy_concatenate_into_a_bundle_that_imports(
        ui_app: Appliance, tmp_path: Path, key_pair: tuple[Path, Path]) -> None:
    private, public = key_pair
    cargohold("keys", "add", public, "--data-dir", ui_app.data_dir, check=False)  # may be trusted already
    bundle, digests = build_bundle(tmp_path, private, "concat", "1", {"docker.io/cargotest/concat:1": 1_500_000},
                                   seed=111)
    signature = detached_signature(bundle, private)
    sig = Sha256Uploader(str(signature), client=tus_client.TusClient(f"{ui_app.url}/api/v1/uploads",
                                                                     headers=_basic(ui_app)),
                         metadata={"filename": signature.name, "kind": "signature"}, upload_checksum=True)
    sig.upload()
    assert sig.url is not None
    data = bundle.read_bytes()
    cuts = [0, len(data) // 3, len(data) // 3 + 1, len(data)]  # one part of a single byte
    urls = _partials_with_tuspy(ui_app, data, cuts)
    for url in urls:
        head = requests.head(url, headers={**TUS, **_basic(ui_app)}, timeout=10)
        assert head.headers["Upload-Concat"] == "partial" and "Cargohold-Import-Job" not in head.headers

    # tus-js-client names the parts by absolute URL; the spec's examples use paths: both are accepted.
    named = [urls[0], urlsplit(urls[1]).path, urls[2]]
    final = _final(ui_app, named, {"filename": bundle.name, "kind": "bundle",
                                   "signature": sig.url.rsplit("/", 1)[1]})
    assert final.status_code == 201, final.text
    ids = [u.rsplit("/", 1)[1] for u in urls]
    assert final.headers["Upload-Concat"] == "final;" + " ".join(f"/api/v1/uploads/{i}" for i in ids)
    assert int(final.headers["Upload-Offset"]) == int(final.headers["Upload-Length"]) == len(data)
    assert final.headers["Cargohold-Upload-Sha256"] == sha256_file(bundle)  # the whole file's digest
    job = _wait_job(ui_app, final.headers["Cargohold-Import-Job"])
    assert job["state"] == "done", job
    report = job["report"]
    assert isinstance(report, dict) and job["source"] == bundle.name
    assert {s["kind"] for s in report["signatures"]} == {"embedded", "detached"}
    assert [i["digest"] for i in report["images"]] == list(digests.values())

    final_url = ui_app.url + final.headers["Location"]
    head = requests.head(final_url, headers={**TUS, **_basic(ui_app)}, timeout=10)
    assert head.headers["Upload-Concat"] == final.headers["Upload-Concat"]
    assert head.headers["Cargohold-Import-Job"] == final.headers["Cargohold-Import-Job"]
    # A client that lost the answer asks again and gets the same upload and job; nothing is imported twice.
    again = _final(ui_app, urls, {"filename": bundle.name, "kind": "bundle"})
    assert again.status_code == 201 and again.headers["Location"] == final.headers["Location"]
    assert again.headers["Cargohold-Import-Job"] == final.headers["Cargohold-Import-Job"]
    for url, upload_id in zip(urls, ids, strict=True):  # the parts' bytes moved into the final upload
        head = requests.head(url, headers={**TUS, **_basic(ui_app)}, timeout=10)
        assert head.status_code == 200 and head.headers["Upload-Offset"] == head.headers["Upload-Length"]
        assert not (ui_app.data_dir / "imports" / "tus" / upload_id).exists()
    assert not (ui_app.data_dir / "imports" / "tus" / final.headers["Location"].rsplit("/", 1)[1] /
                bundle.name).exists()  # removed after the import, as for a single upload


def test_final_uploads_are_refused_with_the_tus_statuses_and_refusals_lose_nothing(ui_app: Appliance) -> None:
    base = f"{ui_app.url}/api/v1/uploads"
    auth = {**TUS, **_basic(ui_app)}
    assert "concatenation" in requests.options(base, timeout=10).headers["Tus-Extension"].split(",")
    data = os.urandom(300_000)
    a, b = _partials_with_tuspy(ui_app, data, [0, 100_000, 300_000])

    def final(value: str, **headers: str) -> requests.Response:
        return requests.post(base, headers={**auth, "Upload-Concat": value, **headers}, timeout=30)

    assert requests.post(base, headers={**_basic(ui_app), "Upload-Concat": f"final;{a} {b}"},
                         timeout=10).status_code == 412
    assert requests.post(base, headers={**TUS, "Upload-Concat": f"final;{a} {b}"}, timeout=10).status_code == 401
    r = final(f"final;{a} {b}", **{"Upload-Length": "300000"})
    assert r.status_code == 400 and "Upload-Length" in r.text
    assert final("bogus").status_code == 400
    assert final("final;").status_code == 400
    r = final(f"final;{a} {ui_app.url}/v2/spectro-images/x/blobs/uploads/{'0' * 32}")
    assert r.status_code == 400 and "not an upload of this endpoint" in r.text
    assert final(f"final;{a} {base}/{'0' * 32}").status_code == 404
    assert final(f"final;{a} {a}").status_code == 400

    plain = requests.post(base, headers={**auth, "Upload-Length": "1"}, timeout=10)
    plain_url = ui_app.url + plain.headers["Location"]
    requests.patch(plain_url, data=b"x", timeout=10,
                   headers={**auth, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
    r = final(f"final;{a} {plain_url}")
    assert r.status_code == 400 and "not a partial upload" in r.text
    unfinished = requests.post(base, headers={**auth, "Upload-Length": "10", "Upload-Concat": "partial"}, timeout=10)
    r = final(f"final;{a} {ui_app.url}{unfinished.headers['Location']}")
    assert r.status_code == 400 and "not complete" in r.text

    # Another administrator (a system robot) has uploads of its own: nobody concatenates them but it.
    robot = Harbor(ui_app, ui_app.admin).create_robot(
        f"up{uuid.uuid4().hex[:8]}", "system",
        [{"kind": "system", "namespace": "/", "access": [{"resource": "*", "action": "*"}]}])
    (theirs,) = _partials_with_tuspy(ui_app, b"theirs", [0, 6], auth=robot.auth)
    r = final(f"final;{a} {theirs}")
    assert r.status_code == 404 and "another user" in r.text  # to anyone else it does not exist

    # Nothing above changed a partial: both are whole, and together they make the file.
    for url, size in ((a, 100_000), (b, 200_000)):
        head = requests.head(url, headers=auth, timeout=10)
        assert int(head.headers["Upload-Offset"]) == int(head.headers["Upload-Length"]) == size
    made = final(f"final;{a} {b}", **{"Upload-Metadata": "filename " + base64.b64encode(b"x.bin").decode()})
    assert made.status_code == 201
    assert made.headers["Cargohold-Upload-Sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
    made_url = ui_app.url + made.headers["Location"]
    r = final(f"final;{b}")  # a part goes into one final upload only
    assert r.status_code == 409 and made.headers["Location"].rsplit("/", 1)[1] in r.text
    r = requests.patch(made_url, data=b"x", timeout=10,
                       headers={**auth, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "300000"})
    assert r.status_code == 403  # a final upload takes no PATCH
    assert requests.head(made_url, headers=auth, timeout=10).headers["Upload-Offset"] == "300000"
    assert requests.delete(made_url, headers=auth, timeout=10).status_code == 204
    assert requests.head(a, headers=auth, timeout=10).status_code == 404  # its partials went with it


def test_a_final_upload_of_large_parts_is_assembled_with_flat_memory(ui_app: Appliance, tmp_path: Path) -> None:
    part = 96 << 20
    sources = []
    h = hashlib.sha256()
    for i in range(2):
        source = tmp_path / f"part{i}.bin"
        with source.open("wb") as f:
            for _ in range(part >> 20):
                block = os.urandom(1 << 20)
                f.write(block)
                h.update(block)
        sources.append(source)
    auth = {**TUS, **_basic(ui_app)}
    urls = []
    for source in sources:
        created = requests.post(f"{ui_app.url}/api/v1/uploads", timeout=10,
                                headers={**auth, "Upload-Length": str(part), "Upload-Concat": "partial"})
        url = ui_app.url + created.headers["Location"]
        with source.open("rb") as body:
            r = requests.patch(url, data=body, timeout=120, headers={
                **auth, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
        assert r.status_code == 204
        urls.append(url)
    before = _worker_peaks(ui_app)
    final = _final(ui_app, urls, {"filename": "big.bin"})
    assert final.status_code == 201, final.text
    after = _worker_peaks(ui_app)
    grown = max(after[pid] - before.get(pid, after[pid]) for pid in after)
    assert grown < 48 * 1024, f"a worker's peak memory grew by {grown // 1024} MiB assembling {2 * part >> 20} MiB"
    assert final.headers["Cargohold-Upload-Sha256"] == f"sha256:{h.hexdigest()}"
    assert int(final.headers["Upload-Length"]) == 2 * part
    requests.delete(ui_app.url + final.headers["Location"], headers=auth, timeout=10)
