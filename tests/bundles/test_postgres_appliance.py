"""The whole appliance with its metadata in PostgreSQL (CARGOHOLD_DATABASE_URL), end to end.

A real `cargohold serve` on a fresh database of Debian's PostgreSQL 15
(tests/pgengine.py, whatever ``--db`` says): skopeo pushes and pulls,
the CLI imports two signed bundles and the release API promotes and rolls
back, garbage collection reclaims the first release's content, and the data
directory never gets a ``cargohold.db``. A second appliance with its own data
directory on the same database sees the same metadata. Skipped, saying why,
only when PostgreSQL's binaries are missing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import requests

from bundles import keys
from tests.appliance import Appliance
from tests.bundles.conftest import assert_pulled_identical, cli, run, skopeo_pull
from tests.bundles.releases_util import API, import_release, make_site, release_api, trust
from tests.images import OciLayout
from tests.pgengine import PostgresServer


@pytest.fixture
def pg_appliance(postgres: PostgresServer, appliance_factory: Callable[..., Appliance]) -> tuple[Appliance, str]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    url = postgres.create_database()
    return appliance_factory(name="pg", env={"CARGOHOLD_DATABASE_URL": url}), url


def test_push_import_promote_rollback_and_gc_on_postgresql(
        tmp_path: Path, pg_appliance: tuple[Appliance, str], ec_key: keys.PrivateKey,
        appliance_factory: Callable[..., Appliance]) -> None:
    app, url = pg_appliance
    env = {"CARGOHOLD_DATABASE_URL": url}
    assert requests.get(f"{app.url}/readyz", timeout=10).status_code == 200  # its heartbeat write went to PostgreSQL

    # skopeo push and pull by the nested name
    layout = OciLayout(tmp_path / "push")
    pushed = layout.add_image([300_000, 40_000], seed=4242, ref="pg:1")
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", app.creds, "--retry-times", "0",
        f"oci:{layout.root}:pg:1", f"docker://{app.host}/spectro-images/docker.io/cargotest/pg:1")
    got = skopeo_pull(app, "docker.io/cargotest/pg:1", tmp_path / "pulled")
    assert got == pushed.digest and assert_pulled_identical(tmp_path / "pulled", layout.root, got) == 4

    # bundle import (CLI, same setting) and promote, then the next release and a rollback
    trust(app, ec_key, tmp_path)
    site = make_site(tmp_path / "site", ec_key)
    v1 = import_release(app, site.v1)
    assert release_api(app, "POST", f"/releases/{v1['id']}/promote").status_code == 200
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a1") == site.digests["a1"]
    v2 = import_release(app, site.v2)
    assert release_api(app, "POST", f"/releases/{v2['id']}/promote").status_code == 200
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a2") == site.digests["a2"]
    assert release_api(app, "POST", "/releases/rollback").status_code == 200
    assert skopeo_pull(app, site.refs["a"], tmp_path / "a1-again") == site.digests["a1"]
    assert release_api(app, "POST", f"/releases/{v2['id']}/promote").status_code == 200

    # garbage collection (CLI on the same database) keeps the promoted release and the pushed image
    report = json.loads(cli("gc", "--retain", "1", "--grace", "0", "--ignore-cluster", "--json",
                            "--data-dir", str(app.data_dir), env=env).stdout)
    assert {m["digest"] for m in report["manifestsRemoved"]} == {site.digests["a1"], site.digests["b1"]}
    assert skopeo_pull(app, site.refs["d"], tmp_path / "d") == site.digests["d"]
    assert skopeo_pull(app, "docker.io/cargotest/pg:1", tmp_path / "pulled-again") == pushed.digest

    # all of it is in PostgreSQL: nothing in the data directory, and a second appliance on the database sees it
    assert not (app.data_dir / "cargohold.db").exists()
    with psycopg.connect(url) as conn:
        states = dict(conn.execute("SELECT id, state FROM releases").fetchall())
    assert states == {v1["id"]: "superseded", v2["id"]: "promoted"}
    other = appliance_factory(name="pg-other", env=env)
    listed = requests.get(f"{other.url}{API}/releases", auth=other.admin, timeout=30)
    assert listed.status_code == 200, listed.text
    assert {r["id"]: r["state"] for r in listed.json()["releases"]} == states
