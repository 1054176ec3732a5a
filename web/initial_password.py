"""The first start's generated admin password, kept in a file only the service account can read.

When the first start generates the admin password (no ``CARGOHOLD_ADMIN_PASSWORD``),
`cargohold serve` writes it to ``<data dir>/initial-admin-password`` (mode 0600)
and prints only the file's path: a console or journal is read by more people
than the data directory. While the file exists, signing in to the UI as the
admin leads to the "Change password" page and nowhere else (`web.ui.password`);
changing the password there, or with ``cargohold admin set-password``, deletes
the file. Deleting the file by hand also lifts the requirement: it is the
marker, so there is no second state to keep in step with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.auth import ADMIN
from registry.paths import DataPaths

FILE_NAME = "initial-admin-password"


def password_file(paths: DataPaths) -> Path:
    """Where the generated first-start admin password is kept until it is changed."""
    return paths.initial_admin_password


def write(paths: DataPaths, password: str) -> Path:
    """Write `password` to the file, readable by the owner only; returns the file's path.

    The file is created 0600 (never briefly wider), replacing a stale one from a
    data directory whose database was reset.
    """
    path = password_file(paths)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    os.chmod(path, 0o600)  # a restrictive umask could only narrow it; this states the intent
    return path


def pending(paths: DataPaths, username: str) -> bool:
    """Must `username` change the generated password before doing anything else?"""
    return username == ADMIN and password_file(paths).exists()


def changed(paths: DataPaths, username: str) -> None:
    """`username`'s password was changed: the generated one is void, so its file goes."""
    if username == ADMIN:
        password_file(paths).unlink(missing_ok=True)
