"""A database that cannot be written is a DISK_FULL refusal, never a traceback or a 500.

The data directory is an ordinary one, except that its SQLite database
(``cargohold.db``, a symbolic link) lives on a small tmpfs of its own: a
real filesystem that really runs out of space, so SQLite itself fails with
``database or disk is full`` (SQLITE_FULL) while the blob store still has
room. SQLite follows the link, so its WAL and shared-memory files are on
the tmpfs too. Mounting needs root; the tests skip where it is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bundles import keys
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.conftest import big_layout, cli, snapshot, unique_layout

# Fills SQLite itself (PRAGMA max_page_count); a full PostgreSQL is its server's to report.
pytestmark = pytest.mark.sqlite_only


@dataclass
class DbVolume:
    """The tmpfs holding the database, and a filler file that takes its free space."""

    mount: Path
    database: Path

    def free_bytes(self) -> int:
        st = os.statvfs(self.mount)
        return int(st.f_bavail * st.f_frsize)

    def fill(self, leave: int = 0) -> None:
        """Take the volume's free space, leaving about `leave` bytes (tmpfs counts whole 4 KiB pages).

        The WAL is checkpointed and truncated first: its file's pages would
        otherwise be reused by later writes without asking for new space.
        """
        with sqlite3.connect(self.database) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        with (self.mount / "filler").open("ab") as f:
            want = self.free_bytes() - leave
            block = b"\xff" * (1 << 16)
            while want > 0:
                try:
                    f.write(block[:want])
                    f.flush()
                except OSError:
                    break
                want -= min(len(block), want)
        assert self.free_bytes() <= leave + 4096, (self.free_bytes(), leave)

    def release(self) -> None:
        (self.mount / "filler").unlink(missing_ok=True)


@pytest.fixture
def db_volume(tmp_path: Path) -> Iterator[DbVolume]:
    mnt = tmp_path / "dbfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "cargohold.db").symlink_to(mnt / "cargohold.db")
    yield DbVolume(mnt, data / "cargohold.db")
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def full_site(db_volume: DbVolume, appliance_factory: Callable[..., Appliance], tmp_path: Path,
              ec_key: keys.PrivateKey) -> Iterator[tuple[Appliance, DbVolume]]:
    """The real appliance over the data directory whose database is on `db_volume`, trusting `ec_key`."""
    app = appliance_factory(name="data")
    assert app.data_dir == db_volume.database.parent
    (tmp_path / "k.pub").write_bytes(keys.public_pem(ec_key))
    cli("keys", "add", str(tmp_path / "k.pub"), "--data-dir", str(app.data_dir))
    yield app, db_volume
    db_volume.release()


def _wait_job(app: Appliance, url: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{app.url}{url}", auth=app.admin, timeout=10).json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.1)


def test_no_room_for_the_job_refuses_with_disk_full(full_site: tuple[Appliance, DbVolume], tmp_path: Path,
                                                    ec_key: keys.PrivateKey) -> None:
    """Not even the job's row fits: the CLI prints the DISK_FULL refusal, the HTTP API answers 507."""
    app, volume = full_site
    layout, _ = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    name = "site.tar.zst"
    bundle = craft.write_bundle(app.data_dir / "imports" / name, craft.standard_entries(layout.root, ec_key))
    volume.fill()
    before = snapshot(app.data_dir)

    proc = cli("bundle", "import", str(bundle), "--data-dir", str(app.data_dir), "--quiet", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: bundle refused: the database could not be written (database or disk is full)")
    assert last.endswith("[DISK_FULL]") and "no import job could be recorded" in last

    resp = requests.post(f"{app.url}/api/v1/bundles/import", json={"path": name}, auth=app.admin, timeout=30)
    assert resp.status_code == 507, resp.text
    error = resp.json()["errors"][0]
    assert error["code"] == "DISK_FULL" and "database or disk is full" in error["message"]
    assert snapshot(app.data_dir) == before

    volume.release()  # space again: the same request imports
    resp = requests.post(f"{app.url}/api/v1/bundles/import", json={"path": name}, auth=app.admin, timeout=30)
    assert resp.status_code == 202, resp.text
    assert _wait_job(app, resp.json()["jobUrl"])["state"] == "done"
    assert "Traceback" not in app.log()


def test_a_database_that_fills_while_publishing_records_disk_full(full_site: tuple[Appliance, DbVolume],
                                                                  tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """The job's row fits, the publishing transaction (many images) does not: the job records DISK_FULL.

    What the failed transaction wrote into the WAL before SQLite gave up is
    space the job's last small update then reuses, so the refusal is recorded.
    """
    app, volume = full_site
    leave = 64 << 10  # the job's row and a few progress updates fit; 40 images' rows do not
    for attempt in ("cli", "http"):
        layout, refs = unique_layout(tmp_path / f"layout-{attempt}", images=40, layer_sizes=(300,),
                                     multiarch=False)
        name = f"many-{attempt}.tar.zst"
        bundle = craft.write_bundle(app.data_dir / "imports" / name, craft.standard_entries(layout.root, ec_key))
        volume.fill(leave)
        before = snapshot(app.data_dir)
        if attempt == "cli":
            proc = cli("bundle", "import", str(bundle), "--data-dir", str(app.data_dir), "--quiet", check=False)
            assert proc.returncode == 1, proc.stdout
            assert "Traceback" not in proc.stderr, proc.stderr
            assert proc.stderr.strip().endswith("[DISK_FULL]"), proc.stderr
            assert "database or disk is full" in proc.stderr
            job_id = next(line.split()[-1] for line in proc.stderr.splitlines() if line.startswith("import job "))
            job = json.loads(cli("bundle", "status", job_id, "--data-dir", str(app.data_dir), "--json").stdout)
        else:
            resp = requests.post(f"{app.url}/api/v1/bundles/import", json={"path": name}, auth=app.admin,
                                 timeout=30)
            assert resp.status_code == 202, resp.text
            job = _wait_job(app, resp.json()["jobUrl"])
        assert job["state"] == "failed", job
        assert job["errorCode"] == "DISK_FULL", job
        assert "database or disk is full" in str(job["error"]) and "nothing was published" in str(job["error"])
        after = snapshot(app.data_dir)
        assert after["tables"] == before["tables"] and after["files"] == before["files"]
        for ref in refs:
            resp = requests.get(f"{app.url}/v2/spectro-images/{ref.replace(':', '/manifests/')}",
                                auth=app.admin, timeout=10)
            assert resp.status_code == 404, ref
        volume.release()
    assert "Traceback" not in app.log()


def test_a_job_end_that_cannot_be_recorded_is_logged_and_recorded_once_there_is_room(
        full_site: tuple[Appliance, DbVolume], tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """The database fills while a long import runs, with no WAL slack left: not even the job's end fits.

    The worker says so in its log and tries again; once space is freed the
    job is recorded failed with DISK_FULL (before, it stayed "verifying" for
    as long as the worker lived).
    """
    app, volume = full_site
    layout, ref = big_layout(tmp_path / "layout", layers=48, layer_size=4 << 20)
    name = "long.tar.zst"
    craft.write_bundle(app.data_dir / "imports" / name, craft.standard_entries(layout.root, ec_key), level=1)
    resp = requests.post(f"{app.url}/api/v1/bundles/import", json={"path": name}, auth=app.admin, timeout=30)
    assert resp.status_code == 202, resp.text
    url = f"{app.url}{resp.json()['jobUrl']}"
    deadline = time.monotonic() + 60
    while True:  # fill the database's volume while the import is still streaming
        job = requests.get(url, auth=app.admin, timeout=10).json()
        if job["state"] == "verifying" and job["bytesDone"] > 0:
            break
        assert job["state"] == "verifying" and time.monotonic() < deadline, job
        time.sleep(0.02)
    volume.fill()
    deadline = time.monotonic() + 60
    while "could not record its end" not in app.log():
        assert time.monotonic() < deadline, app.log()[-3000:]
        time.sleep(0.1)
    job = requests.get(url, auth=app.admin, timeout=10).json()
    assert job["state"] in ("verifying", "importing"), job  # its process lives: not yet shown as interrupted
    volume.release()
    job = _wait_job(app, resp.json()["jobUrl"], timeout=60)
    assert job["state"] == "failed" and job["errorCode"] == "DISK_FULL", job
    assert "database or disk is full" in str(job["error"])
    image = requests.get(f"{app.url}/v2/spectro-images/{ref.replace(':', '/manifests/')}", auth=app.admin, timeout=10)
    assert image.status_code == 404
