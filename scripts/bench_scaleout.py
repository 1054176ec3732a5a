#!/usr/bin/env python3
"""Benchmark the appliance on an object store and PostgreSQL, one and two replicas, against the embedded default.

Starts, on loopback ports in a temporary directory:

* (a) ``embedded``: the default appliance, blobs in local files, metadata in SQLite;
* a throwaway single-node Ceph RADOS Gateway (tests/s3engines.py; issue #16 names
  SeaweedFS, which has no Debian bookworm package and cannot be installed here)
  and a throwaway PostgreSQL 15 (tests/pgengine.py);
* (b) ``1 replica``: one appliance with ``CARGOHOLD_STORAGE_URL`` on a bucket of
  that gateway and ``CARGOHOLD_DATABASE_URL`` on a database of that cluster,
  blob GETs streamed through its front (no redirect to the store);
* (c) ``2 replicas``: that appliance and a second one on the same bucket and
  database (its own data directory, with the first one's ``keys/`` copied in so
  that either verifies the other's tokens), behind an nginx load balancer.
  The balancer has two listeners: one round-robin per request over both
  replicas, one that sends every request naming a repository to the replica its
  repository name hashes to (upload affinity: a push's POST, PATCHes and PUT
  reach one replica). Both keep up to 32 idle upstream connections per worker
  (``keepalive 32``): balancing stays per request, not per connection. Request
  bodies stream through unbuffered; answers go through 16 x 64 KiB buffers and
  never a temporary file, as the appliance's own front proxies the store.

and measures, rotating the setups' order every round so that background load
hits all alike:

* GET of a large blob, curl to /dev/null, MB/s, and server CPU per GiB sent;
* GET of a manifest by tag with 32 concurrent keep-alive clients (wrk), req/s,
  and the CPU time per request of every server process involved: the
  appliance(s), and for (b) and (c) the Ceph and PostgreSQL processes and the
  balancer as well (server CPU always counts these);
* skopeo push of a fresh ~150 MB multi-layer image per setup and round, seconds
  and server CPU;
  for (c) through the affinity listener and through the round-robin one. Until
  replicas share upload state, a round-robin push fails when an upload's
  requests reach both replicas: the run records the failure and goes on.

Ratios (b)/(a), (c)/(a) and (c)/(b) are printed beside the medians, with the
median of per-round ratios ("paired") as the steadier figure under drifting
load. Every process, the engines included, shares this machine's cores: two
replicas on one machine cannot show horizontal scaling, only the cost of the
object-store and PostgreSQL paths and of the extra hop.

This is a measurement, not a test: it asserts nothing and never runs in the
test suite. Everything listens on 127.0.0.1 and stops at the end.

    python scripts/bench_scaleout.py              # full run, 3 rounds (about 4 minutes)
    python scripts/bench_scaleout.py --rounds 5   # more rounds when the machine is noisy
    python scripts/bench_scaleout.py --quick      # small sizes, one round: a smoke check (about 1 minute)
    python scripts/bench_scaleout.py --json out.json

Needs: wrk (``apt-get install wrk``), and skopeo, curl, nginx, Debian's postgresql and Ceph packages, psycopg
and boto3, which scripts/setup-test-env installs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_registry import (  # noqa: E402
    REPO,
    MiB,
    Registry,
    appliance_info,
    curl_get,
    log,
    median,
    push_blob,
    push_manifest,
    random_blob,
    skopeo_copy,
    tree_cpu_seconds,
    wrk,
)
from tests.appliance import Appliance, free_port, start_appliance  # noqa: E402
from tests.images import OciLayout  # noqa: E402
from tests.pgengine import BIN as PG_BIN  # noqa: E402
from tests.s3engines import CEPH_BINARIES  # noqa: E402

TOOLS = {
    "skopeo": "apt-get install skopeo",
    "curl": "apt-get install curl",
    "wrk": "apt-get install wrk",
    "nginx": "apt-get install nginx-light",
    **{b: "apt-get install ceph-mon ceph-osd radosgw ceph-common" for b in CEPH_BINARIES},
}


T = TypeVar("T")


def rotated(items: list[T], i: int) -> list[T]:
    """Round i's order: each item takes each position in turn, so load drift hits all alike."""
    k = i % len(items)
    return items[k:] + items[:k]


@dataclass(frozen=True)
class Sizes:
    """What one run moves around."""

    big_blob: int
    image_layers: tuple[int, ...]
    rounds: int
    wrk_seconds: int


FULL = Sizes(256 * MiB, (50 * MiB, 40 * MiB, 30 * MiB, 20 * MiB, 10 * MiB), 3, 10)
QUICK = Sizes(32 * MiB, (8 * MiB, 4 * MiB, 2 * MiB), 1, 3)


@dataclass
class Setup:
    """One setup under test: where clients send requests, and which processes serve them."""

    name: str
    reg: Registry            # what clients talk to (an appliance, or the balancer)
    push_reg: Registry       # where pushes go (for (c): the affinity listener)
    cpu_roots: list[int]     # process trees whose CPU time counts as the server's
    app_roots: list[int]     # the appliance(s) alone
    pg_roots: list[int] = field(default_factory=list)    # PostgreSQL
    ceph_roots: list[int] = field(default_factory=list)  # the Ceph monitor, OSD and gateway


@dataclass
class Results:
    sizes: dict[str, Any]
    machine: dict[str, Any]
    appliance: dict[str, Any]
    runs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def missing_tools() -> list[str]:
    missing = [f"{tool} (install: {how})" for tool, how in TOOLS.items() if shutil.which(tool) is None]
    if not (PG_BIN / "postgres").is_file():
        missing.append(f"{PG_BIN / 'postgres'} (install: apt-get install postgresql)")
    for module, package in (("psycopg", "psycopg[binary]"), ("boto3", "boto3")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"python module {module} (install: pip install {package})")
    return missing


def start_replica(data_dir: Path, env: dict[str, str]) -> Appliance:
    """`cargohold serve` on `data_dir` with `env`, its front's runtime directory private to it."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    runtime = tempfile.mkdtemp(prefix="run-", dir=data_dir.parent)
    return start_appliance(data_dir, env={"RUNTIME_DIRECTORY": runtime, **env})


def as_registry(name: str, app: Appliance) -> Registry:
    return Registry(name, app.host, app.admin, app.stop, app.process.pid)


@dataclass
class Balancer:
    """nginx in front of the replicas: a round-robin listener and an upload-affinity listener."""

    proc: subprocess.Popen[bytes]
    round_robin: int
    affinity: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_balancer(work: Path, backends: list[str]) -> Balancer:
    """nginx on two free ports over `backends` (host:port); returns once both listeners answer /v2/."""
    prefix = work / "balancer"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    rr_port, aff_port = free_port(), free_port()
    servers = "\n".join(f"        server {b} max_fails=0;" for b in backends)
    user = "user root root;" if os.geteuid() == 0 else ""  # as root, workers would otherwise be nobody
    proxy = """
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;"""
    conf = prefix / "nginx.conf"
    conf.write_text(f"""{user}
worker_processes 2;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_max_body_size 0;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # The repository a /v2/ request names (everything before /blobs/, /manifests/, /tags/ or /referrers/);
    # other paths (the token service, /v2/ itself) hash by their whole URI.
    map $uri $repository {{
        "~^/v2/(?<name>.+)/(blobs|manifests|tags|referrers)/" $name;
        default $request_uri;
    }}
    upstream round_robin {{
{servers}
        keepalive 32;
    }}
    upstream by_repository {{
        hash $repository consistent;
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{rr_port};
        location / {{ proxy_pass http://round_robin;{proxy} }}
    }}
    server {{
        listen 127.0.0.1:{aff_port};
        location / {{ proxy_pass http://by_repository;{proxy} }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=(prefix / "stderr.log").open("wb"))
    balancer = Balancer(proc, rr_port, aff_port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(prefix / 'stderr.log').read_text()}")
        try:
            for port in (rr_port, aff_port):
                requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return balancer
        except requests.RequestException:
            time.sleep(0.1)
    balancer.stop()
    raise RuntimeError("the nginx balancer did not answer within 20 s")


def cpu_of(roots: list[int]) -> float:
    return sum(tree_cpu_seconds(pid) for pid in roots)


def push_image(reg: Registry, layout: OciLayout, repo: str) -> float | str:
    """Seconds for a skopeo push of `layout` to `reg`, or the failure's last lines."""
    try:
        return skopeo_copy(f"oci:{layout.root}:v1", f"docker://{reg.host}/{repo}:v1",
                           ["--dest-tls-verify=false", *reg.skopeo_creds()])
    except subprocess.CalledProcessError as exc:
        return (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1][-300:]


def run(sizes: Sizes, work: Path) -> Results:
    from tests.pgengine import start_postgres
    from tests.s3engines import start_ceph_rgw

    res = Results(sizes=dict(sizes.__dict__), machine={"cores": os.cpu_count(), "load_at_start": os.getloadavg()},
                  appliance=appliance_info())
    log(f"machine: {res.machine['cores']} cores, load {res.machine['load_at_start']}; appliance at "
        f"{res.appliance['commit']} ({len(res.appliance['changed'])} files changed in the work tree)")
    stops: list[Callable[[], None]] = []
    try:
        log("generating content")
        big = random_blob(work / "big.bin", sizes.big_blob)
        tiny = random_blob(work / "tiny.bin", 4096)
        # A fresh image for every push (setup x round): no push finds its layers already stored, and
        # skopeo's blob-info cache has nothing to mount from.
        push_targets = ["embedded", "1 replica", "2 replicas, affinity", "2 replicas, round-robin"]
        layouts: dict[tuple[str, int], OciLayout] = {}
        for r in range(sizes.rounds):
            for t, target in enumerate(push_targets):
                layout = OciLayout(work / f"layout-{r}-{t}")
                layout.add_image(list(sizes.image_layers), seed=5000 + 10 * r + t, ref="v1")
                layouts[(target, r)] = layout
        first = layouts[(push_targets[0], 0)]
        image_mb = sum(f.stat().st_size for f in (first.root / "blobs" / "sha256").iterdir()) / MiB
        res.sizes["image_mb"] = round(image_mb, 1)

        log("starting Ceph RGW and PostgreSQL")
        t0 = time.monotonic()
        ceph = start_ceph_rgw(work / "ceph")
        stops.append(ceph.stop)
        pg = start_postgres()
        stops.append(pg.stop)
        log(f"engines up in {time.monotonic() - t0:.0f} s")
        ceph_roots, pg_roots = [p.pid for p in ceph.processes], [pg.proc.pid]
        engine_roots = ceph_roots + pg_roots
        shared_env = {**ceph.env(), "CARGOHOLD_STORAGE_URL": ceph.storage_url(ceph.new_bucket()),
                      "CARGOHOLD_DATABASE_URL": pg.create_database()}

        embedded = start_replica(work / "embedded", {})
        stops.append(embedded.stop)
        replica1 = start_replica(work / "replica1", shared_env)
        stops.append(replica1.stop)
        # Replicas must verify each other's tokens: until they share keys through the database, the second
        # starts with a copy of the first one's keys.
        requests.get(f"{replica1.url}/service/token", params={"service": "harbor-registry"},
                     auth=replica1.admin, timeout=30).raise_for_status()
        (work / "replica2").mkdir()
        shutil.copytree(replica1.data_dir / "keys", work / "replica2" / "keys")
        replica2 = start_replica(work / "replica2", shared_env)
        stops.append(replica2.stop)
        balancer = start_balancer(work, [replica1.host, replica2.host])
        stops.append(balancer.stop)

        a = as_registry("embedded", embedded)
        b = as_registry("1 replica", replica1)
        lb_rr = Registry("2 replicas, round-robin", f"127.0.0.1:{balancer.round_robin}", replica1.admin,
                         balancer.stop, balancer.proc.pid)
        lb_aff = Registry("2 replicas, affinity", f"127.0.0.1:{balancer.affinity}", replica1.admin,
                          balancer.stop, balancer.proc.pid)
        setups = [
            Setup("embedded", a, a, [embedded.process.pid], [embedded.process.pid]),
            Setup("1 replica", b, b, [replica1.process.pid, *engine_roots], [replica1.process.pid], pg_roots,
                  ceph_roots),
            Setup("2 replicas", lb_rr, lb_aff,
                  [replica1.process.pid, replica2.process.pid, balancer.proc.pid, *engine_roots],
                  [replica1.process.pid, replica2.process.pid], pg_roots, ceph_roots),
        ]

        log(f"loading a {sizes.big_blob // MiB} MiB blob and a manifest into (a) and the shared store")
        for reg in (a, b):
            push_blob(reg, REPO, tiny)
            push_blob(reg, REPO, big)
            push_manifest(reg, REPO, "v1", work, [tiny])
        # Both replicas answer it (not one from a cache of its own): check through each before measuring.
        for app in (replica1, replica2):
            answer = requests.head(f"{app.url}/v2/{REPO}/manifests/v1", timeout=10,
                                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            if answer.status_code != 200:
                raise RuntimeError(f"replica {app.host} answers {answer.status_code} for the manifest")

        series = ("blob_mbs", "blob_cpu_s_per_gib", "manifest_rps", "cpu_us", "app_cpu_us", "pg_cpu_us", "ceph_cpu_us")
        runs: dict[str, dict[str, list[Any]]] = {k: {s.name: [] for s in setups} for k in series}
        runs["push_s"] = {t: [] for t in push_targets}
        runs["push_cpu_s"] = {t: [] for t in push_targets}
        push_setup = {"embedded": setups[0], "1 replica": setups[1], "2 replicas, affinity": setups[2],
                      "2 replicas, round-robin": setups[2]}
        res.runs = runs
        blob_runs = 2
        for r in range(sizes.rounds):
            log(f"round {r + 1}/{sizes.rounds} (load {os.getloadavg()[0]:.2f})")
            order = rotated(setups, r)
            for s in order:
                for _ in range(blob_runs):
                    cpu0 = cpu_of(s.cpu_roots)
                    runs["blob_mbs"][s.name].append(curl_get(f"{s.reg.url}/v2/{REPO}/blobs/{big.digest}", big.size))
                    runs["blob_cpu_s_per_gib"][s.name].append((cpu_of(s.cpu_roots) - cpu0) / (big.size / (1 << 30)))
            for s in order:
                before = {k: cpu_of(roots) for k, roots in (("cpu_us", s.cpu_roots), ("app_cpu_us", s.app_roots),
                                                            ("pg_cpu_us", s.pg_roots), ("ceph_cpu_us", s.ceph_roots))}
                out = wrk(f"{s.reg.url}/v2/{REPO}/manifests/v1", "GET", sizes.wrk_seconds, work)
                bad = out["non2xx"] + out["socket_errors"]
                if bad:
                    res.failures.append(f"{s.name}: {bad:.0f} of {out['requests']:.0f} manifest GETs failed")
                runs["manifest_rps"][s.name].append(out["rps"])
                after = {"cpu_us": cpu_of(s.cpu_roots), "app_cpu_us": cpu_of(s.app_roots),
                         "pg_cpu_us": cpu_of(s.pg_roots), "ceph_cpu_us": cpu_of(s.ceph_roots)}
                for key, value in after.items():
                    runs[key][s.name].append((value - before[key]) / out["requests"] * 1e6)
            for target in rotated(push_targets, r):
                reg = {"embedded": a, "1 replica": b, "2 replicas, affinity": lb_aff,
                       "2 replicas, round-robin": lb_rr}[target]
                cpu0 = cpu_of(push_setup[target].cpu_roots)
                got = push_image(reg, layouts[(target, r)],
                                 f"spectro-images/bench/push-{r}-{push_targets.index(target)}")
                runs["push_s"][target].append(got)
                runs["push_cpu_s"][target].append(cpu_of(push_setup[target].cpu_roots) - cpu0)
                if isinstance(got, str):
                    res.failures.append(f"push, {target}, round {r + 1}: {got}")
                    log(f"  push through {target} failed: {got}")
        res.machine["load_at_end"] = os.getloadavg()
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # stop everything else all the same
                print(f"stopping: {exc}", file=sys.stderr)
    return res


def _ratio(x: list[Any], y: list[Any]) -> tuple[str, str]:
    """Ratio of medians and median of per-round ratios of two series ('-' when either has failures)."""
    xs = [v for v in x if isinstance(v, float)]
    ys = [v for v in y if isinstance(v, float)]
    if not xs or not ys or not median(ys):
        return "-", "-"
    pairs = [p / q for p, q in zip(x, y, strict=False) if isinstance(p, float) and isinstance(q, float) and q]
    return f"{median(xs) / median(ys):.2f}", f"{median(pairs):.2f}" if pairs else "-"


def report(res: Results) -> None:
    a = res.appliance
    print(f"\nappliance at {a.get('commit')} ({a.get('subject')}); files changed in the work tree: "
          f"{', '.join(a.get('changed', [])) or 'none'}")
    print(f"machine: {res.machine['cores']} cores; load at start {res.machine['load_at_start']}, "
          f"at end {res.machine.get('load_at_end')}; run took {res.machine.get('run_seconds', 0)} s")
    rows = [("blob_mbs", f"GET {res.sizes['big_blob'] // MiB} MiB blob", "MB/s"),
            ("blob_cpu_s_per_gib", "  server CPU per GiB sent (all)", "s"),
            ("manifest_rps", "manifest GET by tag, 32 clients", "req/s"),
            ("cpu_us", "  server CPU per manifest GET (all)", "us"),
            ("app_cpu_us", "  of which the appliance(s)", "us"),
            ("pg_cpu_us", "  of which PostgreSQL", "us"),
            ("ceph_cpu_us", "  of which Ceph (mon, OSD, RGW)", "us")]
    names = ["embedded", "1 replica", "2 replicas"]
    print(f"\n{'measure':42} {'unit':>6} {'(a) embedded':>13} {'(b) 1 replica':>14} {'(c) 2 replicas':>15} "
          f"{'b/a':>10} {'c/a':>10} {'c/b':>10}")
    for key, label, unit in rows:
        series = [res.runs[key][n] for n in names]
        digits = 2 if unit == "s" else 1
        cells = " ".join(f"{median(s):{w}.{digits}f}" for s, w in zip(series, (13, 14, 15), strict=True))
        ratios = " ".join(f"{m:>4} ({p:>4})" for m, p in (_ratio(series[1], series[0]), _ratio(series[2], series[0]),
                                                           _ratio(series[2], series[1])))
        print(f"{label:42} {unit:>6} {cells} {ratios}")
    push, push_cpu = res.runs["push_s"], res.runs["push_cpu_s"]
    print(f"\nskopeo push of a fresh {res.sizes.get('image_mb', 0):.0f} MB {len(res.sizes['image_layers'])}-layer "
          "image, s (median; failures counted):")
    for target, values in push.items():
        ok = [v for v in values if isinstance(v, float)]
        shown = f"{median(ok):7.1f}" if ok else "   fail"
        cpu = [c for v, c in zip(values, push_cpu[target], strict=True) if isinstance(v, float)]
        shown += f"  server CPU {median(cpu):5.1f} s" if cpu else f"  {'':17}"
        vs = [f"{_ratio(values, push[base])[0]:>4} ({_ratio(values, push[base])[1]:>4}) vs {base}"
              for base in ("embedded", "1 replica") if base != target]
        print(f"  {target:26} {shown}  ok {len(ok)}/{len(values)}   " + ";  ".join(vs))
    print("(ratios: ratio of medians, in brackets the median of per-round ratios; "
          "for seconds, a ratio above 1 is slower)")
    if res.failures:
        print("\nfailures:")
        for f in res.failures:
            print(f"  {f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one round: a smoke check")
    parser.add_argument("--rounds", type=int, help="rounds of every measure (default: 3, --quick: 1)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args()

    missing = missing_tools()
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            print("--rounds must be at least 1", file=sys.stderr)
            return 2
        sizes = Sizes(sizes.big_blob, sizes.image_layers, args.rounds, sizes.wrk_seconds)
    work = Path(tempfile.mkdtemp(prefix="cargohold-scaleout-"))
    started = time.monotonic()
    try:
        res = run(sizes, work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    res.machine["run_seconds"] = round(time.monotonic() - started)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res.__dict__, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
