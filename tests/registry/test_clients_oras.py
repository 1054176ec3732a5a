"""The oras Python library against the real appliance: artifacts in and out, byte for byte.

Covers monolithic and chunked (POST, PATCH..., PUT) blob uploads, directory
artifacts, tags, delete, and an artifact with a subject found through the
referrers API (oras-py has no referrers call, so that one read uses requests).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import oras.client
import oras.oci
import pytest
import requests

from tests.appliance import Appliance
from tests.logs import request_lines

ARTIFACT_TYPE = "application/vnd.cargohold.test.sbom+json"

def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def client(appliance: Appliance) -> oras.client.OrasClient:
    c = oras.client.OrasClient(hostname=appliance.host, insecure=True, auth_backend="basic")
    c.auth.set_basic_auth(*appliance.admin)
    return c


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    """Two files to push: a small text file and 700 kB of random bytes."""
    rnd = random.Random(42)
    content = {"notes.txt": b"cargohold artifact\n", "payload.bin": rnd.randbytes(700_000)}
    src = tmp_path / "src"
    src.mkdir()
    for name, data in content.items():
        (src / name).write_bytes(data)
    return content


def manifest_of(appliance: Appliance, ref: str, tag: str) -> tuple[str, dict[str, object], bytes]:
    resp = requests.get(f"{appliance.url}/v2/{ref}/manifests/{tag}",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    resp.raise_for_status()
    assert sha256(resp.content) == resp.headers["Docker-Content-Digest"]
    return resp.headers["Docker-Content-Digest"], resp.json(), resp.content


def push_files(client: oras.client.OrasClient, appliance: Appliance, target: str, tmp_path: Path,
               names: list[str], **kwargs: object) -> requests.Response:
    paths = [str(tmp_path / "src" / n) for n in names]
    resp: requests.Response = client.push(target=f"{appliance.host}/{target}", files=paths,
                                          disable_path_validation=True, quiet=True, **kwargs)
    return resp


def test_push_and_pull_files(client: oras.client.OrasClient, appliance: Appliance, repo: str, tmp_path: Path,
                             files: dict[str, bytes]) -> None:
    resp = push_files(client, appliance, f"{repo}:v1", tmp_path, sorted(files))
    assert resp.status_code == 201
    digest, manifest, _ = manifest_of(appliance, repo, "v1")
    assert resp.headers["Docker-Content-Digest"] == digest
    layers = manifest["layers"]
    assert isinstance(layers, list)
    assert {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"] for layer in layers} == {
        name: sha256(data) for name, data in files.items()}

    out = tmp_path / "out"
    pulled = client.pull(target=f"{appliance.host}/{repo}:v1", outdir=str(out))
    assert sorted(Path(p).name for p in pulled) == sorted(files)
    for name, data in files.items():
        assert (out / name).read_bytes() == data


def test_chunked_push(client: oras.client.OrasClient, appliance: Appliance, repo: str, tmp_path: Path,
                      files: dict[str, bytes]) -> None:
    # 700 000 bytes in 64 KiB chunks: eleven PATCHes, the last one short.
    resp = push_files(client, appliance, f"{repo}:chunked", tmp_path, ["payload.bin"], do_chunked=True,
                      chunk_size=64 * 1024)
    assert resp.status_code == 201
    _, manifest, _ = manifest_of(appliance, repo, "chunked")
    assert manifest["layers"][0]["digest"] == sha256(files["payload.bin"])  # type: ignore[index]
    # oras-py's basic auth answers a 401 challenge per request, so each chunk is a 401 then a 202.
    patches = [r for r in request_lines(appliance.log())
               if r["method"] == "PATCH" and r["path"].startswith(f"/v2/{repo}/blobs/uploads/")]
    assert sum(r["status"] == 202 for r in patches) == 11, patches

    blob = requests.get(f"{appliance.url}/v2/{repo}/blobs/{sha256(files['payload.bin'])}", timeout=10)
    assert blob.status_code == 200
    assert blob.content == files["payload.bin"]
    out = tmp_path / "out"
    client.pull(target=f"{appliance.host}/{repo}:chunked", outdir=str(out))
    assert (out / "payload.bin").read_bytes() == files["payload.bin"]


def test_push_directory(client: oras.client.OrasClient, appliance: Appliance, repo: str, tmp_path: Path,
                       files: dict[str, bytes]) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.bin").write_bytes(files["payload.bin"])
    (tree / "top.txt").write_bytes(files["notes.txt"])
    client.push(target=f"{appliance.host}/{repo}:dir", files=[str(tree)], disable_path_validation=True, quiet=True)
    out = tmp_path / "out"
    client.pull(target=f"{appliance.host}/{repo}:dir", outdir=str(out))
    assert (out / "tree" / "sub" / "a.bin").read_bytes() == files["payload.bin"]
    assert (out / "tree" / "top.txt").read_bytes() == files["notes.txt"]


def test_tags_and_delete_by_digest(client: oras.client.OrasClient, appliance: Appliance, repo: str, tmp_path: Path,
                                   files: dict[str, bytes]) -> None:
    push_files(client, appliance, f"{repo}:a", tmp_path, ["notes.txt"])
    push_files(client, appliance, f"{repo}:b", tmp_path, ["notes.txt"])  # same manifest bytes as a
    push_files(client, appliance, f"{repo}:c", tmp_path, ["payload.bin"])
    assert sorted(client.get_tags(f"{appliance.host}/{repo}")) == ["a", "b", "c"]
    assert client.get_tags(f"{appliance.host}/{repo}", N=2) == ["a", "b"]

    assert client.delete_tag(f"{appliance.host}/{repo}", "a") is True
    # oras deletes the manifest by digest: tag b named the same manifest and goes too.
    assert client.get_tags(f"{appliance.host}/{repo}") == ["c"]
    assert client.delete_tag(f"{appliance.host}/{repo}", "b") is False


def test_push_with_wrong_password_is_refused(appliance: Appliance, repo: str, tmp_path: Path,
                                             files: dict[str, bytes]) -> None:
    # (oras-py's basic backend with no credentials at all fails inside the library, not at the registry.)
    wrong = oras.client.OrasClient(hostname=appliance.host, insecure=True, auth_backend="basic")
    wrong.auth.set_basic_auth("nobody", "not-the-password")  # not admin: failures count towards a lockout
    with pytest.raises(ValueError, match=r"UNAUTHORIZED|Unauthorized|session url"):
        push_files(wrong, appliance, f"{repo}:v1", tmp_path, ["payload.bin"])
    assert requests.get(f"{appliance.url}/v2/{repo}/tags/list", timeout=10).status_code == 404


def test_artifact_with_subject_is_a_referrer(client: oras.client.OrasClient, appliance: Appliance, repo: str,
                                             tmp_path: Path, files: dict[str, bytes]) -> None:
    push_files(client, appliance, f"{repo}:image", tmp_path, ["payload.bin"])
    subject_digest, subject_manifest, subject_bytes = manifest_of(appliance, repo, "image")
    subject = oras.oci.Subject(mediaType=str(subject_manifest["mediaType"]), digest=subject_digest,
                               size=len(subject_bytes))

    config = tmp_path / "sbom-config.json"
    config.write_bytes(b"{}")
    resp = push_files(client, appliance, f"{repo}:sbom", tmp_path, ["notes.txt"], subject=subject,
                      manifest_config=f"{config}:{ARTIFACT_TYPE}")
    assert resp.status_code == 201
    assert resp.headers["OCI-Subject"] == subject_digest
    sbom_digest, sbom_manifest, sbom_bytes = manifest_of(appliance, repo, "sbom")
    assert sbom_manifest["subject"]["digest"] == subject_digest  # type: ignore[index]

    listed = requests.get(f"{appliance.url}/v2/{repo}/referrers/{subject_digest}", timeout=10)
    assert listed.status_code == 200
    assert listed.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    entries = listed.json()["manifests"]
    assert [(e["digest"], e["size"], e["artifactType"]) for e in entries] == [
        (sbom_digest, len(sbom_bytes), ARTIFACT_TYPE)]

    filtered = requests.get(f"{appliance.url}/v2/{repo}/referrers/{subject_digest}",
                            params={"artifactType": "application/vnd.other"}, timeout=10)
    assert filtered.json()["manifests"] == []
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"

    # The referrer's own bytes come back intact through oras.
    out = tmp_path / "out"
    client.pull(target=f"{appliance.host}/{repo}@{sbom_digest}", outdir=str(out))
    assert (out / "notes.txt").read_bytes() == files["notes.txt"]


@pytest.mark.slow
def test_chunked_push_of_large_file(client: oras.client.OrasClient, appliance: Appliance, repo: str,
                                    tmp_path: Path) -> None:
    """80 MB in oras-py's default 16 MiB chunks: five PATCHes, the last one short."""
    big = tmp_path / "src" / "big.bin"
    big.parent.mkdir(exist_ok=True)
    rnd = random.Random(3)
    h = hashlib.sha256()
    with big.open("wb") as f:
        for _ in range(80):
            block = rnd.randbytes(1_000_000)
            h.update(block)
            f.write(block)
    push_files(client, appliance, f"{repo}:big", tmp_path, ["big.bin"], do_chunked=True)
    _, manifest, _ = manifest_of(appliance, repo, "big")
    assert manifest["layers"][0]["digest"] == f"sha256:{h.hexdigest()}"  # type: ignore[index]
    out = tmp_path / "out"
    client.pull(target=f"{appliance.host}/{repo}:big", outdir=str(out))
    pulled = hashlib.sha256()
    with (out / "big.bin").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            pulled.update(block)
    assert pulled.hexdigest() == h.hexdigest()
