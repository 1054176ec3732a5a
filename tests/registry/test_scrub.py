"""`cargohold scrub` finds a blob corrupted on disk, quarantines it, and a fresh push repairs it.

The image is pushed to a running appliance with skopeo; one byte of a layer
file is then flipped on disk, as a failing disk would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests

from tests.appliance import Appliance
from tests.images import OciLayout
from tests.pgengine import env_for
from tests.registry.conftest import require, run

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "web.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120, env={**os.environ, **env_for(args)})


def test_scrub_finds_quarantines_and_a_push_repairs_a_corrupted_blob(
        appliance_factory: Callable[..., Appliance], tmp_path: Path) -> None:
    require("skopeo")
    app = appliance_factory()
    layout = OciLayout(tmp_path / "src")
    image = layout.add_image([300_000, 20_000], seed=4242, ref="img")
    manifest = json.loads(layout.read(image))
    layer = manifest["layers"][0]["digest"]
    dest = f"docker://{app.host}/spectro-images/scrub/app:1"
    push = ("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", app.creds, f"oci:{layout.root}:img", dest)
    run(*push)

    clean = _cli("scrub", "--json", "--data-dir", str(app.data_dir))
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["ok"] is True and json.loads(clean.stdout)["checked"] == 4

    blob = app.data_dir / "blobs" / "sha256" / layer[7:9] / layer[7:]
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0x01
    blob.write_bytes(bytes(data))

    found = _cli("scrub", "--json", "--data-dir", str(app.data_dir))
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert [d["digest"] for d in report["damaged"]] == [layer] and report["missing"] == []
    quarantined = Path(report["damaged"][0]["quarantined"])
    assert quarantined.parent == app.data_dir / "quarantine" and quarantined.read_bytes() == bytes(data)
    assert not blob.exists()
    human = _cli("scrub", "--data-dir", str(app.data_dir))
    assert human.returncode == 1 and f"MISSING {layer}: recorded but its file is gone" in human.stdout

    # Never served wrong bytes: the pull fails instead.
    pulled = subprocess.run(["skopeo", "copy", "--retry-times", "0", "--src-tls-verify=false", dest,
                             f"oci:{tmp_path / 'bad'}:x"], capture_output=True, text=True, timeout=120)
    assert pulled.returncode != 0 and ("blob unknown" in pulled.stderr.lower() or "404" in pulled.stderr)

    # Pushing the image again puts correct bytes back under the same digest.
    run(*push)
    assert blob.read_bytes() == layout.blob_path(layer).read_bytes()
    again = requests.post(f"{app.url}/api/cargohold/v1/scrub", auth=app.admin, json={}, timeout=120)
    assert again.status_code == 200 and again.json()["ok"] is True
    assert requests.post(f"{app.url}/api/cargohold/v1/scrub", timeout=30).status_code == 401
    run("skopeo", "copy", "--src-tls-verify=false", dest, f"oci:{tmp_path / 'good'}:x")
    assert (tmp_path / "good" / "blobs" / "sha256" / layer[7:]).read_bytes() == layout.blob_path(layer).read_bytes()
