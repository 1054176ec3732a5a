"""The real `cargohold serve` refuses bad settings before any set-up, and a config file takes effect.

Drives `python -m web.cli` as an operator (or systemd, or docker) would: a
bad variable, file key or value stops serve with exactly one ``Error:``
line and exit status 2, and leaves the data directory as it was (even
while another appliance serves it: the settings are checked before the
serve lock). A running appliance started with a config file shows the
file's settings in its behaviour, the environment's over the file's, and
the command line's over both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.appliance import ADMIN_PASSWORD, Appliance
from tests.pgengine import env_for

REPO_ROOT = Path(__file__).resolve().parents[2]
Factory = Callable[..., Appliance]
SETTINGS_HINT = "cargohold reads no such setting (README, Configuration)"


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "web.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120,
                          env={**os.environ, "CARGOHOLD_ADMIN_PASSWORD": ADMIN_PASSWORD, **env_for(args),
                               **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Usage:" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and proc.stderr.splitlines()[-1] == errors[0], proc.stderr
    return errors[0]


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# (environment, config file text and mode or None, the Error line with {file} for the file's path)
BAD = {
    "unknown variable": ({"CARGOHOLD_TLS_SANS": "10.0.0.1"}, None,
                         "Error: unknown environment variable CARGOHOLD_TLS_SANS (did you mean CARGOHOLD_TLS_SAN?): "
                         + SETTINGS_HINT),
    "boolean": ({"CARGOHOLD_TLS": "enabled"}, None,
                "Error: CARGOHOLD_TLS='enabled': not a boolean (use true or false, 1 or 0, yes or no, on or off)"),
    "integer": ({"CARGOHOLD_WORKERS": "-2"}, None, "Error: CARGOHOLD_WORKERS='-2': must be at least 1"),
    "size": ({"CARGOHOLD_BUNDLE_MAX_BYTES": "12XB"}, None,
             "Error: CARGOHOLD_BUNDLE_MAX_BYTES='12XB': not a byte count (a number of bytes, optionally with a "
             "unit: K, M, G, T or KiB, MiB, GiB, TiB are binary; KB, MB, GB, TB decimal)"),
    "enumeration": ({"CARGOHOLD_FRONT": "apache"}, None, "Error: CARGOHOLD_FRONT='apache': not one of nginx, none"),
    "file key": ({}, ('bind = "127.0.0.1:5000"\nmax_request_per_address = 10\n', 0o644),
                 "Error: {file}, line 2: unknown setting 'max_request_per_address' (did you mean "
                 "max_requests_per_address?): " + SETTINGS_HINT),
    "file type": ({}, ("workers = [2, 3]\n", 0o644), "Error: {file}, line 1: workers: a TOML array, expected a "
                                                       "whole number"),
    "file secret": ({}, ('admin_password = "Long-Enough-Secret-9"\n', 0o644),
                    "Error: {file}, line 1: admin_password is a secret, but {file} is readable by group or others "
                    "(mode 0644): chmod 600 {file}, or set CARGOHOLD_ADMIN_PASSWORD in the environment instead"),
    "missing file": ({}, None, "Error: config file {file}: No such file or directory"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_serve_refuses_a_bad_setting_in_one_line_and_creates_nothing(tmp_path: Path, case: str) -> None:
    env, file_spec, expected = BAD[case]
    data = tmp_path / "data"
    data.mkdir()
    file = tmp_path / "cargohold.toml"
    if file_spec is not None:
        write(file, *file_spec)
    uses_file = file_spec is not None or case == "missing file"
    # A file by --config and by $CARGOHOLD_CONFIG alike.
    runs = [(["--config", str(file)], env), ([], {**env, "CARGOHOLD_CONFIG": str(file)})] if uses_file else [([], env)]
    for options, environment in runs:
        proc = cli("serve", "--data-dir", data, "--bind", "127.0.0.1:0", *options, env=environment)
        assert one_error_line(proc) == expected.format(file=file)
        assert list(data.iterdir()) == [], "a refused serve changed the data directory"


def test_serve_refuses_a_bad_option_before_any_set_up(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    proc = cli("serve", "--data-dir", missing, "--workers", "0")
    assert one_error_line(proc) == "Error: --workers 0: must be at least 1"
    assert not missing.exists()


def test_a_config_file_takes_effect_below_the_environment_and_the_command_line(
        tmp_path: Path, appliance_factory: Factory) -> None:
    file = write(tmp_path / "cargohold.toml", """
# Overridden by CARGOHOLD_PROJECT in the environment:
project = "from-file"
# Overridden by the command line's --bind (the test's free port):
bind = "127.0.0.1:1"
# From the file alone:
max_manifest_bytes = "1KiB"
""", 0o644)
    app = appliance_factory("--config", str(file), env={"CARGOHOLD_PROJECT": "from-env"}, name="data")
    assert f"Config file: {file}" in app.log()

    projects = requests.get(f"{app.url}/api/v2.0/projects", timeout=10).json()
    names = {p["name"] for p in projects}
    assert "from-env" in names and "from-file" not in names, names

    manifest = b'{"schemaVersion": 2, "layers": [' + b" " * 2000 + b"]}"
    r = requests.put(f"{app.url}/v2/from-env/app/manifests/1", data=manifest, auth=app.admin, timeout=10,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 413, r.text
    assert f"manifest of {len(manifest)} bytes exceeds the 1024-byte limit" in r.text

    # Every command reads the same file through CARGOHOLD_CONFIG; its relative data_dir is the file's directory's.
    (tmp_path / "cli.toml").write_text('data_dir = "data"\nproject = "from-file"\n')
    listed = cli("release", "list", "--json", env={"CARGOHOLD_CONFIG": str(tmp_path / "cli.toml")})
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines()[:2] == [f"Data directory: {app.data_dir}",
                                              f"Config file: {tmp_path / 'cli.toml'}"]

    # Settings are checked before the serve lock: a second serve with a bad one says so, not "another serve".
    bad = write(tmp_path / "bad.toml", "threads = -1\n")
    second = cli("serve", "--data-dir", app.data_dir, "--config", bad)
    assert one_error_line(second) == f"Error: {bad}, line 1: threads = -1: must be at least 1"
    assert requests.get(f"{app.url}/v2/", timeout=10).status_code == 401  # the first one still serves
