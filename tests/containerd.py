"""A real containerd daemon for tests, with root, state and socket in a temporary directory.

Usage from any test package: request the session fixture ``containerd``
(tests/conftest.py registers it once for the whole suite; importing it into
another conftest or test module would start a second daemon) and drive it
through `Containerd.ctr`::

    def test_pull(containerd: Containerd, appliance: Appliance) -> None:
        containerd.ctr("images", "pull", "--plain-http", f"{appliance.host}/spectro-images/x:1")
        out = containerd.ctr("images", "ls", "--quiet").stdout

        # mirror configuration: DIR/docker.io/hosts.toml
        containerd.ctr("images", "pull", "docker.io/library/x:1", hosts_dir=hosts_dir)

The daemon is shared by every test of a session, so tests pull distinct
image names (or remove what they pulled with ``ctr images rm``). Images are
unpacked with the ``native`` snapshotter, which needs no mount privileges
beyond a plain directory; the CRI plugin and snapshotters that need special
filesystems are disabled since nothing here runs containers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

NAMESPACE = "cargohold-test"
SNAPSHOTTER = "native"
_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    # would create /opt/containerd outside the temporary directory
    "io.containerd.internal.v1.opt",
    "io.containerd.tracing.processor.v1.otlp",
)


class ContainerdError(RuntimeError):
    """containerd would not start, or a ctr command failed."""


class Containerd:
    """A running containerd daemon and a `ctr` bound to its socket."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = str(base / "containerd.sock")
        self.log_path = base / "containerd.log"
        self.config_path = base / "config.toml"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Containerd:
        """Write config.toml, start the daemon and wait until it answers on its socket."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        disabled = ", ".join(f'"{p}"' for p in _DISABLED_PLUGINS)
        self.config_path.write_text(
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
            "[debug]\n"
            f'  address = "{self.address}.debug"\n'
            '  level = "info"\n'
            "[metrics]\n"
            '  address = ""\n'
        )
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(["containerd", "--config", str(self.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ContainerdError(f"containerd exited with {self._process.returncode}:\n{self.log()}")
            if Path(self.address).exists():
                probe = subprocess.run(["ctr", "--address", self.address, "version"], capture_output=True)
                if probe.returncode == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise ContainerdError(f"containerd did not answer on {self.address} within {timeout} s:\n{self.log()}")

    def ctr(self, *args: str, hosts_dir: Path | None = None, check: bool = True,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address SOCKET --namespace NS ARGS...``; returns the completed process.

        `hosts_dir` is passed as ``--hosts-dir`` right after the subcommand
        path (``images pull``/``images push``, the first two of `args`), where
        ctr expects it. Raises ContainerdError with ctr's output if it fails
        and `check` is true.
        """
        argv = list(args)
        if hosts_dir is not None:
            argv[2:2] = ["--hosts-dir", str(hosts_dir)]
        cmd = ["ctr", "--address", self.address, "--namespace", NAMESPACE, *argv]
        env = {**os.environ, "CONTAINERD_SNAPSHOTTER": SNAPSHOTTER}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise ContainerdError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def image_digest(self, ref: str) -> str:
        """The target digest containerd recorded for image `ref`."""
        out = self.ctr("images", "ls").stdout.splitlines()
        for line in out[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                return next(f for f in fields if f.startswith("sha256:"))
        raise ContainerdError(f"containerd has no image {ref}; it has:\n" + "\n".join(out))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL after 20 s)."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    """One containerd daemon for the session (skips if containerd/ctr are not installed)."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd and ctr are not installed (scripts/setup-test-env installs them)")
    # A short base path: the socket path must fit in sockaddr_un (108 bytes).
    base = Path(tempfile.mkdtemp(prefix="ctrd-"))
    daemon = Containerd(base).start()
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
