"""Fixtures and helpers for the bundle import tests.

Layouts are built by tests.images (real OCI content, no network), bundles
written by tests.bundles.craft. `snapshot` captures everything a client or
the next import could see in a data directory (rows and blob files), so a
refused import can be shown to have left it exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bundles import keys
from bundles.importer import Importer, ImportPolicy
from bundles.trust import TrustStore
from registry.model import Registry
from registry.paths import DataPaths
from tests.appliance import Appliance
from tests.images import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, REF_NAME, OciLayout
from tests.layouts import layout_closure
from tests.pgengine import env_for, metadata

if TYPE_CHECKING:
    from tests.bundles.releases_util import Site as ReleaseSite

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rsa_key() -> keys.PrivateKey:
    return keys.generate("rsa", 2048)


@pytest.fixture(scope="session")
def ec_key() -> keys.PrivateKey:
    return keys.generate("ecdsa-p256")


def unique_layout(root: Path, images: int = 2, layer_sizes: tuple[int, ...] = (200_000, 30_000),
                  multiarch: bool = True) -> tuple[OciLayout, list[str]]:
    """A layout with fresh content (new blobs every call) and unique references; returns it and its refs."""
    tag = uuid.uuid4().hex[:10]
    seed = uuid.uuid4().int % 1_000_000
    layout = OciLayout(root)
    refs = []
    for i in range(images):
        ref = f"docker.io/cargotest/app{i}-{tag}:v{i}"
        layout.add_image(list(layer_sizes), seed=seed + i, ref=ref)
        refs.append(ref)
    if multiarch:
        ref = f"quay.io/cargotest/multi-{tag}:1.0"
        layout.add_multiarch([50_000], ref=ref, seed=seed + 500)
        refs.append(ref)
    return layout, refs


def big_layout(root: Path, layers: int, layer_size: int) -> tuple[OciLayout, str]:
    """One image of `layers` incompressible layers (raw random bytes: generating gzip would dominate the test)."""
    layout = OciLayout(root)
    blobs = [layout.add_blob(os.urandom(layer_size), OCI_LAYER) for _ in range(layers)]
    config = layout.add_blob(json.dumps({"architecture": "amd64", "os": "linux",
                                         "rootfs": {"type": "layers", "diff_ids": []}}).encode(), OCI_CONFIG)
    manifest = layout.add_blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                           "config": config.descriptor(),
                                           "layers": [b.descriptor() for b in blobs]}).encode(), OCI_MANIFEST)
    ref = f"docker.io/cargotest/crash-{uuid.uuid4().hex[:10]}:1"
    layout.tag(manifest, ref)
    return layout, ref



@dataclass(frozen=True)
class Site:
    """A data directory with the import core over it (no server)."""

    paths: DataPaths
    registry: Registry
    trust: TrustStore

    def importer(self, **policy: object) -> Importer:
        return Importer(self.registry, self.trust, ImportPolicy(**policy))  # type: ignore[arg-type]


def make_site(root: Path, *trusted: keys.PrivateKey) -> Site:
    paths = DataPaths(root)
    paths.ensure()
    registry = Registry(paths)
    trust = TrustStore(paths)
    for key in trusted:
        trust.add(keys.public_pem(key), "test key")
    return Site(paths, registry, trust)


def snapshot(data_dir: Path) -> dict[str, object]:
    """Everything visible in a data directory: registry rows and blob files (path, size, inode)."""
    with metadata(data_dir) as conn:
        tables = {}
        for table, cols in (("repositories", "name"), ("tags", "repository_id, name, digest"),
                            ("manifests", "repository_id, digest"), ("repository_blobs", "repository_id, digest"),
                            ("manifest_refs", "repository_id, manifest, child"), ("blobs", "digest, size")):
            tables[table] = sorted(conn.execute(f"SELECT {cols} FROM {table}").fetchall())
    files = sorted((str(p.relative_to(data_dir)), p.stat().st_size, p.stat().st_ino)
                   for p in (data_dir / "blobs").rglob("*") if p.is_file())
    staging = data_dir / "imports" / "staging"
    staged = sorted(str(p.relative_to(staging)) for p in staging.rglob("*")) if staging.exists() else []
    return {"tables": tables, "files": files, "staging": staged}


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `cargohold` (python -m web.cli) and return the finished process."""
    proc = subprocess.run([sys.executable, "-m", "web.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env_for(args), **(env or {})}, cwd=REPO_ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cargohold {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_pulled_identical(pulled: Path, source: Path, digest: str) -> int:
    """Every blob reachable from `digest` in the pulled layout equals the source layout's bytes; returns the count."""
    seen = layout_closure(pulled, digest)  # each blob present and hashing to its digest
    for d in seen:
        hex_ = d.split(":", 1)[1]
        got, want = pulled / "blobs" / "sha256" / hex_, source / "blobs" / "sha256" / hex_
        assert got.read_bytes() == want.read_bytes(), f"pulled blob {d} differs from the bundle's"
    return len(seen)


@pytest.fixture(scope="module")
def trusted(appliance: Appliance, tmp_path_factory: pytest.TempPathFactory, rsa_key: keys.PrivateKey,
            ec_key: keys.PrivateKey) -> Appliance:
    """The session appliance, trusting the test keys."""
    d = tmp_path_factory.mktemp("trusted")
    for key, name in ((rsa_key, "rsa"), (ec_key, "ec")):
        pub = d / f"{name}.pub.pem"
        pub.write_bytes(keys.public_pem(key))
        proc = cli("keys", "add", str(pub), "--description", f"test {name}", "--data-dir", str(appliance.data_dir),
                   check=False)
        assert proc.returncode == 0 or "already trusted" in proc.stderr, proc.stderr
    return appliance


@pytest.fixture
def site(tmp_path: Path, ec_key: keys.PrivateKey) -> ReleaseSite:
    """v1 and v2 bundles of one site (tests/bundles/releases_util.py), signed with `ec_key`."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    from tests.bundles.releases_util import make_site as make_release_site  # it imports this module

    return make_release_site(tmp_path, ec_key)


def skopeo_pull(app: Appliance, ref: str, dest: Path) -> str:
    """Copy `ref` (served under the default project) into an OCI layout with skopeo; returns its digest."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    run("skopeo", "copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
        f"docker://{app.host}/spectro-images/{ref}", f"oci:{dest}:pulled")
    entries = json.loads((dest / "index.json").read_text())["manifests"]
    return next(str(e["digest"]) for e in entries if e.get("annotations", {}).get(REF_NAME) == "pulled")


def source_digest(layout_root: Path, ref: str) -> str:
    entries = json.loads((layout_root / "index.json").read_text())["manifests"]
    return next(str(e["digest"]) for e in entries if e["annotations"][REF_NAME] == ref)
