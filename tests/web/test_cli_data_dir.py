"""The data directory is never a silent surprise: every command names it, read-only ones refuse an empty one.

Drives the real CLI (`python -m web.cli`) against real directories and a
real appliance. The paths the system refuses are real too: the tests run
as root here, where a chmod would not stop anything, so /sys (EPERM) and a
file under /proc (ENOTDIR) stand for an unwritable place and an impossible
path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.appliance import Appliance, free_port
from tests.pgengine import env_for

REPO_ROOT = Path(__file__).resolve().parents[2]

# What a data directory without cargohold.db means; PostgreSQL's form is in tests/registry/test_dbengine.py.
pytestmark = pytest.mark.sqlite_only


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "web.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, **env_for(args), **(env or {})}, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error:`` line of a failed command; fails on a traceback or on several error lines."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# Commands that only read or change an existing appliance, as an operator would type them.
READ_ONLY = [
    ("bundle", "list"), ("bundle", "status", "abc"), ("keys", "list"), ("keys", "remove", "abc"),
    ("clusterdef", "list"), ("clusterdef", "check", "x"), ("clusterdef", "history", "x"),
    ("release", "list"), ("release", "show", "promoted"), ("release", "diff", "1"), ("release", "check", "1"),
    ("release", "promote", "1"), ("release", "rollback"), ("release", "discard", "1"),
    ("gc", "--dry-run"), ("scrub",), ("disk",), ("tls", "ca"), ("tls", "issue"),
    ("admin", "set-password"), ("admin", "add-user", "someone"),
]


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_refuse_a_directory_without_an_appliance_and_create_nothing(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "typo-data"
    proc = cli(*command, "--data-dir", missing, env={"CARGOHOLD_NEW_PASSWORD": "long-enough-Secret-1"})
    assert proc.stderr.splitlines()[0] == f"Data directory: {missing}"
    assert one_error_line(proc) == (
        f"Error: {missing} holds no cargohold appliance (no cargohold.db); check --data-dir or CARGOHOLD_DATA_DIR, "
        "or start an appliance there with `cargohold serve`")
    assert proc.returncode == 1
    assert not missing.exists(), "a refused command created the directory"

    # An empty directory that exists is refused the same way, and stays empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli(*command, "--data-dir", empty, env={"CARGOHOLD_NEW_PASSWORD": "long-enough-Secret-1"})
    assert "holds no cargohold appliance" in one_error_line(proc)
    assert list(empty.iterdir()) == []


def test_inventory_export_and_mirror_config_refuse_without_an_appliance(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    for proc in (cli("inventory", "export", "--data-dir", missing, "-o", tmp_path / "inv.json"),
                 cli("mirror-config", "--data-dir", missing, "--out", tmp_path / "m", "--address", "h:5000")):
        assert "holds no cargohold appliance" in one_error_line(proc)
    assert not missing.exists() and not (tmp_path / "inv.json").exists() and not (tmp_path / "m").exists()


def test_every_command_names_its_data_directory_first_and_keeps_stdout_clean(appliance: Appliance,
                                                                             tmp_path: Path) -> None:
    data = appliance.data_dir.resolve()
    listing = cli("release", "list", "--json", "--data-dir", appliance.data_dir)
    assert listing.returncode == 0, listing.stderr
    assert listing.stderr.splitlines()[0] == f"Data directory: {data}"
    assert listing.stdout.lstrip().startswith("{"), "machine output on stdout stays clean"
    # From the environment, and relative: the absolute path is named.
    relative = os.path.relpath(appliance.data_dir, REPO_ROOT)
    keys = cli("keys", "list", env={"CARGOHOLD_DATA_DIR": relative})
    assert keys.returncode == 0, keys.stderr
    assert keys.stderr.splitlines()[0] == f"Data directory: {data}"
    # A command that may start a new directory names it too, before anything else.
    assert cli("keys", "generate", tmp_path / "k").returncode == 0
    fresh = tmp_path / "fresh"
    added = cli("keys", "add", "--data-dir", fresh, tmp_path / "k.pub.pem")
    assert added.returncode == 0, added.stderr
    assert added.stderr.splitlines()[0] == f"Data directory: {fresh}"
    assert (fresh / "cargohold.db").is_file()


def test_unusable_paths_give_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    proc = cli("bundle", "list", "--data-dir", a_file)
    assert one_error_line(proc) == (f"Error: {a_file} is not a directory; "
                                    "point --data-dir (or CARGOHOLD_DATA_DIR) at one")
    assert a_file.read_text() == "not a directory\n"

    # Commands that may create the directory: a place the system refuses (EPERM) and an impossible path.
    key = tmp_path / "k.pub.pem"
    assert cli("keys", "generate", tmp_path / "k").returncode == 0
    for data_dir, reason in (("/sys/cargohold-test", "Operation not permitted"),
                             (f"{a_file}/sub", "Not a directory")):
        for command in (("keys", "add", key), ("clusterdef", "import", key)):
            proc = cli(*command, "--data-dir", data_dir)
            line = one_error_line(proc)
            assert data_dir in line and reason in line, line
            assert proc.returncode == 1

    port = str(free_port())
    serve = cli("serve", "--data-dir", a_file, "--bind", f"127.0.0.1:{port}")
    assert one_error_line(serve).endswith("is not a directory; point --data-dir (or CARGOHOLD_DATA_DIR) at one")
    serve = cli("serve", "--data-dir", "/sys/cargohold-test", "--bind", f"127.0.0.1:{port}")
    assert "/sys/cargohold-test: Operation not permitted" in one_error_line(serve)
    # A file in the way inside the directory: met by serve's set-up child, reported the same way.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "blobs").write_text("")
    serve = cli("serve", "--data-dir", blocked, "--bind", f"127.0.0.1:{port}")
    assert one_error_line(serve) == f"Error: {blocked}/blobs: File exists (a file is in the way of a directory)"


@pytest.mark.parametrize(("bind", "problem"), [
    ("127.0.0.1:99999", "port 99999 is not between 1 and 65535"),
    ("127.0.0.1:0", "port 0 is not between 1 and 65535"),
    ("127.0.0.1", "is not host:port"),
    ("no-such-host.invalid:5000", "cannot resolve 'no-such-host.invalid'"),
    ("192.0.2.123:5000", "cannot listen there: Cannot assign requested address"),
])
def test_bad_bind_addresses_are_refused_in_one_line_before_any_set_up(tmp_path: Path, bind: str,
                                                                       problem: str) -> None:
    data = tmp_path / "data"
    for front in ("nginx", "none"):
        proc = cli("serve", "--data-dir", data, "--bind", bind, "--front", front, "--tls")
        line = one_error_line(proc)
        assert problem in line and f"--bind {bind!r}" in line, line
        assert proc.returncode == 2
        assert not data.exists(), "set-up ran before the address was checked"


def test_mirror_config_auto_never_writes_plain_http_silently(appliance: Appliance,
                                                              appliance_factory: object, tmp_path: Path) -> None:
    # A plain-HTTP appliance has no local CA: "auto" cannot tell plain HTTP from an operator's own certificate.
    out = tmp_path / "auto"
    proc = cli("mirror-config", "--data-dir", appliance.data_dir, "--out", out, "--address", appliance.host)
    line = one_error_line(proc)
    assert "--scheme auto cannot choose: there is no local CA" in line
    assert "--scheme https" in line and "--scheme http" in line
    assert not out.exists()

    explicit = cli("mirror-config", "--data-dir", appliance.data_dir, "--out", out, "--address", appliance.host,
                   "--scheme", "http")
    assert explicit.returncode == 0, explicit.stderr
    assert "Scheme: http, as asked: edge hosts will pull in plain text" in explicit.stderr
    hosts = (out / "containerd" / "mirror" / appliance.host / "hosts.toml").read_text()
    assert f'"http://{appliance.host}' in hosts

    # With the appliance's own CA, auto says it chose https and why.
    assert callable(appliance_factory)
    tls_app = appliance_factory("--tls", scheme="https")
    out = tmp_path / "tls"
    auto = cli("mirror-config", "--data-dir", tls_app.data_dir, "--out", out, "--address", tls_app.host)
    assert auto.returncode == 0, auto.stderr
    assert f"Scheme: https (the appliance's local CA {tls_app.data_dir.resolve()}/tls/ca.crt" in auto.stderr
    hosts = (out / "containerd" / "mirror" / tls_app.host / "hosts.toml").read_text()
    assert f'"https://{tls_app.host}' in hosts and "http://" not in hosts
