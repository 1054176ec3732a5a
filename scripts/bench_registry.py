#!/usr/bin/env python3
"""Benchmark the appliance's registry against CNCF distribution, side by side.

Starts Debian's ``docker-registry`` (CNCF distribution 2.8, filesystem storage,
no auth) and the appliance (``python -m web.cli serve``) on free loopback ports,
loads the same content into both, and measures, alternating between the two so
that background load hits both alike:

* GET of a large blob (curl to /dev/null), MB/s;
* HEAD and GET of a manifest by tag with 32 concurrent keep-alive clients
  (GET with wrk and ab, HEAD with ab: wrk 4.1 cannot finish a HEAD), req/s;
* skopeo push and pull of a ~200 MB multi-layer image, seconds;
* the appliance's peak RSS per gunicorn process while it serves a small and a
  large blob (GET and push), sampled from /proc;
* several gunicorn worker setups (gthread and sync), to choose the default.

Figures are printed as absolute values and as appliance/distribution ratios
against the targets in docs/performance.md. This is a measurement, not a test:
it asserts nothing and never runs in the test suite.

    python scripts/bench_registry.py            # full run (about 11 minutes)
    python scripts/bench_registry.py --quick    # small sizes, a smoke check
    python scripts/bench_registry.py --json out.json

Needs: docker-registry, skopeo, curl, wrk and ab (``apt-get install wrk apache2-utils``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


FULL = Sizes(64 * MiB, 512 * MiB, (60 * MiB, 50 * MiB, 40 * MiB, 30 * MiB, 20 * MiB), 6, 10, 2, 6, 5, 2, "2M")
QUICK = Sizes(16 * MiB, 64 * MiB, (8 * MiB, 4 * MiB, 2 * MiB), 2, 3, 1, 1, 2, 1, "1M")


# -- servers -----------------------------------------------------------------------------------------------------


@dataclass
class Registry:
    """One registry under test, as the benchmark talks to it."""

    name: str
    host: str
    auth: tuple[str, str] | None
    stop: Callable[[], None]
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def skopeo_creds(self) -> list[str]:
        return ["--dest-creds", f"{self.auth[0]}:{self.auth[1]}"] if self.auth else []


def start_distribution(work: Path) -> Registry:
    """docker-registry with filesystem storage under `work`, plain HTTP on a free port."""
    port = free_port()
    storage = work / "distribution-storage"
    storage.mkdir(parents=True)
    config = work / "distribution.yml"
    # Access log on, as the appliance's is: both pay for one log line per request.
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (work / "distribution.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)

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
            raise RuntimeError(f"docker-registry exited:\n{(work / 'distribution.log').read_text()}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                return Registry("distribution", f"127.0.0.1:{port}", None, stop, proc.pid)
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop()
    raise RuntimeError("docker-registry did not answer within 30 s")


def start_cargohold(data_dir: Path, args: list[str]) -> tuple[Registry, Appliance]:
    app = start_appliance(data_dir, *args)
    return Registry("cargohold", app.host, app.admin, app.stop, app.process.pid), app


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


class RssSampler:
    """Samples VmRSS of a gunicorn master and its workers every 20 ms while running."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.peak_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in [self.master, *_children(self.master)]:
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
        workers = [kb for pid, kb in self.peak_kb.items() if pid != self.master]
        return {
            "master_mb": self.peak_kb.get(self.master, 0) / 1024,
            "worker_max_mb": max(workers, default=0) / 1024,
            "total_mb": sum(self.peak_kb.values()) / 1024,
        }


def hwm(master: int) -> dict[str, float]:
    """VmHWM (peak RSS since start) of the master and each worker, in MB."""
    workers = [_status_kb(p, "VmHWM") or 0 for p in _children(master)]
    master_kb = _status_kb(master, "VmHWM") or 0
    return {"master_mb": master_kb / 1024, "worker_max_mb": max(workers, default=0) / 1024,
            "total_mb": (master_kb + sum(workers)) / 1024, "workers": len(workers)}


# -- measurements -----------------------------------------------------------------------------------------------------


def curl_get(url: str, size: int) -> float:
    """Download `url` to /dev/null; returns MB/s (checks the byte count)."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
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
         headers: dict[str, str] | None = None) -> dict[str, float]:
    """Manifest load with the tool asked for; HEAD always goes through ab (see `ab`)."""
    if method == "HEAD" or tool == "ab":
        return ab(url, method, seconds, headers=headers)
    return wrk(url, method, seconds, work, headers=headers)


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


# -- the run -----------------------------------------------------------------------------------------------------------


@dataclass
class Results:
    sizes: dict[str, Any]
    machine: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    setups: list[dict[str, Any]] = field(default_factory=list)


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
           extra: dict[str, Any] | None = None) -> None:
    """Record one measure of both registries and its ratio against `target` (">=1.0", "<=1.2")."""
    ratio = app / dist if dist else float("nan")
    runs = (extra or {}).get("runs")
    if runs and all(isinstance(v, float) for v in runs["cargohold"]):
        # Runs were made in pairs (one on each registry, back to back): the median of the pairs' ratios
        # is steadier than the ratio of medians when the machine's load drifts during the run.
        extra = {**(extra or {}), "paired_ratio": median([a / d for a, d in zip(runs["cargohold"],
                                                                                runs["distribution"], strict=True)])}
    op, bound = target[:2], float(target[2:])
    ok = {">=": ratio >= bound, "<=": ratio <= bound}[op]
    res.metrics[key] = {"label": label, "unit": unit, "cargohold": app, "distribution": dist, "ratio": ratio,
                        "target": target, "met": ok, **(extra or {})}
    paired = f", paired-run ratio {extra['paired_ratio']:.2f}" if extra and "paired_ratio" in extra else ""
    log(f"{label}: cargohold {app:.1f} {unit}, distribution {dist:.1f} {unit}, ratio {ratio:.2f}{paired} "
        f"(target {target}) {'OK' if ok else 'MISSED'}")


def run(sizes: Sizes, work: Path, only_default: bool) -> Results:
    res = Results(sizes={k: v for k, v in sizes.__dict__.items()}, machine=machine_info())
    log(f"machine: {res.machine['cores']} cores, load {res.machine['load_at_start']}")

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
    data_dir = work / "cargohold-data"
    cargo, _ = start_cargohold(data_dir, [])
    servers: list[Registry] = [dist, cargo]
    try:
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

        # -- blob GET throughput ----------------------------------------------------------------------------------
        log(f"blob GET throughput, {sizes.blob_runs} runs each, alternating")
        for label, blob in (("small", small), ("big", big)):
            speeds: dict[str, list[float]] = {"cargohold": [], "distribution": []}
            with RssSampler(cargo.pid) as s:
                for i in range(sizes.blob_runs):
                    for reg in (pair if i % 2 == 0 else pair[::-1]):
                        speeds[reg.name].append(curl_get(f"{reg.url}/v2/{REPO}/blobs/{blob.digest}", blob.size))
            res.memory[f"get_{label}"] = {"blob_mb": blob.size / MiB, **s.summary()}
            if label == "big":
                metric(res, "blob_get", f"GET {blob.size // MiB} MiB blob (median)", "MB/s",
                       median(speeds["cargohold"]), median(speeds["distribution"]), ">=1.0",
                       {"runs": speeds, "best_ratio": max(speeds["cargohold"]) / max(speeds["distribution"])})

        # -- manifests under wrk ----------------------------------------------------------------------------------
        manifest_sampler = RssSampler(cargo.pid).__enter__()
        for method, tool in (("HEAD", "ab"), ("GET", "wrk"), ("GET", "ab")):
            log(f"manifest {method} ({tool}), 32 clients, {sizes.wrk_rounds}x{sizes.wrk_seconds}s each, alternating")
            runs: dict[str, list[dict[str, float]]] = {"cargohold": [], "distribution": []}
            for i in range(sizes.wrk_rounds):
                for reg in (pair if i % 2 == 0 else pair[::-1]):
                    runs[reg.name].append(load(f"{reg.url}/v2/{REPO}/manifests/v1", method, sizes.wrk_seconds,
                                               work, tool))
            for name, rs in runs.items():
                bad = sum(r["non2xx"] + r["socket_errors"] for r in rs)
                if bad:
                    log(f"WARNING: {name} {method}: {bad} non-2xx or socket errors")
            metric(res, f"manifest_{method.lower()}_{tool}", f"manifest {method} ({tool}, 32 clients, median)", "req/s",
                   median([r["rps"] for r in runs["cargohold"]]), median([r["rps"] for r in runs["distribution"]]),
                   ">=0.5", {"runs": runs})

        # Clients with credentials send a bearer token on every request; distribution here has no auth
        # at all, so this row shows what the token check costs on top of an anonymous pull.
        token = bearer_token(cargo, REPO)
        runs = {"cargohold": [], "distribution": []}
        log(f"manifest GET (wrk) with a bearer token on cargohold, {sizes.wrk_rounds}x{sizes.wrk_seconds}s each")
        for i in range(sizes.wrk_rounds):
            for reg in (pair if i % 2 == 0 else pair[::-1]):
                headers = {"Authorization": f"Bearer {token}"} if reg is cargo else None
                runs[reg.name].append(load(f"{reg.url}/v2/{REPO}/manifests/v1", "GET", sizes.wrk_seconds, work,
                                           "wrk", headers))
        if any(r["non2xx"] for r in runs["cargohold"]):
            log("WARNING: bearer-token GETs were refused")
        metric(res, "manifest_get_token", "manifest GET (wrk, bearer token on cargohold)", "req/s",
               median([r["rps"] for r in runs["cargohold"]]), median([r["rps"] for r in runs["distribution"]]),
               ">=0.5", {"runs": runs})

        manifest_sampler.__exit__()
        res.memory["manifests"] = {"blob_mb": 0, **manifest_sampler.summary()}

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
            for reg in (pair if i % 2 == 0 else pair[::-1]):
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
                for reg in (pair if (i + j) % 2 == 0 else pair[::-1]):
                    out = work / f"pull-{reg.name}-{i}"
                    times["pull"][reg.name].append(
                        skopeo_copy(f"docker://{reg.host}/{repo}:v1", f"dir:{out}", ["--src-tls-verify=false"]))
                    shutil.rmtree(out)
        res.memory["skopeo_push"] = {"image_mb": image_mb,
                                     **{k: max(m[k] for m in push_mem) for k in push_mem[0]}}
        for op in ("push", "pull"):
            metric(res, f"skopeo_{op}", f"skopeo {op} {image_mb:.0f} MB image (median)", "s",
                   median(times[op]["cargohold"]), median(times[op]["distribution"]), "<=1.2",
                   {"runs": times[op]})
        res.memory["hwm_default"] = hwm(cargo.pid)
        cargo.stop()
        servers.remove(cargo)

        # -- worker setups ------------------------------------------------------------------------------------------
        if not only_default:
            compare_setups(res, sizes, work, dist, data_dir, big, servers)
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
    print("\n== appliance (cargohold) vs CNCF distribution, same run ==")
    print(f"{'measure':46} {'cargohold':>13} {'distribution':>13} {'ratio':>6} {'paired':>6} {'target':>6}  met")
    for m in res.metrics.values():
        paired = f"{m['paired_ratio']:6.2f}" if "paired_ratio" in m else f"{'':6}"
        print(f"{m['label']:46} {m['cargohold']:>7.1f} {m['unit']:<5} {m['distribution']:>7.1f} {m['unit']:<5} "
              f"{m['ratio']:>6.2f} {paired} {m['target']:>6}  {'yes' if m['met'] else 'NO'}")
    print("\n== appliance memory (peak VmRSS sampled every 20 ms, MB) ==")
    for key, m in res.memory.items():
        if key.startswith("hwm"):
            continue
        print(f"{key:14} size {m.get('blob_mb', m.get('image_mb', 0)):6.0f} MB: worker max {m['worker_max_mb']:6.1f}"
              f"  master {m['master_mb']:6.1f}  total {m['total_mb']:6.1f}")
    h = res.memory.get("hwm_default")
    if h:
        print(f"VmHWM at the end: worker max {h['worker_max_mb']:.1f}, master {h['master_mb']:.1f}, "
              f"total {h['total_mb']:.1f} ({h['workers']} workers); target < 150 MB per worker: "
              f"{'yes' if h['worker_max_mb'] < 150 else 'NO'}")
    if res.setups:
        print("\n== worker setups ==")
        print(f"{'setup':14} {'HEAD/s':>8} {'GET/s':>8} {'blob MB/s':>10} {'GET/s, 4 slow':>14} "
              f"{'GET/s, 30 slow':>15} {'worker HWM MB':>14}")
        for r in res.setups:
            print(f"{r['setup']:14} {r['head_rps']:8.0f} {r['get_rps']:8.0f} {r['blob_mbs']:10.0f} "
                  f"{r['get_rps_busy4']:14.0f} {r['get_rps_busy30']:15.0f} {r.get('hwm_worker_max_mb', 0):14.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke check")
    parser.add_argument("--default-only", action="store_true", help="skip the worker-setup comparison")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args()

    missing = [f"{tool} (install: {how})" for tool, how in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        print("missing tools: " + "; ".join(missing), file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cargohold-bench-"))
    try:
        res = run(QUICK if args.quick else FULL, work, args.default_only)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res.__dict__, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
