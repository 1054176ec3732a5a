"""containerd (`ctr`) against the real appliance: pulls by local path and, as a mirror, by original name.

The mirror tests configure ``docker.io`` with a hosts.toml whose upstream
``server`` is a closed loopback port, so a pull can only succeed through the
appliance; containerd then asks for ``/v2/library/<name>/...?ns=docker.io``
and the appliance serves ``spectro-images/docker.io/library/<name>``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from tests.appliance import Appliance, free_port
from tests.containerd import Containerd, ContainerdError
from tests.layouts import layout_closure
from tests.logs import request_lines
from tests.registry.conftest import SourceImages, require, run


@pytest.fixture(autouse=True)
def _clients_installed() -> None:
    require("skopeo")


def skopeo_push(appliance: Appliance, source: SourceImages, ref: str, dest: str, *extra: str) -> None:
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", appliance.creds, *extra,
        f"oci:{source.path}:{ref}", f"docker://{appliance.host}/{dest}")


def mirror_hosts_dir(tmp_path: Path, appliance: Appliance) -> Path:
    """A containerd hosts dir sending docker.io to the appliance, with no way through to a real upstream."""
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / "docker.io").mkdir(parents=True)
    (hosts_dir / "docker.io" / "hosts.toml").write_text(
        f'server = "http://127.0.0.1:{free_port()}"\n'  # closed: a fall-through would fail, not reach the internet
        f'\n[host."http://{appliance.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    return hosts_dir


def content_set(containerd: Containerd) -> set[str]:
    return set(containerd.ctr("content", "ls", "--quiet").stdout.split())


def test_pull_by_local_path(containerd: Containerd, appliance: Appliance, source: SourceImages) -> None:
    name = f"spectro-images/test/ctr{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multi:1", f"{name}:1")
    ref = f"{appliance.host}/{name}:1"
    containerd.ctr("images", "pull", "--plain-http", ref)
    assert containerd.image_digest(ref) == source.image.digest
    # containerd verified every blob against its digest on the way in; all of the image is there.
    assert layout_closure(source.path, source.image.digest) <= content_set(containerd)
    manifest = containerd.ctr("content", "get", source.image.digest).stdout
    assert manifest.encode() == source.layout.read(source.image)


def test_pull_multiarch_index_all_platforms(containerd: Containerd, appliance: Appliance,
                                            source: SourceImages) -> None:
    name = f"spectro-images/test/ctr{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multiarch:1", f"{name}:1", "--all")
    ref = f"{appliance.host}/{name}:1"
    containerd.ctr("images", "pull", "--plain-http", "--all-platforms", ref)
    assert containerd.image_digest(ref) == source.index.digest
    assert layout_closure(source.path, source.index.digest) <= content_set(containerd)


def test_pull_original_name_through_mirror(containerd: Containerd, appliance: Appliance, source: SourceImages,
                                           tmp_path: Path) -> None:
    # Content of its own: the shared containerd must not already hold the layers, or it would not fetch them.
    image = f"mirror{uuid.uuid4().hex[:10]}"
    blob = source.layout.add_image([200_000, 5_000], seed=uuid.uuid4().int % 10**9, ref=image)
    skopeo_push(appliance, source, image, f"spectro-images/docker.io/library/{image}:1")
    hosts_dir = mirror_hosts_dir(tmp_path, appliance)

    ref = f"docker.io/library/{image}:1"
    containerd.ctr("images", "pull", ref, hosts_dir=hosts_dir)

    assert containerd.image_digest(ref) == blob.digest
    assert layout_closure(source.path, blob.digest) <= content_set(containerd)
    requests_seen = [r for r in request_lines(appliance.log()) if r["path"].startswith(f"/v2/library/{image}/")]
    assert requests_seen, "the appliance saw no mirror request"
    assert all("ns=docker.io" in (r["query"] or "") for r in requests_seen), requests_seen
    manifest = json.loads(source.layout.read(blob))
    for layer in manifest["layers"]:
        assert any((r["method"], r["path"], r["query"], r["status"])
                   == ("GET", f"/v2/library/{image}/blobs/{layer['digest']}", "ns=docker.io", 200)
                   for r in requests_seen), f"layer {layer['digest']} was not served through the mirror"


def test_pull_short_name_multiarch_through_mirror(containerd: Containerd, appliance: Appliance,
                                                  source: SourceImages, tmp_path: Path) -> None:
    image = f"mirror{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multiarch:1", f"spectro-images/docker.io/library/{image}:1", "--all")
    hosts_dir = mirror_hosts_dir(tmp_path, appliance)
    ref = f"docker.io/library/{image}:1"
    containerd.ctr("images", "pull", "--platform", "linux/arm64", ref, hosts_dir=hosts_dir)
    assert containerd.image_digest(ref) == source.index.digest
    index = json.loads(source.layout.read(source.index))
    arm64 = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    assert layout_closure(source.path, arm64) <= content_set(containerd)


def test_mirror_pull_of_missing_image_fails_without_fall_through(containerd: Containerd, appliance: Appliance,
                                                                 tmp_path: Path) -> None:
    image = f"absent{uuid.uuid4().hex[:10]}"
    hosts_dir = mirror_hosts_dir(tmp_path, appliance)
    with pytest.raises(ContainerdError, match=r"not found|connection refused"):
        containerd.ctr("images", "pull", f"docker.io/library/{image}:1", hosts_dir=hosts_dir, timeout=60)
    assert any((r["method"], r["path"], r["query"], r["status"])
               == ("HEAD", f"/v2/library/{image}/manifests/1", "ns=docker.io", 404)
               for r in request_lines(appliance.log())), "the appliance was not asked first"
    assert f"docker.io/library/{image}:1" not in containerd.ctr("images", "ls", "--quiet").stdout


def test_push_with_user(containerd: Containerd, appliance: Appliance, source: SourceImages, tmp_path: Path) -> None:
    name = f"spectro-images/test/ctr{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multi:1", f"{name}:1")
    local = f"{appliance.host}/{name}:1"
    containerd.ctr("images", "pull", "--plain-http", local)

    target = f"{appliance.host}/{name}/pushed:2"
    refused = containerd.ctr("images", "push", "--plain-http", target, local, check=False)
    assert refused.returncode != 0
    assert "401" in refused.stderr or "unauthorized" in refused.stderr.lower(), refused.stderr

    containerd.ctr("images", "push", "--plain-http", "--user", appliance.creds, target, local)
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--no-creds", f"docker://{target}").stdout
    assert raw.encode() == source.layout.read(source.image)
    out = tmp_path / "back"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{out}:x")
    assert layout_closure(out, source.image.digest) == layout_closure(source.path, source.image.digest)


def test_push_multiarch_index_with_user(containerd: Containerd, appliance: Appliance, source: SourceImages,
                                        tmp_path: Path) -> None:
    name = f"spectro-images/test/ctr{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multiarch:1", f"{name}:1", "--all")
    local = f"{appliance.host}/{name}:1"
    containerd.ctr("images", "pull", "--plain-http", "--all-platforms", local)
    target = f"{appliance.host}/{name}/pushed:1"
    containerd.ctr("images", "push", "--plain-http", "--user", appliance.creds, target, local)
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--no-creds", f"docker://{target}").stdout
    assert raw.encode() == source.layout.read(source.index)
    out = tmp_path / "back"
    run("skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{target}", f"oci:{out}:x")
    assert layout_closure(out, source.index.digest) == layout_closure(source.path, source.index.digest)


def test_pull_other_registry_by_digest_through_mirror(containerd: Containerd, appliance: Appliance,
                                                      source: SourceImages, tmp_path: Path) -> None:
    # Images from registries other than Docker Hub nest under their own host; pulled by digest, as pinned
    # cluster definitions do.
    image = f"org/mirror{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multiarch:1", f"spectro-images/registry.k8s.io/{image}:1", "--all")
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / "registry.k8s.io").mkdir(parents=True)
    (hosts_dir / "registry.k8s.io" / "hosts.toml").write_text(
        f'server = "http://127.0.0.1:{free_port()}"\n\n[host."http://{appliance.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n')
    ref = f"registry.k8s.io/{image}@{source.index.digest}"
    containerd.ctr("images", "pull", ref, hosts_dir=hosts_dir)
    assert containerd.image_digest(ref) == source.index.digest
    assert any(r["method"] in ("HEAD", "GET") and (r["path"], r["query"], r["status"])
               == (f"/v2/{image}/manifests/{source.index.digest}", "ns=registry.k8s.io", 200)
               for r in request_lines(appliance.log()))


def test_pull_docker_manifest_list(containerd: Containerd, appliance: Appliance, source: SourceImages,
                                   tmp_path: Path) -> None:
    name = f"spectro-images/test/ctr{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multiarch:1", f"{name}:1", "--all", "--format", "v2s2")
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--no-creds",
              f"docker://{appliance.host}/{name}:1").stdout
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    ref = f"{appliance.host}/{name}:1"
    containerd.ctr("images", "pull", "--plain-http", "--all-platforms", ref)
    assert containerd.image_digest(ref) == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def test_pull_from_private_project_with_user(containerd: Containerd, appliance: Appliance, source: SourceImages,
                                             private_project: str) -> None:
    tag = f"private-{uuid.uuid4().hex[:10]}"
    image = source.layout.add_image([50_000], seed=uuid.uuid4().int % 10**9, ref=tag)  # not yet in containerd
    name = f"{private_project}/ctr{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, tag, f"{name}:1")
    ref = f"{appliance.host}/{name}:1"
    refused = containerd.ctr("images", "pull", "--plain-http", ref, check=False)
    assert refused.returncode != 0
    assert "401" in refused.stderr or "unauthorized" in refused.stderr.lower(), refused.stderr
    containerd.ctr("images", "pull", "--plain-http", "--user", appliance.creds, ref)
    assert containerd.image_digest(ref) == image.digest
    assert layout_closure(source.path, image.digest) <= content_set(containerd)


def test_pull_original_name_through_override_path_host(containerd: Containerd, appliance: Appliance,
                                                       source: SourceImages, tmp_path: Path) -> None:
    # override_path mode: the host names the project path itself; containerd still adds ?ns=docker.io.
    tag = f"override-{uuid.uuid4().hex[:10]}"
    blob = source.layout.add_image([30_000], seed=uuid.uuid4().int % 10**9, ref=tag)
    image = f"over{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, tag, f"spectro-images/docker.io/library/{image}:1")
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / "docker.io").mkdir(parents=True)
    (hosts_dir / "docker.io" / "hosts.toml").write_text(
        f'server = "http://127.0.0.1:{free_port()}"\n\n'
        f'[host."http://{appliance.host}/v2/spectro-images/docker.io"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n")
    ref = f"docker.io/library/{image}:1"
    containerd.ctr("images", "pull", ref, hosts_dir=hosts_dir)
    assert containerd.image_digest(ref) == blob.digest
    assert layout_closure(source.path, blob.digest) <= content_set(containerd)
    served = [r for r in request_lines(appliance.log()) if r["query"] == "ns=docker.io"
              and r["path"].startswith(f"/v2/spectro-images/docker.io/library/{image}/")]
    assert any(r["status"] == 200 and "/blobs/" in r["path"] for r in served), served
