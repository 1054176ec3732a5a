"""The seed directory from the command line (`cargohold seed scan`) and its discovery rules (bundles.seed).

Everything here is real: bundles from `cargohold bundle build`, detached
signatures from openssl, definitions signed by `cargohold clusterdef sign`,
the scan run by `python -m web.cli seed scan` on a real data directory. The
server's start-up scan and the HTTP API are in tests/web/test_seed_start.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bundles.seed import discover
from tests.bundles import seedutil as su
from tests.bundles.buildutil import ROOT, cargohold
from tests.pgengine import data_paths, database_url_of, env_for


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return su.key_pair(tmp_path_factory.mktemp("seedkeys"))


def scan(data: Path, *extra: str | Path, check_rc: int | None = 0) -> dict[str, Any]:
    proc = cargohold("seed", "scan", "--data-dir", data, "--json", *extra, check=False)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in report["files"]}


def jobs_by_source(data: Path) -> dict[str, list[tuple[str, str, str | None]]]:
    out: dict[str, list[tuple[str, str, str | None]]] = {}
    for job_id, source, state, code in su.rows(data, "SELECT id, source, state, error_code FROM import_jobs"):
        out.setdefault(source, []).append((job_id, state, code))
    return out


def test_discovery_groups_parts_signatures_and_definitions_and_skips_what_is_not_ready(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    for name in ("a.tar.zst", "a.tar.zst.sig", "b.tar.zst.part000", "b.tar.zst.part001", "b.tar.zst.sig",
                 "c.tar.zst.part000", "c.tar.zst.part002", "d.tgz", "d.tgz.sig", ".e.tar.zst.XXXX", "notes.txt",
                 "orphan.sig"):
        (seed / name).write_bytes(b"x" * 10)
    (seed / "trusted-keys").mkdir()
    (seed / "trusted-keys" / "k.pem").write_text("not trusted for being here")
    now = time.time()
    entries = {e.name: e for e in discover(seed, 2, now=now + 60)}
    assert sorted(entries) == ["a.tar.zst", "b.tar.zst", "c.tar.zst", "d.tgz"]
    a, b, c, d = (entries[n] for n in ("a.tar.zst", "b.tar.zst", "c.tar.zst", "d.tgz"))
    assert (a.kind, a.parts, a.signature and a.signature.name, a.size) == ("bundle", 1, "a.tar.zst.sig", 20)
    assert (b.parts, b.signature and b.signature.name, b.size, b.problem) == (2, "b.tar.zst.sig", 30, None)
    assert c.problem is not None and "part 001" in c.problem  # a gap: not taken while parts may still come
    assert (d.kind, d.signature and d.signature.name) == ("definition", "d.tgz.sig")
    assert all(e.settled for e in entries.values())
    # Just written (ctime now): not settled yet.
    assert not any(e.settled for e in discover(seed, 2, now=now))


def test_bundles_and_definitions_are_imported_once_a_refused_one_blocks_nothing(
        tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private, public = keypair
    data = tmp_path / "data"
    seed = data / "seed"
    seed.mkdir(parents=True)
    su.trust(data, public)
    su.bundle(seed / "a-good.tar.zst", private, "good", {"docker.io/library/alpha:1": 40_000}, 1)
    su.bundle(seed / "b-bad.tar.zst", private, "bad", {"docker.io/library/beta:1": 300_000}, 2)
    su.tamper(seed / "b-bad.tar.zst")
    # A split bundle with no embedded signature, vouched for by a detached one over all its parts.
    su.bundle(tmp_path / "c.tar.zst", None, "split", {"docker.io/library/gamma:1": 200_000}, 3, "--split", "100K")
    for part in sorted(tmp_path.glob("c.tar.zst.part*")):
        part.rename(seed / part.name)
    parts = sorted(seed.glob("c.tar.zst.part*"))
    assert len(parts) == 3
    su.openssl_signature(parts, private, seed / "c.tar.zst.sig")
    su.signed_definition(seed, private, "edge", ["docker.io/library/alpha:1"])
    (seed / "zz-unsigned.tgz").write_bytes((seed / "edge.tgz").read_bytes())  # no signature: refused

    first = scan(data, check_rc=1)  # exit 1: something was refused
    files = by_name(first)
    assert {n: f["outcome"] for n, f in files.items()} == {
        "a-good.tar.zst": "imported", "b-bad.tar.zst": "refused", "c.tar.zst": "imported", "edge.tgz": "imported",
        "zz-unsigned.tgz": "refused"}
    assert files["b-bad.tar.zst"]["errorCode"] == "DIGEST_MISMATCH"
    assert files["zz-unsigned.tgz"]["errorCode"] == "DEFINITION_UNSIGNED"
    assert (files["c.tar.zst"]["parts"], files["c.tar.zst"]["signature"]) == (3, "c.tar.zst.sig")
    # Each bundle is an ordinary import job, its outcome recorded there too.
    jobs = jobs_by_source(data)
    assert [(s, c) for _, s, c in jobs["seed/a-good.tar.zst"]] == [("done", None)]
    assert [(s, c) for _, s, c in jobs["seed/b-bad.tar.zst"]] == [("failed", "DIGEST_MISMATCH")]
    assert [(s, c) for _, s, c in jobs["seed/c.tar.zst"]] == [("done", None)]
    assert files["a-good.tar.zst"]["jobId"] == jobs["seed/a-good.tar.zst"][0][0]
    repos = {r[0] for r in su.rows(data, "SELECT name FROM repositories")}
    assert {"spectro-images/docker.io/library/alpha", "spectro-images/docker.io/library/gamma"} <= repos
    assert "spectro-images/docker.io/library/beta" not in repos  # the refused bundle left nothing
    assert su.rows(data, "SELECT name FROM cluster_definitions") == [("edge",)]
    audit = [r[0] for r in su.rows(data, "SELECT resource FROM audit_logs WHERE resource_type = 'seed'")]
    assert any(r.startswith("seed/a-good.tar.zst: imported") for r in audit)
    assert any(r.startswith("seed/b-bad.tar.zst: refused DIGEST_MISMATCH") for r in audit)
    assert any(r == "seed/zz-unsigned.tgz: refused DEFINITION_UNSIGNED" for r in audit)
    started = [r[0] for r in su.rows(data, "SELECT resource FROM audit_logs WHERE resource_type = 'import'")]
    assert sorted(r.split(":", 1)[1] for r in started) == ["seed/a-good.tar.zst", "seed/b-bad.tar.zst",
                                                           "seed/c.tar.zst"]

    # Again: nothing new is imported, and what was refused stays refused (exit 0: nothing refused now).
    second = by_name(scan(data))
    assert {n: f["outcome"] for n, f in second.items()} == {
        "a-good.tar.zst": "done-earlier", "b-bad.tar.zst": "refused-earlier", "c.tar.zst": "done-earlier",
        "edge.tgz": "done-earlier", "zz-unsigned.tgz": "refused-earlier"}
    assert second["b-bad.tar.zst"]["errorCode"] == "DIGEST_MISMATCH"
    assert sum(len(v) for v in jobs_by_source(data).values()) == 3

    # A file that changed (the good copy put in place of the damaged one) is considered anew.
    su.bundle(tmp_path / "b-fixed.tar.zst", private, "bad", {"docker.io/library/beta:1": 300_000}, 2)
    (tmp_path / "b-fixed.tar.zst").replace(seed / "b-bad.tar.zst")
    su.age(seed / "b-bad.tar.zst")
    time.sleep(2.1)  # settle: its ctime says it was just written
    third = by_name(scan(data))
    assert third["b-bad.tar.zst"]["outcome"] == "imported"
    assert third["a-good.tar.zst"]["outcome"] == "done-earlier"


def test_without_a_trusted_key_seed_bundles_are_refused_until_a_key_is_added_and_refused_ones_retried(
        tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private, public = keypair
    data = tmp_path / "data"
    seed = tmp_path / "usb"  # a mounted stick: --seed-dir
    seed.mkdir()
    su.bundle(seed / "site.tar.zst", private, "site", {"docker.io/library/delta:1": 20_000}, 4)
    su.age(seed / "site.tar.zst")
    time.sleep(2.1)
    refused = scan(data, "--seed-dir", seed, check_rc=1)
    assert refused["trustedKeys"] == 0
    line = by_name(refused)["site.tar.zst"]
    assert (line["outcome"], line["errorCode"]) == ("refused", "SIGNATURE")
    su.trust(data, public)
    assert by_name(scan(data, "--seed-dir", seed))["site.tar.zst"]["outcome"] == "refused-earlier"
    retried = by_name(scan(data, "--seed-dir", seed, "--retry-refused"))["site.tar.zst"]
    assert (retried["outcome"], retried.get("retried")) == ("imported", "refused")


def test_a_scan_killed_mid_import_is_retried_by_the_next(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private, public = keypair
    data = tmp_path / "data"
    seed = data / "seed"
    seed.mkdir(parents=True)
    su.trust(data, public)
    su.bundle(seed / "big.tar.zst", private, "big", {"docker.io/library/big:1": 40 << 20}, 5)
    su.age(seed / "big.tar.zst")
    time.sleep(2.1)
    proc = subprocess.Popen([sys.executable, "-m", "web.cli", "seed", "scan", "--data-dir", str(data)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **env_for(["--data-dir", data])})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # killed once its import job has started streaming
        if (data_paths(data).database_url or (data / "cargohold.db").exists()) and su.rows(
                data, "SELECT 1 FROM import_jobs WHERE source = 'seed/big.tar.zst' AND bytes_done > 0"):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert su.rows(data, "SELECT state FROM seed_files") == [("importing",)]
    status = json.loads(cargohold("seed", "status", "--data-dir", data, "--json").stdout)
    assert [f["state"] for f in status["files"]] == ["interrupted"]
    assert status["latestScan"]["state"] == "interrupted"

    line = by_name(scan(data))["big.tar.zst"]
    assert (line["outcome"], line["retried"]) == ("imported", "interrupted")
    listed = json.loads(cargohold("bundle", "list", "--data-dir", data, "--json").stdout)  # reaps the dead job
    assert sorted((j["state"], j["errorCode"]) for j in listed if j["source"] == "seed/big.tar.zst") == [
        ("done", None), ("failed", "INTERRUPTED")]


def test_a_file_set_another_live_process_is_importing_is_left_to_it(tmp_path: Path,
                                                                     keypair: tuple[Path, Path]) -> None:
    """The per-file claim under the scan lease: a set claimed by a live process is reported busy, not imported."""
    from registry.processes import process_start
    from web.config import Config
    from web.seed import seed_scanner

    private, public = keypair
    data = tmp_path / "data"
    seed = data / "seed"
    seed.mkdir(parents=True)
    su.trust(data, public)
    su.bundle(seed / "one.tar.zst", private, "one", {"docker.io/library/one:1": 20_000}, 31)
    scanner = seed_scanner(Config(data_dir=data, database_url=database_url_of(data), seed_settle_seconds=0))
    (entry,) = discover(seed, 0)
    other = subprocess.Popen(["sleep", "60"])  # a live process that holds the claim
    try:
        from registry.db import write_transaction

        with write_transaction(scanner.db) as db:
            db.execute("INSERT INTO seed_files (path, kind, size, mtime_ns, parts, state, pid, pid_start, updated_at) "
                       "VALUES (?, 'bundle', ?, ?, 1, 'importing', ?, ?, ?)",
                       [str(entry.path), entry.size, entry.mtime_ns, other.pid, process_start(other.pid),
                        time.time()])
        claimed = scanner.claim_scan("cli", "test")
        assert claimed is not None and claimed[1]
        report = scanner.run_scan(claimed[0], "test")
        assert by_name(report)["one.tar.zst"]["outcome"] == "busy"
        assert su.rows(data, "SELECT COUNT(*) FROM import_jobs") == [(0,)]
    finally:
        other.kill()
        other.wait()
    claimed = scanner.claim_scan("cli", "test")  # its owner gone: the claim is taken over and the set imported
    assert claimed is not None
    line = by_name(scanner.run_scan(claimed[0], "test"))["one.tar.zst"]
    assert (line["outcome"], line["retried"]) == ("imported", "interrupted")


def test_a_file_still_being_written_is_waited_for_then_left_for_the_next_scan(tmp_path: Path,
                                                                               keypair: tuple[Path, Path]) -> None:
    import threading

    from web.config import Config
    from web.seed import seed_scanner

    private, public = keypair
    data = tmp_path / "data"
    seed = data / "seed"
    seed.mkdir(parents=True)
    su.trust(data, public)
    built = su.bundle(tmp_path / "slow.tar.zst", private, "slow", {"docker.io/library/slow:1": 20_000}, 41)
    content = built.read_bytes()
    stop = threading.Event()

    def copy_slowly() -> None:  # a copy that keeps writing: a few bytes every 0.2 s
        with (seed / "slow.tar.zst").open("wb") as f:
            for i in range(0, len(content), 64):
                if stop.is_set():
                    return
                f.write(content[i:i + 64])
                f.flush()
                time.sleep(0.2)

    writer = threading.Thread(target=copy_slowly)
    writer.start()
    try:
        time.sleep(0.3)
        scanner = seed_scanner(Config(data_dir=data, database_url=database_url_of(data), seed_settle_seconds=1))
        claimed = scanner.claim_scan("cli", "test")
        assert claimed is not None
        started = time.monotonic()
        line = by_name(scanner.run_scan(claimed[0], "test", max_wait=2.5))["slow.tar.zst"]
        assert time.monotonic() - started >= 2.5  # it waited for the copy to finish, re-checking
        assert line["outcome"] == "waiting" and "still being written" in line["error"]
        assert su.rows(data, "SELECT COUNT(*) FROM seed_files") == [(0,)]  # nothing recorded, nothing imported
    finally:
        stop.set()
        writer.join()
    (seed / "slow.tar.zst").write_bytes(content)  # the copy finished
    time.sleep(1.1)
    claimed = scanner.claim_scan("cli", "test")
    assert claimed is not None
    assert by_name(scanner.run_scan(claimed[0], "test"))["slow.tar.zst"]["outcome"] == "imported"
