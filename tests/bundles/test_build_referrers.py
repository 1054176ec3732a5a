"""Signatures, SBOMs and attestations travel in bundles and are checked at the site.

Source: the real appliance as a registry, holding an image with a cosign
signature (tag scheme, made by tests/cosignsign.py with a real ECDSA key, as
`cosign sign --key` makes it) and an SBOM pushed with the oras library as an
OCI 1.1 referrer (``subject``). Built and imported with the real CLI; the site
is a second real appliance, read with requests and skopeo.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import oras.client
import oras.oci
import pytest
import requests

from registry import cosign
from registry.digest import Digest
from tests import cosignsign
from tests.appliance import Appliance, free_port
from tests.bundles.buildutil import cargohold, extract, manifest_of
from tests.images import OciLayout

SBOM_TYPE = "application/spdx+json"
RECORDED = "docker.io/acme/app:1"
SITE_REPO = "spectro-images/docker.io/acme/app"


class Source:
    """The image, its signature and SBOM in the source registry, and the key that signed it."""

    def __init__(self, app: Appliance, tmp: Path) -> None:
        self.app = app
        project = f"ref{uuid.uuid4().hex[:8]}"
        created = requests.post(f"{app.url}/api/v2.0/projects", auth=app.admin, timeout=10,
                                json={"project_name": project, "metadata": {"public": "false"}})
        assert created.status_code == 201, created.text
        self.repo = f"{project}/acme/app"
        lay = OciLayout(tmp / "src")
        lay.add_image([30_000, 4_000], seed=71, ref="app:1")
        lay.add_image([9_000], seed=72, ref="bare:1")
        for ref in ("app:1", "bare:1"):
            subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", app.creds,
                            f"oci:{lay.root}:{ref}", f"docker://{app.host}/{self.repo}:{ref.split(':')[0]}"],
                           check=True, capture_output=True)
        head = requests.head(f"{app.url}/v2/{self.repo}/manifests/app", auth=app.admin, timeout=10)
        self.digest = Digest.parse(head.headers["Docker-Content-Digest"])
        self.key = cosignsign.generate(tmp / "keys", "cosign")
        self.sig = cosignsign.sign_tag_scheme(app.url, self.repo, self.digest, self.key, app.admin)
        # The SBOM: oras push with a subject (an OCI 1.1 referrer).
        client = oras.client.OrasClient(hostname=app.host, insecure=True, auth_backend="basic")
        client.auth.set_basic_auth(*app.admin)
        sbom = tmp / "sbom.spdx.json"
        sbom.write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": "app"}))
        config = tmp / "sbom-config.json"
        config.write_bytes(b"{}")
        subject = oras.oci.Subject(mediaType=head.headers["Content-Type"], digest=str(self.digest),
                                   size=int(head.headers["Content-Length"]))
        resp = client.push(target=f"{app.host}/{self.repo}:sbom", files=[str(sbom)], subject=subject,
                           manifest_config=f"{config}:{SBOM_TYPE}", disable_path_validation=True)
        assert resp.status_code == 201
        self.sbom = Digest.parse(resp.headers["Docker-Content-Digest"])

    def build(self, out: Path, tmp: Path, *extra: str, image: str = "app") -> dict[str, object]:
        key = tmp / "bundle-key"
        if not key.with_suffix(".pem").exists():
            cargohold("keys", "generate", key, "--type", "ecdsa-p256")
        cargohold("bundle", "build", "--name", "site", "--version", "1", "--registry-insecure",
                  "--registry-creds", self.app.creds, "--image", f"{self.app.host}/{self.repo}:{image}={RECORDED}",
                  "--sign-key", key.with_suffix(".pem"), *extra, "-o", out)
        return manifest_of(out)


@pytest.fixture
def source(appliance: Appliance, tmp_path: Path) -> Source:
    return Source(appliance, tmp_path)


def _site(tmp: Path, name: str, image_key: Path | None, protect: bool) -> Path:
    site = tmp / name
    cargohold("keys", "add", tmp / "bundle-key.pub.pem", "--data-dir", site)
    if image_key is not None:
        cargohold("image-keys", "add", image_key, "--description", "release team", "--data-dir", site)
    if protect:
        out = cargohold("project", "content-trust", "spectro-images", "on", "--data-dir", site)
        assert "enable_content_trust_cosign=true" in out.stdout
    return site


def _import(bundle: Path, site: Path) -> tuple[int, dict[str, object] | None, str]:
    proc = cargohold("bundle", "import", bundle, "--data-dir", site, "--json", "--quiet", check=False)
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else None, proc.stderr


def test_signature_and_sbom_travel_and_are_served_by_tag_and_referrers_api(
        source: Source, tmp_path: Path, appliance_factory: Callable[..., Appliance]) -> None:
    bundle = tmp_path / "with.tar.zst"
    doc = source.build(bundle, tmp_path)
    (image,) = doc["images"]  # type: ignore[misc]
    tag = cosign.cosign_tag(source.digest)
    assert image["digest"] == str(source.digest)
    assert sorted((r["kind"], r["digest"], r.get("tag"), r.get("artifactType")) for r in image["referrers"]) == [
        ("referrer", str(source.sbom), None, SBOM_TYPE),
        ("sig", str(source.sig), tag, "application/vnd.oci.image.config.v1+json")]
    layout = extract(bundle, tmp_path / "x")
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    names = {e.get("annotations", {}).get("org.opencontainers.image.ref.name"): e["digest"] for e in entries}
    assert names == {RECORDED: str(source.digest), f"docker.io/acme/app:{tag}": str(source.sig),
                     None: str(source.sbom)}
    # The unpacked bundle is a layout skopeo reads, signature included, byte for byte.
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:docker.io/acme/app:{tag}"],
                         check=True, capture_output=True).stdout
    assert Digest.of_bytes(raw) == source.sig

    # Built again from that layout: the layout's cosign tag and subject-referrer are found and carried.
    again = tmp_path / "again.tar.zst"
    cargohold("bundle", "build", "--name", "site", "--version", "1", "--layout", f"{layout}:{RECORDED}",
              "--no-sign", "-o", again)
    assert manifest_of(again)["images"][0]["referrers"] == image["referrers"]  # type: ignore[index]

    # --no-referrers leaves them behind.
    bare = tmp_path / "without.tar.zst"
    bare_doc = source.build(bare, tmp_path, "--no-referrers")
    assert "referrers" not in bare_doc["images"][0]  # type: ignore[index]
    bare_members = {m["digest"] for m in bare_doc["members"]}  # type: ignore[union-attr]
    assert str(source.sig) not in bare_members and str(source.sbom) not in bare_members

    # The site: policy on, the signer's key trusted; the signed image imports and everything is served.
    site = _site(tmp_path, "site", source.key.pub_file, protect=True)
    code, report, err = _import(bundle, site)
    assert code == 0 and report is not None, err
    assert {(i["repository"], i["tag"]) for i in report["images"]} == {  # type: ignore[attr-defined]
        (SITE_REPO, "1"), (SITE_REPO, tag)}
    app = appliance_factory(name="site")
    listed = requests.get(f"{app.url}/v2/{SITE_REPO}/referrers/{source.digest}", timeout=10)
    assert listed.status_code == 200
    assert [(e["digest"], e["artifactType"]) for e in listed.json()["manifests"]] == [(str(source.sbom), SBOM_TYPE)]
    by_tag = requests.get(f"{app.url}/v2/{SITE_REPO}/manifests/{tag}", timeout=10,
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert by_tag.status_code == 200 and Digest.of_bytes(by_tag.content) == source.sig
    pulled = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                             f"docker://{app.host}/{SITE_REPO}:1"], capture_output=True)
    assert pulled.returncode == 0, pulled.stderr
    assert Digest.of_bytes(pulled.stdout) == source.digest


def test_protected_project_refuses_unsigned_and_wrongly_signed_images_at_import(
        source: Source, tmp_path: Path) -> None:
    signed, unsigned = tmp_path / "signed.tar.zst", tmp_path / "unsigned.tar.zst"
    source.build(signed, tmp_path)
    source.build(unsigned, tmp_path, "--no-referrers")

    site = _site(tmp_path, "site", source.key.pub_file, protect=True)
    code, _, err = _import(unsigned, site)
    assert code == 1
    assert "[IMAGE_UNSIGNED]" in err and RECORDED in err and "no cosign signature" in err, err
    inventory = json.loads(cargohold("inventory", "export", "--data-dir", site, "-o", "-").stdout)
    assert inventory["repositories"] == [] and inventory["blobs"] == []  # nothing was published

    # Signed, but the site trusts another image-signing key.
    stranger = cosignsign.generate(tmp_path / "keys", "stranger")
    other_site = _site(tmp_path, "other", stranger.pub_file, protect=True)
    code, _, err = _import(signed, other_site)
    assert code == 1 and "[IMAGE_UNSIGNED]" in err and "not made by any trusted" in err, err

    # A genuine signature of app placed under bare's cosign tag in the source: bare is refused.
    head = requests.head(f"{source.app.url}/v2/{source.repo}/manifests/bare", auth=source.app.admin, timeout=10)
    bare_digest = Digest.parse(head.headers["Docker-Content-Digest"])
    cosignsign.sign_tag_scheme(source.app.url, source.repo, bare_digest, source.key, source.app.admin,
                               over=source.digest)
    forged = tmp_path / "forged.tar.zst"
    source.build(forged, tmp_path, image="bare")
    code, _, err = _import(forged, site)
    assert code == 1 and f"over {source.digest}, not over {bare_digest}" in err, err

    # Once the signed bundle is in, the same image without its signature in the bundle is accepted:
    # the signature already in the repository on the appliance vouches for it.
    code, _, err = _import(signed, site)
    assert code == 0, err
    code, _, err = _import(unsigned, site)
    assert code == 0, err

    # Without the policy the unsigned bundle imports as before.
    open_site = _site(tmp_path, "open", None, protect=False)
    code, report, err = _import(unsigned, open_site)
    assert code == 0 and report is not None, err
    assert [i["reference"] for i in report["images"]] == [RECORDED]  # type: ignore[attr-defined]


@pytest.fixture
def distribution(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (CNCF distribution 2.8, no referrers API) on a loopback port: its host:port."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'distribution'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "docker-registry did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_registry_without_referrers_api_uses_the_referrers_tag_schema(distribution: str, tmp_path: Path) -> None:
    url, repo, none = f"http://{distribution}", "acme/app", ("", "")
    lay = OciLayout(tmp_path / "src")
    lay.add_image([12_000], seed=81, ref="app:1")
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{lay.root}:app:1",
                    f"docker://{distribution}/{repo}:1"], check=True, capture_output=True)
    head = requests.head(f"{url}/v2/{repo}/manifests/1", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    digest, size, media_type = Digest.parse(head.headers["Docker-Content-Digest"]), \
        int(head.headers["Content-Length"]), head.headers["Content-Type"]
    assert requests.get(f"{url}/v2/{repo}/referrers/{digest}", timeout=10).status_code == 404  # no API
    key = cosignsign.generate(tmp_path / "keys")
    sig = cosignsign.sign_tag_scheme(url, repo, digest, key, none)
    # A referrer, and the fallback index a client maintains where the registry has no referrers API.
    referrer = cosignsign.signature_manifest(url, repo, f"{distribution}/{repo}", digest, key.private, none,
                                             (digest, size, media_type))
    referrer_digest = cosignsign.put_manifest(url, repo, str(Digest.of_bytes(referrer)), referrer, none)
    fallback = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(referrer_digest),
         "size": len(referrer), "artifactType": cosign.SIGNATURE_ARTIFACT_TYPE}]}
    resp = requests.put(f"{url}/v2/{repo}/manifests/sha256-{digest.encoded}", data=json.dumps(fallback),
                        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}, timeout=10)
    assert resp.status_code == 201, resp.text

    out = tmp_path / "b.tar.zst"
    cargohold("bundle", "build", "--name", "n", "--version", "1", "--no-sign", "--registry-insecure",
              "--image", f"{distribution}/{repo}:1={RECORDED}", "-o", out)
    (image,) = manifest_of(out)["images"]
    assert sorted((r["kind"], r["digest"]) for r in image["referrers"]) == [
        ("referrer", str(referrer_digest)), ("sig", str(sig))]
    # The fallback index itself is registry bookkeeping, not content: it does not travel.
    members = {m["path"] for m in manifest_of(out)["members"]}
    assert f"blobs/sha256/{Digest.of_bytes(json.dumps(fallback).encode()).encoded}" not in members
