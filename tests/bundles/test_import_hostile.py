"""Hostile bundles are refused cheaply, with a code, through the real CLI and the real server.

Each bundle here is small on disk and built to make the importer do a lot
before anything vouches for it: a manifest that parses into gigabytes of
Python lists or past the recursion limit, member names that are not UTF-8,
twenty thousand tiny members behind a junk detached signature, and an
``index.json`` reference hiding a newline. The refusal must come with its
code (the CLI's last line, ``bundle status --json``, the HTTP job's
``errorCode``), without a traceback, and leave nothing published.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import zstandard

from bundles import format as fmt
from bundles import keys
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.conftest import REPO_ROOT, cli, make_site, run, snapshot, unique_layout

# The CLI process alone (Python, Flask, zstd, cryptography) peaks around 50 MiB; before the caps, the 64 MiB
# manifest of `[],[],...` below took it to 1.7 GB.
PEAK_LIMIT_KIB = 150 * 1024


def _manifest_bundle(path: Path, body: bytes) -> Path:
    """A bundle whose first member, cargohold-bundle.json, is `body` (and nothing else)."""
    return craft.write_bundle(path, [craft.Entry.file(fmt.MANIFEST_MEMBER, body)], level=19)


HOSTILE_MANIFESTS: dict[str, Callable[[], bytes]] = {
    # ~5 KiB compressed; json.loads would build 22 million empty lists.
    "64 MiB of [],[]": lambda: b"[" + b"[]," * ((64 << 20) // 3 - 2) + b"[]]",
    # Under the byte cap, so only the count of containers stops it.
    "15 MiB of [],[]": lambda: b"[" + b"[]," * ((15 << 20) // 3 - 2) + b"[]]",
    # json.loads raised RecursionError, a traceback.
    "200,000 nested [": lambda: b"[" * 200_000,
}


def _bad_name_bundle(path: Path) -> Path:
    """A plain layout whose one member's name is the bytes ``blobs/sha256/\\xff\\xfe``: not UTF-8.

    The name's bytes go into a ustar header as they are; tarfile reads them
    back as surrogates.
    """
    info = tarfile.TarInfo("blobs/sha256/\udcff\udcfe")
    info.size = 1
    with path.open("wb") as raw, zstandard.ZstdCompressor().stream_writer(raw, closefd=False) as zw, \
            tarfile.open(fileobj=zw, mode="w|", format=tarfile.USTAR_FORMAT, encoding="utf-8",
                         errors="surrogateescape") as tar:
        tar.addfile(info, io.BytesIO(b"x"))
    return path


def _import_measured(bundle: Path, data: Path, *extra: str) -> tuple[int, str, int]:
    """Run `cargohold bundle import`; its exit code, stderr and peak RSS in KiB.

    The import runs as the child of a fresh, small interpreter, whose
    RUSAGE_CHILDREN then holds the import's peak alone (a child forked
    straight from pytest would count pytest's own pages until it execs).
    """
    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
             "sys.stderr.write(p.stderr)\n"
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "web.cli", "bundle", "import",
                          str(bundle), "--data-dir", str(data), "--quiet", *extra],
                         capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    code, peak = out.stdout.split()
    return int(code), out.stderr, int(peak)


def _job_of(stderr: str, data: Path) -> dict[str, object]:
    """The job the CLI announced on stderr (``import job <id>``), as `bundle status --json` gives it."""
    job_id = next(line.split()[-1] for line in stderr.splitlines() if line.startswith("import job "))
    return dict(json.loads(cli("bundle", "status", job_id, "--data-dir", str(data), "--json").stdout))


@pytest.mark.parametrize("shape", list(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_refused_in_bounded_memory_by_the_cli(tmp_path: Path, shape: str) -> None:
    bundle = _manifest_bundle(tmp_path / "hostile.tar.zst", HOSTILE_MANIFESTS[shape]())
    assert bundle.stat().st_size < 64 << 10
    data = tmp_path / "data"
    make_site(data)  # a data directory with its database (read-only CLI commands refuse an empty one)
    before = snapshot(data)
    code, stderr, peak_kib = _import_measured(bundle, data)
    assert code == 1, stderr
    assert peak_kib < PEAK_LIMIT_KIB, f"peak RSS {peak_kib // 1024} MiB refusing a {shape} manifest"
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: bundle refused: cargohold-bundle.json ") and last.endswith("[MANIFEST_TOO_LARGE]")
    job = _job_of(stderr, data)
    assert job["state"] == "failed" and job["errorCode"] == "MANIFEST_TOO_LARGE", job
    assert snapshot(data) == before


def test_a_hostile_index_json_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A plain layout's index.json of 15 MiB of ``[],[]``, imported where the policy allows unsigned bundles."""
    body = HOSTILE_MANIFESTS["15 MiB of [],[]"]()
    bundle = craft.write_bundle(tmp_path / "index.tar.zst", [
        craft.Entry.file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
        craft.Entry.file("index.json", body)], level=19)
    data = tmp_path / "data"
    code, stderr, peak_kib = _import_measured(bundle, data, "--allow-unsigned")
    assert code == 1, stderr
    assert peak_kib < PEAK_LIMIT_KIB, f"peak RSS {peak_kib // 1024} MiB refusing a hostile index.json"
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: bundle refused: index.json holds ")
    assert stderr.strip().endswith("[MANIFEST_TOO_LARGE]"), stderr


def test_a_member_name_that_is_not_utf8_is_refused_with_a_code(tmp_path: Path) -> None:
    bundle = _bad_name_bundle(tmp_path / "badname.tar.zst")
    data = tmp_path / "data"
    proc = cli("bundle", "import", str(bundle), "--data-dir", str(data), "--quiet", "--allow-unsigned", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "is not valid UTF-8 [UNSAFE_MEMBER]" in proc.stderr
    job = _job_of(proc.stderr, data)
    assert job["state"] == "failed" and job["errorCode"] == "UNSAFE_MEMBER", job


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs that holds at most 400 files and directories (a real filesystem); skipped where mounting is
    not permitted."""
    mnt = tmp_path / "few-inodes"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=400", "tmpfs", str(mnt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_many_tiny_members_behind_a_junk_detached_signature_are_refused_before_unpacking(
        tmp_path: Path, few_inodes: Path) -> None:
    """20,000 one-line blobs (about 0.8 MB compressed) and a signature of random bytes.

    The data directory sits on a filesystem that holds at most 400 files:
    an importer that staged (and fsynced) members before checking the
    signature ran out of inodes and answered DISK_FULL; one that checks the
    signature over the compressed file first never creates a file.
    """
    members = [craft.Entry.file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
               craft.Entry.file("index.json", b'{"schemaVersion": 2, "manifests": []}')]
    for i in range(20_000):
        body = f"{i}\n".encode()
        members.append(craft.Entry.file(f"blobs/sha256/{hashlib.sha256(body).hexdigest()}", body))
    bundle = craft.write_bundle(tmp_path / "tiny.tar.zst", members, level=19)
    # One read chunk (1 MiB): the job's first progress write is also its last, so bytesDone below is exact.
    assert bundle.stat().st_size < 1 << 20
    junk = tmp_path / "junk.sig"
    junk.write_bytes(os.urandom(256))
    data = few_inodes / "data"
    signer = keys.generate("rsa", 2048)  # trusted, but it did not make the junk signature
    (tmp_path / "rsa.pub").write_bytes(keys.public_pem(signer))
    cli("keys", "add", str(tmp_path / "rsa.pub"), "--data-dir", str(data))
    before = snapshot(data)
    # No free-space reserve: the small volume must not refuse the import for space before its inodes matter.
    proc = cli("bundle", "import", str(bundle), "--signature", str(junk), "--data-dir", str(data), "--quiet",
               env={"CARGOHOLD_IMPORT_RESERVE_BYTES": "0"}, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().endswith("[SIGNATURE]"), proc.stderr
    assert "detached signature does not verify" in proc.stderr
    job = _job_of(proc.stderr, data)
    assert job["state"] == "failed" and job["errorCode"] == "SIGNATURE", job
    # Refused after one read of the file (half of the two reads a signed import makes), nothing unpacked.
    assert job["bytesDone"] == bundle.stat().st_size and job["bytesTotal"] == 2 * bundle.stat().st_size, job
    assert snapshot(data) == before


@pytest.mark.parametrize("with_manifest", [False, True], ids=["plain-layout", "cargohold-manifest"])
def test_a_reference_with_a_trailing_newline_is_refused(tmp_path: Path, ec_key: keys.PrivateKey,
                                                        with_manifest: bool) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    index_path = layout.root / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"][0]["annotations"][fmt.REF_NAME_ANNOTATION] = refs[0] + "\n"
    index_path.write_text(json.dumps(index))
    entries = craft.standard_entries(layout.root, ec_key if with_manifest else None)
    if not with_manifest:
        entries = [e for e in entries if e.info.name != fmt.MANIFEST_MEMBER]
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", entries)
    data = tmp_path / "data"
    (tmp_path / "k.pub").write_bytes(keys.public_pem(ec_key))
    cli("keys", "add", str(tmp_path / "k.pub"), "--data-dir", str(data))
    before = snapshot(data)
    proc = cli("bundle", "import", str(bundle), "--data-dir", str(data), "--quiet", "--allow-unsigned", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "contains whitespace or control characters [FORMAT]" in proc.stderr, proc.stderr
    assert repr(refs[0] + "\n") in proc.stderr
    assert snapshot(data) == before


def _peaks(app: Appliance) -> list[int]:
    """VmHWM (peak resident KiB) of each gunicorn worker."""
    out = []
    for pid in app.worker_pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out.append(int(line.split()[1]))
    return out


def _wait_job(app: Appliance, url: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{app.url}{url}", auth=app.admin, timeout=10).json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.1)


def test_hostile_uploads_fail_their_http_jobs_with_the_code(appliance_factory: Callable[..., Appliance],
                                                           tmp_path: Path) -> None:
    """Over HTTP the import runs in a worker thread: the job ends failed with errorCode, never stays
    "verifying", and the worker's peak memory stays bounded."""
    app = appliance_factory()
    signer = keys.generate("rsa", 2048)
    (tmp_path / "rsa.pub").write_bytes(keys.public_pem(signer))
    (tmp_path / "rsa.pem").write_bytes(keys.private_pem(signer))
    cli("keys", "add", str(tmp_path / "rsa.pub"), "--data-dir", str(app.data_dir))
    bad_name = _bad_name_bundle(tmp_path / "badname.tar.zst")
    # A good detached signature gets the plain layout past the signature check to its bad member name.
    run("openssl", "dgst", "-sha256", "-sign", str(tmp_path / "rsa.pem"), "-out", str(tmp_path / "bad.sig"),
        str(bad_name))
    cases = [(bad_name, tmp_path / "bad.sig", "UNSAFE_MEMBER"),
             (_manifest_bundle(tmp_path / "brackets.tar.zst", HOSTILE_MANIFESTS["64 MiB of [],[]"]()), None,
              "MANIFEST_TOO_LARGE"),
             (_manifest_bundle(tmp_path / "nested.tar.zst", HOSTILE_MANIFESTS["200,000 nested ["]()), None,
              "MANIFEST_TOO_LARGE")]
    for bundle, signature, code in cases:
        with bundle.open("rb") as f:
            files: dict[str, tuple[str, io.BufferedReader | bytes]] = {"uploadFile": (bundle.name, f)}
            if signature is not None:
                files["signature"] = ("b.sig", signature.read_bytes())
            resp = requests.post(f"{app.url}/api/v1/bundles", files=files, auth=app.admin, timeout=60)
        assert resp.status_code == 202, resp.text
        job = _wait_job(app, resp.json()["jobUrl"], timeout=30)
        assert job["state"] == "failed", job  # before: the bad name left it "verifying" for good
        assert job["errorCode"] == code, job
        assert job["error"], job
    assert max(_peaks(app)) < 250 * 1024, _peaks(app)
    assert "Traceback" not in app.log()
