"""A two-replica site for tests: two real appliances sharing one PostgreSQL database and one S3 bucket.

`start_site` starts two `cargohold serve` processes (tests/appliance.py), each
with its own data directory, on the same ``CARGOHOLD_DATABASE_URL`` (a fresh
database of the session's PostgreSQL, tests/pgengine.py) and
``CARGOHOLD_STORAGE_URL`` (a fresh bucket of the session's Ceph RADOS
Gateway, tests/s3engines.py), and puts a load balancer in front: Debian's
nginx with an ``upstream`` of both replicas, round robin, no upstream
keepalive, request and response bodies not buffered. nginx chooses the
upstream per request (not per client connection), so consecutive requests of
one client alternate between the replicas, as behind any round-robin load
balancer. A replica that refuses connections is skipped for a while
(nginx's ``max_fails``), so a client retrying after a replica died reaches
the other one.

`Site.as_appliance()` is the site as the other tests see an appliance: the
proxy's address, replica 0's data directory (CLI commands run there, with
the shared engines in their environment).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.appliance import Appliance, free_port, start_appliance
from tests.pgengine import PostgresServer, remember
from tests.s3engines import S3Engine

REPLICAS = 2


@dataclass
class Balancer:
    """The round-robin nginx in front of the replicas."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# nginx's own refusals in the balancer, as (status, OCI code, message); 494 (a header too large) is sent as 400.
_REFUSALS = ((400, "UNSUPPORTED", "malformed request"), (405, "UNSUPPORTED", "method not allowed"),
             (414, "UNSUPPORTED", "request line too long"), (494, "UNSUPPORTED", "request header too large"))


def _refusals() -> str:
    lines = []
    for status, code, message in _REFUSALS:
        sent = 400 if status == 494 else status
        body = json.dumps({"errors": [{"code": code, "message": message}]})
        # A URI location, not a named one: nginx cannot redirect a request whose request line it refused to a
        # named location.
        lines.append(f"    error_page {status} /_refused/{status};\n"
                     f"    location = /_refused/{status} {{ internal; default_type application/json; "
                     f"return {sent} '{body}'; }}")
    return "\n".join(lines)


def _nginx() -> str:
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        raise RuntimeError("nginx is not installed (scripts/install and scripts/setup-test-env install it)")
    return found


def start_balancer(root: Path, upstream_ports: list[int], port: int | None = None) -> Balancer:
    """nginx on `port` (a free loopback port by default), balancing round robin over `upstream_ports`."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;" for p in upstream_ports)
    conf = root / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 512; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  upstream replicas {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    proxy_set_header Host $http_host;
    proxy_set_header Connection "";
    proxy_redirect off;
    proxy_ignore_client_abort on;  # a client that half-closes after its request still gets the answer
    location / {{ proxy_pass http://replicas; }}
    # nginx refuses some requests itself, before any proxying (TRACE, a malformed request line or header):
    # answered in the registry's error shape, as each replica's own front does, so the API suite run through
    # this balancer (--replicas) judges the replicas, not nginx.
{_refusals()}
  }}
}}
""")
    proc = subprocess.Popen([_nginx(), "-c", str(conf), "-p", str(root), "-e", str(root / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=(root / "stderr.log").open("wb"))
    balancer = Balancer(root, port, proc)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"balancer nginx exited: {(root / 'stderr.log').read_text(errors='replace')}")
        try:
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2)
            return balancer
        except requests.RequestException:
            if time.monotonic() > deadline:
                balancer.stop()
                raise RuntimeError("balancer nginx did not answer within 15 s") from None
            time.sleep(0.05)


@dataclass
class Site:
    """Two replicas and their balancer."""

    replicas: list[Appliance]
    balancer: Balancer
    env: dict[str, str]
    bucket: str

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.balancer.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def as_appliance(self) -> Appliance:
        first = self.replicas[0]
        return Appliance(first.data_dir, self.balancer.port, first.process, first.log_path, env=self.env)

    def stop(self) -> None:
        self.balancer.stop()
        for replica in self.replicas:
            replica.stop()


def replica_env(postgres: PostgresServer, engine: S3Engine) -> tuple[dict[str, str], str]:
    """The settings every replica of a new site shares: a fresh database and a fresh bucket."""
    bucket = engine.new_bucket()
    env = {**engine.env(), "CARGOHOLD_STORAGE_URL": engine.storage_url(bucket, "site"),
           "CARGOHOLD_DATABASE_URL": postgres.create_database()}
    return env, bucket


def start_site(root: Path, postgres: PostgresServer, engine: S3Engine, replicas: int = REPLICAS) -> Site:
    """Start `replicas` appliances on shared engines (one after the other: the second finds the first's
    schema and keys) and the balancer in front."""
    env, bucket = replica_env(postgres, engine)
    # Every replica knows the site's address (the balancer's): token realm, own names.
    port = free_port()
    env["CARGOHOLD_EXTERNAL_URL"] = f"http://127.0.0.1:{port}"
    started: list[Appliance] = []
    try:
        for n in range(replicas):
            data_dir = root / f"replica{n}"
            remember(data_dir, env)  # CLI commands run on it find both engines (tests.pgengine.env_for)
            app = start_appliance(data_dir, env=env)
            app.env = {**app.env, **env}
            started.append(app)
        balancer = start_balancer(root / "balancer", [a.port for a in started], port)
    except BaseException:
        for app in started:
            app.stop()
        raise
    return Site(started, balancer, env, bucket)


def requests_served(app: Appliance, method: str, path_part: str, at_least: int = 0, wait: float = 10) -> int:
    """How many request-log lines (``cargohold.request``) of `app` name `method` on a path containing `path_part`.

    The line is written once the answer has gone out, so a client can be
    ahead of it: with `at_least`, waits up to `wait` seconds for that many.
    """
    deadline = time.monotonic() + wait
    while True:
        count = sum(1 for line in app.log().splitlines()
                    if " cargohold.request " in line and f" method={method} " in line and path_part in line)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.1)
