"""podman against the real appliance: pull, push and login, checked by digest.

podman runs as root with the ``vfs`` storage driver and its graph root, run
root and auth file in a temporary directory (CONTAINERS_STORAGE_CONF), so it
touches nothing of the machine's own container storage. Running containers
does not work on these machines; pulling and pushing does.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.appliance import Appliance, free_port
from tests.layouts import layout_closure
from tests.logs import request_lines
from tests.registry.conftest import SourceImages, layout_ref, require, run


@dataclass(frozen=True)
class Podman:
    """podman bound to a private storage root."""

    env: dict[str, str]
    authfile: Path

    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return run("podman", *args, env=self.env, check=check, input=input).stdout

    def run(self, *args: str, input: str | None = None) -> tuple[int, str]:
        proc = run("podman", *args, env=self.env, check=False, input=input)
        return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    require("podman")
    base = tmp_path_factory.mktemp("podman")
    storage_conf = base / "storage.conf"
    storage_conf.write_text(
        "[storage]\n"
        'driver = "vfs"\n'
        f'graphroot = "{base / "graph"}"\n'
        f'runroot = "{base / "run"}"\n'
    )
    containers_conf = base / "containers.conf"
    # No journald or systemd here: events to a file in the temporary root.
    containers_conf.write_text(
        "[engine]\n"
        'events_logger = "file"\n'
        f'events_logfile_path = "{base / "events.log"}"\n'
        'cgroup_manager = "cgroupfs"\n'
        f'tmp_dir = "{base / "tmp"}"\n'
    )
    authfile = base / "auth.json"
    authfile.write_text('{"auths": {}}')  # podman refuses a REGISTRY_AUTH_FILE that does not exist
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage_conf), "CONTAINERS_CONF": str(containers_conf),
           "REGISTRY_AUTH_FILE": str(authfile), "TMPDIR": str(base)}
    tool = Podman(env, authfile)
    yield tool
    tool("rmi", "--all", "--force", check=False)


def skopeo_push(appliance: Appliance, source: SourceImages, ref: str, dest: str, *extra: str) -> None:
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", appliance.creds, *extra,
        f"oci:{source.path}:{ref}", f"docker://{appliance.host}/{dest}")


def registry_digest(appliance: Appliance, ref: str) -> str:
    """The manifest digest the appliance serves for `ref` (as skopeo sees it)."""
    info = json.loads(run("skopeo", "inspect", "--tls-verify=false", "--no-creds", f"docker://{appliance.host}/{ref}",
                          ).stdout)
    return str(info["Digest"])


def podman_import(podman: Podman, tmp_path: Path, name: str, member: str, payload: bytes) -> str:
    """`podman import` a one-file root filesystem as a new local image; returns its name."""
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    local = f"localhost/cargohold-test/{name}{uuid.uuid4().hex[:8]}:1"
    podman("import", str(rootfs), local)
    return local


def test_pull_image(podman: Podman, appliance: Appliance, source: SourceImages, repo: str) -> None:
    skopeo_push(appliance, source, "multi:1", f"{repo}:1")
    podman("pull", "--tls-verify=false", f"{appliance.host}/{repo}:1")
    inspected = json.loads(podman("image", "inspect", f"{appliance.host}/{repo}:1"))[0]
    assert inspected["Digest"] == source.image.digest
    manifest = json.loads(source.layout.read(source.image))
    config = json.loads(source.layout.blob_path(manifest["config"]["digest"]).read_bytes())
    # podman stores layers uncompressed: its layer ids are the config's diff_ids, verified while unpacking.
    assert inspected["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]
    assert inspected["Id"] == manifest["config"]["digest"].split(":", 1)[1]


def test_pull_multiarch_index_picks_platform(podman: Podman, appliance: Appliance, source: SourceImages,
                                             repo: str) -> None:
    skopeo_push(appliance, source, "multiarch:1", f"{repo}:1", "--all")
    index = json.loads(source.layout.read(source.index))
    for arch in ("amd64", "arm64"):
        child = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == arch)
        child_manifest = json.loads(source.layout.blob_path(child).read_bytes())
        podman("pull", "--tls-verify=false", "--arch", arch, f"{appliance.host}/{repo}:1")
        inspected = json.loads(podman("image", "inspect", f"{appliance.host}/{repo}:1"))[0]
        assert inspected["Architecture"] == arch
        assert inspected["Id"] == child_manifest["config"]["digest"].split(":", 1)[1]
        assert inspected["Digest"] == source.index.digest
        assert f"{appliance.host}/{repo}@{child}" in inspected["RepoDigests"]


def test_pull_by_digest(podman: Podman, appliance: Appliance, source: SourceImages, repo: str) -> None:
    skopeo_push(appliance, source, "multi:1", f"{repo}:1")
    podman("pull", "--tls-verify=false", f"{appliance.host}/{repo}@{source.image.digest}")
    inspected = json.loads(podman("image", "inspect", f"{appliance.host}/{repo}@{source.image.digest}"))[0]
    assert inspected["Digest"] == source.image.digest


def test_push_pulled_image_and_read_it_back(podman: Podman, appliance: Appliance, source: SourceImages, repo: str,
                                            tmp_path: Path) -> None:
    skopeo_push(appliance, source, "multi:1", f"{repo}:1")
    podman("pull", "--tls-verify=false", f"{appliance.host}/{repo}:1")
    target = f"{repo}/pushed:2"
    digestfile = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--creds", appliance.creds, "--digestfile", str(digestfile),
           f"{appliance.host}/{repo}:1", f"{appliance.host}/{target}")
    pushed = digestfile.read_text().strip()
    assert registry_digest(appliance, target) == pushed
    pushed_manifest = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false",
                                     f"docker://{appliance.host}/{target}").stdout)
    manifest = json.loads(source.layout.read(source.image))
    # podman remembers the compressed blobs it pulled and reuses them (HEAD, then a cross-repository mount)
    # rather than re-compressing, so the pushed image references exactly the source's blobs.
    assert pushed_manifest["config"] == manifest["config"]
    assert pushed_manifest["layers"] == manifest["layers"]

    # Read it back with another client: every blob verifies against its digest.
    out = tmp_path / "back"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{appliance.host}/{target}", f"oci:{out}:x")
    assert layout_ref(out, "x") == pushed
    back = json.loads((out / "blobs" / "sha256" / pushed.split(":", 1)[1]).read_bytes())
    back_config = json.loads((out / "blobs" / "sha256" / back["config"]["digest"].split(":", 1)[1]).read_bytes())
    config = json.loads(source.layout.blob_path(manifest["config"]["digest"]).read_bytes())
    assert back_config["rootfs"]["diff_ids"] == config["rootfs"]["diff_ids"]
    assert layout_closure(out, pushed) - {pushed} == layout_closure(source.path, source.image.digest) - {
        source.image.digest}


def test_push_without_credentials_is_refused(podman: Podman, appliance: Appliance, source: SourceImages,
                                             repo: str) -> None:
    skopeo_push(appliance, source, "multi:1", f"{repo}:1")
    podman("pull", "--tls-verify=false", f"{appliance.host}/{repo}:1")
    code, output = podman.run("push", "--tls-verify=false", f"{appliance.host}/{repo}:1",
                              f"{appliance.host}/{repo}/anon:1")
    assert code != 0
    assert "unauthorized" in output.lower() or "authentication required" in output.lower(), output
    assert run("skopeo", "inspect", "--tls-verify=false", f"docker://{appliance.host}/{repo}/anon:1",
               check=False).returncode != 0


def test_login_then_push(podman: Podman, appliance: Appliance, source: SourceImages, repo: str) -> None:
    code, output = podman.run("login", "--tls-verify=false", "--username", appliance.admin[0], "--password-stdin",
                              appliance.host, input=appliance.admin[1])
    assert code == 0, output
    assert appliance.host in json.loads(podman.authfile.read_text())["auths"]
    try:
        skopeo_push(appliance, source, "multi:1", f"{repo}:1")
        podman("pull", "--tls-verify=false", f"{appliance.host}/{repo}:1")
        podman("push", "--tls-verify=false", f"{appliance.host}/{repo}:1", f"{appliance.host}/{repo}/login:1")
        assert json.loads(run("skopeo", "inspect", "--tls-verify=false", "--no-creds",
                              f"docker://{appliance.host}/{repo}/login:1").stdout)["Layers"]
    finally:
        podman("logout", appliance.host)


def test_login_with_wrong_password_fails(podman: Podman, appliance: Appliance) -> None:
    # Not the admin's name: failed logins count towards a per-user lockout on the shared appliance.
    code, output = podman.run("login", "--tls-verify=false", "--username", "nobody", "--password-stdin",
                              appliance.host, input="not-the-password")
    assert code != 0
    assert "invalid username/password" in output, output
    assert appliance.host not in json.loads(podman.authfile.read_text())["auths"]


def test_pull_from_private_project_with_creds(podman: Podman, appliance: Appliance, source: SourceImages,
                                              private_project: str) -> None:
    name = f"{private_project}/podman/img"
    skopeo_push(appliance, source, "multi:1", f"{name}:1")
    code, output = podman.run("pull", "--tls-verify=false", f"{appliance.host}/{name}:1")
    assert code != 0
    assert "unauthorized" in output.lower() or "authentication required" in output.lower(), output
    podman("pull", "--tls-verify=false", "--creds", appliance.creds, f"{appliance.host}/{name}:1")
    inspected = json.loads(podman("image", "inspect", f"{appliance.host}/{name}:1"))[0]
    assert inspected["Digest"] == source.image.digest


def test_pull_original_name_through_registries_conf_mirror(podman: Podman, appliance: Appliance,
                                                           source: SourceImages, tmp_path: Path) -> None:
    """CRI-O and podman mirror by path: docker.io/library/x is <appliance>/spectro-images/docker.io/library/x."""
    image = f"mirror{uuid.uuid4().hex[:10]}"
    skopeo_push(appliance, source, "multi:1", f"spectro-images/docker.io/library/{image}:1")
    registries = tmp_path / "registries.conf"
    registries.write_text(
        "[[registry]]\n"
        'prefix = "docker.io"\n'
        f'location = "127.0.0.1:{free_port()}"\n'  # closed: nothing can fall through to the real Docker Hub
        "insecure = true\n"
        "[[registry.mirror]]\n"
        f'location = "{appliance.host}/spectro-images/docker.io"\n'
        "insecure = true\n"
    )
    env = {**podman.env, "CONTAINERS_REGISTRIES_CONF": str(registries)}
    run("podman", "pull", f"docker.io/library/{image}:1", env=env)
    inspected = json.loads(podman("image", "inspect", f"docker.io/library/{image}:1"))[0]
    assert inspected["Digest"] == source.image.digest
    assert any((r["method"], r["path"], r["status"]) == ("GET", f"/v2/spectro-images/docker.io/library/{image}/"
                                                           "manifests/1", 200)
               for r in request_lines(appliance.log()))


def test_push_new_image_compressed_on_the_fly(podman: Podman, appliance: Appliance, repo: str,
                                              tmp_path: Path) -> None:
    """An image podman made itself: its layer is compressed while it streams up (size unknown in advance)."""
    payload = random.Random(5).randbytes(300_000)
    local = podman_import(podman, tmp_path, "imported", "data/payload.bin", payload)
    target = f"{appliance.host}/{repo}/imported:1"
    digestfile = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--creds", appliance.creds, "--digestfile", str(digestfile), local, target)
    pushed = digestfile.read_text().strip()

    out = tmp_path / "back"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{out}:x")
    assert layout_ref(out, "x") == pushed
    closure = layout_closure(out, pushed)  # every blob hashes to its digest
    manifest = json.loads((out / "blobs" / "sha256" / pushed.split(":", 1)[1]).read_bytes())
    assert len(manifest["layers"]) == 1 and len(closure) == 3
    layer = out / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":", 1)[1]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.read_bytes()))) as tar:
        member = tar.extractfile("data/payload.bin")
        assert member is not None and member.read() == payload
    podman("rmi", local)


def test_push_zstd_compressed(podman: Podman, appliance: Appliance, repo: str, tmp_path: Path) -> None:
    """zstd layers (OCI ...tar+zstd) push and come back intact."""
    payload = random.Random(6).randbytes(200_000)
    local = podman_import(podman, tmp_path, "zstd", "data/z.bin", payload)
    target = f"{appliance.host}/{repo}/zstd:1"
    podman("push", "--tls-verify=false", "--creds", appliance.creds, "--format", "oci", "--compression-format",
           "zstd", local, target)
    podman("rmi", local)
    raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{target}").stdout)
    assert [layer["mediaType"] for layer in raw["layers"]] == ["application/vnd.oci.image.layer.v1.tar+zstd"]
    podman("pull", "--tls-verify=false", target)  # decompresses and checks the config's diff_id
    out = tmp_path / "back"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{out}:x")
    assert len(layout_closure(out, layout_ref(out, "x"))) == 3


def test_push_onto_an_immutable_tag_is_refused_naming_the_rule(podman: Podman, appliance: Appliance,
                                                               source: SourceImages, tmp_path: Path) -> None:
    from tests.registry.harborapi import Harbor

    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    rule = {"tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": "1.*"}],
            "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}]}}
    assert admin("POST", f"/projects/{project}/immutabletagrules", json=rule).status_code == 201
    skopeo_push(appliance, source, "multi:1", f"{project}/app:1.0")
    local = podman_import(podman, tmp_path, "immutable", "etc/hotfix", b"not the released image\n")
    code, out = podman.run("push", "--tls-verify=false", "--creds", appliance.creds, local,
                           f"{appliance.host}/{project}/app:1.0")
    assert code != 0 and f"{project}/app:1.0 is protected by immutable tag rule" in out, out
    assert registry_digest_with_creds(appliance, f"{project}/app:1.0") == source.image.digest
    # A tag no rule selects takes the same push.
    podman("push", "--tls-verify=false", "--creds", appliance.creds, local, f"{appliance.host}/{project}/app:dev")
    assert registry_digest_with_creds(appliance, f"{project}/app:dev") != source.image.digest


def registry_digest_with_creds(appliance: Appliance, ref: str) -> str:
    info = json.loads(run("skopeo", "inspect", "--tls-verify=false", "--creds", appliance.creds,
                          f"docker://{appliance.host}/{ref}").stdout)
    return str(info["Digest"])
