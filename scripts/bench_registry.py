#!/usr/bin/env python3
"""Benchmark the appliance's registry against CNCF distribution, side by side.

Starts Debian's ``docker-registry`` (CNCF distribution 2.8, filesystem storage,
no auth) and the appliance (``python -m web.cli serve``) on free loopback ports,
loads the same content into both, and measures, alternating between the two so
that background load hits both alike:

* GET of a large blob (curl to /dev/null), MB/s, and the same GET from the
  appliance over HTTPS (``--tls``) against its own plain-HTTP figure;
* HEAD and GET of a manifest by tag with 32 concurrent keep-alive clients
  (GET with wrk and ab, HEAD with ab: wrk 4.1 cannot finish a HEAD), req/s and
  server CPU per request, anonymous, with Basic credentials and with a bearer
  token (against a second distribution that checks tokens too);
* skopeo push and pull of a ~200 MB multi-layer image, seconds;
* the appliance's peak RSS per gunicorn process while it serves a small and a
  large blob (GET and push), sampled from /proc;
* the site load of issue #10 (`site_load`): hundreds of layer downloads read at
  500 KB/s each from distinct loopback addresses, as edge hosts on thin links
  pull, plus up to a thousand idle or trickling connections, while manifest
  GETs are probed at a fixed rate; answered share, latency, whether every
  download keeps moving, and the RSS of the server's whole process tree;
* several gunicorn worker setups (gthread and sync), to choose the default.

Figures are printed as absolute values and as appliance/distribution ratios
against the targets in docs/performance.md. This is a measurement, not a test:
it asserts nothing and never runs in the test suite. Every load it makes goes
to loopback addresses, and every process it starts stops by itself.

    python scripts/bench_registry.py              # full run (about 14 minutes)
    python scripts/bench_registry.py --quick      # small sizes, a smoke check (about 3 minutes)
    python scripts/bench_registry.py --site-load  # only the site-load scenario (4 minutes; --quick: 1 minute)
    python scripts/bench_registry.py --json out.json

Needs: docker-registry, skopeo, curl, wrk and ab (``apt-get install wrk apache2-utils``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.appliance import Appliance, free_port, start_appliance  # noqa: E402
from tests.images import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, OciLayout  # noqa: E402

MiB = 1 << 20
REPO = "spectro-images/bench/content"
SITE_REPO = "spectro-images/bench/site"
ACCEPT = ", ".join([
    OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
TOOLS = {
    "docker-registry": "apt-get install docker-registry",
    "skopeo": "apt-get install skopeo",
    "curl": "apt-get install curl",
    "wrk": "apt-get install wrk",
    "ab": "apt-get install apache2-utils",
}
# Worker setups compared (web/config.py holds the default chosen from them: gthread 2x32).
SETUPS: list[tuple[str, list[str]]] = [
    ("gthread 2x8", ["--worker-class", "gthread", "--workers", "2", "--threads", "8"]),
    ("gthread 2x16", ["--worker-class", "gthread", "--workers", "2", "--threads", "16"]),
    ("gthread 2x32", ["--worker-class", "gthread", "--workers", "2", "--threads", "32"]),
    ("gthread 4x8", ["--worker-class", "gthread", "--workers", "4", "--threads", "8"]),
    # gunicorn silently runs gthread when "sync" is asked for with threads > 1.
    ("sync 4", ["--worker-class", "sync", "--workers", "4", "--threads", "1"]),
    ("sync 5", ["--worker-class", "sync", "--workers", "5", "--threads", "1"]),
]
# Targets of issue #10 (the ratios are cargohold / distribution unless said otherwise).
TARGET_BLOB = ">=1.0"
TARGET_HTTPS = ">=0.8"       # the appliance over HTTPS / the appliance over plain HTTP
TARGET_MANIFEST = ">=1.0"
TARGET_SKOPEO = "<=1.2"
SITE_ANSWERED_PCT = 99.0     # manifest probes answered under the site load
SITE_P95_MS = 50.0
SITE_RSS_MB = 400.0          # the appliance's whole process tree under the site load
SITE_RSS_FLAT = 1.2          # RSS at the most connections / RSS at the fewest, at most


@dataclass(frozen=True)
class SiteLoad:
    """How big the site-load scenario is (issue #10).

    `stages` are (downloads, idle connections) steps on the way up, each held
    `hold_seconds` while manifests are probed and the server's RSS sampled;
    then two windows of `probe_seconds` at full load (`downloads` plus
    `half_open`): the idle connections silent, then trickling one header line
    every `trickle_every` seconds.
    """

    downloads: int
    half_open: int
    stages: tuple[tuple[int, int], ...]
    layers: int
    layer_size: int
    rate: int
    probe_rate: float
    probe_seconds: float
    hold_seconds: float
    probe_timeout: float = 2.0
    trickle_every: float = 5.0
    tail_seconds: float = 5.0


@dataclass(frozen=True)
class Sizes:
    """What one run moves around."""

    small_blob: int
    big_blob: int
    image_layers: tuple[int, ...]
    blob_runs: int
    wrk_seconds: int
    wrk_rounds: int
    skopeo_runs: int
    setup_seconds: int
    setup_rounds: int
    slow_rate: str
    site: SiteLoad


# 300 downloads (100 edge hosts x containerd's 3 layers at a time) at 500 KB/s and 1,000 idle connections;
# a 64 MiB layer lasts 134 s at that rate, longer than the ~110 s the scenario runs per server.
FULL_SITE = SiteLoad(downloads=300, half_open=1000, stages=((100, 0), (300, 0), (300, 700)), layers=3,
                     layer_size=64 * MiB, rate=500_000, probe_rate=10, probe_seconds=30, hold_seconds=8)
QUICK_SITE = SiteLoad(downloads=30, half_open=100, stages=((10, 0), (30, 0), (30, 70)), layers=3,
                      layer_size=24 * MiB, rate=500_000, probe_rate=10, probe_seconds=8, hold_seconds=3)
FULL = Sizes(64 * MiB, 512 * MiB, (60 * MiB, 50 * MiB, 40 * MiB, 30 * MiB, 20 * MiB), 6, 10, 2, 6, 5, 2, "2M",
             FULL_SITE)
QUICK = Sizes(16 * MiB, 64 * MiB, (8 * MiB, 4 * MiB, 2 * MiB), 2, 3, 1, 1, 2, 1, "1M", QUICK_SITE)


# -- servers -----------------------------------------------------------------------------------------------------


@dataclass
class Registry:
    """One registry under test, as the benchmark talks to it."""

    name: str
    host: str
    auth: tuple[str, str] | None
    stop: Callable[[], None]
    pid: int
    scheme: str = "http"
    cacert: Path | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.host.rpartition(":")
        return host, int(port)

    def skopeo_creds(self) -> list[str]:
        return ["--dest-creds", f"{self.auth[0]}:{self.auth[1]}"] if self.auth else []


def start_distribution(work: Path, name: str = "distribution", storage: Path | None = None,
                       tokens: DistributionTokens | None = None,
                       tls: tuple[Path, Path, Path] | None = None) -> Registry:
    """docker-registry with filesystem storage (under `work`, or `storage`), plain HTTP on a free port.

    With `tokens` it checks bearer tokens signed by that key on every request,
    as the appliance does; without, it has no auth at all. With `tls`
    (certificate, key, CA) it serves HTTPS.
    """
    port = free_port()
    if storage is None:
        storage = work / f"{name}-storage"
        storage.mkdir(parents=True)
    config = work / f"{name}.yml"
    auth = ""
    if tls is not None:
        auth += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    if tokens is not None:
        # The realm is never contacted: the benchmark mints its tokens itself.
        auth += (f"auth:\n  token:\n    realm: http://127.0.0.1:1/token\n    service: {tokens.service}\n"
                f"    issuer: {tokens.issuer}\n    rootcertbundle: {tokens.cert}\n")
    # Access log on, as the appliance's is: both pay for one log line per request.
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log_path = work / f"{name}.log"
    log_file = log_path.open("wb")
    scheme = "https" if tls else "http"
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{log_path.read_text()}")
        try:
            # 401 from the instance that checks tokens: it is up.
            answer = requests.get(f"{scheme}://127.0.0.1:{port}/v2/", timeout=1, verify=str(tls[2]) if tls else True)
            if answer.status_code in (200, 401):
                return Registry(name, f"127.0.0.1:{port}", None, stop, proc.pid, scheme, tls[2] if tls else None)
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop()
    raise RuntimeError("docker-registry did not answer within 30 s")


def start_cargohold(data_dir: Path, args: list[str], tls: bool = False) -> tuple[Registry, Appliance]:
    """`cargohold serve` with `args` over `data_dir`; with `tls`, HTTPS with its generated CA."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # A private parent for the front's runtime directory (its unix socket), away from other jobs' appliances
    # in /tmp: before 0c65a46 a front starting in another PID namespace judged ours stale by its pid and
    # removed it mid-run (every request then answered 502).
    env = {"RUNTIME_DIRECTORY": tempfile.mkdtemp(prefix="run-", dir=data_dir.parent)}
    if not tls:
        app = start_appliance(data_dir, *args, env=env)
        return Registry("cargohold", app.host, app.admin, app.stop, app.process.pid), app
    app = start_appliance(data_dir, "--tls", *args, env=env, scheme="https", verify=False)
    cacert = data_dir / "tls" / "ca.crt"
    if not cacert.exists():  # a given certificate instead of the generated CA: ask the appliance
        cacert = data_dir.parent / f"{data_dir.name}-ca.crt"
        cacert.write_bytes(requests.get(f"{app.url}/ca.crt", timeout=10, verify=False).content)
    return Registry("cargohold-https", app.host, app.admin, app.stop, app.process.pid, "https", cacert), app


@dataclass(frozen=True)
class DistributionTokens:
    """An ES256 key that distribution trusts for bearer tokens (its ``auth: token`` set-up).

    distribution 2.8 finds the key by the token's ``kid``: the libtrust
    fingerprint of the certificate's public key in `cert`.
    """

    key: Any
    cert: Path
    kid: str
    issuer: str = "bench-issuer"
    service: str = "bench-distribution"

    def token(self, repository: str, lifetime: int = 7200) -> str:
        """A pull token for `repository`, as distribution's token server would issue."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        claims = {"iss": self.issuer, "sub": "bench", "aud": self.service, "iat": now, "nbf": now - 10,
                  "exp": now + lifetime, "jti": secrets.token_hex(8),
                  "access": [{"type": "repository", "name": repository, "actions": ["pull"]}]}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _b64(data: bytes) -> str:
    """base64url without padding, as JWTs spell it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def distribution_tokens(work: Path) -> DistributionTokens:
    """A fresh key and self-signed certificate for distribution's token auth."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256()))
    path = work / "distribution-token.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # libtrust's key id: SHA-256 of the DER public key, 240 bits, base32, in 12 groups of 4.
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    kid = ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))
    return DistributionTokens(key, path, kid)


# -- content -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobFile:
    path: Path
    digest: str
    size: int


def random_blob(path: Path, size: int) -> BlobFile:
    """`size` incompressible bytes on disk, written and hashed in 8 MiB pieces."""
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 8 * MiB))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return BlobFile(path, f"sha256:{h.hexdigest()}", size)


def push_blob(reg: Registry, repo: str, blob: BlobFile) -> None:
    """POST + monolithic PUT of a blob from a file (streamed, never in memory)."""
    r = requests.post(f"{reg.url}/v2/{repo}/blobs/uploads/", auth=reg.auth, timeout=60)
    r.raise_for_status()
    location = urljoin(reg.url, r.headers["Location"])
    sep = "&" if "?" in location else "?"
    with blob.path.open("rb") as f:
        r = requests.put(f"{location}{sep}digest={blob.digest}", data=f, auth=reg.auth, timeout=600,
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)})
    if r.status_code != 201:
        raise RuntimeError(f"{reg.name}: blob push answered {r.status_code}: {r.text[:300]}")


def push_manifest(reg: Registry, repo: str, tag: str, work: Path, blobs: list[BlobFile]) -> str:
    """An image manifest over `blobs` (as layers) and a tiny config, tagged `tag`; returns its digest."""
    config_bytes = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_path = work / "config.json"
    config_path.write_text(config_bytes)
    config = BlobFile(config_path, f"sha256:{hashlib.sha256(config_bytes.encode()).hexdigest()}",
                      len(config_bytes.encode()))
    push_blob(reg, repo, config)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in blobs],
    }
    body = json.dumps(manifest).encode()
    r = requests.put(f"{reg.url}/v2/{repo}/manifests/{tag}", data=body, auth=reg.auth, timeout=60,
                     headers={"Content-Type": OCI_MANIFEST})
    if r.status_code != 201:
        raise RuntimeError(f"{reg.name}: manifest push answered {r.status_code}: {r.text[:300]}")
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


# -- memory ---------------------------------------------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found += [int(p) for p in text.split()]
    except OSError:
        pass
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def process_roles(root: int) -> dict[int, str]:
    """The appliance's processes by role: master (the serve process), worker (gunicorn), front (nginx), other."""
    roles: dict[int, str] = {}
    direct = set(_children(root))
    for pid in process_tree(root):
        comm = _comm(pid)
        if pid == root:
            roles[pid] = "master"
        elif comm == "nginx":
            roles[pid] = "front"
        elif pid in direct and (comm.startswith("python") or comm in ("cargohold", "gunicorn")):
            roles[pid] = "worker"
        else:
            roles[pid] = "other"  # e.g. the front's access-log relay
    return roles


def _by_role(peak_kb: dict[int, int], roles: dict[int, str]) -> dict[str, float]:
    """MB figures from per-process peaks: master, largest worker, the front in all, and the whole tree."""
    def of(role: str) -> list[int]:
        return [kb for pid, kb in peak_kb.items() if roles.get(pid) == role]

    return {"master_mb": sum(of("master")) / 1024, "worker_max_mb": max(of("worker"), default=0) / 1024,
            "front_mb": sum(of("front")) / 1024, "total_mb": sum(peak_kb.values()) / 1024,
            "workers": len(of("worker"))}


class RssSampler:
    """Samples VmRSS of every process of the appliance (master, workers, front) every 20 ms while running."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.peak_kb: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        refreshed = 0.0
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 0.5:  # walking /proc every 20 ms would cost a core's tenth
                self.roles.update(process_roles(self.master))
                refreshed = time.monotonic()
            for pid in self.roles:
                rss = _status_kb(pid, "VmRSS")
                if rss is not None:
                    self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), rss)
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        return _by_role(self.peak_kb, self.roles)


def hwm(master: int) -> dict[str, float]:
    """VmHWM (peak RSS since start) of the master, each worker and the front, in MB."""
    roles = process_roles(master)
    return _by_role({pid: _status_kb(pid, "VmHWM") or 0 for pid in roles}, roles)


def process_tree(root: int) -> list[int]:
    """`root` and every descendant (gunicorn workers, an nginx front and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def tree_rss_mb(root: int) -> tuple[float, int]:
    """(total VmRSS in MB, number of processes) of `root`'s process tree."""
    kb = [_status_kb(pid, "VmRSS") for pid in process_tree(root)]
    return sum(k for k in kb if k) / 1024, sum(1 for k in kb if k)


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root`'s tree (live processes; a reaped worker's time is in its parent's)."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


class TreeSampler:
    """Samples the total RSS of a process tree every `every` seconds while running."""

    def __init__(self, root: int, every: float = 0.25) -> None:
        self.root = root
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(tree_rss_mb(self.root))
            self._stop.wait(self.every)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        mbs = [mb for mb, _ in self.samples] or [0.0]
        return {"rss_max_mb": max(mbs), "rss_median_mb": median(mbs),
                "processes": max((n for _, n in self.samples), default=0)}


# -- measurements -----------------------------------------------------------------------------------------------------


def curl_get(url: str, size: int, cacert: Path | None = None) -> float:
    """Download `url` to /dev/null; returns MB/s (checks the byte count). `cacert`: the CA for HTTPS."""
    extra = ["--cacert", str(cacert)] if cacert else []
    out = subprocess.run(["curl", "-sS", *extra, "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                         check=True, capture_output=True, text=True).stdout.split()
    got, seconds = int(out[0]), float(out[1])
    if got != size:
        raise RuntimeError(f"GET {url} returned {got} bytes, expected {size}")
    return size / MiB / seconds


_WRK_LUA = """
wrk.method = "{method}"
wrk.headers["Accept"] = "{accept}"
{extra}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(99)))
end
"""


def wrk(url: str, method: str, seconds: int, work: Path, connections: int = 32,
        headers: dict[str, str] | None = None) -> dict[str, float]:
    """req/s of `method url` from `connections` keep-alive clients on 2 wrk threads."""
    script = work / f"wrk-{method}.lua"
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    script.write_text(_WRK_LUA.format(method=method, accept=ACCEPT, extra=extra))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
                          url], check=True, capture_output=True, text=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    reqs, duration_us, bad_status, sock_errors, p99_us = (int(x) for x in line.split()[1:])
    return {"rps": reqs / (duration_us / 1e6), "requests": reqs, "non2xx": bad_status, "socket_errors": sock_errors,
            "p99_ms": p99_us / 1000}


def ab(url: str, method: str, seconds: int, connections: int = 32,
       headers: dict[str, str] | None = None) -> dict[str, float]:
    """req/s of `method url` from `connections` keep-alive clients, with ApacheBench.

    wrk 4.1 (Debian 12) waits for a body after a HEAD response that carries
    Content-Length, so HEAD is measured with ab; GET with both, as a cross-check.
    """
    cmd = ["ab", "-q", "-k", "-c", str(connections), "-t", str(seconds), "-n", "100000000", "-s", "5",
           "-H", f"Accept: {ACCEPT}"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    if method == "HEAD":
        cmd.append("-i")
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    values: dict[str, float] = {"non2xx": 0, "socket_errors": 0}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key == "Requests per second":
            values["rps"] = float(value.split()[0])
        elif key == "Complete requests":
            values["requests"] = float(value)
        elif key == "Failed requests":
            values["socket_errors"] = float(value)
        elif key == "Non-2xx responses":
            values["non2xx"] = float(value)
    return values


def load(url: str, method: str, seconds: int, work: Path, tool: str = "wrk",
         headers: dict[str, str] | None = None, pid: int | None = None) -> dict[str, float]:
    """Manifest load with the tool asked for; HEAD always goes through ab (see `ab`).

    With the server's `pid`, also its CPU time per request (its whole process
    tree): steadier than req/s when other jobs share the machine.
    """
    cpu_before = tree_cpu_seconds(pid) if pid else 0.0
    if method == "HEAD" or tool == "ab":
        out = ab(url, method, seconds, headers=headers)
    else:
        out = wrk(url, method, seconds, work, headers=headers)
    if pid and out.get("requests"):
        out["cpu_us"] = (tree_cpu_seconds(pid) - cpu_before) / out["requests"] * 1e6
    return out


def bearer_token(reg: Registry, repo: str) -> str:
    """A pull token from the appliance's token service, as containerd or skopeo with credentials get one."""
    r = requests.get(f"{reg.url}/service/token", params={"service": "harbor-registry",
                                                         "scope": f"repository:{repo}:pull"},
                     auth=reg.auth, timeout=30)
    r.raise_for_status()
    return str(r.json()["token"])


def skopeo_copy(src: str, dest: str, extra: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--quiet", *extra, src, dest], check=True, capture_output=True)
    return time.perf_counter() - start


@contextmanager
def slow_downloads(url: str, count: int, rate: str) -> Iterator[None]:
    """`count` rate-limited downloads of `url` in flight (edge hosts on slow links)."""
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--limit-rate", rate, url]) for _ in range(count)]
    try:
        time.sleep(1.0)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- site load: the load generator (its own process) -----------------------------------------------------------------
#
# Edge hosts pull layers over thin links for minutes, and anyone on the LAN can open connections and send
# nothing (DESIGN.md, "Serving"). The load generator plays both: N downloads, each a real HTTP GET of a
# layer read at `rate` bytes/s from a small socket buffer, so that TCP backpressure throttles the server as
# a slow link would, from 127.0.1.x source addresses (one per edge host, 3 layers each, as containerd
# fetches); and M connections from one other loopback address that send nothing, or trickle one header
# line every few seconds and never finish. It is one asyncio loop in a process of its own, so that
# hundreds of sockets cost one core at most and leave the probes in the parent alone. It obeys commands
# over a pipe, and stops at its deadline or when the pipe closes, whatever the parent does.

IDLE_SOURCE = "127.0.9.1"       # the idle and trickling connections' source address
_RCVBUF = 64 * 1024             # Linux doubles it: ~128 KiB in flight per download, like a thin link's window
_BURST = 64 * 1024              # how far a download may read ahead of its rate
_MIN_READ = 8 * 1024
_CONNECTS_AT_ONCE = 64          # connect() calls in flight: a burst of 1,000 SYNs would overflow listen queues


def edge_host_address(host: int) -> str:
    """Source address of edge host `host` (0-based): 127.0.1.1, 127.0.1.2, ..., then 127.0.2.1, ..."""
    return f"127.0.{1 + host // 254}.{1 + host % 254}"


class _HttpStatus(Exception):
    """A response other than 200 to a layer GET."""


@dataclass
class _Download:
    """One slow layer download and what it has read so far."""

    source: str
    path: str
    bytes: int = 0
    state: str = "new"  # new, connecting, waiting (request sent, no response yet), reading, failed
    headers_after: float | None = None  # seconds from its first GET to the response headers
    completed: int = 0
    errors: int = 0
    last_error: str = ""


def _content_length(head: bytes) -> int:
    """Content-Length of a response head (status line and headers); raises ValueError without one."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ValueError("response without Content-Length")


class _LoadGen:
    """The site load's connections, in one asyncio loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.paths: list[str] = spec["paths"]
        self.rate: int = spec["rate"]
        self.trickle_every: float = spec["trickle_every"]
        self.deadline = time.monotonic() + spec["max_seconds"]
        self.downloads: list[_Download] = []
        self.idle_tasks: list[asyncio.Task[None]] = []
        self.idle_mode = "silent"
        self.idle_open = 0
        self.idle_closed = 0     # idle connections the server closed (or answered)
        self.idle_errors = 0     # connects refused or failed
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(_CONNECTS_AT_ONCE)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _connect(self, source: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)  # before connect: sets the window
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            async with self.slots:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (self.host, self.port)), 10)
            return sock
        except BaseException:
            sock.close()
            raise

    async def _download(self, d: _Download) -> None:
        """GET the layer at `rate`, again and again (keep-alive) until cancelled; reconnect after errors."""
        loop = asyncio.get_running_loop()
        request = (f"GET {d.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: bench-site-load\r\n"
                   "Accept: */*\r\n\r\n").encode()
        while True:
            sock: socket.socket | None = None
            try:
                d.state = "connecting"
                sock = await self._connect(d.source)
                while True:
                    d.state = "waiting"
                    await loop.sock_sendall(sock, request)
                    sent = time.monotonic()
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = await loop.sock_recv(sock, 16384)
                        if not chunk:
                            raise ConnectionError("closed before the response")
                        head += chunk
                    head, _, body = head.partition(b"\r\n\r\n")
                    if d.headers_after is None:
                        d.headers_after = time.monotonic() - sent
                    status = head.split(b" ", 2)[1]
                    if status != b"200":
                        raise _HttpStatus(status.decode(errors="replace"))
                    length = _content_length(head)
                    d.state = "reading"
                    got = len(body)
                    d.bytes += got
                    start = time.monotonic()
                    while got < length:
                        allowed = self.rate * (time.monotonic() - start) + _BURST - got
                        if allowed < _MIN_READ:
                            await asyncio.sleep((_MIN_READ - allowed) / self.rate)
                            continue
                        chunk = await loop.sock_recv(sock, int(min(allowed, length - got, _BURST)))
                        if not chunk:
                            raise ConnectionError("closed in the middle of the body")
                        got += len(chunk)
                        d.bytes += len(chunk)
                    d.completed += 1
            except asyncio.CancelledError:
                raise
            except (OSError, ValueError, IndexError, _HttpStatus) as exc:
                d.errors += 1
                d.last_error = f"{type(exc).__name__}: {exc}"[:160]
                d.state = "failed"
                await asyncio.sleep(1.0)
            finally:
                if sock is not None:
                    sock.close()

    async def _idle(self, mode: str, offset: float) -> None:
        """One connection that sends nothing (silent) or a header line every `trickle_every` s; reopened when closed."""
        loop = asyncio.get_running_loop()
        while True:
            sock: socket.socket | None = None
            try:
                sock = await self._connect(IDLE_SOURCE)
                self.idle_open += 1
                try:
                    if mode == "silent":
                        await loop.sock_recv(sock, 4096)  # returns once the server answers or closes
                    else:
                        await asyncio.sleep(offset)  # spread the lines over the interval
                        await loop.sock_sendall(sock, f"GET /v2/ HTTP/1.1\r\nHost: {self.host}\r\n".encode())
                        line = 0
                        while True:
                            try:
                                await asyncio.wait_for(loop.sock_recv(sock, 4096), self.trickle_every)
                                break  # the server answered or closed
                            except TimeoutError:
                                line += 1
                                await loop.sock_sendall(sock, f"X-Trickle-{line}: {'x' * 16}\r\n".encode())
                except ConnectionError:
                    pass  # reset by the server (nginx resets a connection whose header timed out): closed too
                finally:
                    self.idle_open -= 1
                self.idle_closed += 1
            except asyncio.CancelledError:
                raise
            except OSError:
                self.idle_errors += 1
            finally:
                if sock is not None:
                    sock.close()
            await asyncio.sleep(1.0)  # as a misbehaving client would: come back

    async def stage(self, downloads: int, idle: int, mode: str) -> dict[str, Any]:
        """Grow to `downloads` downloads and set `idle` idle connections of `mode`; wait until they are up."""
        started = time.monotonic()
        layers = len(self.paths)
        for i in range(len(self.downloads), downloads):
            # Download i is layer i % 3 of edge host i // 3: containerd fetches three layers at a time.
            d = _Download(edge_host_address(i // layers), self.paths[i % layers])
            self.downloads.append(d)
            self._spawn(self._download(d))
        if mode != self.idle_mode:
            for task in self.idle_tasks:
                task.cancel()
            await asyncio.gather(*self.idle_tasks, return_exceptions=True)
            self.idle_tasks, self.idle_mode = [], mode
        while len(self.idle_tasks) > idle:
            self.idle_tasks.pop().cancel()
        for i in range(len(self.idle_tasks), idle):
            self.idle_tasks.append(self._spawn(self._idle(mode, (i % 50) / 50 * self.trickle_every)))
        while time.monotonic() - started < 30:
            if self.idle_open >= idle and all(d.state not in ("new", "connecting") for d in self.downloads):
                break
            await asyncio.sleep(0.1)
        return {"seconds": time.monotonic() - started, **self.snapshot()}

    def snapshot(self) -> dict[str, Any]:
        """Bytes read per download, download states, idle connection counts and this process's CPU time."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"t": time.monotonic(), "bytes": [d.bytes for d in self.downloads],
                "states": dict(Counter(d.state for d in self.downloads)),
                "completed": sum(d.completed for d in self.downloads),
                "errors": sum(d.errors for d in self.downloads),
                "last_errors": sorted({d.last_error for d in self.downloads if d.last_error})[:3],
                "no_response_yet": sum(1 for d in self.downloads if d.headers_after is None),
                "idle_open": self.idle_open, "idle_closed": self.idle_closed, "idle_errors": self.idle_errors,
                "cpu_s": usage.ru_utime + usage.ru_stime}

    async def window(self, seconds: float, tail: float, conn: Connection) -> None:
        """Snapshots at the start of a window, `tail` seconds before its end, and at its end; sent back at the end."""
        first = self.snapshot()
        await asyncio.sleep(max(0.0, seconds - tail))
        tail_start = self.snapshot()
        await asyncio.sleep(min(tail, seconds))
        conn.send({"first": first, "tail_start": tail_start, "last": self.snapshot()})

    async def serve(self, conn: Connection) -> None:
        """Obey commands from `conn` (stage, window, snapshot, stop) until stop, EOF or the deadline."""
        loop = asyncio.get_running_loop()
        try:
            while time.monotonic() < self.deadline:
                if not await loop.run_in_executor(None, conn.poll, 0.5):
                    continue
                try:
                    msg = conn.recv()
                except EOFError:
                    break  # the parent is gone
                if msg["cmd"] == "stop":
                    break
                if msg["cmd"] == "stage":
                    conn.send(await self.stage(msg["downloads"], msg["idle"], msg["mode"]))
                elif msg["cmd"] == "window":
                    self._spawn(self.window(msg["seconds"], msg["tail"], conn))
                else:
                    conn.send(self.snapshot())
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            with contextlib.suppress(OSError):
                conn.send(self.snapshot())


def _loadgen_main(conn: Connection, spec: dict[str, Any]) -> None:
    """The load-generator process: obey `conn` until told to stop, the pipe closes, or `max_seconds` pass."""
    raise_nofile_limit()
    try:
        asyncio.run(_LoadGen(spec).serve(conn))
    finally:
        conn.close()


class LoadGenerator:
    """The parent's handle on the load-generator process."""

    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or sockets inherited
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_loadgen_main, args=(child, spec), daemon=True, name="site-load")
        self.process.start()
        child.close()

    def send(self, msg: dict[str, Any]) -> None:
        self._conn.send(msg)

    def recv(self, timeout: float) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the load generator did not answer within {timeout:.0f} s")
        reply: dict[str, Any] = self._conn.recv()
        return reply

    def call(self, msg: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        self.send(msg)
        return self.recv(timeout)

    def close(self) -> dict[str, Any] | None:
        """Stop it (its connections close); its last snapshot, if it answered."""
        final = None
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            final = self.call({"cmd": "stop"}, timeout=30)
        self._conn.close()
        self.process.join(15)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        return final


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 1,300 connections need more than the usual 1,024 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- site load: probes and the scenario -----------------------------------------------------------------------------


async def _probe_once(host: str, port: int, request: bytes, timeout: float) -> tuple[float | None, str]:
    """One manifest GET on a new connection: (seconds, "200"), or (None, status or failure)."""
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode(errors="replace")
            await reader.readexactly(_content_length(head))
        return (time.perf_counter() - started if status == "200" else None), status
    except TimeoutError:
        return None, "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
        return None, type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


async def _probe_series(host: str, port: int, path: str, rate: float, seconds: float,
                        timeout: float) -> list[tuple[float | None, str]]:
    """Probes started at a fixed rate (whatever the earlier ones are doing) for `seconds`."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {ACCEPT}\r\nUser-Agent: bench-probe\r\n"
               "Connection: close\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for k in range(max(1, int(rate * seconds))):
        delay = start + k / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_probe_once(host, port, request, timeout)))
    return list(await asyncio.gather(*tasks))


def probe_summary(results: list[tuple[float | None, str]]) -> dict[str, Any]:
    """Answered share and latency percentiles; an unanswered probe counts as slower than any answer (None)."""
    ms: list[float] = sorted(r[0] * 1000 if r[0] is not None else math.inf for r in results)

    def pct(q: float) -> float | None:
        value = ms[max(0, math.ceil(q * len(ms)) - 1)]  # nearest rank
        return None if math.isinf(value) else value

    answered = sum(1 for r in results if r[0] is not None)
    return {"probes": len(results), "answered": answered, "answered_pct": 100 * answered / len(results),
            "p50_ms": pct(0.5), "p95_ms": pct(0.95), "max_ms": pct(1.0),
            "failures": dict(Counter(r[1] for r in results if r[0] is None))}


def _probe_with_rss(reg: Registry, path: str, cfg: SiteLoad, seconds: float) -> tuple[dict[str, Any], dict[str, float]]:
    """Probe `reg` for `seconds` while sampling its process tree's RSS: (probe summary, RSS summary)."""
    host, port = reg.address
    with TreeSampler(reg.pid) as sampler:
        results = asyncio.run(_probe_series(host, port, path, cfg.probe_rate, seconds, cfg.probe_timeout))
    return probe_summary(results), sampler.summary()


def _progress(win: dict[str, Any], cfg: SiteLoad) -> dict[str, Any]:
    """How the downloads moved during a window: every one still reading in its last seconds?"""
    first, tail_start, last = win["first"], win["tail_start"], win["last"]
    seconds = last["t"] - first["t"]
    moved = [b - a for a, b in zip(first["bytes"], last["bytes"], strict=True)]
    tail = [b - a for a, b in zip(tail_start["bytes"], last["bytes"], strict=True)]
    rates = sorted(m / seconds for m in moved) or [0.0]
    return {"downloads": len(moved), "progressing": sum(1 for t in tail if t > 0),
            "all_progressing": bool(tail) and all(t > 0 for t in tail),
            "at_rate": sum(1 for r in rates if r >= 0.9 * cfg.rate),
            "aggregate_mb_s": sum(moved) / seconds / 1e6, "min_kb_s": rates[0] / 1e3,
            "median_kb_s": median(rates) / 1e3, "no_response_yet": last["no_response_yet"],
            "states": last["states"], "errors": last["errors"] - first["errors"], "last_errors": last["last_errors"],
            "completed": last["completed"] - first["completed"], "idle_open": last["idle_open"],
            "idle_closed": last["idle_closed"] - first["idle_closed"],
            "idle_errors": last["idle_errors"] - first["idle_errors"],
            "loadgen_cpu_pct": 100 * (last["cpu_s"] - first["cpu_s"]) / seconds}


def site_load(reg: Registry, cfg: SiteLoad, layer_paths: list[str], manifest_path: str) -> dict[str, Any]:
    """The site-load scenario against one registry: stages on the way up, then the two full-load windows."""
    host, port = reg.address
    budget = (len(cfg.stages) * (cfg.hold_seconds + 30) + 2 * (cfg.probe_seconds + 40) + cfg.trickle_every + 60)
    spec = {"host": host, "port": port, "paths": layer_paths, "rate": cfg.rate, "trickle_every": cfg.trickle_every,
            "max_seconds": budget}
    out: dict[str, Any] = {"stages": [], "windows": {}}
    gen = LoadGenerator(spec)
    try:
        for downloads, idle in cfg.stages:
            up = gen.call({"cmd": "stage", "downloads": downloads, "idle": idle, "mode": "silent"})
            probes, rss = _probe_with_rss(reg, manifest_path, cfg, cfg.hold_seconds)
            stage = {"downloads": downloads, "idle": idle, "connections": downloads + idle,
                     "connected_s": up["seconds"], "reading": up["states"].get("reading", 0), **rss, **probes}
            out["stages"].append(stage)
            log(f"  {reg.name}: {downloads} downloads + {idle} idle: {_probe_line(stage, cfg.probe_timeout)}, "
                f"RSS {rss['rss_max_mb']:.0f} MB")
        for mode in ("silent", "trickle"):
            up = gen.call({"cmd": "stage", "downloads": cfg.downloads, "idle": cfg.half_open, "mode": mode})
            if mode == "trickle":
                time.sleep(cfg.trickle_every + 1)  # every connection has sent a line or two: all are mid-request
            gen.send({"cmd": "window", "seconds": cfg.probe_seconds, "tail": cfg.tail_seconds})
            probes, rss = _probe_with_rss(reg, manifest_path, cfg, cfg.probe_seconds)
            progress = _progress(gen.recv(cfg.probe_seconds + 30), cfg)
            window = {"downloads": cfg.downloads, "idle": cfg.half_open, "mode": mode,
                      "connections": cfg.downloads + cfg.half_open, "connected_s": up["seconds"], **rss, **probes,
                      "progress": progress}
            out["windows"][mode] = window
            log(f"  {reg.name}: {cfg.downloads} downloads + {cfg.half_open} {mode} idle: "
                f"{_probe_line(window, cfg.probe_timeout)}, "
                f"RSS {rss['rss_max_mb']:.0f} MB; downloads progressing {progress['progressing']}/"
                f"{progress['downloads']}, {progress['aggregate_mb_s']:.0f} MB/s in all, "
                f"slowest {progress['min_kb_s']:.0f} KB/s; load generator CPU {progress['loadgen_cpu_pct']:.0f}%")
    finally:
        out["final"] = gen.close()
    return out


def _ms(value: float | None, timeout: float) -> str:
    """A latency for the report; None (unanswered) shows as over the timeout."""
    return f">{timeout * 1000:.0f}" if value is None else f"{value:.0f}"


def _probe_line(m: dict[str, Any], timeout: float = 2.0) -> str:
    """One log line of a probe summary."""
    return (f"manifest answered {m['answered']}/{m['probes']} ({m['answered_pct']:.1f}%), "
            f"p50 {_ms(m['p50_ms'], timeout)} ms, p95 {_ms(m['p95_ms'], timeout)} ms, "
            f"max {_ms(m['max_ms'], timeout)} ms")


def site_targets(result: dict[str, Any], cfg: SiteLoad, tree_rss: bool) -> list[dict[str, Any]]:
    """The scenario's figures against issue #10's targets (memory only for the appliance's process tree)."""
    rows: list[dict[str, Any]] = []
    for mode, w in result["windows"].items():
        label = f"{cfg.downloads} downloads + {cfg.half_open} {mode} idle"
        rows.append({"measure": f"{label}: manifests answered", "value": w["answered_pct"], "unit": "%",
                     "target": f">={SITE_ANSWERED_PCT:g}", "met": w["answered_pct"] >= SITE_ANSWERED_PCT})
        p95 = w["p95_ms"]
        rows.append({"measure": f"{label}: manifest p95", "value": p95, "unit": "ms",
                     "target": f"<={SITE_P95_MS:g}", "met": p95 is not None and p95 <= SITE_P95_MS})
        prog = w["progress"]
        rows.append({"measure": f"{label}: downloads progressing", "value": prog["progressing"],
                     "unit": f"/{prog['downloads']}", "target": "all", "met": prog["all_progressing"]})
    if tree_rss:
        peak = max(w["rss_max_mb"] for w in result["windows"].values())
        rows.append({"measure": "RSS of all appliance processes under the site load", "value": peak, "unit": "MB",
                     "target": f"<{SITE_RSS_MB:g}", "met": peak < SITE_RSS_MB})
        points = [*result["stages"], result["windows"]["silent"]]
        growth = points[-1]["rss_max_mb"] / points[0]["rss_max_mb"] if points[0]["rss_max_mb"] else math.nan
        rows.append({"measure": f"RSS at {points[-1]['connections']} / at {points[0]['connections']} connections",
                     "value": growth, "unit": "x", "target": f"<={SITE_RSS_FLAT:g}", "met": growth <= SITE_RSS_FLAT})
    return rows


def site_scenario(res: Results, cfg: SiteLoad, work: Path, servers: list[Registry]) -> None:
    """Load the site image into `servers` and run the site load against each in turn."""
    log(f"site load: {cfg.layers} layers of {cfg.layer_size // MiB} MiB; {cfg.downloads} downloads at "
        f"{cfg.rate // 1000} KB/s from {math.ceil(cfg.downloads / cfg.layers)} edge-host addresses, "
        f"{cfg.half_open} idle connections from {IDLE_SOURCE}; manifest probes {cfg.probe_rate:g}/s from 127.0.0.1, "
        f"{cfg.probe_timeout:g} s timeout")
    layers = [random_blob(work / f"site-layer-{i}.bin", cfg.layer_size) for i in range(cfg.layers)]
    for reg in servers:
        for blob in layers:
            push_blob(reg, SITE_REPO, blob)
        push_manifest(reg, SITE_REPO, "v1", work, layers)
    for blob in layers:
        blob.path.unlink()
    paths = [f"/v2/{SITE_REPO}/blobs/{blob.digest}" for blob in layers]
    manifest_path = f"/v2/{SITE_REPO}/manifests/v1"
    res.site_load = {"config": cfg.__dict__, "servers": {}, "targets": {}}
    for reg in servers:
        log(f"site load against {reg.name}")
        load_before = os.getloadavg()
        result = site_load(reg, cfg, paths, manifest_path)
        result["load_average"] = [load_before, os.getloadavg()]
        res.site_load["servers"][reg.name] = result
        res.site_load["targets"][reg.name] = site_targets(result, cfg, tree_rss=reg.name == "cargohold")


# -- the run -----------------------------------------------------------------------------------------------------------


@dataclass
class Results:
    sizes: dict[str, Any]
    machine: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    setups: list[dict[str, Any]] = field(default_factory=list)
    site_load: dict[str, Any] = field(default_factory=dict)
    appliance: dict[str, Any] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine_info() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = _status_kb_meminfo()
    versions = {}
    for tool, cmd in {"docker-registry": ["docker-registry", "--version"], "skopeo": ["skopeo", "--version"],
                      "wrk": ["wrk", "--version"]}.items():
        res = subprocess.run(cmd, capture_output=True, text=True)
        versions[tool] = (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr) else "?"
    import gunicorn

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(), "gunicorn": gunicorn.__version__,
            "load_at_start": os.getloadavg(), **versions}


def _status_kb_meminfo() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def metric(res: Results, key: str, label: str, unit: str, app: float, dist: float, target: str,
           extra: dict[str, Any] | None = None, reference: str = "distribution") -> None:
    """Record one measure against its reference (distribution unless said) and the ratio against `target`."""
    ratio = app / dist if dist else float("nan")
    runs = (extra or {}).get("runs")
    if runs:
        # Runs were made in pairs (one on each server, back to back): the median of the pairs' ratios
        # is steadier than the ratio of medians when the machine's load drifts during the run.
        ours = [r if isinstance(r, float) else r["rps"] for r in runs["cargohold"]]
        theirs = [r if isinstance(r, float) else r["rps"] for r in runs["distribution"]]
        extra = {**(extra or {}), "paired_ratio": median([a / d for a, d in zip(ours, theirs, strict=True)])}
    op, bound = target[:2], float(target[2:])
    ok = {">=": ratio >= bound, "<=": ratio <= bound}[op]
    res.metrics[key] = {"label": label, "unit": unit, "cargohold": app, "distribution": dist, "ratio": ratio,
                        "target": target, "met": ok, "reference": reference, **(extra or {})}
    paired = f", paired-run ratio {extra['paired_ratio']:.2f}" if extra and "paired_ratio" in extra else ""
    log(f"{label}: cargohold {app:.1f} {unit}, {reference} {dist:.1f} {unit}, ratio {ratio:.2f}{paired} "
        f"(target {target}) {'OK' if ok else 'MISSED'}")


def _rotated(servers: list[Registry], i: int) -> list[Registry]:
    """Run i's order: each server takes each position in turn, so load drift hits all alike."""
    k = i % len(servers)
    return servers[k:] + servers[:k]


def appliance_info() -> dict[str, Any]:
    """Which code the appliance ran: the commit, and the files changed in the work tree on top of it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else "?"

    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "subject": git("log", "-1", "--format=%s").strip(),
            "changed": [line[3:] for line in git("status", "--porcelain").splitlines() if len(line) > 3]}


def blob_throughput(res: Results, sizes: Sizes, servers: list[Registry], small: BlobFile, big: BlobFile) -> None:
    """curl GETs of both blob sizes from each of `servers` in turn (the appliance and distribution, HTTP and HTTPS)."""
    log(f"blob GET throughput, {sizes.blob_runs} runs each, rotating {', '.join(r.name for r in servers)}")
    cargo = next(r for r in servers if r.name == "cargohold")
    for label, blob in (("small", small), ("big", big)):
        speeds: dict[str, list[float]] = {reg.name: [] for reg in servers}
        with RssSampler(cargo.pid) as s:
            for i in range(sizes.blob_runs):
                for reg in _rotated(servers, i):
                    speeds[reg.name].append(curl_get(f"{reg.url}/v2/{REPO}/blobs/{blob.digest}", blob.size,
                                                     reg.cacert))
        res.memory[f"get_{label}"] = {"blob_mb": blob.size / MiB, **s.summary()}
        if label != "big":
            continue

        size = f"{blob.size // MiB} MiB"
        for key, what, ours, theirs, target in (
                ("blob_get", f"GET {size} blob (median)", "cargohold", "distribution", TARGET_BLOB),
                ("blob_get_https", f"GET {size} blob over HTTPS (median)", "cargohold-https", "cargohold",
                 TARGET_HTTPS),
                # Not an issue #10 target: how the front's TLS compares with Go's on the same machine.
                ("blob_get_https_vs_distribution", f"GET {size} blob over HTTPS (median)", "cargohold-https",
                 "distribution-https", TARGET_BLOB)):
            metric(res, key, what, "MB/s", median(speeds[ours]), median(speeds[theirs]), target,
                   {"runs": {"cargohold": speeds[ours], "distribution": speeds[theirs]},
                    "best_ratio": max(speeds[ours]) / max(speeds[theirs])},
                   reference="cargohold over HTTP" if theirs == "cargohold" else theirs)


def manifest_rates(res: Results, sizes: Sizes, work: Path, cargo: Registry, dist: Registry,
                   dist_token: Registry, tokens: DistributionTokens) -> None:
    """Manifest HEAD/GET by tag, 32 clients: anonymous, with Basic credentials, and with bearer tokens."""
    bearer = {"Authorization": f"Bearer {bearer_token(cargo, REPO)}"}
    assert cargo.auth is not None
    basic = {"Authorization": "Basic " + base64.b64encode(f"{cargo.auth[0]}:{cargo.auth[1]}".encode()).decode()}
    dist_bearer = {"Authorization": f"Bearer {tokens.token(REPO)}"}
    # (key, label, method, tool, cargohold's headers, the distribution compared with, its headers)
    cases: list[tuple[str, str, str, str, dict[str, str] | None, Registry, dict[str, str] | None]] = [
        ("manifest_head_ab", "manifest HEAD (ab, 32 clients)", "HEAD", "ab", None, dist, None),
        ("manifest_get_wrk", "manifest GET (wrk, 32 clients)", "GET", "wrk", None, dist, None),
        ("manifest_get_ab", "manifest GET (ab, 32 clients)", "GET", "ab", None, dist, None),
        # Clients with credentials send them on every request. Basic: distribution (no auth) anonymous.
        ("manifest_get_basic", "manifest GET (wrk), Basic on cargohold only", "GET", "wrk", basic, dist, None),
        ("manifest_get_token", "manifest GET (wrk), bearer on cargohold only", "GET", "wrk", bearer, dist, None),
        # Both check an ES256 token on every request: distribution with `auth: token`.
        ("manifest_get_token_both", "manifest GET (wrk), bearer on both", "GET", "wrk", bearer, dist_token,
         dist_bearer),
    ]
    for key, label, method, tool, headers, other, other_headers in cases:
        log(f"{label}, {sizes.wrk_rounds}x{sizes.wrk_seconds}s each, alternating")
        runs: dict[str, list[dict[str, float]]] = {"cargohold": [], "distribution": []}
        for i in range(sizes.wrk_rounds):
            for reg in _rotated([cargo, other], i):
                runs["cargohold" if reg is cargo else "distribution"].append(
                    load(f"{reg.url}/v2/{REPO}/manifests/v1", method, sizes.wrk_seconds, work, tool,
                         headers if reg is cargo else other_headers, reg.pid))
        for name, rs in runs.items():
            bad = sum(r["non2xx"] + r["socket_errors"] for r in rs)
            if bad:
                log(f"WARNING: {name} {label}: {bad} non-2xx or socket errors")
        cpu = {name: median([r.get("cpu_us", math.nan) for r in rs]) for name, rs in runs.items()}
        metric(res, key, f"{label} (median)", "req/s", median([r["rps"] for r in runs["cargohold"]]),
               median([r["rps"] for r in runs["distribution"]]), TARGET_MANIFEST,
               {"runs": runs, "cpu_us_per_request": cpu}, reference=other.name)
        log(f"  server CPU per request: cargohold {cpu['cargohold']:.0f} us, {other.name} "
            f"{cpu['distribution']:.0f} us")


def run(sizes: Sizes, work: Path, only_default: bool, with_site_load: bool = True) -> Results:
    """The full benchmark: every section against fresh servers, which it stops at the end."""
    res = Results(sizes={k: v for k, v in sizes.__dict__.items()}, machine=machine_info(),
                  appliance=appliance_info())
    log(f"machine: {res.machine['cores']} cores, load {res.machine['load_at_start']}; appliance at "
        f"{res.appliance['commit']} ({len(res.appliance['changed'])} files changed in the work tree)")

    log("generating content")
    small = random_blob(work / "small.bin", sizes.small_blob)
    big = random_blob(work / "big.bin", sizes.big_blob)
    tiny = random_blob(work / "tiny.bin", 4096)
    layouts = []
    for i in range(sizes.skopeo_runs):
        layout = OciLayout(work / f"layout-{i}")
        layout.add_image(list(sizes.image_layers), seed=1000 + i, ref="v1")
        layouts.append(layout)
    image_mb = sum(f.stat().st_size for f in (layouts[0].root / "blobs" / "sha256").iterdir()) / MiB

    dist = start_distribution(work)
    tokens = distribution_tokens(work)
    servers: list[Registry] = [dist]
    data_dir = work / "cargohold-data"
    try:
        dist_token = start_distribution(work, "distribution-token", work / "distribution-storage", tokens)
        servers.append(dist_token)
        cargo, _ = start_cargohold(data_dir, [])
        servers.append(cargo)
        pair = [cargo, dist]

        # -- load, sampling the appliance's memory while it ingests each blob size ----------------------------
        log(f"loading blobs ({sizes.small_blob // MiB} MiB, {sizes.big_blob // MiB} MiB) and a manifest into both")
        for reg in pair:
            push_blob(reg, REPO, tiny)
        for label, blob in (("small", small), ("big", big)):
            for reg in pair:
                if reg is cargo:
                    with RssSampler(cargo.pid) as s:
                        push_blob(reg, REPO, blob)
                    res.memory[f"push_{label}"] = {"blob_mb": blob.size / MiB, **s.summary()}
                else:
                    push_blob(reg, REPO, blob)
        for reg in pair:
            push_manifest(reg, REPO, "v1", work, [tiny])

        # -- blob GET throughput, plain HTTP and HTTPS (a second appliance over the same data, with --tls) -----
        # distribution over HTTPS with the appliance's certificate, over the storage the first one fills.
        cargo_tls, _ = start_cargohold(data_dir, [], tls=True)
        servers.append(cargo_tls)
        assert cargo_tls.cacert is not None
        dist_tls = start_distribution(work, "distribution-https", work / "distribution-storage", None,
                                      (data_dir / "tls" / "server.crt", data_dir / "tls" / "server.key",
                                       cargo_tls.cacert))
        servers.append(dist_tls)
        try:
            blob_throughput(res, sizes, [cargo, cargo_tls, dist, dist_tls], small, big)
        finally:
            for reg in (cargo_tls, dist_tls):
                reg.stop()
                servers.remove(reg)

        # -- manifests under wrk and ab ---------------------------------------------------------------------------
        with RssSampler(cargo.pid) as manifest_sampler:
            manifest_rates(res, sizes, work, cargo, dist, dist_token, tokens)
        res.memory["manifests"] = {"blob_mb": 0, **manifest_sampler.summary()}
        dist_token.stop()
        servers.remove(dist_token)

        # -- skopeo push / pull -----------------------------------------------------------------------------------
        log(f"skopeo push/pull of a {image_mb:.0f} MB {len(sizes.image_layers)}-layer image, "
            f"{sizes.skopeo_runs} runs each")
        times: dict[str, dict[str, list[float]]] = {"push": {"cargohold": [], "distribution": []},
                                                   "pull": {"cargohold": [], "distribution": []}}
        push_mem: list[dict[str, float]] = []
        for i, layout in enumerate(layouts):
            # A fresh image per run: skopeo's blob-info cache would otherwise turn the
            # second push into cross-repository mounts.
            repo = f"spectro-images/bench/image{i}"
            for reg in _rotated(pair, i):
                dest = f"docker://{reg.host}/{repo}:v1"
                if reg is cargo:
                    with RssSampler(cargo.pid) as s:
                        t = skopeo_copy(f"oci:{layout.root}:v1", dest, ["--dest-tls-verify=false",
                                                                        *reg.skopeo_creds()])
                    push_mem.append(s.summary())
                else:
                    t = skopeo_copy(f"oci:{layout.root}:v1", dest, ["--dest-tls-verify=false"])
                times["push"][reg.name].append(t)
            for j in range(2):  # pulls repeat freely (nothing is cached client-side), so take twice as many
                for reg in _rotated(pair, i + j):
                    out = work / f"pull-{reg.name}-{i}"
                    times["pull"][reg.name].append(
                        skopeo_copy(f"docker://{reg.host}/{repo}:v1", f"dir:{out}", ["--src-tls-verify=false"]))
                    shutil.rmtree(out)
        res.memory["skopeo_push"] = {"image_mb": image_mb,
                                     **{k: max(m[k] for m in push_mem) for k in push_mem[0]}}
        for op in ("push", "pull"):
            metric(res, f"skopeo_{op}", f"skopeo {op} {image_mb:.0f} MB image (median)", "s",
                   median(times[op]["cargohold"]), median(times[op]["distribution"]), TARGET_SKOPEO,
                   {"runs": times[op]})
        res.memory["hwm_default"] = hwm(cargo.pid)

        # -- site load (issue #10): distribution first, so a wedged appliance cannot slow it down -------------
        if with_site_load:
            site_scenario(res, sizes.site, work, [dist, cargo])
        cargo.stop()
        servers.remove(cargo)

        # -- worker setups ------------------------------------------------------------------------------------------
        if not only_default:
            compare_setups(res, sizes, work, dist, data_dir, big, servers)
    finally:
        for reg in servers:
            reg.stop()
    return res


def run_site_load_only(sizes: Sizes, work: Path) -> Results:
    """Only the site-load scenario, against a fresh distribution and appliance."""
    res = Results(sizes={"site": sizes.site}, machine=machine_info(), appliance=appliance_info())
    log(f"machine: {res.machine['cores']} cores, load {res.machine['load_at_start']}; appliance at "
        f"{res.appliance['commit']} ({len(res.appliance['changed'])} files changed in the work tree)")
    servers: list[Registry] = []
    try:
        servers.append(start_distribution(work))
        servers.append(start_cargohold(work / "cargohold-data", [])[0])
        site_scenario(res, sizes.site, work, servers)
    finally:
        for reg in servers:
            reg.stop()
    return res


def compare_setups(res: Results, sizes: Sizes, work: Path, dist: Registry, data_dir: Path, big: BlobFile,
                   servers: list[Registry]) -> None:
    """Every worker setup at once over the same data, measured round-robin so load drift hits all alike."""
    log(f"worker setups: manifest HEAD/GET, {big.size // MiB} MiB blob GET, and manifest GET while 4 and 30 slow "
        f"downloads ({sizes.slow_rate}B/s each) hold connections; {sizes.setup_rounds} rounds, round-robin")
    big_path = f"/v2/{REPO}/blobs/{big.digest}"
    manifest_path = f"/v2/{REPO}/manifests/v1"
    candidates: list[tuple[str, Registry]] = [("distribution", dist)]
    for label, args in SETUPS:
        reg, _ = start_cargohold(data_dir, args)
        servers.append(reg)
        candidates.append((label, reg))
    samples: dict[str, dict[str, list[float]]] = {label: {} for label, _ in candidates}
    try:
        for round_no in range(sizes.setup_rounds):
            shift = round_no % len(candidates)
            for label, reg in candidates[shift:] + candidates[:shift]:
                row = samples[label]
                row.setdefault("head_rps", []).append(
                    load(reg.url + manifest_path, "HEAD", sizes.setup_seconds, work)["rps"])
                row.setdefault("get_rps", []).append(
                    load(reg.url + manifest_path, "GET", sizes.setup_seconds, work)["rps"])
                row.setdefault("blob_mbs", []).append(curl_get(reg.url + big_path, big.size))
                # Edge hosts pulling big layers over slow links hold connections (and, under sync, whole
                # workers) for minutes: 4 such downloads, then 30 (ten hosts, containerd's 3 parallel layers).
                for count in (4, 30):
                    with slow_downloads(reg.url + big_path, count, sizes.slow_rate):
                        busy = load(reg.url + manifest_path, "GET", sizes.setup_seconds, work)
                    row.setdefault(f"get_rps_busy{count}", []).append(busy["rps"])
                    row.setdefault(f"busy{count}_errors", []).append(busy["socket_errors"] + busy["non2xx"])
        for label, reg in candidates:
            row_out: dict[str, Any] = {"setup": label, **{k: median(v) for k, v in samples[label].items()},
                                       "samples": samples[label]}
            if reg is not dist:
                row_out.update({f"hwm_{k}": v for k, v in hwm(reg.pid).items()})
            res.setups.append(row_out)
            log(f"  {label:14} HEAD {row_out['head_rps']:7.0f}/s  GET {row_out['get_rps']:7.0f}/s  "
                f"blob {row_out['blob_mbs']:6.0f} MB/s  GET during 4 / 30 slow downloads "
                f"{row_out['get_rps_busy4']:6.0f}/s / {row_out['get_rps_busy30']:6.0f}/s")
    finally:
        for _, reg in candidates:
            if reg is not dist:
                reg.stop()
                servers.remove(reg)


def report(res: Results) -> None:
    a = res.appliance
    print(f"\nappliance at {a.get('commit')} ({a.get('subject')}); files changed in the work tree: "
          f"{', '.join(a.get('changed', [])) or 'none'}")
    if res.metrics:
        print("\n== appliance (cargohold) vs CNCF distribution, same run ==")
        print(f"{'measure':58} {'cargohold':>13} {'reference':>13} {'ratio':>6} {'paired':>6} {'target':>6}  met")
        for m in res.metrics.values():
            paired = f"{m['paired_ratio']:6.2f}" if "paired_ratio" in m else f"{'':6}"
            label = m["label"] if m.get("reference", "distribution") == "distribution" else \
                f"{m['label']} vs {m['reference']}"
            print(f"{label:58} {m['cargohold']:>7.1f} {m['unit']:<5} {m['distribution']:>7.1f} {m['unit']:<5} "
                  f"{m['ratio']:>6.2f} {paired} {m['target']:>6}  {'yes' if m['met'] else 'NO'}")
        cpu_rows = [(m["label"], m["cpu_us_per_request"]) for m in res.metrics.values() if "cpu_us_per_request" in m]
        if cpu_rows:
            print("\nserver CPU per manifest request (whole process tree, median of rounds, us):")
            for label, cpu in cpu_rows:
                print(f"  {label:56} cargohold {cpu['cargohold']:6.0f}   reference {cpu['distribution']:6.0f}")
    if res.memory:
        print("\n== appliance memory (peak VmRSS sampled every 20 ms, MB) ==")
        for key, m in res.memory.items():
            if key.startswith("hwm"):
                continue
            print(f"{key:14} size {m.get('blob_mb', m.get('image_mb', 0)):6.0f} MB: worker max "
                  f"{m['worker_max_mb']:6.1f}  master {m['master_mb']:6.1f}  front {m.get('front_mb', 0):5.1f}  "
                  f"total {m['total_mb']:6.1f}")
        h = res.memory.get("hwm_default")
        if h:
            print(f"VmHWM at the end: worker max {h['worker_max_mb']:.1f}, master {h['master_mb']:.1f}, "
                  f"front {h['front_mb']:.1f}, total {h['total_mb']:.1f} ({h['workers']:.0f} workers); "
                  f"target < 150 MB per worker: {'yes' if h['worker_max_mb'] < 150 else 'NO'}")
    if res.site_load:
        report_site_load(res.site_load)
    if res.setups:
        print("\n== worker setups ==")
        print(f"{'setup':14} {'HEAD/s':>8} {'GET/s':>8} {'blob MB/s':>10} {'GET/s, 4 slow':>14} "
              f"{'GET/s, 30 slow':>15} {'worker HWM MB':>14}")
        for r in res.setups:
            print(f"{r['setup']:14} {r['head_rps']:8.0f} {r['get_rps']:8.0f} {r['blob_mbs']:10.0f} "
                  f"{r['get_rps_busy4']:14.0f} {r['get_rps_busy30']:15.0f} {r.get('hwm_worker_max_mb', 0):14.1f}")


def report_site_load(site: dict[str, Any]) -> None:
    """The site load side by side per step, then each window's download figures and the targets."""
    cfg = site["config"]
    timeout = cfg["probe_timeout"]
    names = list(site["servers"])
    print(f"\n== site load (issue #10): downloads at {cfg['rate'] // 1000} KB/s each + idle connections; manifest "
          f"GET probes {cfg['probe_rate']:g}/s, {timeout:g} s timeout ==")
    head = "".join(f" | {name:^44}" for name in names)
    print(f"{'load':32} {'conns':>5}{head}")
    sub = "".join(f" | {'answered':>8} {'p50':>6} {'p95':>6} {'max':>6} {'RSS MB':>6} {'moving':>7}" for _ in names)
    print(f"{'':32} {'':>5}{sub}")
    first = site["servers"][names[0]]
    rows: list[tuple[str, int | None, str | None]] = [
        (f"{s['downloads']} downloads + {s['idle']} idle", i, None) for i, s in enumerate(first["stages"])]
    rows += [(f"{cfg['downloads']} downloads + {cfg['half_open']} {mode}", None, mode) for mode in first["windows"]]
    for label, index, mode in rows:
        cells = ""
        conns = 0
        for name in names:
            r = site["servers"][name]
            m = r["stages"][index] if mode is None else r["windows"][mode]
            conns = m["connections"]
            moving = f"{m['progress']['progressing']}/{m['progress']['downloads']}" if "progress" in m else ""
            cells += (f" | {m['answered_pct']:7.1f}% {_ms(m['p50_ms'], timeout):>6} {_ms(m['p95_ms'], timeout):>6} "
                      f"{_ms(m['max_ms'], timeout):>6} {m['rss_max_mb']:6.0f} {moving:>7}")
        print(f"{label:32} {conns:5d}{cells}")
    print("(latencies in ms; RSS: the server's whole process tree, peak of samples every 0.25 s; moving: downloads "
          f"that read bytes in the window's last {cfg['tail_seconds']:g} s)")
    for name in names:
        for mode, w in site["servers"][name]["windows"].items():
            p = w["progress"]
            print(f"  {name} {mode}: downloads {p['aggregate_mb_s']:.0f} MB/s in all, per download min "
                  f"{p['min_kb_s']:.0f} / median {p['median_kb_s']:.0f} KB/s, {p['at_rate']} at >=90% of the rate, "
                  f"{p['no_response_yet']} never answered, {p['errors']} errors {p['last_errors'] or ''}; idle open "
                  f"{p['idle_open']}, closed by the server {p['idle_closed']}, failed to connect {p['idle_errors']}; "
                  f"probe failures {w['failures'] or '-'}; "
                  f"load generator CPU {p['loadgen_cpu_pct']:.0f}%")
    print("\ntargets (issue #10):")
    for name, rows_ in site["targets"].items():
        for t in rows_:
            value = t["value"]
            shown = ">timeout" if value is None else (f"{value:.2f}" if t["unit"] == "x" else f"{value:.1f}")
            print(f"  {name:13} {t['measure']:62} {shown:>9} {t['unit']:<5} target {t['target']:>6}  "
                  f"{'yes' if t['met'] else 'NO'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke check")
    parser.add_argument("--default-only", action="store_true", help="skip the worker-setup comparison")
    parser.add_argument("--site-load", action="store_true", help="run only the site-load scenario")
    parser.add_argument("--no-site-load", action="store_true", help="skip the site-load scenario")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args()

    missing = [f"{tool} (install: {how})" for tool, how in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        print("missing tools: " + "; ".join(missing), file=sys.stderr)
        return 2
    raise_nofile_limit()  # inherited by the servers and the load generator
    sizes = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="cargohold-bench-"))
    started = time.monotonic()
    try:
        if args.site_load:
            res = run_site_load_only(sizes, work)
        else:
            res = run(sizes, work, args.default_only, not args.no_site_load)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    res.machine["run_seconds"] = round(time.monotonic() - started)
    res.machine["load_at_end"] = os.getloadavg()
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res.__dict__, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
