"""Two releases of one site for the release tests: v2 moves two tags, keeps one image, adds one.

    a:1.0   v1 -> A1, v2 -> A2   (moved; the v2 definition pins A2 by digest)
    b:1.0   v1 -> B1, v2 -> B2   (moved)
    c:1.0   C in both            (unchanged, byte-identical)
    d:1.0   only in v2           (new tag: published at import)

Each bundle carries a cluster definition of the same name: v2 bumps the
pack version, changes a variable's default and adds a variable.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bundles import format as fmt
from bundles import keys
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.bundles.conftest import cli
from tests.images import OciLayout
from tests.layouts import sha256_file

API = "/api/cargohold/v1"


@dataclass(frozen=True)
class Site:
    """What the tests need to know about the two bundles."""

    v1: Path
    v2: Path
    v1_layout: OciLayout
    v2_layout: OciLayout
    refs: dict[str, str]  # "a".."d" -> original reference
    digests: dict[str, str]  # "a1", "a2", "b1", "b2", "c", "d" -> manifest digest
    definition: str
    v1_definition_digest: str
    v2_definition_digest: str

    def repo(self, key: str) -> str:
        return "spectro-images/" + self.refs[key].rsplit(":", 1)[0]

    def by_digest(self, key: str, digest_key: str) -> str:
        return self.refs[key].rsplit(":", 1)[0] + "@" + self.digests[digest_key]


def release_api(app: Appliance, method: str, path: str, **kwargs: Any) -> requests.Response:
    """A call to the release API, as the admin unless `auth` is given."""
    kwargs.setdefault("auth", app.admin)
    return requests.request(method, f"{app.url}{API}{path}", timeout=60, **kwargs)


def import_release(app: Appliance, bundle: Path) -> dict[str, Any]:
    """Import `bundle` with the CLI; the release it staged."""
    release: dict[str, Any] = json.loads(cli("bundle", "import", str(bundle), "--data-dir", str(app.data_dir),
                                             "--json", "--quiet").stdout)["release"]
    return release


def blob_sizes(layout: OciLayout) -> dict[str, int]:
    return {f"sha256:{p.name}": p.stat().st_size for p in (layout.root / "blobs" / "sha256").iterdir()}


def _bundle(out: Path, layout: OciLayout, key: keys.PrivateKey, version: str, definition: Path) -> Path:
    member = f"cluster-definitions/{definition.name}"
    entries = craft.standard_entries(layout.root, key, name="edge-site", version=version,
                                     extra=[(member, definition)],
                                     definitions=[fmt.FileEntry("edge", version, member)])
    return craft.write_bundle(out, entries)


def make_site(tmp: Path, key: keys.PrivateKey) -> Site:
    tag = uuid.uuid4().hex[:8]
    seed = uuid.uuid4().int % 100_000
    refs = {k: f"docker.io/cargotest/rel-{k}-{tag}:1.0" for k in "abcd"}
    v1 = OciLayout(tmp / "v1-layout")
    v2 = OciLayout(tmp / "v2-layout")
    digests = {
        "a1": v1.add_image([120_000, 20_000], seed=seed + 1, ref=refs["a"]).digest,
        "b1": v1.add_image([90_000], seed=seed + 2, ref=refs["b"]).digest,
        "c": v1.add_image([40_000], seed=seed + 3, ref=refs["c"]).digest,
        "a2": v2.add_image([130_000, 20_000], seed=seed + 11, ref=refs["a"]).digest,
        "b2": v2.add_image([95_000], seed=seed + 12, ref=refs["b"]).digest,
        "d": v2.add_image([30_000], seed=seed + 14, ref=refs["d"]).digest,
    }
    assert v2.add_image([40_000], seed=seed + 3, ref=refs["c"]).digest == digests["c"]
    name = f"edge-{tag}"
    d1 = simple_definition(name, [refs["a"], refs["b"], refs["c"]],
                           variables=[{"name": "region", "default": "eu"}])
    d2 = simple_definition(name, [f"{refs['a']}@{digests['a2']}", refs["b"], refs["c"], refs["d"]],
                           variables=[{"name": "region", "default": "us"}, {"name": "ntp", "default": "pool.ntp.org"}])
    d2["version"] = "2.0.0"
    d2["profiles"][0]["packs"][0]["version"] = "1.1.0"
    a1 = build_archive(tmp / "edge-v1.tgz", d1)
    a2 = build_archive(tmp / "edge-v2.tgz", d2)
    return Site(_bundle(tmp / "site-v1.tar.zst", v1, key, "1.0.0", a1),
                _bundle(tmp / "site-v2.tar.zst", v2, key, "2.0.0", a2),
                v1, v2, refs, digests, name, sha256_file(a1), sha256_file(a2))


def trust(app: Appliance, key: keys.PrivateKey, tmp: Path) -> None:
    pub = tmp / "trusted.pub.pem"
    pub.write_bytes(keys.public_pem(key))
    cli("keys", "add", str(pub), "--description", "release tests", "--data-dir", str(app.data_dir))
