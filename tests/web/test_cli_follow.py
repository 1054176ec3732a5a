"""`cargohold follow`'s command line: where the secret comes from, what it refuses, what it keeps.

The real CLI (`python -m web.cli`) on a real data directory; the primary it
is pointed at is a closed loopback port (nothing answers), which is all
these refusals need. Following a real primary is tests/bundles/test_follow.py.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.appliance import free_port
from tests.pgengine import database_url_of, env_for, metadata

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "robot-Secret-never-shown-42"


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "CARGOHOLD_FOLLOW_SECRET"}
    return subprocess.run([sys.executable, "-m", "web.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**clean, **env_for(args), **(env or {})}, timeout=120)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An appliance's data directory (made by `keys add`, which may start one)."""
    assert cli("keys", "generate", tmp_path / "k").returncode == 0
    made = cli("keys", "add", "--data-dir", tmp_path / "data", tmp_path / "k.pub.pem")
    assert made.returncode == 0, made.stderr
    return tmp_path / "data"


def _state(data_dir: Path) -> tuple[str, int, str | None] | None:
    with metadata(data_dir) as db:  # whichever engine holds the appliance's metadata (tests/pgengine.py)
        row = db.execute("SELECT primary_url, last_seq, last_error FROM follow_state WHERE id = 1").fetchone()
    return (str(row[0]), int(row[1]), row[2]) if row else None


def _error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_the_secret_comes_from_a_file_or_the_environment_never_the_command_line(data_dir: Path,
                                                                                 tmp_path: Path) -> None:
    primary = f"http://127.0.0.1:{free_port()}"
    none = cli("follow", primary, "--robot", "robot$x", "--once", "--data-dir", data_dir)
    assert none.returncode == 2 and "no robot secret given" in _error(none)
    assert cli("follow", primary, "--robot", "robot$x", "--secret", SECRET, "--once",
               "--data-dir", data_dir).returncode == 2  # there is no such option
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    assert "is empty" in _error(cli("follow", primary, "--robot", "robot$x", "--secret-file", empty, "--once",
                                    "--data-dir", data_dir))
    assert _state(data_dir) is None  # refused before anything was recorded

    # From the environment: the round runs (the primary does not answer), and the secret is in no output.
    down = cli("follow", primary, "--robot", "robot$x", "--once", "--data-dir", data_dir,
               env={"CARGOHOLD_FOLLOW_SECRET": SECRET})
    assert down.returncode == 1
    assert f"primary {primary} is unreachable" in _error(down)
    assert SECRET not in down.stdout + down.stderr
    state = _state(data_dir)
    assert state is not None and state[0] == primary and state[2] is not None and "unreachable" in state[2]
    if database_url_of(data_dir):  # PostgreSQL: the follower's own rows (what a follower writes) hold no secret
        with metadata(data_dir) as db:
            assert SECRET not in repr(db.execute("SELECT * FROM follow_state").fetchall())
    else:
        assert SECRET not in (data_dir / "cargohold.db").read_bytes().decode(errors="replace")


def test_a_follower_follows_one_primary_until_told_otherwise(data_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    first, second = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    assert cli("follow", first, "--robot", "r", "--secret-file", secret, "--once",
               "--data-dir", data_dir).returncode == 1
    other = cli("follow", second, "--robot", "r", "--secret-file", secret, "--once", "--data-dir", data_dir)
    assert other.returncode == 1
    assert f"this appliance follows {first}, not {second}" in _error(other) and "--new-primary" in other.stderr
    assert _state(data_dir) is not None and _state(data_dir)[0] == first  # type: ignore[index]
    moved = cli("follow", second, "--robot", "r", "--secret-file", secret, "--once", "--new-primary",
                "--data-dir", data_dir)
    assert moved.returncode == 1 and f"primary {second} is unreachable" in _error(moved)
    assert _state(data_dir)[0] == second  # type: ignore[index]

    # One follower per data directory: a second one stops at once.
    with (data_dir / "imports" / "follow.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = cli("follow", second, "--robot", "r", "--secret-file", secret, "--once", "--data-dir", data_dir)
    assert busy.returncode == 1 and "another `cargohold follow` is running" in _error(busy)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:5000", "http://127.0.0.1:5000/v2", "http://u@127.0.0.1:5000",
                                 "127.0.0.1:5000", "http://127.0.0.1:5000?x=1"])
def test_a_primary_address_is_scheme_host_and_port_only(data_dir: Path, tmp_path: Path, url: str) -> None:
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    bad = cli("follow", url, "--robot", "r", "--secret-file", secret, "--once", "--data-dir", data_dir)
    assert bad.returncode == 2 and "must be http(s)://host[:port]" in bad.stderr
    assert _state(data_dir) is None


@pytest.mark.parametrize("interval", ["0", "0.5s", "soon", "-1m"])
def test_an_interval_is_a_duration_of_at_least_a_second(data_dir: Path, tmp_path: Path, interval: str) -> None:
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    bad = cli("follow", "http://127.0.0.1:5000", "--robot", "r", "--secret-file", secret, "--interval", interval,
              "--data-dir", data_dir)
    assert bad.returncode == 2
    assert "is not a duration like 90, 30s, 5m or 1h" in bad.stderr or "must be at least 1 second" in bad.stderr


def test_follow_refuses_a_directory_without_an_appliance_and_creates_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    target = tmp_path / "nothing-here"
    refused = cli("follow", "http://127.0.0.1:5000", "--robot", "r", "--secret-file", secret, "--once",
                  "--data-dir", target)
    assert refused.returncode == 1 and "holds no cargohold appliance" in _error(refused)
    assert not target.exists()
