"""The importer killed with SIGKILL mid-way, then run again: it completes, reusing what it had verified.

The CLI runs as a real process over a real data directory; the test kills
it once it has staged some blobs, checks that nothing became visible, runs
the import again and checks the store: consistent, complete, and the blobs
staged before the kill moved into place rather than written again (same
inode and mtime).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundles import keys
from registry.digest import Digest
from tests.bundles import craft
from tests.bundles.conftest import REPO_ROOT, big_layout, cli
from tests.layouts import sha256_file
from tests.pgengine import env_for, metadata


def _rows(data: Path, sql: str) -> list[tuple[object, ...]]:
    with metadata(data) as conn:
        return conn.execute(sql).fetchall()


def _kill_mid_import(bundle: Path, data: Path, staged_at_least: int) -> dict[str, tuple[int, int]]:
    """Start the CLI import, SIGKILL it once `staged_at_least` blobs are staged; returns their (inode, mtime)."""
    log = (data.parent / "import.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "web.cli", "bundle", "import", str(bundle), "--data-dir",
                             str(data)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                            env={**os.environ, **env_for(["--data-dir", data])})
    staging = data / "imports" / "staging"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            staged = list(staging.glob("*/sha256/*"))
            if len(staged) >= staged_at_least:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert proc.poll() is None, ("the import ended before it could be killed (too small a bundle?):\n"
                                         + (data.parent / "import.log").read_text())
            time.sleep(0.005)
        else:
            pytest.fail("the import staged nothing within 120 s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in staging.glob("*/sha256/*")}


def test_sigkill_mid_import_then_import_again_completes(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, ref = big_layout(tmp_path / "layout", layers=24, layer_size=4 << 20)
    bundle = craft.write_bundle(tmp_path / "big.tar.zst", craft.standard_entries(layout.root, ec_key), level=1)
    data = tmp_path / "data"
    pub = tmp_path / "ec.pub"
    pub.write_bytes(keys.public_pem(ec_key))
    cli("keys", "add", str(pub), "--data-dir", str(data))

    staged = _kill_mid_import(bundle, data, staged_at_least=2)
    assert len(staged) >= 2
    # Nothing was published: no repository, tag or manifest; the blob store holds no bundle blob.
    assert _rows(data, "SELECT name FROM repositories") == []
    assert _rows(data, "SELECT * FROM tags") == [] and _rows(data, "SELECT * FROM manifests") == []
    assert not [p for p in (data / "blobs").rglob("*") if p.is_file()]
    jobs = json.loads(cli("bundle", "list", "--data-dir", str(data), "--json").stdout)
    assert jobs[0]["state"] == "failed" and "interrupted" in jobs[0]["error"]

    report = json.loads(cli("bundle", "import", str(bundle), "--data-dir", str(data), "--json").stdout)
    total = len(list((layout.root / "blobs" / "sha256").iterdir()))
    assert report["blobs"]["new"] + report["blobs"]["reused"] == total
    assert report["blobs"]["reused"] >= len(staged)  # what was staged before the kill was not written again
    for hex_, (inode, mtime) in staged.items():
        stored = data / "blobs" / "sha256" / hex_[:2] / hex_
        assert stored.stat().st_ino == inode and stored.stat().st_mtime_ns == mtime, f"blob {hex_} was rewritten"

    # The store is consistent: every blob file holds the bytes its name says, every row has its file,
    # the image resolves, and no staging is left behind.
    files = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    assert len(files) == total
    for f in files:
        assert sha256_file(f) == f"sha256:{f.name}"
    for (digest,) in _rows(data, "SELECT digest FROM repository_blobs"):
        d = Digest.parse(str(digest))
        assert (data / "blobs" / "sha256" / d.encoded[:2] / d.encoded).is_file()
    repository = "spectro-images/" + ref.rsplit(":", 1)[0]
    tags = _rows(data, "SELECT t.name, t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                       f"WHERE r.name = '{repository}'")
    assert tags == [("1", report["images"][0]["digest"])]
    assert not list((data / "imports" / "staging").iterdir())
