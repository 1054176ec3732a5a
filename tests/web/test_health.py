"""/livez, /readyz and Harbor's /api/v2.0/health on the real appliance, with each check made to fail for real.

The free-space check fails with a reserve larger than the volume; the
database check with another process holding SQLite's write lock longer than
the check waits (as a stuck writer would); the blob store check with its
directory gone, or a file in its place.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable

import pytest
import requests

from registry.health import DB_TIMEOUT_SECONDS
from tests.appliance import Appliance


def readyz(app: Appliance, accept: str = "application/json") -> requests.Response:
    return requests.get(f"{app.url}/readyz", headers={"Accept": accept}, timeout=DB_TIMEOUT_SECONDS + 10)


def harbor_health(app: Appliance) -> dict[str, object]:
    resp = requests.get(f"{app.url}/api/v2.0/health", timeout=DB_TIMEOUT_SECONDS + 10)
    assert resp.status_code == 200  # Harbor answers 200 and says unhealthy in the body
    return dict(resp.json())


def component(health: dict[str, object], name: str) -> dict[str, str]:
    components = health["components"]
    assert isinstance(components, list)
    return next(c for c in components if c["name"] == name)


def test_livez_and_readyz_answer_without_credentials(appliance: Appliance) -> None:
    resp = requests.get(f"{appliance.url}/livez", timeout=10)
    assert resp.status_code == 200 and resp.text == "ok\n"
    resp = readyz(appliance)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "checks": [{"name": "database", "ok": True},
                                                         {"name": "blobstore", "ok": True},
                                                         {"name": "disk", "ok": True}]}
    text = readyz(appliance, "text/plain")
    assert text.status_code == 200 and text.headers["Content-Type"].startswith("text/plain")
    assert text.text == "[+]database ok\n[+]blobstore ok\n[+]disk ok\nready\n"
    health = harbor_health(appliance)
    assert health["status"] == "healthy"
    assert [c["name"] for c in health["components"]] == ["core", "database", "registry", "disk"]  # type: ignore[union-attr]


def test_free_space_below_the_reserve_is_unready_naming_disk(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env={"CARGOHOLD_IMPORT_RESERVE_BYTES": str(1 << 60)})
    resp = readyz(app)
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unready" and body["failing"] == ["disk"]
    disk = next(c for c in body["checks"] if c["name"] == "disk")
    assert disk["ok"] is False and "below the reserve" in disk["error"]
    assert str(app.data_dir) not in resp.text  # no path for anonymous callers
    text = readyz(app, "text/plain")
    assert text.status_code == 503 and "[-]disk failed: free space" in text.text and "not ready: disk" in text.text
    health = harbor_health(app)
    assert health["status"] == "unhealthy"
    disk_component = component(health, "disk")
    assert disk_component["status"] == "unhealthy" and "below the reserve" in disk_component["error"]
    assert component(health, "database")["status"] == "healthy"
    # Liveness is not readiness: the process is fine, it must not be restarted for a full disk.
    assert requests.get(f"{app.url}/livez", timeout=10).status_code == 200


@pytest.mark.sqlite_only  # holds SQLite's write lock from outside
def test_a_database_that_takes_no_write_is_unready_naming_database(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    assert readyz(app).status_code == 200
    # Another process holds the write lock (a stuck writer): reads still work, a write waits and gives up.
    holder = sqlite3.connect(app.data_dir / "cargohold.db", timeout=10, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        resp = readyz(app)
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["failing"] == ["database"]
        error = next(c for c in body["checks"] if c["name"] == "database")["error"]
        assert "cannot be written" in error and "another writer" in error
        health = harbor_health(app)
        assert health["status"] == "unhealthy" and component(health, "database")["status"] == "unhealthy"
        assert component(health, "disk")["status"] == "healthy"
    finally:
        holder.rollback()
        holder.close()
    assert readyz(app).status_code == 200


def test_a_missing_or_unlistable_blob_store_is_unready_naming_it(appliance_factory: Callable[..., Appliance]) -> None:
    # One worker, no seed scan: a worker still starting would make the data directory's folders again (migrate).
    app = appliance_factory("--workers", "1", "--no-seed-scan")
    blobs = app.data_dir / "blobs"
    away = app.data_dir / "blobs.away"
    blobs.rename(away)
    try:
        resp = readyz(app)
        assert resp.status_code == 503 and resp.json()["failing"] == ["blobstore"]
        assert "missing" in resp.json()["checks"][1]["error"]
        health = harbor_health(app)
        assert health["status"] == "unhealthy"
        registry = component(health, "registry")
        assert registry["status"] == "unhealthy" and "blob store" in registry["error"]
        blobs.write_bytes(b"")  # root reads any directory whatever its mode: a file in its place cannot be listed
        resp = readyz(app)
        assert resp.status_code == 503 and "not a directory" in resp.json()["checks"][1]["error"]
    finally:
        blobs.unlink(missing_ok=True)
        if blobs.exists():
            shutil.rmtree(blobs)
        away.rename(blobs)
    assert readyz(app).status_code == 200
