"""Pushes stop before the data volume fills: the free-space reserve answers 507."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from registry.errors import RegistryError
from registry.model import Registry
from registry.paths import DataPaths
from registry.uploads import Uploads
from tests.appliance import Appliance

# More than any disk here has free: every write must be refused.
IMPOSSIBLE_RESERVE = str(1 << 60)


def test_push_is_refused_when_it_would_eat_into_the_reserve(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env={"CARGOHOLD_IMPORT_RESERVE_BYTES": IMPOSSIBLE_RESERVE})
    blob = os.urandom(4096)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    name = "spectro-images/test/full"

    started = requests.post(f"{app.url}/v2/{name}/blobs/uploads/", auth=app.admin, timeout=10)
    assert started.status_code == 507, started.text
    error = started.json()["errors"][0]
    assert error["code"] == "INSUFFICIENT_STORAGE"
    assert "must stay free" in error["message"]

    monolithic = requests.post(f"{app.url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=blob,
                               auth=app.admin, timeout=10)
    assert monolithic.status_code == 507, monolithic.text
    assert requests.head(f"{app.url}/v2/{name}/blobs/{digest}", auth=app.admin, timeout=10).status_code == 404
    assert not any((app.data_dir / "blobs").rglob(digest.split(":")[1]))
    assert list((app.data_dir / "uploads").iterdir()) == []


def test_a_chunk_past_the_reserve_is_refused_and_the_session_keeps_its_bytes(tmp_path: Path) -> None:
    registry = Registry(DataPaths(tmp_path / "data"))
    registry.paths.ensure()
    uploads = Uploads(registry)
    session = uploads.start("spectro-images/test/chunks")
    first = os.urandom(1000)
    session = uploads.append(session, io.BytesIO(first), 0, len(first))
    uploads.reserve_bytes = 1 << 60  # the disk "fills" between two chunks
    with pytest.raises(RegistryError) as refused:
        uploads.append(session, io.BytesIO(b"x" * 10), len(first), 10)
    assert refused.value.code == "INSUFFICIENT_STORAGE"
    assert refused.value.status == 507
    assert uploads.get("spectro-images/test/chunks", session.uuid).offset == len(first)
    assert registry.paths.upload(session.uuid).read_bytes() == first
