"""Start the real appliance (gunicorn on a free loopback port) for tests."""

from __future__ import annotations

import contextlib
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

from tests.pgengine import engine_for, remember

ADMIN_PASSWORD = "test-admin-Secret-1"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


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

    def children(self) -> list[int]:
        """Pids of the serve process's children: the gunicorn workers and the nginx front's master."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(c) for c in path.read_text().split()]
        except FileNotFoundError:
            return []

    def worker_pids(self, expected: int = 2, timeout: float = 20) -> list[int]:
        """The gunicorn worker pids, once `expected` have booted (start_appliance returns when the first answers)."""
        deadline = time.monotonic() + timeout
        while True:
            workers = [pid for pid in self.children() if _comm(pid) not in ("nginx", "cat")]
            if len(workers) >= expected or time.monotonic() > deadline:
                return workers
            time.sleep(0.1)

    def front_pids(self) -> list[int]:
        """The nginx front's master and worker pids, and its access-log relay (empty under ``--front none``)."""
        masters = [pid for pid in self.children() if _comm(pid) == "nginx"]
        found = masters + [pid for pid in self.children() if _comm(pid) == "cat"]
        for master in masters:
            with contextlib.suppress(FileNotFoundError):
                found += [int(c) for c in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def still_alive(pids: list[int], timeout: float) -> list[int]:
    """The pids still running (zombies count as gone) after waiting up to `timeout` seconds for them to exit."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def restart_on(old: Appliance, data_dir: Path | None = None, timeout: float = 10) -> Appliance:
    """Start the appliance again on `old`'s port (and data directory), as an operator restarting it would.

    start_appliance picks a free port; this binds the old one explicitly, so it
    fails if anything of the old process tree still holds the port. Raises
    AssertionError if the new process exits or does not answer /v2/ within
    `timeout` seconds.
    """
    data_dir = data_dir or old.data_dir
    log_path = data_dir.parent / f"{data_dir.name}-restart-{old.port}-{time.monotonic_ns()}.log"
    try:
        return _launch(data_dir, old.port, log_path, (), old.env, old.scheme, False, timeout, old.admin)
    except RuntimeError as exc:
        raise AssertionError(f"restart on the same port failed: {exc}") from None


def start_appliance(data_dir: Path, *extra_args: str, env: dict[str, str] | None = None,
                    scheme: str = "http", verify: str | bool = False) -> Appliance:
    """Run `cargohold serve` on a free port and wait until /v2/ answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}-server-{port}.log"
    # With --db=postgres the data directory's own database (tests/pgengine.py); `env` may name another.
    full_env = {**os.environ, "CARGOHOLD_ADMIN_PASSWORD": ADMIN_PASSWORD, **engine_for(data_dir), **(env or {})}
    if "CARGOHOLD_DATABASE_URL" in (env or {}):
        remember(data_dir, {"CARGOHOLD_DATABASE_URL": full_env["CARGOHOLD_DATABASE_URL"]})
    return _launch(data_dir, port, log_path, extra_args, full_env, scheme, verify, 30)


def _launch(data_dir: Path, port: int, log_path: Path, extra_args: tuple[str, ...] | list[str],
            env: dict[str, str], scheme: str, verify: str | bool, timeout: float,
            admin: tuple[str, str] = ("admin", ADMIN_PASSWORD)) -> Appliance:
    """Run `cargohold serve` on 127.0.0.1:`port`; the Appliance once /v2/ answers. Raises RuntimeError otherwise."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "serve", "--data-dir", str(data_dir), "--bind", f"127.0.0.1:{port}",
             *extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parent.parent,
        )
    app = Appliance(data_dir, port, proc, log_path, scheme, admin, env=env)
    deadline = time.monotonic() + timeout
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
            time.sleep(0.05)
    app.stop()
    raise RuntimeError(f"appliance did not answer within {timeout:.0f} s:\n{app.log()}")
