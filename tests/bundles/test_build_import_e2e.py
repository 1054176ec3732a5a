"""End to end through the CLI contract: `bundle build` on one side, `bundle import` on the other,
then real clients pull from the appliance.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold, manifest_of
from tests.images import OciLayout


def _images(lay: OciLayout) -> dict[str, str]:
    index = json.loads((lay.root / "index.json").read_text())
    return {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"] for e in index["manifests"]}


def _pull_all(app: Appliance, reference: str, dest: Path) -> str:
    """skopeo copy --all from the appliance into an OCI layout; returns the top manifest's digest."""
    src = f"docker://{app.host}/spectro-images/{reference}"
    subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--src-creds",
                    app.creds, src, f"oci:{dest}:x"], check=True, capture_output=True)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", app.creds, src],
                         check=True, capture_output=True).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _assert_blobs_identical(copied: Path, source: OciLayout) -> None:
    blobs = list((copied / "blobs" / "sha256").iterdir())
    assert blobs
    for blob in blobs:
        original = source.root / "blobs" / "sha256" / blob.name
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        assert original.read_bytes() == blob.read_bytes()


def test_build_sign_trust_import_then_skopeo_pulls_every_image(
        tmp_path: Path, appliance_factory: Callable[..., Appliance]) -> None:
    lay = OciLayout(tmp_path / "oci")
    lay.add_image([200_000, 30_000], seed=31, ref="docker.io/library/nginx:1.25")
    lay.add_multiarch([60_000], ref="gcr.io/acme/agent:3.1", seed=32)
    lay.add_image([10_000], seed=33, ref="quay.io/org/tool:v2")
    cargohold("keys", "generate", tmp_path / "signing", "--type", "rsa", "--bits", "2048")
    bundle = tmp_path / "site.tar.zst"
    cargohold("bundle", "build", "--name", "site", "--version", "1", "--layout", lay.root,
              "--sign-key", tmp_path / "signing.pem", "--split", "100K", "-o", bundle)
    assert not bundle.exists() and len(list(tmp_path.glob("site.tar.zst.part*"))) > 2

    site = tmp_path / "site-data"
    cargohold("keys", "add", tmp_path / "signing.pub.pem", "--description", "build team", "--data-dir", site)
    report = json.loads(cargohold("bundle", "import", bundle, "--data-dir", site, "--json", "--quiet").stdout)
    key_id = cargohold("keys", "generate", tmp_path / "unused", "--type", "ed25519").stdout.strip()
    assert report["keyId"] != key_id and report["keyId"].startswith("sha256:")

    app = appliance_factory(name="site-data")
    for reference, digest in _images(lay).items():
        dest = tmp_path / f"pulled-{hashlib.sha256(reference.encode()).hexdigest()[:8]}"
        assert _pull_all(app, reference, dest) == digest
        _assert_blobs_identical(dest, lay)


def test_delta_bundle_imports_over_its_base_and_fails_clearly_without_it(
        tmp_path: Path, appliance_factory: Callable[..., Appliance]) -> None:
    lay = OciLayout(tmp_path / "oci")
    lay.add_image([150_000, 20_000], seed=41, ref="docker.io/acme/app:1")
    cargohold("keys", "generate", tmp_path / "k", "--type", "ecdsa-p256")
    base = tmp_path / "base.tar.zst"
    cargohold("bundle", "build", "--name", "app", "--version", "1", "--layout", lay.root, "--sign-key",
              tmp_path / "k.pem", "-o", base)
    lay.add_image([150_000, 20_000, 40_000], seed=41, ref="docker.io/acme/app:2")
    delta = tmp_path / "delta.tar.zst"
    cargohold("bundle", "build", "--name", "app", "--version", "2", "--layout", lay.root, "--sign-key",
              tmp_path / "k.pem", "--base", base, "-o", delta)
    assert manifest_of(delta)["externalBlobs"]
    assert delta.stat().st_size < base.stat().st_size

    # Without its base: refused, naming the problem, and nothing becomes visible.
    fresh = tmp_path / "fresh"
    cargohold("keys", "add", tmp_path / "k.pub.pem", "--data-dir", fresh)
    proc = cargohold("bundle", "import", delta, "--data-dir", fresh, "--quiet", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = proc.stderr.lower()
    assert "app 1" in proc.stderr and ("base" in message or "missing" in message), proc.stderr
    app_fresh = appliance_factory(name="fresh")
    catalog = requests.get(f"{app_fresh.url}/v2/_catalog", auth=app_fresh.admin, timeout=10).json()
    assert catalog["repositories"] == []

    # Over its base: both versions pull byte-identical.
    site = tmp_path / "site"
    cargohold("keys", "add", tmp_path / "k.pub.pem", "--data-dir", site)
    cargohold("bundle", "import", base, "--data-dir", site, "--quiet")
    cargohold("bundle", "import", delta, "--data-dir", site, "--quiet")
    app = appliance_factory(name="site")
    for reference, digest in _images(lay).items():
        dest = tmp_path / f"pulled-{reference.rsplit(':', 1)[1]}"
        assert _pull_all(app, reference, dest) == digest
        _assert_blobs_identical(dest, lay)


def test_platform_filtered_index_is_served_under_its_original_reference(
        tmp_path: Path, appliance_factory: Callable[..., Appliance]) -> None:
    lay = OciLayout(tmp_path / "oci")
    lay.add_multiarch([30_000], ref="gcr.io/acme/agent:4", seed=61)
    cargohold("keys", "generate", tmp_path / "k", "--type", "ed25519")
    bundle = tmp_path / "arm.tar.zst"
    cargohold("bundle", "build", "--name", "arm", "--version", "1", "--layout", lay.root, "--platform",
              "linux/arm64", "--sign-key", tmp_path / "k.pem", "-o", bundle)
    (image,) = manifest_of(bundle)["images"]
    upstream = _images(lay)["gcr.io/acme/agent:4"]
    assert image["digest"] != upstream
    site = tmp_path / "site"
    cargohold("keys", "add", tmp_path / "k.pub.pem", "--data-dir", site)
    cargohold("bundle", "import", bundle, "--data-dir", site, "--quiet")
    app = appliance_factory(name="site")
    assert _pull_all(app, "gcr.io/acme/agent:4", tmp_path / "pulled") == image["digest"]
    index = json.loads(lay.blob_path(upstream).read_bytes())
    arm64 = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    amd64 = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    src = f"docker://{app.host}/spectro-images/gcr.io/acme/agent@"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", app.creds, src + arm64],
                         check=True, capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == arm64  # the platform's manifest is upstream's
    missing = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", app.creds,
                              src + amd64], capture_output=True)
    assert missing.returncode != 0
