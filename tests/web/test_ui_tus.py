"""The tus 1.0 endpoint driven by tuspy, the Python tus client, and by hand for the protocol's edges.

A real bundle goes up through /api/v1/uploads in two sessions (part of it,
then a new client continuing from the stored URL), with a per-chunk SHA-256;
the import it starts completes, and the server's file has the bundle's digest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import requests
from tusclient import client as tus_client
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader.uploader import Uploader

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.layouts import sha256_file
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
