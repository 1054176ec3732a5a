"""`cargohold admin add-user` / `set-password` and CARGOHOLD_ADMIN_PASSWORD, against a real appliance.

Passwords reach the CLI the ways its help names (a file, standard input,
CARGOHOLD_NEW_PASSWORD; the prompt needs a terminal), never the command
line; the registry's /v2/ with Basic credentials says whether a password works.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests

from tests.appliance import ADMIN_PASSWORD, Appliance, restart_on, start_appliance
from tests.pgengine import env_for, metadata

REPO_ROOT = Path(__file__).resolve().parents[2]
Factory = Callable[..., Appliance]


def cli(*args: str | Path, env: dict[str, str] | None = None, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "CARGOHOLD_NEW_PASSWORD"}
    return subprocess.run([sys.executable, "-m", "web.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**base, **env_for(args), **(env or {})},
                          input=stdin if stdin is not None else "",
                          timeout=60)


def works(app: Appliance, user: str, password: str) -> bool:
    r = requests.get(f"{app.url}/v2/", auth=(user, password), timeout=30, headers={"Connection": "close"})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def users(app: Appliance) -> set[str]:
    with metadata(app.data_dir) as db:
        return {row[0] for row in db.execute("SELECT username FROM users")}


def test_set_password_never_creates_a_user_and_add_user_does(appliance_factory: Factory, tmp_path: Path) -> None:
    app = appliance_factory()
    secret = tmp_path / "pw"
    secret.write_text("Ops-Team-Secret-1\n")  # the trailing newline an editor adds is dropped

    typo = cli("admin", "set-password", "--data-dir", app.data_dir, "--username", "opperator",
               "--password-file", secret)
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    assert "Error: no user 'opperator'; create it with `cargohold admin add-user`" in typo.stderr
    assert "opperator" not in users(app)

    added = cli("admin", "add-user", "operator", "--data-dir", app.data_dir, "--password-file", secret)
    assert added.returncode == 0, added.stderr
    assert "created user operator" in added.stderr
    assert works(app, "operator", "Ops-Team-Secret-1")

    again = cli("admin", "add-user", "operator", "--data-dir", app.data_dir, "--password-file", secret)
    assert again.returncode == 1 and "user 'operator' already exists" in again.stderr

    changed = cli("admin", "set-password", "--data-dir", app.data_dir, "--username", "operator",
                  "--password-file", "-", stdin="New-Ops-Secret-22\n")
    assert changed.returncode == 0, changed.stderr
    assert works(app, "operator", "New-Ops-Secret-22") and not works(app, "operator", "Ops-Team-Secret-1")
    for proc in (typo, added, again, changed):
        assert "Secret" not in proc.stdout + proc.stderr, "a password was echoed"


def test_the_password_policy_is_enforced_and_refusals_change_nothing(appliance_factory: Factory) -> None:
    app = appliance_factory()
    for password, rule in (("short-1", "too short"), ("zzzzzzzzzzzzzzzz", "one character repeated")):
        proc = cli("admin", "set-password", "--data-dir", app.data_dir, env={"CARGOHOLD_NEW_PASSWORD": password})
        assert proc.returncode == 1 and rule in proc.stderr and "Traceback" not in proc.stderr
        assert password not in proc.stdout + proc.stderr
    named = cli("admin", "add-user", "site-operator", "--data-dir", app.data_dir,
                env={"CARGOHOLD_NEW_PASSWORD": "Site-Operator"})
    assert named.returncode == 1 and "may not be the user name 'site-operator'" in named.stderr
    assert "site-operator" not in users(app)
    assert works(app, "admin", ADMIN_PASSWORD), "a refused change altered the password"


def test_passwords_come_from_a_prompt_or_file_never_the_command_line(appliance_factory: Factory) -> None:
    app = appliance_factory()
    on_line = cli("admin", "set-password", "--data-dir", app.data_dir, "--password", "Cmd-Line-Secret-1")
    assert on_line.returncode == 2 and "No such option '--password'" in on_line.stderr
    assert works(app, "admin", ADMIN_PASSWORD) and not works(app, "admin", "Cmd-Line-Secret-1")

    # No terminal, no file, no variable: a clear error instead of waiting on (or reading) standard input.
    nothing = cli("admin", "set-password", "--data-dir", app.data_dir, stdin="Piped-Secret-123\n")
    assert nothing.returncode == 2 and "no password given" in nothing.stderr and "--password-file" in nothing.stderr
    assert works(app, "admin", ADMIN_PASSWORD)

    missing = cli("admin", "set-password", "--data-dir", app.data_dir, "--password-file", "/nonexistent/pw")
    assert missing.returncode == 2 and "cannot read --password-file /nonexistent/pw" in missing.stderr

    help_text = cli("admin", "set-password", "--help").stdout
    assert "--password-file" in help_text and "CARGOHOLD_NEW_PASSWORD" in help_text


def test_admin_password_variable_after_first_start_is_reported_as_ignored(appliance_factory: Factory) -> None:
    app = appliance_factory()
    assert "CARGOHOLD_ADMIN_PASSWORD is ignored" not in app.log()  # the first start used it
    app.stop()
    app.env = {**app.env, "CARGOHOLD_ADMIN_PASSWORD": "Changed-In-Env-77"}
    again = restart_on(app, timeout=30)
    try:
        log = again.log()
        assert "warning: CARGOHOLD_ADMIN_PASSWORD is ignored" in log and "admin set-password" in log
        assert "Changed-In-Env-77" not in log, "the value was echoed"
        assert works(again, "admin", ADMIN_PASSWORD) and not works(again, "admin", "Changed-In-Env-77")
    finally:
        again.stop()


def test_a_weak_first_start_password_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = cli("serve", "--data-dir", data, "--bind", "127.0.0.1:1", env={"CARGOHOLD_ADMIN_PASSWORD": "admin"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Error: CARGOHOLD_ADMIN_PASSWORD: the password is too short" in proc.stderr
    assert not data.exists()


def test_an_empty_first_start_password_means_generate_one(tmp_path: Path) -> None:
    # An env file's `CARGOHOLD_ADMIN_PASSWORD=` is "not set", not a too-short password.
    app = start_appliance(tmp_path / "data", env={"CARGOHOLD_ADMIN_PASSWORD": ""})
    try:
        log = app.log()
        password_file = app.data_dir / "initial-admin-password"
        assert f"Created user 'admin'. Its password is in {password_file}" in log and "too short" not in log
        generated = password_file.read_text().strip()
        assert generated and generated not in log
        assert works(app, "admin", generated)
        # Changing it from the shell voids the generated password: its file goes (no forced change in the UI).
        proc = cli("admin", "set-password", "--data-dir", app.data_dir,
                   env={"CARGOHOLD_NEW_PASSWORD": "Shell-Chosen-77x"})
        assert proc.returncode == 0, proc.stderr
        assert not password_file.exists()
        assert works(app, "admin", "Shell-Chosen-77x")
    finally:
        app.stop()
