"""Two stateless replicas behind a round-robin load balancer (tests/replicas.py), on real engines.

Both replicas are real `cargohold serve` processes with their own data
directories, sharing a real PostgreSQL 15 database (tests/pgengine.py) and a
bucket of a real Ceph RADOS Gateway (tests/s3engines.py); the balancer is
Debian's nginx, round robin per request, so consecutive requests alternate.
Every scenario must work whichever replica a request reaches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.appliance import ADMIN_PASSWORD, Appliance
from tests.pgengine import PostgresServer
from tests.registry.harborapi import Harbor
from tests.replicas import Site, requests_served, start_site
from tests.s3engines import S3Engine

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
        assert requests_served(replica, "PATCH", upload) >= 1, f"{replica.host} served no PATCH of {upload}"
    assert sum(requests_served(r, "PUT", upload) for r in site.replicas) == 1
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
