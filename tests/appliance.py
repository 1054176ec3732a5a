"""Start the real appliance (gunicorn on a free loopback port) for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import requests
from urllib3.exceptions import InsecureRequestWarning

ADMIN_PASSWORD = "test-admin-Secret-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Appliance:
    """A running `cargohold serve` process."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    scheme: str = "http"
    admin: tuple[str, str] = ("admin", ADMIN_PASSWORD)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """host:port as registry clients name it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def creds(self) -> str:
        """user:password for skopeo --creds and ctr --user."""
        return f"{self.admin[0]}:{self.admin[1]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_appliance(data_dir: Path, *extra_args: str, env: dict[str, str] | None = None,
                    scheme: str = "http", verify: str | bool = False) -> Appliance:
    """Run `cargohold serve` on a free port and wait until /v2/ answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}-server-{port}.log"
    full_env = {**os.environ, "CARGOHOLD_ADMIN_PASSWORD": ADMIN_PASSWORD, **(env or {})}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "serve", "--data-dir", str(data_dir), "--bind", f"127.0.0.1:{port}",
         *extra_args],
        stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=Path(__file__).resolve().parent.parent,
    )
    app = Appliance(data_dir, port, proc, log_path, scheme, env=full_env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"appliance exited with {proc.returncode}:\n{app.log()}")
        try:
            with warnings.catch_warnings():
                # verify=False only for this readiness probe: the CA may not exist yet.
                warnings.simplefilter("ignore", InsecureRequestWarning)
                requests.get(f"{app.url}/v2/", timeout=1, verify=verify)
            return app
        except requests.RequestException:
            time.sleep(0.1)
    app.stop()
    raise RuntimeError(f"appliance did not answer within 30 s:\n{app.log()}")
