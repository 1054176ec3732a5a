"""Harbor-style content trust (enable_content_trust_cosign) at pull time, against the real appliance.

Images are pushed and pulled with skopeo; signatures are made with real ECDSA
P-256 keys by tests/cosignsign.py (cosign itself is not installable here; see
that module) and pushed over /v2/ like cosign pushes them. Keys are trusted
with the real CLI (`cargohold image-keys add`) on the running appliance's data
directory.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from registry import cosign
from registry.digest import Digest
from tests import cosignsign
from tests.appliance import Appliance, free_port
from tests.bundles.buildutil import cargohold
from tests.containerd import Containerd, ContainerdError
from tests.images import OciLayout
from tests.logs import request_lines

INDEX = "application/vnd.oci.image.index.v1+json"


def _skopeo_pull(app: Appliance, ref: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "copy", *extra, "--src-tls-verify=false", "--src-creds", app.creds,
                           f"docker://{app.host}/{ref}", f"oci:{dest}:x"], capture_output=True, text=True)


def _digest(app: Appliance, repo: str, tag: str, accept: str = "*/*") -> tuple[Digest, int, str]:
    r = requests.head(f"{app.url}/v2/{repo}/manifests/{tag}", auth=app.admin, headers={"Accept": accept},
                      timeout=10)
    assert r.status_code == 200, r.text
    return Digest.parse(r.headers["Docker-Content-Digest"]), int(r.headers["Content-Length"]), \
        r.headers["Content-Type"]


def test_protected_project_serves_only_images_signed_by_a_trusted_key(
        tmp_path: Path, appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    project = f"ct{uuid.uuid4().hex[:8]}"
    created = requests.post(f"{app.url}/api/v2.0/projects", auth=app.admin, timeout=10, json={
        "project_name": project, "metadata": {"public": "false", "enable_content_trust_cosign": "true"}})
    assert created.status_code == 201, created.text
    shown = requests.get(f"{app.url}/api/v2.0/projects/{project}", auth=app.admin, timeout=10).json()
    assert shown["metadata"] == {"public": "false", "enable_content_trust_cosign": "true"}
    bad = requests.put(f"{app.url}/api/v2.0/projects/{project}", auth=app.admin, timeout=10,
                       json={"metadata": {"enable_content_trust_cosign": "yes"}})
    assert bad.status_code == 400 and "enable_content_trust_cosign" in bad.text

    lay = OciLayout(tmp_path / "src")
    lay.add_image([20_000], seed=61, ref="app:1")
    lay.add_image([20_000], seed=62, ref="other:1")
    lay.add_multiarch([5_000], ref="multi:1", seed=63)
    repo = f"{project}/team/app"
    for ref in ("app:1", "other:1", "multi:1"):  # pushing unsigned images is allowed: they must exist to be signed
        subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", app.creds,
                        f"oci:{lay.root}:{ref}", f"docker://{app.host}/{repo}:{ref.split(':')[0]}"],
                       check=True, capture_output=True)
    app_digest, _, _ = _digest(app, repo, "app")

    # Unsigned: refused at pull, by skopeo and on the wire, naming the policy.
    proc = _skopeo_pull(app, f"{repo}:app", tmp_path / "p1")
    assert proc.returncode != 0 and "not signed by cosign" in proc.stderr, proc.stderr
    r = requests.get(f"{app.url}/v2/{repo}/manifests/app", auth=app.admin, timeout=10)
    assert r.status_code == 412
    error = r.json()["errors"][0]
    assert error["code"] == "PROJECT_POLICY_VIOLATION"
    assert "enable_content_trust_cosign" in error["message"] and "no cosign signature" in error["message"]

    # Signed, but by a key the appliance does not trust: still refused.
    key = cosignsign.generate(tmp_path / "keys", "team")
    sig_digest = cosignsign.sign_tag_scheme(app.url, repo, app_digest, key, app.admin)
    r = requests.get(f"{app.url}/v2/{repo}/manifests/app", auth=app.admin, timeout=10)
    assert r.status_code == 412 and "no image-signing key is trusted" in r.json()["errors"][0]["message"]
    stranger = cosignsign.generate(tmp_path / "keys", "stranger")
    cargohold("image-keys", "add", stranger.pub_file, "--description", "someone else", "--data-dir", app.data_dir)
    r = requests.get(f"{app.url}/v2/{repo}/manifests/app", auth=app.admin, timeout=10)
    assert r.status_code == 412 and "not made by any trusted" in r.json()["errors"][0]["message"]

    # Trusting the signer's key (cosign.pub) lets the image through, byte for byte.
    out = cargohold("image-keys", "add", key.pub_file, "--description", "team", "--data-dir", app.data_dir)
    assert "ecdsa-p256" in out.stdout
    proc = _skopeo_pull(app, f"{repo}:app", tmp_path / "p2")
    assert proc.returncode == 0, proc.stderr
    # The signature itself stays readable (verifiers fetch it), by its cosign tag.
    r = requests.get(f"{app.url}/v2/{repo}/manifests/sha256-{app_digest.encoded}.sig", auth=app.admin,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == str(sig_digest)

    # A genuine signature of app:1 placed under other:1's cosign tag proves nothing about other:1.
    other_digest, _, _ = _digest(app, repo, "other")
    cosignsign.sign_tag_scheme(app.url, repo, other_digest, key, app.admin, over=app_digest)
    r = requests.get(f"{app.url}/v2/{repo}/manifests/other", auth=app.admin, timeout=10)
    assert r.status_code == 412
    assert f"over {app_digest}, not over {other_digest}" in r.json()["errors"][0]["message"]

    # A multi-arch index signed as an OCI 1.1 referrer: the index and its platform manifests pull.
    multi = _digest(app, repo, "multi", INDEX)
    assert _skopeo_pull(app, f"{repo}:multi", tmp_path / "p3", "--all").returncode != 0
    cosignsign.sign_referrer(app.url, repo, multi[0], multi[1], multi[2], key, app.admin)
    proc = _skopeo_pull(app, f"{repo}:multi", tmp_path / "p4", "--all")
    assert proc.returncode == 0, proc.stderr

    # Removing the key takes effect at once (verification results are cached per key set).
    key_id = cosign.key_id(key.private.public_key())
    assert key_id in out.stdout
    cargohold("image-keys", "remove", key_id[:20], "--data-dir", app.data_dir)
    assert requests.get(f"{app.url}/v2/{repo}/manifests/app", auth=app.admin, timeout=10).status_code == 412

    # Policy off: unsigned images pull again.
    off = requests.put(f"{app.url}/api/v2.0/projects/{project}", auth=app.admin, timeout=10,
                       json={"metadata": {"enable_content_trust_cosign": "false"}})
    assert off.status_code == 200, off.text
    assert _skopeo_pull(app, f"{repo}:other", tmp_path / "p5").returncode == 0


def test_edge_host_pulls_through_the_mirror_follow_the_policy(
        containerd: Containerd, tmp_path: Path, appliance_factory: Callable[..., Appliance]) -> None:
    """containerd pulling original names (``?ns=docker.io``) gets the signed image and a refusal for the other."""
    app = appliance_factory()
    cargohold("project", "content-trust", "spectro-images", "on", "--data-dir", app.data_dir)
    lay = OciLayout(tmp_path / "src")
    names = {kind: f"ct{kind}{uuid.uuid4().hex[:8]}" for kind in ("signed", "unsigned")}
    for n, name in enumerate(names.values()):
        lay.add_image([30_000], seed=uuid.uuid4().int % 10**9 + n, ref=name)
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", app.creds,
                        f"oci:{lay.root}:{name}", f"docker://{app.host}/spectro-images/docker.io/library/{name}:1"],
                       check=True, capture_output=True)
    repo = f"spectro-images/docker.io/library/{names['signed']}"
    digest, _, _ = _digest(app, repo, "1")
    key = cosignsign.generate(tmp_path / "keys")
    cosignsign.sign_tag_scheme(app.url, repo, digest, key, app.admin)
    cargohold("image-keys", "add", key.pub_file, "--data-dir", app.data_dir)
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / "docker.io").mkdir(parents=True)
    (hosts_dir / "docker.io" / "hosts.toml").write_text(
        f'server = "http://127.0.0.1:{free_port()}"\n\n[host."http://{app.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n')

    signed = f"docker.io/library/{names['signed']}:1"
    containerd.ctr("images", "pull", signed, hosts_dir=hosts_dir)
    assert containerd.image_digest(signed) == str(digest)
    with pytest.raises(ContainerdError, match="412"):
        containerd.ctr("images", "pull", f"docker.io/library/{names['unsigned']}:1", hosts_dir=hosts_dir,
                       timeout=60)
    assert any(r["method"] == "GET" and r["status"] == 412 and r["query"] == "ns=docker.io"
               and re.fullmatch(rf"/v2/library/{names['unsigned']}/manifests/sha256:[0-9a-f]{{64}}", r["path"])
               for r in request_lines(app.log())), "the refusal was not the appliance's"
