"""Two stateless replicas behind a round-robin load balancer (tests/replicas.py), on real engines.

Both replicas are real `cargohold serve` processes with their own data
directories, sharing a real PostgreSQL 15 database (tests/pgengine.py) and a
bucket of a real Ceph RADOS Gateway (tests/s3engines.py); the balancer is
Debian's nginx, round robin per request, so consecutive requests alternate.
Every scenario must work whichever replica a request reaches.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tusclient import client as tus_client

from bundles import keys
from tests.appliance import ADMIN_PASSWORD, Appliance, start_appliance
from tests.bundles import craft
from tests.bundles.conftest import REPO_ROOT, assert_pulled_identical, source_digest, unique_layout
from tests.pgengine import PostgresServer
from tests.registry.harborapi import Harbor
from tests.replicas import Site, replica_env, requests_served, start_site
from tests.s3engines import S3Engine
from tests.web.test_ui_tus import Sha256Uploader
from tests.web.uiutil import build_bundle, detached_signature

TIMEOUT = 60
AUTH = ("admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def site(postgres: PostgresServer, ceph_rgw: S3Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = start_site(tmp_path_factory.mktemp("site"), postgres, ceph_rgw)
    yield s
    s.stop()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _req(method: str, url: str, **kw: object) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    kw.setdefault("auth", AUTH)
    kw.setdefault("allow_redirects", False)
    return requests.request(method, url, **kw)  # type: ignore[arg-type]


def _chunked_push(base: str, repo: str, data: bytes, chunk: int) -> tuple[str, str]:
    """POST, one PATCH per `chunk` bytes, PUT: each a request of its own (the balancer alternates them)."""
    r = _req("POST", f"{base}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    upload = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    for start in range(0, len(data), chunk):
        part = data[start:start + chunk]
        r = _req("PATCH", f"{base}{location}", data=part,
                 headers={"Content-Type": "application/octet-stream",
                          "Content-Range": f"{start}-{start + len(part) - 1}"})
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
    digest = _digest(data)
    r = _req("PUT", f"{base}{location}", params={"digest": digest})
    assert r.status_code == 201, r.text
    return digest, upload


def _push_manifest(base: str, repo: str, tag: str, layers: list[bytes]) -> str:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    r = _req("POST", f"{base}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = _req("PUT", f"{base}{r.headers['Location']}", params={"digest": _digest(config)}, data=config)
    assert r.status_code == 201, r.text
    import json

    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                      "size": len(config)},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(layer),
                       "size": len(layer)} for layer in layers]}
    body = json.dumps(doc).encode()
    r = _req("PUT", f"{base}/v2/{repo}/manifests/{tag}", data=body,
             headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 201, r.text
    return _digest(body)


def test_a_chunked_upload_spread_over_both_replicas_is_one_blob_each_replica_serves(site: Site) -> None:
    repo = f"spectro-images/replicas/chunks{uuid.uuid4().hex[:8]}"
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest, upload = _chunked_push(site.url, repo, data, 512 * 1024)
    # The balancer alternated: each replica's own request log shows chunks of this very upload.
    for replica in site.replicas:
        assert requests_served(replica, "PATCH", upload, at_least=1) >= 1, f"{replica.host} served no PATCH of {upload}"
    assert requests_served(site.replicas[0], "PUT", upload, at_least=1, wait=3) + \
        requests_served(site.replicas[1], "PUT", upload, at_least=1, wait=3) == 1
    for replica in site.replicas:
        r = requests.get(f"{replica.url}/v2/{repo}/blobs/{digest}", auth=AUTH, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.content == data
    # Nothing of the upload stays behind on either data volume, nor in the bucket's upload area.
    for replica in site.replicas:
        assert not [p for p in (replica.data_dir / "uploads").rglob("*") if p.is_file()]


def test_a_token_from_one_replica_works_on_the_other_and_a_revoked_one_on_neither(site: Site) -> None:
    a, b = site.replicas
    admin = Harbor(a, a.admin)
    project = admin.create_project(public=False)
    robot = admin.project_robot(project, ("pull", "push"))
    repository = f"{project}/img"
    r = requests.get(f"{a.url}/service/token", params={"service": "harbor-registry",
                     "scope": f"repository:{repository}:pull,push"}, auth=robot.auth, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    bearer = {"Authorization": f"Bearer {r.json()['token']}"}
    for replica in (a, b):
        got = requests.post(f"{replica.url}/v2/{repository}/blobs/uploads/", headers=bearer, timeout=TIMEOUT)
        assert got.status_code == 202, f"{replica.host}: {got.status_code} {got.text}"
    # Disabled through replica b's Harbor API: the token is refused on both at once.
    shown = Harbor(b, b.admin)("GET", f"/robots/{robot.id}").json()
    assert Harbor(b, b.admin)("PUT", f"/robots/{robot.id}", json={**shown, "disable": True}).status_code == 200
    for replica in (a, b):
        got = requests.post(f"{replica.url}/v2/{repository}/blobs/uploads/", headers=bearer, timeout=TIMEOUT)
        assert got.status_code == 401, f"{replica.host}: {got.status_code} {got.text}"
        assert "disabled" in got.json()["errors"][0]["message"]


def test_a_ui_login_on_one_replica_holds_on_the_other(site: Site) -> None:
    a, b = site.replicas
    s = requests.Session()
    page = s.get(f"{a.url}/ui/login", timeout=TIMEOUT)
    assert page.status_code == 200
    import re

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, page.text[:500]
    r = s.post(f"{a.url}/ui/login", data={"csrf_token": csrf.group(1), "username": "admin",
                                         "password": ADMIN_PASSWORD}, allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code in (302, 303), r.text[:500]
    # The same cookie on the other replica (its own port: the cookie jar is per host name, both are 127.0.0.1).
    r = s.get(f"{b.url}/ui/", allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.headers.get("Location"))


def _cli(app: Appliance, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "web.cli", *args, "--data-dir", str(app.data_dir)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **app.env}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cargohold {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _skopeo(*args: str) -> None:
    subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True, timeout=300)


def test_skopeo_push_through_the_balancer_pulls_byte_identical_from_each_replica(site: Site, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False, layer_sizes=(2_000_000, 30_000))
    digest = source_digest(layout.root, refs[0])
    repo = f"spectro-images/replicas/skopeo{uuid.uuid4().hex[:8]}"
    _skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"admin:{ADMIN_PASSWORD}",
            f"oci:{layout.root}:{refs[0]}", f"docker://{site.host}/{repo}:1")
    for n, replica in enumerate(site.replicas):
        pulled = tmp_path / f"pulled{n}"
        _skopeo("copy", "--src-tls-verify=false", "--src-creds", f"admin:{ADMIN_PASSWORD}",
                f"docker://{replica.host}/{repo}:1", f"oci:{pulled}:p")
        assert assert_pulled_identical(pulled, layout.root, digest) >= 3


def test_a_bundle_imported_on_one_replica_is_pulled_from_the_other(site: Site, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    a, b = site.replicas
    key = keys.generate("ecdsa-p256")
    pub = tmp_path / "k.pub.pem"
    pub.write_bytes(keys.public_pem(key))
    _cli(b, "keys", "add", str(pub), "--description", "trusted on b")  # trusted through replica b ...
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, key))
    _cli(a, "bundle", "import", str(bundle))  # ... verifies the import on replica a
    pulled = tmp_path / "pulled"
    _skopeo("copy", "--src-tls-verify=false", f"docker://{b.host}/spectro-images/{refs[0]}", f"oci:{pulled}:p")
    assert assert_pulled_identical(pulled, layout.root, source_digest(layout.root, refs[0])) >= 3


def _status_offset(base: str, location: str) -> int:
    r = _req("GET", f"{base}{location}")
    assert r.status_code == 204, r.text
    return int(r.headers["Range"].split("-")[1]) + 1


def test_a_replica_killed_mid_chunk_leaves_an_upload_the_others_finish(site: Site, tmp_path: Path) -> None:
    """SIGKILL of a replica's whole process tree while it receives a chunk; the client resumes through the balancer.

    The victim is a third replica on the site's engines (the balancer's two stay up for the other tests).
    """
    victim = start_appliance(tmp_path / "victim", env=site.env)
    try:
        repo = f"spectro-images/replicas/kill{uuid.uuid4().hex[:8]}"
        data = os.urandom(16 * 1024 * 1024)
        chunk = 6 * 1024 * 1024
        r = _req("POST", f"{victim.url}/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        r = _req("PATCH", f"{victim.url}{location}", data=data[:chunk],
                 headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{chunk - 1}"})
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        # The second chunk goes to the victim; half-way, it dies (every process of it, at once).
        conn = http.client.HTTPConnection(victim.host, timeout=TIMEOUT)
        conn.putrequest("PATCH", location)
        conn.putheader("Authorization", "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode())
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Range", f"{chunk}-{2 * chunk - 1}")
        conn.putheader("Content-Length", str(chunk))
        conn.endheaders()
        conn.send(data[chunk:chunk + chunk // 2])
        pids = [victim.process.pid, *victim.children(), *victim.front_pids()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        victim.process.wait(timeout=20)
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn.send(data[chunk + chunk // 2:2 * chunk])
            conn.getresponse()
        conn.close()
        # The client's retry, through the balancer: ask where the upload stands, send the rest, finish.
        offset = _status_offset(site.url, location)
        assert offset == chunk, "only the acknowledged chunk counts"
        r = _req("PATCH", f"{site.url}{location}", data=data[offset:],
                 headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{len(data) - 1}"})
        assert r.status_code == 202, r.text
        r = _req("PUT", f"{site.url}{r.headers['Location']}", params={"digest": _digest(data)})
        assert r.status_code == 201, r.text
        for replica in site.replicas:
            got = requests.get(f"{replica.url}/v2/{repo}/blobs/{_digest(data)}", auth=AUTH, timeout=TIMEOUT)
            assert got.status_code == 200 and got.content == data
    finally:
        victim.stop()


def test_gc_on_one_replica_during_pushes_through_both_loses_nothing(site: Site) -> None:
    pushed: dict[str, tuple[str, bytes]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    repo = f"spectro-images/replicas/gc{uuid.uuid4().hex[:8]}"

    def push_loop() -> None:
        n = 0
        try:
            while not stop.is_set() or n < 4:
                layer = os.urandom(300_000 + n)
                digest, _ = _chunked_push(site.url, repo, layer, 100_000)
                assert digest == _digest(layer)
                tag = f"t{n}"
                _push_manifest(site.url, repo, tag, [layer])
                pushed[tag] = (digest, layer)
                n += 1
        except BaseException as exc:
            errors.append(exc)

    pusher = threading.Thread(target=push_loop)
    pusher.start()
    try:
        for replica in site.replicas:  # a collection from each replica while the pushes go on
            _cli(replica, "gc", "--grace", "30s", "--ignore-cluster", "--quiet")
    finally:
        stop.set()
        pusher.join(timeout=300)
    assert not errors, errors
    assert len(pushed) >= 4
    for tag, (digest, layer) in pushed.items():
        for replica in site.replicas:
            m = requests.get(f"{replica.url}/v2/{repo}/manifests/{tag}", auth=AUTH, timeout=TIMEOUT,
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            assert m.status_code == 200, (tag, replica.host, m.text)
            got = requests.get(f"{replica.url}/v2/{repo}/blobs/{digest}", auth=AUTH, timeout=TIMEOUT)
            assert got.status_code == 200 and got.content == layer, (tag, replica.host)


def test_a_tus_bundle_upload_with_chunks_on_both_replicas_imports_and_pulls_everywhere(
        site: Site, tmp_path: Path, key_pair: tuple[Path, Path]) -> None:
    """tuspy through the balancer: the signature and the bundle's chunks alternate between the replicas."""
    private, public = key_pair
    a, b = site.replicas
    _cli(a, "keys", "add", str(public), "--description", "tus", check=False)  # may be trusted already
    bundle, digests = build_bundle(tmp_path, private, "tusreplicas", "1", {"docker.io/cargotest/tusrep:1": 1_500_000},
                                   seed=202)
    signature = detached_signature(bundle, private)
    headers = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}
    client = tus_client.TusClient(f"{site.url}/api/v1/uploads", headers=headers)
    sig = Sha256Uploader(str(signature), client=client, metadata={"filename": signature.name, "kind": "signature"},
                         upload_checksum=True)
    sig.upload()
    assert sig.url is not None
    up = Sha256Uploader(str(bundle), client=client, chunk_size=256 << 10, upload_checksum=True,
                        metadata={"filename": bundle.name, "kind": "bundle", "signature": sig.url.rsplit("/", 1)[1]})
    up.upload()
    assert up.url is not None
    upload_id = up.url.rsplit("/", 1)[1]
    for replica in (a, b):
        assert requests_served_any(replica, "PATCH", upload_id), f"{replica.host} took no chunk of the upload"
    head = requests.head(f"{site.url}/api/v1/uploads/{upload_id}", headers={"Tus-Resumable": "1.0.0", **headers},
                         timeout=TIMEOUT)
    job_id = head.headers["Cargohold-Import-Job"]
    deadline = time.monotonic() + 120
    while True:  # the job runs on the replica that took the last chunk; either answers for it
        job = requests.get(f"{site.url}/api/v1/imports/{job_id}", auth=AUTH, timeout=TIMEOUT).json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert job["state"] == "done", job
    for replica in (a, b):
        for ref, digest in digests.items():
            repo = "spectro-images/" + ref.split(":")[0]
            r = requests.get(f"{replica.url}/v2/{repo}/manifests/{digest}", auth=AUTH, timeout=TIMEOUT,
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                                "application/vnd.oci.image.index.v1+json"})
            assert r.status_code == 200, (replica.host, r.text)
    # Nothing of the upload is left in the bucket's tus area once the bundle is imported.
    s3_keys = [k for k in _bucket_keys(site, "site/tus/") if upload_id in k]
    assert not s3_keys, s3_keys


def requests_served_any(app: Appliance, method: str, part: str) -> bool:
    return requests_served(app, method, part, at_least=1) >= 1


def _bucket_keys(site: Site, prefix: str) -> list[str]:
    import boto3

    from registry.s3store import StorageURL

    url = StorageURL.parse(site.env["CARGOHOLD_STORAGE_URL"])
    s3 = boto3.client("s3", endpoint_url=url.endpoint, region_name=url.region,
                      aws_access_key_id=site.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=site.env["AWS_SECRET_ACCESS_KEY"])
    return [str(o["Key"]) for o in s3.list_objects_v2(Bucket=site.bucket, Prefix=prefix).get("Contents", [])]


def test_expiry_of_a_stale_upload_removes_its_chunk_objects(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload expiry (what GC and the maintenance job run) takes a session's objects with its row."""
    repo = f"spectro-images/replicas/expire{uuid.uuid4().hex[:8]}"
    r = _req("POST", f"{site.url}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    upload = location.split("?")[0].rsplit("/", 1)[-1]
    r = _req("PATCH", f"{site.url}{location}", data=b"x" * 70_000,
             headers={"Content-Type": "application/octet-stream", "Content-Range": "0-69999"})
    assert r.status_code == 202, r.text
    assert [k for k in _bucket_keys(site, "site/uploads/") if upload in k], "the chunk is an object"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, site.env[name])
    from registry.model import Registry
    from registry.paths import DataPaths
    from registry.s3store import open_s3_store
    from registry.uploads import Uploads

    paths = DataPaths(site.replicas[1].data_dir, site.env["CARGOHOLD_DATABASE_URL"])
    uploads = Uploads(Registry(paths, open_s3_store(site.env["CARGOHOLD_STORAGE_URL"], None)))
    count, _ = uploads.expire(max_age=0)
    assert count >= 1
    assert not [k for k in _bucket_keys(site, "site/uploads/") if upload in k]
    r = _req("GET", f"{site.url}{location}")
    assert r.status_code == 404, r.text


def test_two_replicas_starting_together_on_a_new_database_agree_on_schema_and_keys(
        postgres: PostgresServer, ceph_rgw: S3Engine, tmp_path: Path) -> None:
    """Both migrate and create the shared secrets at once: one wins each, neither refuses, both sign alike."""
    env, _ = replica_env(postgres, ceph_rgw)
    started: dict[int, Appliance] = {}
    failures: list[BaseException] = []

    def start(n: int) -> None:
        try:
            started[n] = start_appliance(tmp_path / f"r{n}", env=env)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not failures, failures
        a, b = started[0], started[1]
        r = requests.get(f"{a.url}/service/token", params={"service": "harbor-registry",
                         "scope": "registry:catalog:*"}, auth=AUTH, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        got = requests.get(f"{b.url}/v2/_catalog", headers={"Authorization": f"Bearer {r.json()['token']}"},
                           timeout=TIMEOUT)
        assert got.status_code == 200, got.text
    finally:
        for app in started.values():
            app.stop()
