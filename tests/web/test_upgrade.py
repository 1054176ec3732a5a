"""Upgrading the appliance: a data directory made by cargohold 0.1.0 (the tagged baseline) starts on this version.

The fixture (tests/fixtures/upgrade-v0.1.0, made by scripts/make-upgrade-fixture
from git tag v0.1.0) holds images pushed with skopeo, an imported and
promoted signed bundle, a user and a robot. Started on it, the current
appliance takes a pre-upgrade backup, migrates, and serves all of it: the
images pull byte-identical (compared with the fixture's own blob files), the
release is still promoted, the user and the robot still sign in. A data
directory marked by a newer version, or holding a migration this version
does not know, is refused at start with both versions named, and its
database is left exactly as it was. The version shows in `--version`,
the UI footer and Harbor's systeminfo.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from registry.version import VERSION
from tests.appliance import Appliance, free_port, start_appliance
from tests.layouts import layout_closure
from tests.registry.conftest import layout_ref, require

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "upgrade-v0.1.0"


def unpack(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    with tarfile.open(FIXTURE / "datadir.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "data", json.loads((FIXTURE / "fixture.json").read_text())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "web.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)


def pull_identical(app: Appliance, ref: str, digest: str, original_blobs: Path, out: Path) -> None:
    """`ref` pulls (all platforms) as `digest`, each blob byte-identical to the fixture's own file of it."""
    proc = subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
                           f"docker://{app.host}/{ref}", f"oci:{out}:pulled"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"pulling {ref}: {proc.stderr}"
    assert layout_ref(out, "pulled") == digest
    for d in layout_closure(out, digest):  # re-hashes every pulled blob
        name = d.split(":", 1)[1]
        assert (out / "blobs/sha256" / name).read_bytes() == (original_blobs / name[:2] / name).read_bytes()


def test_v010_data_directory_upgrades_at_start(tmp_path: Path) -> None:
    require("skopeo")
    data, fixture = unpack(tmp_path)
    original = tmp_path / "original-blobs"
    with tarfile.open(FIXTURE / "datadir.tar.gz") as tar:
        tar.extractall(tmp_path / "original", filter="data")
    (tmp_path / "original" / "data" / "blobs" / "sha256").rename(original)
    old_migrations = sqlite3.connect(data / "cargohold.db").execute(
        "SELECT migration_set, name FROM _sqlite_migrations ORDER BY rowid").fetchall()
    assert not (data / "backups").exists()

    admin = fixture["admin"]
    app = start_appliance(data)  # its CARGOHOLD_ADMIN_PASSWORD is ignored: admin exists (and says so)
    app.admin = (admin["username"], admin["password"])  # type: ignore[index]
    try:
        backups = sorted((data / "backups").glob(f"pre-upgrade-{fixture['version']}-to-{VERSION}-*"))
        assert len(backups) == 1, list((data / "backups").iterdir())
        assert f"Upgrading the data directory from cargohold 0.1.0 to {VERSION}" in app.log()
        assert str(backups[0]) in app.log()
        saved = sqlite3.connect(backups[0] / "cargohold.db")
        assert saved.execute("SELECT migration_set, name FROM _sqlite_migrations ORDER BY rowid").fetchall() \
            == old_migrations  # the database as 0.1.0 left it, before any migration of this version
        assert "appliance_versions" not in {r[0] for r in saved.execute("SELECT name FROM sqlite_master")}
        for key in (data / "keys").iterdir():
            assert (backups[0] / "keys" / key.name).read_bytes() == key.read_bytes()
        versions = sqlite3.connect(data / "cargohold.db").execute(
            "SELECT version, previous FROM appliance_versions").fetchall()
        assert versions == [(VERSION, "0.1.0")]

        images = {**fixture["pushed"], **fixture["bundled"]}  # type: ignore[dict-item]
        for n, (ref, digest) in enumerate(sorted(images.items())):
            pull_identical(app, ref, digest, original, tmp_path / f"pulled-{n}")

        releases = requests.get(f"{app.url}/api/cargohold/v1/releases", auth=app.admin, timeout=10)
        assert releases.status_code == 200, releases.text
        body = releases.json()
        items = body if isinstance(body, list) else body.get("releases", body.get("items", []))
        release = next(r for r in items if r["id"] == 1)
        assert release["state"] == "promoted" and release["version"] == "1.0.0"

        user = fixture["user"]
        me = requests.get(f"{app.url}/api/v2.0/users/current", auth=(user["username"], user["password"]),
                          timeout=10)
        assert me.status_code == 200 and me.json()["username"] == user["username"]
        wrong = requests.get(f"{app.url}/api/v2.0/users/current", auth=(user["username"], "not-the-password"),
                             timeout=10)
        assert wrong.status_code == 401
        robot = fixture["robot"]
        pushed = subprocess.run(
            ["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", "--authfile",
             str(tmp_path / "auth.json"), "--dest-creds", f"{robot['name']}:{robot['secret']}",
             f"docker://{app.host}/spectro-images/fixture/pushed:1",
             f"docker://{app.host}/spectro-images/fixture/by-robot:1"], capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, pushed.stderr  # the robot signed in through the token flow and pushed
    finally:
        app.stop()

    # A second start of the same version neither backs up nor records anything again.
    again = start_appliance(data)
    again.stop()
    assert len(list((data / "backups").glob("pre-upgrade-*"))) == 1
    assert sqlite3.connect(data / "cargohold.db").execute("SELECT COUNT(*) FROM appliance_versions").fetchone() \
        == (1,)


def _newer_version(db: sqlite3.Connection) -> str:
    db.execute("INSERT INTO appliance_versions (version, previous, migrated_at) VALUES ('99.1.0', ?, 0)", [VERSION])
    return "cargohold 99.1.0"


def _unknown_migration(db: sqlite3.Connection) -> str:
    db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
               "VALUES ('registry', 'm999_from_the_future', '2030-01-01')")
    return "registry/m999_from_the_future"


@pytest.mark.parametrize("mark", [_newer_version, _unknown_migration], ids=["newer-version", "unknown-migration"])
def test_data_directory_from_a_newer_version_is_refused(tmp_path: Path, mark) -> None:  # type: ignore[no-untyped-def]
    data, _ = unpack(tmp_path)
    assert cli("release", "list", "--data-dir", str(data)).returncode == 0  # migrated to this version
    conn = sqlite3.connect(data / "cargohold.db", isolation_level=None)
    expected = mark(conn)
    conn.close()
    taken_by_newer = data / "backups" / f"pre-upgrade-{VERSION}-to-99.1.0-20300101T000000Z"
    taken_by_newer.mkdir()  # what the newer version's start saved: the refusal points at it
    db = data / "cargohold.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    backups_before = sorted(p.name for p in (data / "backups").iterdir())

    proc = subprocess.run([sys.executable, "-m", "web.cli", "serve", "--data-dir", str(data), "--bind",
                           f"127.0.0.1:{free_port()}"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert proc.returncode != 0
    assert expected in proc.stderr and f"this is cargohold {VERSION}" in proc.stderr, proc.stderr
    assert "Install" in proc.stderr and f"pre-upgrade backup {taken_by_newer}" in proc.stderr
    assert "Nothing was changed" in proc.stderr
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in (data / "backups").iterdir()) == backups_before

    other = cli("release", "list", "--data-dir", str(data))  # any command that would migrate refuses alike
    assert other.returncode == 1 and expected in other.stderr
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


def test_version_is_shown_by_the_cli_the_ui_and_systeminfo(appliance: Appliance) -> None:
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cargohold {VERSION}"
    page = requests.get(f"{appliance.url}/ui/login", timeout=10)
    assert page.status_code == 200 and f"cargohold, version {VERSION}</span></footer>" in page.text
    info = requests.get(f"{appliance.url}/api/v2.0/systeminfo", timeout=10).json()
    assert info["cargohold_version"] == VERSION
    assert info["harbor_version"].startswith("v2.")  # Harbor's own field keeps Harbor's shape for its clients


def test_backup_of_a_v010_directory_changes_nothing_and_restores_into_an_upgrade(tmp_path: Path) -> None:
    data, _ = unpack(tmp_path)
    db = data / "cargohold.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    dest = tmp_path / "backup"
    proc = cli("backup", str(dest), "--data-dir", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before  # a backup never migrates what it copies
    assert not (data / "backups").exists()
    manifest = json.loads((dest / "cargohold-backup.json").read_text())
    assert manifest["cargoholdVersion"] == "0.1.0" and manifest["madeBy"] == VERSION

    restored = tmp_path / "restored"
    assert cli("restore", str(dest), "--data-dir", str(restored)).returncode == 0
    listed = cli("release", "list", "--data-dir", str(restored))  # the first command migrates, backing up first
    assert listed.returncode == 0 and "promoted" in listed.stdout
    assert f"from cargohold 0.1.0 to {VERSION}" in listed.stderr
    assert len(list((restored / "backups").glob(f"pre-upgrade-0.1.0-to-{VERSION}-*"))) == 1


def test_only_the_newest_pre_upgrade_backups_are_kept(tmp_path: Path) -> None:
    data, _ = unpack(tmp_path)
    for old in ("0.1.1", "0.1.2", "0.1.3", "0.1.4"):
        assert cli("release", "list", "--data-dir", str(data)).returncode == 0
        conn = sqlite3.connect(data / "cargohold.db", isolation_level=None)
        conn.execute("INSERT INTO appliance_versions (version, previous, migrated_at) VALUES (?, NULL, 0)", [old])
        conn.close()
    listed = cli("release", "list", "--data-dir", str(data))
    assert listed.returncode == 0 and f"from cargohold 0.1.4 to {VERSION}" in listed.stderr
    kept = sorted(p.name.rsplit("-to-", 1)[0] for p in (data / "backups").iterdir())
    assert kept == ["pre-upgrade-0.1.2", "pre-upgrade-0.1.3", "pre-upgrade-0.1.4"]  # 0.1.0 and 0.1.1 went


def _old_code(tmp_path: Path, tag: str) -> Path:
    """The released code of `tag`, from git (skipped where the checkout has no tags, e.g. a source tarball)."""
    archive = subprocess.run(["git", "archive", tag], cwd=REPO_ROOT, capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"git tag {tag} is not available here: {archive.stderr.decode(errors='replace').strip()}")
    code = tmp_path / f"code-{tag}"
    code.mkdir()
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    return code


def test_documented_rollback_serves_the_fixture_with_v010_again(tmp_path: Path) -> None:
    require("skopeo")
    data, fixture = unpack(tmp_path)
    upgraded = start_appliance(data)
    upgraded.admin = ("admin", fixture["admin"]["password"])  # type: ignore[index]
    later = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--authfile",
                            str(tmp_path / "auth.json"), "--dest-creds", upgraded.creds,
                            f"docker://{upgraded.host}/spectro-images/fixture/pushed:1",
                            f"docker://{upgraded.host}/spectro-images/fixture/after-upgrade:1"],
                           capture_output=True, text=True, timeout=120)
    upgraded.stop()
    assert later.returncode == 0, later.stderr

    # docs/operations.md, "Rolling back" (pip / systemd), with the old version's code instead of pip.
    # The guard matters: with no backup found, an unguarded `cp -a "$B/." .` copies the root directory.
    script = ('B=$(ls -d backups/pre-upgrade-0.1.0-to-*-* | tail -n 1) && '
              'test -f "${B:?no pre-upgrade backup found}/cargohold.db" && '
              'rm -f cargohold.db-wal cargohold.db-shm && cp -a "$B/." . && rm -f UPGRADE.json')
    subprocess.run(["bash", "-c", script], cwd=data, check=True)
    code = _old_code(tmp_path, "v0.1.0")
    port = free_port()
    log = tmp_path / "old-serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "web.cli", "serve", "--data-dir", str(data), "--bind",
                                   f"127.0.0.1:{port}"], cwd=code, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(code)})
    old = Appliance(data, port, server, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                requests.get(f"{old.url}/v2/", timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        with tarfile.open(FIXTURE / "datadir.tar.gz") as tar:
            tar.extractall(tmp_path / "original", filter="data")
        images = {**fixture["pushed"], **fixture["bundled"]}  # type: ignore[dict-item]
        for n, (ref, digest) in enumerate(sorted(images.items())):
            pull_identical(old, ref, digest, tmp_path / "original" / "data" / "blobs" / "sha256",
                           tmp_path / f"pulled-{n}")
        gone = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                               f"docker://{old.host}/spectro-images/fixture/after-upgrade:1"],
                              capture_output=True, text=True, timeout=60)
        assert gone.returncode != 0  # what was done after the upgrade is gone with the rollback, as documented
    finally:
        old.stop()
