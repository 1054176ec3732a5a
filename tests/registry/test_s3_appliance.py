"""The appliance with its blobs in a real object store (Ceph RGW, tests/s3engines.py), driven by real clients.

skopeo pushes and pulls through the nginx front (which proxies blob bodies
to the store), a Range GET, a signed bundle import lands its blobs in the
bucket while a tampered one leaves the bucket as it was, GC and scrub work
on objects, /readyz names a vanished bucket, a bad start names the problem,
and redirect mode answers 307 to a presigned URL that skopeo follows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bundles import keys
from tests.appliance import Appliance, free_port, start_appliance
from tests.bundles import craft
from tests.bundles.conftest import REPO_ROOT, assert_pulled_identical, source_digest, unique_layout
from tests.containerd import Containerd
from tests.images import OciLayout
from tests.layouts import layout_closure
from tests.logs import request_lines
from tests.registry.conftest import SourceImages, layout_ref
from tests.s3engines import S3Engine


def _require_skopeo() -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")


def s3_env(engine: S3Engine, bucket: str, **extra: str) -> dict[str, str]:
    return {**engine.env(), "CARGOHOLD_STORAGE_URL": engine.storage_url(bucket, "site"), **extra}


def blob_keys(engine: S3Engine, bucket: str) -> set[str]:
    """The blob digests in the bucket (``sha256:<hex>``), read with boto3 directly."""
    found = set()
    for page in engine.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="site/blobs/"):
        for obj in page.get("Contents", []):
            algorithm, _, hex_ = obj["Key"][len("site/blobs/"):].split("/")
            found.add(f"{algorithm}:{hex_}")
    return found


def key_of(digest: str) -> str:
    algorithm, hex_ = digest.split(":")
    return f"site/blobs/{algorithm}/{hex_[:2]}/{hex_}"


def cargohold(app: Appliance, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "web.cli", *args, "--data-dir", str(app.data_dir)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **app.env}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cargohold {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True, timeout=300).stdout


@pytest.fixture(scope="module")
def ec_key() -> keys.PrivateKey:
    return keys.generate("ecdsa-p256")


@pytest.fixture(scope="module")
def s3app(ceph_rgw: S3Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, str]]:
    """One appliance (nginx front) whose blobs live in a fresh bucket of the session's Ceph RGW."""
    bucket = ceph_rgw.new_bucket()
    app = start_appliance(tmp_path_factory.mktemp("s3app") / "data", env=s3_env(ceph_rgw, bucket))
    app.env = s3_env(ceph_rgw, bucket)
    yield app, bucket
    app.stop()


def test_skopeo_push_and_pull_are_byte_identical_and_the_blobs_are_objects(
        s3app: tuple[Appliance, str], ceph_rgw: S3Engine, source: SourceImages, tmp_path: Path) -> None:
    _require_skopeo()
    app, bucket = s3app
    repo = f"spectro-images/s3/r{uuid.uuid4().hex[:8]}"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", app.creds, f"oci:{source.path}:multi:1",
           f"docker://{app.host}/{repo}:1")
    out = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{app.host}/{repo}:1", f"oci:{out}:back")
    assert layout_ref(out, "back") == source.image.digest
    closure = layout_closure(source.path, source.image.digest)
    assert layout_closure(out, source.image.digest) == closure
    assert set(closure) <= blob_keys(ceph_rgw, bucket)
    assert not [p for p in (app.data_dir / "blobs").rglob("*") if p.is_file()], "no blob may land on the data volume"


def test_blob_get_through_the_front_honours_range(s3app: tuple[Appliance, str], ceph_rgw: S3Engine) -> None:
    app, bucket = s3app
    repo = f"spectro-images/s3/range{uuid.uuid4().hex[:8]}"
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    put = requests.post(f"{app.url}/v2/{repo}/blobs/uploads/?digest={digest}", data=data, auth=app.admin, timeout=30)
    assert put.status_code == 201, put.text
    assert ceph_rgw.client().head_object(Bucket=bucket, Key=key_of(digest))["ContentLength"] == len(data)
    whole = requests.get(f"{app.url}/v2/{repo}/blobs/{digest}", auth=app.admin, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Docker-Content-Digest"] == digest and whole.headers["Content-Length"] == str(len(data))
    assert whole.headers["ETag"] == f'"{digest}"' and "x-amz-request-id" not in whole.headers
    assert whole.headers["X-Content-Type-Options"] == "nosniff" and whole.headers["Content-Type"] == \
        "application/octet-stream"
    assert whole.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert whole.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    part = requests.get(f"{app.url}/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=1000-4999"},
                        auth=app.admin, timeout=30)
    assert part.status_code == 206 and part.content == data[1000:5000]
    assert part.headers["Content-Range"] == f"bytes 1000-4999/{len(data)}"
    assert part.headers["Docker-Content-Digest"] == digest
    head = requests.head(f"{app.url}/v2/{repo}/blobs/{digest}", auth=app.admin, timeout=30)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    bad = requests.get(f"{app.url}/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={len(data)}-"},
                       auth=app.admin, timeout=30)
    assert bad.status_code == 416
    # The request log counts what the front sent from the store, and never shows the presigned signature.
    gets = [r for r in request_lines(app.log()) if (r["method"], r["path"]) == ("GET", f"/v2/{repo}/blobs/{digest}")]
    assert [(r["status"], r["bytes_out"], r.get("sent_by")) for r in gets[:2]] == \
        [(200, len(data), "front"), (200, 4000, "front")], gets  # the app answered 200; nginx sent the range
    assert "X-Amz-Signature" not in app.log() and ceph_rgw.secret_key not in app.log()


def test_signed_bundle_import_lands_in_the_bucket_and_a_tampered_one_changes_nothing(
        s3app: tuple[Appliance, str], ceph_rgw: S3Engine, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    _require_skopeo()
    app, bucket = s3app
    pub = tmp_path / "ec.pub.pem"
    pub.write_bytes(keys.public_pem(ec_key))
    added = cargohold(app, "keys", "add", str(pub), "--description", "s3 test", check=False)
    assert added.returncode == 0 or "already trusted" in added.stderr, added.stderr

    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    entries = craft.standard_entries(layout.root, ec_key)
    blobs = [i for i, e in enumerate(entries) if e.info.name.startswith("blobs/")]
    largest = max(blobs, key=lambda i: entries[i].info.size)
    path = entries[largest].data
    assert isinstance(path, Path)
    flipped = bytearray(path.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    tampered = list(entries)
    tampered[largest] = craft.Entry.file(entries[largest].info.name, bytes(flipped))
    before = blob_keys(ceph_rgw, bucket)
    refused = cargohold(app, "bundle", "import", str(craft.write_bundle(tmp_path / "bad.tar.zst", tampered)),
                        check=False)
    assert refused.returncode == 1 and entries[largest].info.name in refused.stderr, refused.stderr
    assert blob_keys(ceph_rgw, bucket) == before, "a refused import must leave the bucket's blobs as they were"

    report = json.loads(cargohold(app, "bundle", "import", str(craft.write_bundle(tmp_path / "b.tar.zst", entries)),
                                  "--json").stdout)
    assert report["blobs"]["new"] == len(list((layout.root / "blobs" / "sha256").iterdir()))
    pulled = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", f"docker://{app.host}/spectro-images/{refs[0]}", f"oci:{pulled}:pulled")
    digest = source_digest(layout.root, refs[0])
    assert assert_pulled_identical(pulled, layout.root, digest) >= 3
    in_layout = {f"sha256:{p.name}" for p in (layout.root / "blobs" / "sha256").iterdir()}
    assert in_layout <= blob_keys(ceph_rgw, bucket)
    assert not list((app.data_dir / "imports" / "staging").glob("*/sha256/*")), "staging is emptied after publish"


def test_gc_removes_an_unreferenced_object_after_grace_and_scrub_finds_damage(
        s3app: tuple[Appliance, str], ceph_rgw: S3Engine) -> None:
    app, bucket = s3app
    s3 = ceph_rgw.client()
    orphan = os.urandom(1000)
    orphan_digest = "sha256:" + hashlib.sha256(orphan).hexdigest()
    s3.put_object(Bucket=bucket, Key=key_of(orphan_digest), Body=orphan)  # a failed import's leftover, say
    kept = cargohold(app, "gc", "--retain", "1", "--grace", "1h", "--json")
    assert json.loads(kept.stdout)["filesRemoved"] == 0
    assert orphan_digest in blob_keys(ceph_rgw, bucket), "younger than the grace period: kept"
    report = json.loads(cargohold(app, "gc", "--retain", "1", "--grace", "0", "--json").stdout)
    assert report["filesRemoved"] >= 1
    assert orphan_digest not in blob_keys(ceph_rgw, bucket)

    # A stored blob whose object was overwritten with other bytes, and one whose object was deleted.
    repo = f"spectro-images/s3/scrub{uuid.uuid4().hex[:8]}"
    digests = []
    for _ in range(2):
        data = os.urandom(5000)
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        assert requests.post(f"{app.url}/v2/{repo}/blobs/uploads/?digest={d}", data=data, auth=app.admin,
                             timeout=30).status_code == 201
        digests.append(d)
    damaged, deleted = digests
    s3.put_object(Bucket=bucket, Key=key_of(damaged), Body=os.urandom(5000))
    s3.delete_object(Bucket=bucket, Key=key_of(deleted))
    proc = cargohold(app, "scrub", "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    scrub = json.loads(proc.stdout)
    assert [d["digest"] for d in scrub["damaged"]] == [damaged]
    assert scrub["damaged"][0]["quarantined"].startswith(f"s3://{bucket}/site/quarantine/")
    assert deleted in scrub["missing"]
    assert damaged not in blob_keys(ceph_rgw, bucket), "a damaged object is moved aside, never served"
    assert requests.get(f"{app.url}/v2/{repo}/blobs/{damaged}", auth=app.admin, timeout=30).status_code == 404


def test_backup_and_restore_refuse_with_an_object_store(s3app: tuple[Appliance, str], tmp_path: Path) -> None:
    app, _ = s3app
    proc = cargohold(app, "backup", str(tmp_path / "backup"), check=False)
    assert proc.returncode == 1 and "object store's own versioning or replication" in proc.stderr, proc.stderr
    assert not (tmp_path / "backup").exists()


def test_readyz_names_the_store_when_its_bucket_is_gone(ceph_rgw: S3Engine, tmp_path: Path) -> None:
    bucket = ceph_rgw.new_bucket()
    app = start_appliance(tmp_path / "data", env=s3_env(ceph_rgw, bucket))
    try:
        assert requests.get(f"{app.url}/readyz", timeout=30).status_code == 200
        ceph_rgw.client().delete_bucket(Bucket=bucket)
        resp = requests.get(f"{app.url}/readyz", timeout=60)
        assert resp.status_code == 503
        body = resp.json()
        assert body["failing"] == ["blobstore"]
        error = next(c["error"] for c in body["checks"] if c["name"] == "blobstore")
        assert bucket in error and "does not exist" in error
    finally:
        app.stop()


@pytest.mark.parametrize("problem", ["missing-bucket", "bad-url", "no-credentials", "unreachable", "wrong-key"])
def test_serve_refuses_to_start_naming_the_problem(ceph_rgw: S3Engine, tmp_path: Path, problem: str) -> None:
    env = {**os.environ, **s3_env(ceph_rgw, "never-created-bucket"), "CARGOHOLD_ADMIN_PASSWORD": "test-admin-Secret-1"}
    expected = "bucket 'never-created-bucket' does not exist"
    if problem == "bad-url":
        env["CARGOHOLD_STORAGE_URL"] = "s3://bkt/x?endpont=http://127.0.0.1:1"
        expected = "unknown parameter(s) endpont"
    elif problem == "no-credentials":
        env.pop("AWS_ACCESS_KEY_ID")
        env.pop("AWS_SECRET_ACCESS_KEY")
        expected = "no credentials for the object store"
    elif problem == "unreachable":
        env["CARGOHOLD_STORAGE_URL"] = f"s3://bucket?endpoint=http://127.0.0.1:{free_port()}"
        expected = "the object store cannot be reached"
    elif problem == "wrong-key":
        env["CARGOHOLD_STORAGE_URL"] = ceph_rgw.storage_url(ceph_rgw.new_bucket())
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        expected = "is denied (check the credentials)"
    proc = subprocess.run([sys.executable, "-m", "web.cli", "serve", "--data-dir", str(tmp_path / "data"),
                           "--bind", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert ceph_rgw.secret_key not in proc.stderr + proc.stdout and "not-the-secret" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("Data directory:")]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and errors[0].startswith("Error: "), proc.stderr
    assert not (tmp_path / "data" / "cargohold.db").exists(), "a refused start creates no database"


def test_credentials_file_readable_by_others_is_refused(ceph_rgw: S3Engine, tmp_path: Path) -> None:
    creds = tmp_path / "s3.ini"
    creds.write_text(f"[default]\naws_access_key_id = {ceph_rgw.access_key}\n"
                     f"aws_secret_access_key = {ceph_rgw.secret_key}\n")
    creds.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"CARGOHOLD_STORAGE_URL": ceph_rgw.storage_url(ceph_rgw.new_bucket()),
                "CARGOHOLD_STORAGE_CREDENTIALS_FILE": str(creds), "CARGOHOLD_ADMIN_PASSWORD": "test-admin-Secret-1"})
    cmd = [sys.executable, "-m", "web.cli", "serve", "--data-dir", str(tmp_path / "data"),
           "--bind", f"127.0.0.1:{free_port()}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert proc.returncode != 0 and "readable by group or others" in proc.stderr, proc.stderr
    creds.chmod(0o600)
    storage = ("CARGOHOLD_STORAGE_URL", "CARGOHOLD_STORAGE_CREDENTIALS_FILE")
    app = start_appliance(tmp_path / "data2", env={k: env[k] for k in storage})
    try:
        assert requests.get(f"{app.url}/readyz", timeout=30).status_code == 200
    finally:
        app.stop()


def test_redirect_mode_answers_307_to_a_presigned_url_that_skopeo_follows(
        ceph_rgw: S3Engine, source: SourceImages, tmp_path: Path) -> None:
    _require_skopeo()
    bucket = ceph_rgw.new_bucket()
    env = s3_env(ceph_rgw, bucket, CARGOHOLD_STORAGE_REDIRECT="true", CARGOHOLD_STORAGE_REDIRECT_SECONDS="120")
    app = start_appliance(tmp_path / "data", env=env)
    try:
        repo = "spectro-images/s3/redirect"
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", app.creds, f"oci:{source.path}:multi:1",
               f"docker://{app.host}/{repo}:1")
        layer = json.loads(source.layout.read(source.image))["layers"][0]["digest"]
        resp = requests.get(f"{app.url}/v2/{repo}/blobs/{layer}", auth=app.admin, allow_redirects=False, timeout=30)
        assert resp.status_code == 307
        location = resp.headers["Location"]
        assert location.startswith(f"{ceph_rgw.endpoint}/{bucket}/site/blobs/sha256/")
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=120" in location
        assert hashlib.sha256(requests.get(location, timeout=30).content).hexdigest() == layer.split(":")[1]
        out = tmp_path / "back"
        skopeo("copy", "--src-tls-verify=false", f"docker://{app.host}/{repo}:1", f"oci:{out}:back")
        assert layout_closure(out, source.image.digest) == layout_closure(source.path, source.image.digest)
    finally:
        app.stop()


def test_without_the_front_the_app_streams_objects_with_range(ceph_rgw: S3Engine, tmp_path: Path) -> None:
    app = start_appliance(tmp_path / "data", "--front", "none", env=s3_env(ceph_rgw, ceph_rgw.new_bucket()))
    try:
        repo = "spectro-images/s3/nofront"
        data = os.urandom(3 << 20)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert requests.post(f"{app.url}/v2/{repo}/blobs/uploads/?digest={digest}", data=data, auth=app.admin,
                             timeout=60).status_code == 201
        whole = requests.get(f"{app.url}/v2/{repo}/blobs/{digest}", auth=app.admin, timeout=60)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["Content-Length"] == str(len(data))
        part = requests.get(f"{app.url}/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=-100"},
                            auth=app.admin, timeout=30)
        assert part.status_code == 206 and part.content == data[-100:]
        assert part.headers["Content-Range"] == f"bytes {len(data) - 100}-{len(data) - 1}/{len(data)}"
    finally:
        app.stop()


def test_containerd_pulls_an_image_whose_blobs_come_from_the_store(
        s3app: tuple[Appliance, str], containerd: Containerd, tmp_path: Path) -> None:
    _require_skopeo()
    app, _ = s3app
    layout = OciLayout(tmp_path / "fresh")  # content no earlier test put into the shared containerd
    image = layout.add_image([150_000, 20_000], seed=uuid.uuid4().int % 1_000_000, ref="fresh:1")
    name = f"spectro-images/s3/ctr{uuid.uuid4().hex[:8]}"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", app.creds, f"oci:{layout.root}:fresh:1",
           f"docker://{app.host}/{name}:1")
    ref = f"{app.host}/{name}:1"
    containerd.ctr("images", "pull", "--plain-http", ref)
    assert containerd.image_digest(ref) == image.digest
    closure = layout_closure(layout.root, image.digest)
    assert closure <= set(containerd.ctr("content", "ls", "--quiet").stdout.split())
    sent = {r["path"].rsplit("/", 1)[1] for r in request_lines(app.log())
            if r["method"] == "GET" and r["path"].startswith(f"/v2/{name}/blobs/") and r.get("sent_by") == "front"}
    assert sent == closure - {image.digest}, "every layer and the config came through the front from the store"


def _peak_rss_kib(pids: list[int]) -> int:
    peak = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak


@pytest.mark.slow
def test_a_large_blob_streams_in_and_out_with_flat_memory(s3app: tuple[Appliance, str], ceph_rgw: S3Engine) -> None:
    """160 MiB up (one monolithic POST, chunked) and down: no worker's peak memory grows by more than a few parts."""
    app, bucket = s3app
    size, block = 160 << 20, os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(block * (size // len(block))).hexdigest()
    workers = app.worker_pids()
    before = _peak_rss_kib(workers)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    repo = "spectro-images/s3/large"
    put = requests.post(f"{app.url}/v2/{repo}/blobs/uploads/?digest={digest}", data=body(), auth=app.admin,
                        timeout=600)
    assert put.status_code == 201, put.text
    assert ceph_rgw.client().head_object(Bucket=bucket, Key=key_of(digest))["ContentLength"] == size
    h = hashlib.sha256()
    with requests.get(f"{app.url}/v2/{repo}/blobs/{digest}", auth=app.admin, stream=True, timeout=600) as got:
        assert got.status_code == 200
        for chunk in got.iter_content(1 << 20):
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == digest
    grown = _peak_rss_kib(workers) - before
    assert grown < 48 << 10, f"a worker's peak memory grew by {grown} KiB for a {size >> 20} MiB blob"


def test_a_bundled_file_downloads_from_the_store_and_a_definition_checks_present(
        s3app: tuple[Appliance, str], ceph_rgw: S3Engine, tmp_path: Path) -> None:
    """Files (bundles/files_api.py) go out through the front from the bucket; a readiness check finds every blob."""
    from tests.bundles.test_files_charts import _build, _chart, _definition, sha256

    app, bucket = s3app
    data = os.urandom(2_000_000)
    iso = tmp_path / "installer.iso"
    iso.write_bytes(data)
    chart = _chart(tmp_path / "edge-app-0.3.1.tgz", "edge-app", "0.3.1+build1")
    name = f"s3-files-{uuid.uuid4().hex[:6]}"
    definition = _definition(tmp_path, name, sha256(data), len(data))
    bundle = _build(tmp_path, "--file", f"{iso}=installer.iso:1.0", "--chart", chart,
                    "--cluster-definition", definition)
    cargohold(app, "keys", "add", str(tmp_path / "signing.pub.pem"), check=False)
    cargohold(app, "bundle", "import", str(bundle), "--json", "--quiet")
    assert sha256(data) in blob_keys(ceph_rgw, bucket)

    api = f"{app.url}/api/cargohold/v1/files"
    whole = requests.get(f"{api}/installer.iso:1.0", timeout=30)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Content-Disposition"] == 'attachment; filename="installer.iso"'
    assert whole.headers["Digest"].startswith("sha-256=") and whole.headers["Docker-Content-Digest"] == sha256(data)
    assert whole.headers["Cache-Control"] == "private, max-age=0, must-revalidate"
    part = requests.get(f"{api}/installer.iso:1.0", headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert part.status_code == 206 and part.content == data[1000:2000]

    check = json.loads(cargohold(app, "clusterdef", "check", name, "--json", check=False).stdout)
    assert {f["finding"] for f in check["findings"]} == {"present"}, check["findings"]
