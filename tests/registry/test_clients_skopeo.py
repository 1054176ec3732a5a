"""skopeo against the real appliance: copy, inspect, list-tags, delete and sync, all checked by digest."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.appliance import Appliance
from tests.images import OciLayout
from tests.layouts import layout_closure, sha256_file
from tests.logs import request_lines
from tests.registry.conftest import SourceImages, layout_ref, require, run


@pytest.fixture(autouse=True)
def _skopeo_installed() -> None:
    require("skopeo")


def skopeo(*args: str, tmp_path: Path, check: bool = True) -> str:
    """Run skopeo with an auth file of its own, so nothing from the machine's login state leaks in."""
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    return run("skopeo", *args, env=env, check=check).stdout


def push(appliance: Appliance, source: SourceImages, ref: str, dest: str, tmp_path: Path, *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", appliance.creds, *extra,
           f"oci:{source.path}:{ref}", f"docker://{appliance.host}/{dest}", tmp_path=tmp_path)


def test_copy_multilayer_image_round_trip(appliance: Appliance, source: SourceImages, repo: str,
                                          tmp_path: Path) -> None:
    push(appliance, source, "multi:1", f"{repo}:1", tmp_path)
    out = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{appliance.host}/{repo}:1", f"oci:{out}:back",
           tmp_path=tmp_path)
    assert layout_ref(out, "back") == source.image.digest
    assert layout_closure(out, source.image.digest) == layout_closure(source.path, source.image.digest)
    assert len(layout_closure(out, source.image.digest)) == 5  # manifest, config, three layers


def test_copy_multiarch_index_all(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    push(appliance, source, "multiarch:1", f"{repo}:1", tmp_path, "--all")
    out = tmp_path / "back"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{appliance.host}/{repo}:1", f"oci:{out}:back",
           tmp_path=tmp_path)
    assert layout_ref(out, "back") == source.index.digest
    expected = layout_closure(source.path, source.index.digest)
    assert layout_closure(out, source.index.digest) == expected
    assert len(expected) == 1 + 2 * 4  # index, then per platform: manifest, config, two layers


def test_pull_one_platform_of_index(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    push(appliance, source, "multiarch:1", f"{repo}:1", tmp_path, "--all")
    index = json.loads(source.layout.read(source.index))
    arm64 = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    out = tmp_path / "arm"
    skopeo("--override-arch", "arm64", "copy", "--src-tls-verify=false",
           f"docker://{appliance.host}/{repo}:1", f"oci:{out}:arm", tmp_path=tmp_path)
    assert layout_ref(out, "arm") == arm64
    assert layout_closure(out, arm64) == layout_closure(source.path, arm64)


def test_inspect_and_inspect_raw(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    push(appliance, source, "multi:1", f"{repo}:1", tmp_path)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{appliance.host}/{repo}:1", tmp_path=tmp_path)
    assert raw.encode() == source.layout.read(source.image)

    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{appliance.host}/{repo}:1",
                             tmp_path=tmp_path))
    manifest = json.loads(source.layout.read(source.image))
    assert info["Digest"] == source.image.digest
    assert info["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert info["Architecture"] == "amd64"
    assert info["Labels"] == {"seed": "7"}
    assert "1" in info["RepoTags"]

    config = json.loads(skopeo("inspect", "--config", "--raw", "--tls-verify=false",
                               f"docker://{appliance.host}/{repo}:1", tmp_path=tmp_path))
    source_config = json.loads(source.layout.blob_path(manifest["config"]["digest"]).read_bytes())
    assert config["rootfs"]["diff_ids"] == source_config["rootfs"]["diff_ids"]


def test_inspect_raw_index_by_digest(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    push(appliance, source, "multiarch:1", f"{repo}:1", tmp_path, "--all")
    raw = skopeo("inspect", "--raw", "--tls-verify=false",
                 f"docker://{appliance.host}/{repo}@{source.index.digest}", tmp_path=tmp_path)
    assert raw.encode() == source.layout.read(source.index)


def test_list_tags(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    for tag in ("1", "1.0", "latest"):
        push(appliance, source, "multi:1", f"{repo}:{tag}", tmp_path)
    push(appliance, source, "multiarch:1", f"{repo}:multi", tmp_path, "--all")
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{appliance.host}/{repo}",
                               tmp_path=tmp_path))
    assert listed["Repository"] == f"{appliance.host}/{repo}"
    assert sorted(listed["Tags"]) == ["1", "1.0", "latest", "multi"]


def test_list_tags_of_unknown_repository_fails(appliance: Appliance, repo: str, tmp_path: Path) -> None:
    proc = run("skopeo", "list-tags", "--tls-verify=false", f"docker://{appliance.host}/{repo}", check=False,
               env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert proc.returncode != 0
    assert "404" in proc.stderr, proc.stderr  # skopeo 1.9 reports only the status of a failed tags list


def test_delete_removes_the_manifest_and_every_tag_on_it(appliance: Appliance, source: SourceImages, repo: str,
                                                         tmp_path: Path) -> None:
    push(appliance, source, "multi:1", f"{repo}:a", tmp_path)
    push(appliance, source, "multi:1", f"{repo}:b", tmp_path)
    push(appliance, source, "multiarch:1", f"{repo}:other", tmp_path, "--all")

    skopeo("delete", "--tls-verify=false", "--creds", appliance.creds, f"docker://{appliance.host}/{repo}:a",
           tmp_path=tmp_path)

    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{appliance.host}/{repo}",
                               tmp_path=tmp_path))
    assert listed["Tags"] == ["other"]  # skopeo deletes by digest: b pointed at the same manifest
    gone = run("skopeo", "inspect", "--raw", "--tls-verify=false",
               f"docker://{appliance.host}/{repo}@{source.image.digest}", check=False,
               env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert gone.returncode != 0
    assert "manifest unknown" in gone.stderr.lower(), gone.stderr
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{appliance.host}/{repo}:other",
                 tmp_path=tmp_path)
    assert raw.encode() == source.layout.read(source.index)

    # Pushing the deleted image again brings it back whole.
    push(appliance, source, "multi:1", f"{repo}:a", tmp_path)
    out = tmp_path / "again"
    skopeo("copy", "--src-tls-verify=false", f"docker://{appliance.host}/{repo}:a", f"oci:{out}:x", tmp_path=tmp_path)
    assert layout_closure(out, source.image.digest) == layout_closure(source.path, source.image.digest)


def test_delete_needs_credentials(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    push(appliance, source, "multi:1", f"{repo}:a", tmp_path)
    proc = run("skopeo", "delete", "--tls-verify=false", f"docker://{appliance.host}/{repo}:a", check=False,
               env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert proc.returncode != 0
    assert "unauthorized" in proc.stderr.lower() or "authentication required" in proc.stderr.lower(), proc.stderr
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{appliance.host}/{repo}:a", tmp_path=tmp_path)
    assert raw.encode() == source.layout.read(source.image)


def test_push_with_wrong_credentials_is_refused(appliance: Appliance, source: SourceImages, repo: str,
                                                tmp_path: Path) -> None:
    proc = run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", "nobody:wrong-password",
               f"oci:{source.path}:multi:1", f"docker://{appliance.host}/{repo}:1", check=False,
               env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert proc.returncode != 0
    assert "unauthorized" in proc.stderr.lower() or "invalid username or password" in proc.stderr, proc.stderr
    listed = run("skopeo", "list-tags", "--tls-verify=false", f"docker://{appliance.host}/{repo}", check=False,
                 env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert listed.returncode != 0  # nothing was created


def _dir_images(root: Path) -> dict[str, Path]:
    """Images skopeo's dir transport wrote under `root`: {path relative to root: directory}."""
    return {str(p.parent.relative_to(root)): p.parent for p in root.rglob("manifest.json")}


def _check_dir_image(image_dir: Path, source: SourceImages, digest: str) -> None:
    """A dir-transport image holds exactly the source's bytes for manifest `digest`."""
    assert sha256_file(image_dir / "manifest.json") == digest
    for expected in layout_closure(source.path, digest) - {digest}:
        hex_ = expected.split(":", 1)[1]
        candidates = [image_dir / hex_, image_dir / f"{hex_}.manifest.json"]
        found = [p for p in candidates if p.exists()]
        assert found, f"{image_dir} lacks {expected}"
        assert sha256_file(found[0]) == expected


def test_sync_registry_to_dir_and_back(appliance: Appliance, source: SourceImages, repo: str,
                                       tmp_path: Path) -> None:
    push(appliance, source, "multi:1", f"{repo}:1", tmp_path)
    push(appliance, source, "multiarch:1", f"{repo}:2", tmp_path, "--all")

    out = tmp_path / "synced"
    skopeo("sync", "--all", "--preserve-digests", "--src", "docker", "--dest", "dir", "--src-tls-verify=false",
           "--scoped", f"{appliance.host}/{repo}", str(out), tmp_path=tmp_path)
    images = _dir_images(out)
    assert sorted(images) == [f"{appliance.host}/{repo}:1", f"{appliance.host}/{repo}:2"]
    _check_dir_image(images[f"{appliance.host}/{repo}:1"], source, source.image.digest)
    _check_dir_image(images[f"{appliance.host}/{repo}:2"], source, source.index.digest)

    # dir -> registry: both images land in another repository with the same digests.
    target = f"{repo}-back"
    skopeo("sync", "--all", "--preserve-digests", "--src", "dir", "--dest", "docker", "--dest-tls-verify=false",
           "--dest-creds", appliance.creds, str(out / appliance.host / repo.rsplit("/", 1)[0]),
           f"{appliance.host}/{target.rsplit('/', 1)[0]}", tmp_path=tmp_path)
    back = f"{target.rsplit('/', 1)[0]}/{repo.rsplit('/', 1)[1]}"
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{appliance.host}/{back}",
                               tmp_path=tmp_path))
    assert sorted(listed["Tags"]) == ["1", "2"]
    for tag, blob in (("1", source.image), ("2", source.index)):
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{appliance.host}/{back}:{tag}",
                     tmp_path=tmp_path)
        assert raw.encode() == source.layout.read(blob)
    pulled = tmp_path / "pulled"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{appliance.host}/{back}:2", f"oci:{pulled}:x",
           tmp_path=tmp_path)
    assert layout_closure(pulled, source.index.digest) == layout_closure(source.path, source.index.digest)


def test_copy_as_docker_schema2(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    # Converting to Docker's media types changes the manifest and config bytes, never the layers.
    push(appliance, source, "multi:1", f"{repo}:v2s2", tmp_path, "--format", "v2s2")
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{appliance.host}/{repo}:v2s2",
                            tmp_path=tmp_path))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    manifest = json.loads(source.layout.read(source.image))
    assert [layer["digest"] for layer in raw["layers"]] == [layer["digest"] for layer in manifest["layers"]]
    out = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{appliance.host}/{repo}:v2s2", f"dir:{out}",
           tmp_path=tmp_path)
    for layer in manifest["layers"]:
        assert sha256_file(out / layer["digest"].split(":", 1)[1]) == layer["digest"]


def test_copy_between_repositories_of_the_appliance(appliance: Appliance, source: SourceImages, repo: str,
                                                    tmp_path: Path) -> None:
    push(appliance, source, "multiarch:1", f"{repo}:1", tmp_path, "--all")
    skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds", appliance.creds,
           f"docker://{appliance.host}/{repo}:1", f"docker://{appliance.host}/{repo}/copy:1", tmp_path=tmp_path)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{appliance.host}/{repo}/copy:1",
                 tmp_path=tmp_path)
    assert raw.encode() == source.layout.read(source.index)
    # The layers were already in the appliance: skopeo mounts them across repositories instead of uploading.
    mounts = [r for r in request_lines(appliance.log()) if (r["method"], r["path"]) == (
        "POST", f"/v2/{repo}/copy/blobs/uploads/") and "mount=" in (r["query"] or "")]
    assert len(mounts) == 4 and all(r["status"] == 201 for r in mounts), mounts  # two layers per platform
    out = tmp_path / "back"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{appliance.host}/{repo}/copy:1", f"oci:{out}:x",
           tmp_path=tmp_path)
    assert layout_closure(out, source.index.digest) == layout_closure(source.path, source.index.digest)


@pytest.mark.slow
def test_copy_large_layer(appliance: Appliance, repo: str, tmp_path: Path) -> None:
    """A 96 MB layer streams up and down intact (skopeo sends it as one chunked PATCH)."""
    layout = OciLayout(tmp_path / "big")
    image = layout.add_image([96_000_000, 1_000], seed=99, ref="big:1")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", appliance.creds, f"oci:{layout.root}:big:1",
           f"docker://{appliance.host}/{repo}:big", tmp_path=tmp_path)
    out = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{appliance.host}/{repo}:big", f"oci:{out}:x",
           tmp_path=tmp_path)
    assert layout_closure(out, image.digest) == layout_closure(layout.root, image.digest)


def test_private_project_needs_credentials_to_pull(appliance: Appliance, source: SourceImages,
                                                   private_project: str, tmp_path: Path) -> None:
    dest = f"{private_project}/skopeo/img"
    push(appliance, source, "multi:1", f"{dest}:1", tmp_path)
    anonymous = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--no-creds",
                    f"docker://{appliance.host}/{dest}:1", check=False,
                    env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.stderr.lower() or "authentication required" in anonymous.stderr, \
        anonymous.stderr
    out = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", appliance.creds, f"docker://{appliance.host}/{dest}:1",
           f"oci:{out}:x", tmp_path=tmp_path)
    assert layout_closure(out, source.image.digest) == layout_closure(source.path, source.image.digest)


def test_concurrent_pushes_and_pulls(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    """Several clients at once (as when many edge hosts or a bundle import run together) all get intact content."""
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    targets = [f"{repo}/c{i}:1" for i in range(3)] + [f"{repo}/same:1"] * 2
    pushes = [subprocess.Popen(["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", appliance.creds,
                                f"oci:{source.path}:multiarch:1", f"docker://{appliance.host}/{t}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for t in targets]
    for proc in pushes:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    pulls = [subprocess.Popen(["skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{appliance.host}/{t}",
                               f"oci:{tmp_path / f'out{i}'}:x"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i, t in enumerate(targets)]
    for proc in pulls:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    expected = layout_closure(source.path, source.index.digest)
    for i in range(len(targets)):
        assert layout_closure(tmp_path / f"out{i}", source.index.digest) == expected


def test_push_by_digest_without_tag(appliance: Appliance, source: SourceImages, repo: str, tmp_path: Path) -> None:
    push(appliance, source, "multiarch:1", f"{repo}@{source.index.digest}", tmp_path, "--all")
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{appliance.host}/{repo}",
                               tmp_path=tmp_path))
    assert listed["Tags"] == []
    out = tmp_path / "back"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{appliance.host}/{repo}@{source.index.digest}",
           f"oci:{out}:x", tmp_path=tmp_path)
    assert layout_closure(out, source.index.digest) == layout_closure(source.path, source.index.digest)
