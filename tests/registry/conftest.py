"""Fixtures for the registry tests: source image layouts and helpers to run real clients.

`source` is one OCI image layout (built by tests.images, no network) with a
multi-layer image tagged ``multi:1`` and a two-platform index tagged
``multiarch:1``; tests copy from it and compare what comes back by digest.
`private_project` is a private Harbor project on the session appliance.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.appliance import Appliance
from tests.images import OCI_INDEX, REF_NAME, Blob, OciLayout
from tests.layouts import json_or_none

LAYER_SIZES = [400_000, 120_000, 3_000]


@dataclass(frozen=True)
class SourceImages:
    """The layout the client tests push from, and what it holds."""

    layout: OciLayout
    image: Blob  # multi:1, a three-layer linux/amd64 image
    index: Blob  # multiarch:1, linux/amd64 + linux/arm64

    @property
    def path(self) -> Path:
        return self.layout.root


def run(*cmd: str, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 180.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client command; on failure raise with its full output so the test says why."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def require(tool: str) -> None:
    """Skip when a client is not installed (scripts/setup-test-env installs them all)."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed; scripts/setup-test-env installs it")


@pytest.fixture(scope="session")
def private_project(appliance: Appliance) -> str:
    """A private Harbor project (created through the Harbor API): pulls from it need credentials."""
    name = f"private-{uuid.uuid4().hex[:8]}"
    resp = requests.post(f"{appliance.url}/api/v2.0/projects", auth=appliance.admin, timeout=10,
                         json={"project_name": name, "metadata": {"public": "false"}})
    assert resp.status_code == 201, resp.text
    return name


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceImages:
    layout = OciLayout(tmp_path_factory.mktemp("source") / "layout")
    image = layout.add_image(LAYER_SIZES, seed=7, ref="multi:1")
    index = layout.add_multiarch([150_000, 2_000], ref="multiarch:1", seed=8)
    return SourceImages(layout, image, index)


def layout_ref(root: Path, ref: str | None = None) -> str:
    """The manifest digest an OCI layout's index.json names for `ref` (or its only entry)."""
    entries = json.loads((root / "index.json").read_text())["manifests"]
    if ref is not None:
        entries = [e for e in entries if e.get("annotations", {}).get(REF_NAME) == ref]
    assert len(entries) == 1, f"{root}/index.json: expected one entry for {ref!r}, got {entries}"
    return str(entries[0]["digest"])


def is_index(root: Path, digest: str) -> bool:
    doc = json_or_none(root / "blobs" / "sha256" / digest.split(":", 1)[1])
    return bool(doc) and doc.get("mediaType") == OCI_INDEX  # type: ignore[union-attr]
