"""Garbage collection online: it runs again and again while skopeo pushes images and the CLI imports a
bundle into the running appliance, and nothing is lost: every blob pulls back byte-identical.

Before the concurrent part, the content of release v1 that v2 replaced is
made garbage (v2 promoted, retention 1) and aged by two hours (its rows'
timestamps and its files' mtimes moved back): that stands in for the
import having happened long ago, so the collector, with a realistic grace
period, has real work to do while the fresh push and import are protected
by the grace period and the import guard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bundles import keys
from bundles.gc_policy import collect
from bundles.releases import Releases
from registry.model import Registry
from registry.uploads import Uploads
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.conftest import REPO_ROOT, assert_pulled_identical, cli, run, skopeo_pull
from tests.bundles.releases_util import blob_sizes, make_site, trust
from tests.images import OciLayout
from tests.pgengine import data_paths, env_for, metadata

API = "/api/cargohold/v1"
AGE = 7200.0


def _age_everything(data_dir: Path) -> None:
    with metadata(data_dir) as conn:
        for table in ("blobs", "repository_blobs", "manifests"):
            conn.execute(f"UPDATE {table} SET created_at = created_at - ?", [AGE])
    old = time.time() - AGE
    for path in (data_dir / "blobs").rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def test_gc_during_a_concurrent_push_and_import_loses_nothing(
        appliance_factory: Callable[..., Appliance], tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    app = appliance_factory()
    trust(app, ec_key, tmp_path)
    site = make_site(tmp_path / "site", ec_key)
    for bundle in (site.v1, site.v2):
        release = json.loads(cli("bundle", "import", str(bundle), "--data-dir", str(app.data_dir), "--json",
                                 "--quiet").stdout)["release"]
        assert requests.post(f"{app.url}{API}/releases/{release['id']}/promote", auth=app.admin,
                             timeout=60).status_code == 200
    _age_everything(app.data_dir)
    v1_only = set(blob_sizes(site.v1_layout)) - set(blob_sizes(site.v2_layout))

    # What arrives while the collector runs: pushed images and a third bundle.
    pushed = OciLayout(tmp_path / "pushed")
    push_refs = [f"p{i}" for i in range(4)]
    for i, ref in enumerate(push_refs):
        pushed.add_image([400_000, 150_000, 60_000], seed=900_000 + i + os.getpid(), ref=ref)
    v3 = OciLayout(tmp_path / "v3")
    v3_refs = [f"docker.io/cargotest/gc-v3-{i}-{os.getpid()}:3.0" for i in range(3)]
    for i, ref in enumerate(v3_refs):
        v3.add_image([300_000, 80_000], seed=700_000 + i + os.getpid(), ref=ref)
    bundle3 = craft.write_bundle(tmp_path / "v3.tar.zst", craft.standard_entries(v3.root, ec_key, name="extra",
                                                                               version="3.0.0"))

    errors: list[BaseException] = []

    def push() -> None:
        try:
            for ref in push_refs:
                run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", app.creds, "--retry-times", "0",
                    f"oci:{pushed.root}:{ref}", f"docker://{app.host}/spectro-images/docker.io/cargotest/"
                    f"gc-pushed-{os.getpid()}:{ref}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    registry = Registry(data_paths(app.data_dir))
    releases = Releases(registry, "spectro-images")
    uploads = Uploads(registry)
    importer = subprocess.Popen([sys.executable, "-m", "web.cli", "bundle", "import", str(bundle3), "--data-dir",
                                 str(app.data_dir), "--json", "--quiet"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **env_for(["--data-dir", app.data_dir])})
    pusher = threading.Thread(target=push)
    pusher.start()
    reports: list[dict[str, Any]] = []
    while pusher.is_alive() or importer.poll() is None or len(reports) < 3:
        reports.append(collect(releases, uploads, retain=1, grace_seconds=30.0))
    pusher.join()
    out, err = importer.communicate(timeout=300)
    assert not errors, errors
    assert importer.returncode == 0, err
    print(f"{len(reports)} collections ran concurrently, {sum(1 for r in reports if r['deferred'])} deferred "
          "their file sweep for the import")
    reports.append(collect(releases, uploads, retain=1, grace_seconds=30.0))  # after the import: files go too

    removed = {m["digest"] for r in reports for m in r["manifestsRemoved"]}
    assert removed == {site.digests["a1"], site.digests["b1"]}
    assert {b["digest"] for r in reports for b in r["blobsRemoved"]} >= v1_only
    assert sum(r["bytesReclaimed"] for r in reports) >= sum(blob_sizes(site.v1_layout)[d] for d in v1_only)
    for digest in v1_only:
        assert not (app.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]).exists()

    # Nothing was lost: every pushed, imported and promoted image pulls back byte-identical.
    for ref in push_refs:
        dest = tmp_path / f"back-{ref}"
        got = skopeo_pull(app, f"docker.io/cargotest/gc-pushed-{os.getpid()}:{ref}", dest)
        assert assert_pulled_identical(dest, pushed.root, got) == 5
    for i, ref in enumerate(v3_refs):
        dest = tmp_path / f"back-v3-{i}"
        got = skopeo_pull(app, ref, dest)
        assert assert_pulled_identical(dest, v3.root, got) == 4
    assert json.loads(out)["release"]["pendingTags"] == []
    for key in "abcd":
        dest = tmp_path / f"back-{key}"
        got = skopeo_pull(app, site.refs[key], dest)
        assert assert_pulled_identical(dest, site.v2_layout.root, got) >= 3
    scrub = cli("scrub", "--json", "--data-dir", str(app.data_dir))
    assert json.loads(scrub.stdout)["ok"] is True
