"""`cargohold backup` and `cargohold restore` against the real appliance, with real skopeo pushes and pulls.

- A backup taken while skopeo keeps pushing (and a garbage collection runs)
  restores into a new directory that serves every tag the backup recorded,
  byte-identical to what was pushed, and scrub finds nothing missing.
- A collection that runs between the snapshot and the copy (the moment is
  fixed with the backup's `after_snapshot` hook) removes rows but not the
  files the snapshot names; without a backup running, the same collection
  removes them (so the guard is what kept them).
- A second backup into the same directory copies only the new blobs and
  prunes the ones no longer recorded.
- Restore refuses a tampered or missing blob (naming it, leaving nothing),
  an unfinished backup, and a directory that already holds an appliance.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from registry.backup import MANIFEST, backup
from registry.paths import DataPaths
from tests.appliance import Appliance, start_appliance
from tests.images import OciLayout
from tests.layouts import layout_closure
from tests.registry.conftest import layout_ref, require

REPO_ROOT = Path(__file__).resolve().parents[2]

# `cargohold backup` and `restore` handle SQLite data directories (PostgreSQL's own tools back that up).
pytestmark = pytest.mark.sqlite_only


@pytest.fixture(autouse=True)
def _skopeo_installed() -> None:
    require("skopeo")


def cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "web.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cargohold {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Pusher:
    """Pushes fresh single-platform images with skopeo and remembers what went where."""

    def __init__(self, app: Appliance, root: Path) -> None:
        self.app = app
        self.layout = OciLayout(root / "source")
        self.auth = root / "auth.json"
        self.pushed: dict[str, str] = {}  # "repo:tag" -> manifest digest
        self.lock = threading.Lock()
        self.seed = uuid.uuid4().int % 1_000_000

    def make(self, name: str, layers: tuple[int, ...] = (40_000, 3_000)) -> str:
        with self.lock:
            self.seed += 1
            return self.layout.add_image(list(layers), seed=self.seed, ref=name).digest

    def push(self, name: str, dest: str, delete: bool = False) -> None:
        proc = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--authfile", str(self.auth),
                               "--dest-creds", self.app.creds, f"oci:{self.layout.root}:{name}",
                               f"docker://{self.app.host}/{dest}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        with self.lock:
            self.pushed[dest] = layout_ref(self.layout.root, name)

    def delete(self, dest: str) -> None:
        proc = subprocess.run(["skopeo", "delete", "--tls-verify=false", "--authfile", str(self.auth), "--creds",
                               self.app.creds, f"docker://{self.app.host}/{dest}"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr


def recorded_tags(database: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT r.name, t.name, t.digest FROM tags t JOIN repositories r "
                            "ON r.id = t.repository_id").fetchall()
    finally:
        conn.close()
    return {f"{repo}:{tag}": digest for repo, tag, digest in rows}


def pull_identical(app: Appliance, ref: str, digest: str, source: Path, out: Path) -> None:
    """Pull `ref` from `app` with skopeo; it must be `digest` with every blob byte-identical to `source`'s."""
    proc = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--retry-times", "0",
                           f"docker://{app.host}/{ref}", f"oci:{out}:pulled"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"pulling {ref} from the restored appliance failed: {proc.stderr}"
    assert layout_ref(out, "pulled") == digest
    closure = layout_closure(out, digest)  # re-hashes every pulled blob
    assert closure == layout_closure(source, digest)
    for d in closure:
        name = d.split(":", 1)[1]
        assert (out / "blobs/sha256" / name).read_bytes() == (source / "blobs/sha256" / name).read_bytes()


def test_backup_while_pushing_and_collecting_restores_every_tag(appliance_factory, tmp_path: Path) -> None:
    app = appliance_factory(name="live")
    pusher = Pusher(app, tmp_path)
    for i in range(4):
        pusher.make(f"pre{i}")
        pusher.push(f"pre{i}", f"spectro-images/backup/pre{i}:1")
    loop_names = [f"loop{i}" for i in range(40)]
    for name in loop_names:
        pusher.make(name)
    stop = threading.Event()
    errors: list[BaseException] = []
    pushes_during: list[str] = []

    def push_loop() -> None:
        try:
            for name in loop_names:
                if stop.is_set():
                    return
                pusher.push(name, f"spectro-images/backup/{name}:1")
                pushes_during.append(name)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    dest = tmp_path / "backup"
    pusher_thread = threading.Thread(target=push_loop)
    pusher_thread.start()
    try:
        while not pushes_during and pusher_thread.is_alive():  # the loop is pushing before the backup starts
            threading.Event().wait(0.05)
        gc = subprocess.Popen([sys.executable, "-m", "web.cli", "gc", "--json", "--data-dir", str(app.data_dir)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc = cli("backup", str(dest), "--data-dir", str(app.data_dir), "--json")
        gc_out, gc_err = gc.communicate(timeout=300)
        pushed_while = len(pushes_during)
        first = json.loads(proc.stdout)
        # Once more into the same directory while the pushes go on: incremental, and this is the one restored.
        while len(pushes_during) < pushed_while + 2 and pusher_thread.is_alive():
            threading.Event().wait(0.05)
        proc = cli("backup", str(dest), "--data-dir", str(app.data_dir), "--json")
    finally:
        stop.set()
        pusher_thread.join(timeout=300)
    assert not errors, errors
    assert gc.returncode == 0, gc_err
    assert json.loads(gc_out)["dryRun"] is False  # a real collection ran alongside
    summary = json.loads(proc.stdout)
    assert "backup:" in proc.stderr  # progress on stderr, the summary alone on stdout
    assert (dest / MANIFEST).is_file()
    assert first["blobs"] == first["copied"] > 0 and first["reused"] == 0
    assert summary["reused"] == first["blobs"] - summary["pruned"] and summary["copied"] > 0  # only new blobs
    assert summary["blobs"] == summary["copied"] + summary["reused"]
    tags = recorded_tags(dest / "database.sqlite")
    assert {f"spectro-images/backup/pre{i}:1" for i in range(4)} <= set(tags)
    assert pushed_while >= 1 and len(pusher.pushed) > pushed_while  # pushes went on before, during and after
    for ref, digest in tags.items():
        assert pusher.pushed[ref] == digest, f"{ref} in the backup is not what was pushed"

    restored = tmp_path / "restored"
    cli("restore", str(dest), "--data-dir", str(restored))
    scrub = cli("scrub", "--json", "--data-dir", str(restored))
    report = json.loads(scrub.stdout)
    assert report["ok"] and report["missing"] == [] and report["damaged"] == []
    assert report["checked"] == summary["blobs"]
    served = start_appliance(restored)
    try:
        for n, (ref, digest) in enumerate(sorted(tags.items())):
            pull_identical(served, ref, digest, pusher.layout.root, tmp_path / f"pulled-{n}")
    finally:
        served.stop()


def test_collection_between_snapshot_and_copy_leaves_the_snapshot_blobs(appliance_factory, tmp_path: Path) -> None:
    app = appliance_factory(name="live")
    pusher = Pusher(app, tmp_path)
    digest = pusher.make("doomed", layers=(50_000,))
    pusher.push("doomed", "spectro-images/backup/doomed:1")
    pusher.make("kept")
    pusher.push("kept", "spectro-images/backup/kept:1")
    layer = json.loads((pusher.layout.root / "blobs/sha256" / digest.split(":", 1)[1]).read_text())["layers"][0]
    paths = DataPaths(app.data_dir.resolve())
    from registry.digest import Digest

    layer_file = paths.blob(Digest.parse(layer["digest"]))
    reports: list[dict[str, object]] = []

    def collect_now() -> None:
        # Between the snapshot and the copy: the image goes, and a collection with no grace runs.
        pusher.delete("spectro-images/backup/doomed:1")
        reports.append(json.loads(cli("gc", "--grace", "0", "--json", "--data-dir", str(app.data_dir)).stdout))

    dest = tmp_path / "backup"
    report = backup(paths, dest, after_snapshot=collect_now)
    gc_report = reports[0]
    assert layer["digest"] in {b["digest"] for b in gc_report["blobsRemoved"]}  # type: ignore[union-attr]
    assert "backup is running" in str(gc_report["deferred"])
    assert report.blobs == report.copied and (dest / "blobs/sha256" / layer["digest"][7:9]
                                              / layer["digest"][7:]).is_file()

    restored = tmp_path / "restored"
    cli("restore", str(dest), "--data-dir", str(restored))
    served = start_appliance(restored)
    try:
        pull_identical(served, "spectro-images/backup/doomed:1", digest, pusher.layout.root, tmp_path / "pulled")
    finally:
        served.stop()
    # Without a backup running, the same collection removes the file: the guard is what kept it.
    assert layer_file.is_file()
    after = json.loads(cli("gc", "--grace", "0", "--json", "--data-dir", str(app.data_dir)).stdout)
    assert after["deferred"] is None and not layer_file.exists()


def test_second_backup_copies_only_new_blobs_and_prunes_old(appliance_factory, tmp_path: Path) -> None:
    app = appliance_factory(name="live")
    pusher = Pusher(app, tmp_path)
    pusher.make("one", layers=(30_000, 2_000))
    pusher.push("one", "spectro-images/backup/one:1")
    dest = tmp_path / "backup"
    first = json.loads(cli("backup", str(dest), "--data-dir", str(app.data_dir), "--json").stdout)
    assert first["copied"] == first["blobs"] == 4  # manifest, config, two layers

    pusher.make("two", layers=(30_000, 2_000, 1_000))
    pusher.push("two", "spectro-images/backup/two:1")
    second = json.loads(cli("backup", str(dest), "--data-dir", str(app.data_dir), "--json").stdout)
    assert second["copied"] == 5 and second["reused"] == 4 and second["blobs"] == 9 and second["pruned"] == 0

    pusher.delete("spectro-images/backup/one:1")
    cli("gc", "--grace", "0", "--data-dir", str(app.data_dir))
    third = json.loads(cli("backup", str(dest), "--data-dir", str(app.data_dir), "--json").stdout)
    assert third["copied"] == 0 and third["pruned"] == 4 and third["blobs"] == 5
    files = [p for p in (dest / "blobs").rglob("*") if p.is_file()]
    assert len(files) == 5

    restored = tmp_path / "restored"
    cli("restore", str(dest), "--data-dir", str(restored))
    assert json.loads(cli("scrub", "--json", "--data-dir", str(restored)).stdout)["ok"]


@pytest.fixture
def made_backup(appliance_factory, tmp_path: Path) -> tuple[Path, Pusher]:
    app = appliance_factory(name="live")
    pusher = Pusher(app, tmp_path)
    pusher.make("img")
    pusher.push("img", "spectro-images/backup/img:1")
    dest = tmp_path / "backup"
    cli("backup", str(dest), "--data-dir", str(app.data_dir))
    return dest, pusher


def _a_layer(dest: Path, pusher: Pusher) -> Path:
    manifest = pusher.layout.root / "blobs/sha256" / pusher.pushed["spectro-images/backup/img:1"].split(":", 1)[1]
    digest = json.loads(manifest.read_text())["layers"][0]["digest"].split(":", 1)[1]
    return dest / "blobs/sha256" / digest[:2] / digest


def test_restore_refuses_a_tampered_blob_and_leaves_nothing(made_backup: tuple[Path, Pusher], tmp_path: Path) -> None:
    dest, pusher = made_backup
    layer = _a_layer(dest, pusher)
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    target = tmp_path / "restored"
    proc = cli("restore", str(dest), "--data-dir", str(target), check=False)
    assert proc.returncode == 1
    assert f"sha256:{layer.name}" in proc.stderr and "damaged or changed" in proc.stderr
    assert not target.exists()


def test_restore_refuses_a_missing_blob(made_backup: tuple[Path, Pusher], tmp_path: Path) -> None:
    dest, pusher = made_backup
    layer = _a_layer(dest, pusher)
    layer.unlink()
    target = tmp_path / "restored"
    target.mkdir()
    proc = cli("restore", str(dest), "--data-dir", str(target), check=False)
    assert proc.returncode == 1 and f"sha256:{layer.name} is missing from the backup" in proc.stderr
    assert list(target.iterdir()) == []  # the empty directory it was given, nothing half-restored in it


def test_restore_refuses_an_appliance_directory_and_an_unfinished_backup(made_backup: tuple[Path, Pusher],
                                                                        tmp_path: Path) -> None:
    dest, _ = made_backup
    target = tmp_path / "restored"
    cli("restore", str(dest), "--data-dir", str(target))
    db = target / "cargohold.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    proc = cli("restore", str(dest), "--data-dir", str(target), check=False)
    assert proc.returncode == 1 and "already holds a cargohold appliance" in proc.stderr
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = cli("restore", str(dest), "--data-dir", str(other), check=False)
    assert proc.returncode == 1 and "is not empty" in proc.stderr
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    manifest = json.loads((dest / MANIFEST).read_text())
    (dest / MANIFEST).write_text(json.dumps({**manifest, "cargoholdVersion": "99.0.0"}))
    proc = cli("restore", str(dest), "--data-dir", str(tmp_path / "newer"), check=False)
    assert proc.returncode == 1 and "cargohold 99.0.0, newer than this" in proc.stderr
    assert not (tmp_path / "newer").exists()

    os.unlink(dest / MANIFEST)
    proc = cli("restore", str(dest), "--data-dir", str(tmp_path / "third"), check=False)
    assert proc.returncode == 1 and "unfinished backup" in proc.stderr
    assert not (tmp_path / "third").exists()


def test_backup_refuses_a_foreign_or_busy_destination_and_restore_a_data_directory(
        made_backup: tuple[Path, Pusher], tmp_path: Path) -> None:
    dest, pusher = made_backup
    data = str(pusher.app.data_dir)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    proc = cli("backup", str(foreign), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "holds no cargohold backup" in proc.stderr
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]

    inside = pusher.app.data_dir / "my-backup"
    proc = cli("backup", str(inside), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "inside the data directory" in proc.stderr and not inside.exists()

    manifest = (dest / MANIFEST).read_bytes()
    with (dest / ".backup.lock").open("a") as held:
        import fcntl

        fcntl.flock(held, fcntl.LOCK_EX)  # as a backup into it that is still running holds it
        proc = cli("backup", str(dest), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "another backup into" in proc.stderr
    assert (dest / MANIFEST).read_bytes() == manifest

    proc = cli("restore", data, "--data-dir", str(tmp_path / "new"), check=False)
    assert proc.returncode == 1 and "is a data directory, not a backup" in proc.stderr
