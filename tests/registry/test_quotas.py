"""Project storage quotas, enforced: Harbor's /quotas API, refusals of pushes past the limit, usage as Harbor counts.

Driven against the real appliance: requests for exact statuses and bodies,
harborapi's HarborAsyncClient as an independent client (its pydantic models
are Harbor's swagger), skopeo for a real push refused by the quota, and the
``cargohold gc`` command for usage after garbage collection. Each test uses
its own project. A refusal is Harbor's: OCI code DENIED, HTTP 403, "Quota
exceeded when processing the request of adding ...", naming the project;
nothing is recorded (no repository, no usage).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from harborapi import HarborAsyncClient
from harborapi.models import Quota, QuotaUpdateReq, ResourceList

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.registry.conftest import SourceImages, require, run
from tests.registry.harborapi import Harbor
from tests.registry.v2client import OCI_MANIFEST, V2, canonical, descriptor, sha256


def _client(appliance: Appliance) -> HarborAsyncClient:
    return HarborAsyncClient(url=f"{appliance.url}/api/v2.0", username=appliance.admin[0],
                             secret=appliance.admin[1])


def _project(admin: Harbor, limit: int) -> tuple[str, int]:
    name = f"q{uuid.uuid4().hex[:10]}"
    r = admin("POST", "/projects", json={"project_name": name, "storage_limit": limit})
    assert r.status_code == 201, r.text
    return name, int(r.headers["Location"].rsplit("/", 1)[1])


def _quota(admin: Harbor, project_id: int) -> dict[str, Any]:
    r = admin("GET", f"/quotas/{project_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _used(admin: Harbor, project_id: int) -> int:
    return int(_quota(admin, project_id)["used"]["storage"])


def _denied(r: requests.Response, project: str) -> str:
    assert r.status_code == 403, (r.status_code, r.text)
    error = r.json()["errors"][0]
    assert error["code"] == "DENIED", error
    assert error["message"].startswith("Quota exceeded when processing the request of adding"), error
    assert f"project {project}" in error["message"], error
    return str(error["message"])


@pytest.fixture
def admin(appliance: Appliance) -> Harbor:
    return Harbor(appliance, appliance.admin)


def test_quota_api_shapes_and_update(appliance: Appliance, admin: Harbor) -> None:
    name, pid = _project(admin, 4096)
    body = _quota(admin, pid)
    assert body["id"] == pid
    assert body["ref"] == {"id": pid, "name": name, "owner_name": "admin"}
    assert body["hard"] == {"storage": 4096} and body["used"] == {"storage": 0}
    listed = admin("GET", "/quotas", params={"reference": "project", "reference_id": str(pid)})
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "1", listed.text
    assert listed.json() == [body]

    async def through_harborapi() -> tuple[list[Quota], Quota]:
        client = _client(appliance)
        await client.update_quota(pid, QuotaUpdateReq(hard=ResourceList({"storage": 1 << 20})))
        return await client.get_quotas(reference="project", reference_id=str(pid)), await client.get_quota(pid)

    quotas, quota = asyncio.run(through_harborapi())
    assert [q.id for q in quotas] == [pid] and quota.hard is not None and quota.hard.root == {"storage": 1 << 20}
    # The project API and the quota API set the same limit, both ways.
    summary = admin("GET", f"/projects/{pid}/summary").json()
    assert summary["quota"]["hard"] == {"storage": 1 << 20}
    assert admin("PUT", f"/projects/{pid}", json={"storage_limit": 2048}).status_code == 200
    assert _quota(admin, pid)["hard"] == {"storage": 2048}
    assert admin("PUT", f"/quotas/{pid}", json={"hard": {"storage": -1}}).status_code == 200
    assert admin("GET", f"/projects/{pid}/summary").json()["quota"]["hard"] == {"storage": -1}


@pytest.mark.parametrize("body, fragment", [
    ({"hard": {"storage": -2}}, "-1 (unlimited)"),
    ({"hard": {"storage": "10"}}, "-1 (unlimited)"),
    ({"hard": {"count": 10}}, "storage is the only"),
    ({"hard": 5}, "storage is the only"),
    ({}, "storage is the only"),
])
def test_bad_quota_updates_are_refused_and_change_nothing(admin: Harbor, body: dict[str, Any],
                                                          fragment: str) -> None:
    _, pid = _project(admin, 1000)
    r = admin("PUT", f"/quotas/{pid}", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["errors"][0]["message"]
    assert _quota(admin, pid)["hard"] == {"storage": 1000}


def test_quotas_are_for_system_administrators(appliance: Appliance, admin: Harbor) -> None:
    _, pid = _project(admin, 1000)
    assert Harbor(appliance, None)("GET", "/quotas").status_code == 401
    user = f"u{uuid.uuid4().hex[:8]}"
    assert admin("POST", "/users", json={"username": user, "password": "Quota-user-Passw0rd"}).status_code == 201
    as_user = Harbor(appliance, (user, "Quota-user-Passw0rd"))
    assert as_user("GET", f"/quotas/{pid}").status_code == 403
    assert as_user("PUT", f"/quotas/{pid}", json={"hard": {"storage": -1}}).status_code == 403
    assert admin("GET", "/quotas/999999999").status_code == 404


def test_blob_push_past_the_limit_is_refused_and_nothing_is_written(appliance: Appliance, admin: Harbor) -> None:
    name, pid = _project(admin, 1000)
    v2 = V2(appliance)
    repo = f"{name}/app"
    data = os.urandom(1500)
    # Chunked upload: refused at the final PUT, before the blob enters the store.
    location = v2.start_upload(repo)
    r = v2.request("PUT", location, params={"digest": sha256(data)}, data=data)
    message = _denied(r, name)
    assert "1.5 KiB" in message and "1000 B" in message, message
    assert v2.request("HEAD", f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    assert not (appliance.data_dir / "blobs" / "sha256" / sha256(data)[7:9] / sha256(data)[7:]).exists()
    # The session is gone: no later chunk can fix it.
    assert v2.request("GET", location).status_code == 404
    # Monolithic upload: refused before a byte is stored.
    r = v2.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, data=data)
    _denied(r, name)
    assert _used(admin, pid) == 0
    assert admin("GET", f"/projects/{name}/repositories").json() == []
    # Within the limit: accepted and counted.
    small = os.urandom(600)
    v2.push_blob(repo, small)
    assert _used(admin, pid) == 600


def test_shared_blobs_count_once_per_project_and_in_each_project(appliance: Appliance, admin: Harbor) -> None:
    one, one_id = _project(admin, -1)
    two, two_id = _project(admin, -1)
    v2 = V2(appliance)
    layer = os.urandom(5000)
    for repo in (f"{one}/a", f"{one}/b", f"{two}/c"):
        v2.push_blob(repo, layer)
    assert _used(admin, one_id) == 5000  # two repositories, one blob: counted once
    assert _used(admin, two_id) == 5000  # another project holds it too: counted there as well
    for sort in ("-used.storage", "id"):  # every project's usage at once, or only the page's
        listed = admin("GET", "/quotas", params={"sort": sort, "page_size": 100}).json()
        used = {q["ref"]["name"]: q["used"]["storage"] for q in listed}
        assert used[one] == used[two] == 5000, sort
        if sort == "-used.storage":
            assert [q["used"]["storage"] for q in listed] == sorted(used.values(), reverse=True)
    assert admin("GET", "/quotas", params={"sort": "colour"}).status_code == 400
    # A blob the project already holds costs nothing, even over a limit lowered below the usage.
    assert admin("PUT", f"/quotas/{one_id}", json={"hard": {"storage": 100}}).status_code == 200
    v2.push_blob(f"{one}/d", layer)
    r = v2.request("POST", f"/v2/{one}/blobs/uploads/", params={"mount": sha256(layer), "from": f"{two}/c"})
    assert r.status_code == 201, r.text
    _denied(v2.request("POST", f"/v2/{one}/blobs/uploads/", params={"digest": sha256(b"new")}, data=b"new"), one)
    assert _used(admin, one_id) == 5000


def test_mount_past_the_limit_is_refused(appliance: Appliance, admin: Harbor) -> None:
    source, _ = _project(admin, -1)
    target, target_id = _project(admin, 100)
    v2 = V2(appliance)
    layer = os.urandom(3000)
    v2.push_blob(f"{source}/a", layer)
    r = v2.request("POST", f"/v2/{target}/blobs/uploads/", params={"mount": sha256(layer), "from": f"{source}/a"})
    _denied(r, target)
    assert _used(admin, target_id) == 0


def _image(v2: V2, repo: str, tag: str, layer: bytes) -> tuple[str, int]:
    """Push config + layer + manifest; returns the manifest digest and the bytes the image adds."""
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                        "image": f"{repo}:{tag}"})
    v2.push_blob(repo, config)
    v2.push_blob(repo, layer)
    body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": descriptor("application/vnd.oci.image.config.v1+json", config),
                      "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)]})
    v2.put_manifest(repo, tag, body, OCI_MANIFEST)
    return sha256(body), len(config) + len(body)


def test_usage_through_deletes_of_tags_artifacts_and_repositories_and_gc(appliance: Appliance,
                                                                          admin: Harbor) -> None:
    name, pid = _project(admin, -1)
    v2 = V2(appliance)
    shared = os.urandom(20_000)
    own = os.urandom(7_000)
    first, first_extra = _image(v2, f"{name}/a", "1", shared)
    second, second_extra = _image(v2, f"{name}/a", "2", own)
    third, third_extra = _image(v2, f"{name}/b", "1", shared)
    total = len(shared) + len(own) + first_extra + second_extra + third_extra
    assert _used(admin, pid) == total
    summary = admin("GET", f"/projects/{name}/summary").json()["quota"]
    assert summary == {"hard": {"storage": -1}, "used": {"storage": total}}
    # Deleting an artifact frees what only it held in its repository at once (Harbor's blob associations).
    assert admin("DELETE", f"/projects/{name}/repositories/a/artifacts/{second}").status_code == 200
    assert _used(admin, pid) == total - len(own) - second_extra
    # The shared layer stays: /b still holds it.
    assert admin("DELETE", f"/projects/{name}/repositories/a/artifacts/{first}").status_code == 200
    assert _used(admin, pid) == len(shared) + third_extra
    # A deleted tag leaves its artifact, and its usage, until garbage collection removes the untagged artifact.
    assert admin("DELETE", f"/projects/{name}/repositories/b/artifacts/{third}/tags/1").status_code == 200
    assert _used(admin, pid) == len(shared) + third_extra
    gc = json.loads(cargohold("gc", "--grace", "0", "--json", "--data-dir", appliance.data_dir).stdout)
    assert any(m["digest"] == third for m in gc["manifestsRemoved"]), gc
    assert _used(admin, pid) == 0
    # Deleting a repository frees everything it held.
    _image(v2, f"{name}/c", "1", own)
    assert _used(admin, pid) > len(own)
    assert admin("DELETE", f"/projects/{name}/repositories/c").status_code == 200
    assert _used(admin, pid) == 0


def test_manifest_push_past_the_limit_is_refused(appliance: Appliance, admin: Harbor) -> None:
    name, pid = _project(admin, -1)
    v2 = V2(appliance)
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    layer = os.urandom(900)
    v2.push_blob(f"{name}/app", config)
    v2.push_blob(f"{name}/app", layer)
    used = _used(admin, pid)
    assert admin("PUT", f"/quotas/{pid}", json={"hard": {"storage": used + 10}}).status_code == 200
    body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": descriptor("application/vnd.oci.image.config.v1+json", config),
                      "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)]})
    r = v2.request("PUT", f"/v2/{name}/app/manifests/1", data=body, headers={"Content-Type": OCI_MANIFEST})
    _denied(r, name)
    assert v2.request("GET", f"/v2/{name}/app/tags/list").json()["tags"] == []
    assert _used(admin, pid) == used


def _skopeo(appliance: Appliance, source: SourceImages, ref: str, dest: str, tmp_path: Path,
            check: bool = True) -> Any:
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    return run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", appliance.creds,
               f"oci:{source.path}:{ref}", f"docker://{appliance.host}/{dest}", env=env, check=check)


def test_skopeo_push_into_a_small_quota_fails_with_the_quota_message(appliance: Appliance, admin: Harbor,
                                                                     source: SourceImages, tmp_path: Path) -> None:
    require("skopeo")
    name, pid = _project(admin, 1024)
    proc = _skopeo(appliance, source, "multi:1", f"{name}/app:1", tmp_path, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "Quota exceeded when processing the request of adding" in proc.stderr, proc.stderr
    assert f"project {name}" in proc.stderr, proc.stderr
    assert _used(admin, pid) == 0
    assert admin("GET", f"/projects/{name}/repositories").json() == []
    assert admin("GET", f"/projects/{name}/repositories/app").status_code == 404
    # Within the quota the same push succeeds, and the usage is what the image holds.
    assert admin("PUT", f"/quotas/{pid}", json={"hard": {"storage": 10 << 20}}).status_code == 200
    _skopeo(appliance, source, "multi:1", f"{name}/app:1", tmp_path)
    image = json.loads((source.path / "blobs" / "sha256" / source.image.digest.split(":", 1)[1]).read_bytes())
    expected = source.image.size + image["config"]["size"] + sum(layer["size"] for layer in image["layers"])
    assert _used(admin, pid) == expected
    # Deleting it frees the usage again.
    assert admin("DELETE", f"/projects/{name}/repositories/app").status_code == 200
    assert _used(admin, pid) == 0


def test_concurrent_pushes_never_pass_the_limit_together(appliance: Appliance, admin: Harbor) -> None:
    from concurrent.futures import ThreadPoolExecutor

    name, pid = _project(admin, 1000)
    v2 = V2(appliance)
    blobs = [os.urandom(400) for _ in range(8)]  # each fits alone; at most two fit together

    def push(data: bytes) -> int:
        location = v2.start_upload(f"{name}/app")
        return v2.request("PUT", location, params={"digest": sha256(data)}, data=data).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(push, blobs))
    assert sorted(statuses) == [201, 201] + [403] * 6, statuses
    assert _used(admin, pid) == 800
