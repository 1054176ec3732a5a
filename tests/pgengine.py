"""A real PostgreSQL 15 for the tests: Debian's binaries, a throwaway cluster on a free loopback port.

`start_postgres` runs ``initdb`` and ``postgres`` from /usr/lib/postgresql/15/bin
(the ``postgresql`` package, which scripts/setup-test-env installs) in a new
temporary directory: as the ``postgres`` user when the tests run as root
(PostgreSQL refuses to run as root), as the current user otherwise. The
cluster uses the C locale (byte-order text, as cargohold requires) and no
fsync (a test cluster; nothing in it must survive a power cut). Each test
gets a database of its own from `PostgresServer.create_database`.

Running the suite on PostgreSQL: ``python -m pytest --db=postgres tests/...``
(tests/conftest.py); without the binaries those tests are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from registry.dbengine import Database
from registry.paths import DataPaths

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "cargohold"  # the cluster's superuser (trust authentication on loopback only)


_ENGINES: dict[str, dict[str, str]] = {}  # data directory -> the environment naming its database
_DEFAULT: list[PostgresServer] = []  # with --db=postgres: the cluster new data directories get a database of


def use_for_new_data_dirs(server: PostgresServer | None) -> None:
    """With --db=postgres, every data directory a test uses first gets a fresh database of `server`."""
    _DEFAULT[:] = [server] if server is not None else []


def remember(data_dir: Path, env: dict[str, str]) -> None:
    """Note which database the appliance on `data_dir` uses, for CLI commands run on it later (`env_for`)."""
    _ENGINES[str(Path(data_dir).resolve())] = env


def engine_for(data_dir: Path) -> dict[str, str]:
    """The environment naming `data_dir`'s database: the one it was given, else (--db=postgres) a fresh one."""
    key = str(Path(data_dir).resolve())
    if key not in _ENGINES:
        _ENGINES[key] = {"CARGOHOLD_DATABASE_URL": _DEFAULT[0].create_database()} if _DEFAULT else {}
    return _ENGINES[key]


def env_for(args: Sequence[object]) -> dict[str, str]:
    """The environment a CLI command with these arguments needs to find its ``--data-dir``'s database."""
    words = [str(a) for a in args]
    for i, word in enumerate(words):
        if word == "--data-dir" and i + 1 < len(words):
            return engine_for(Path(words[i + 1]))
        if word.startswith("--data-dir="):
            return engine_for(Path(word.split("=", 1)[1]))
    return {}


def data_paths(data_dir: Path) -> DataPaths:
    """`DataPaths` of the appliance on `data_dir`, with its database (for tests that use the core in-process)."""
    return DataPaths(Path(data_dir), engine_for(Path(data_dir)).get("CARGOHOLD_DATABASE_URL"))


def database_url_of(data_dir: Path) -> str:
    """`Config.database_url` for the appliance on `data_dir`: its PostgreSQL URL, or "" (SQLite)."""
    return engine_for(Path(data_dir)).get("CARGOHOLD_DATABASE_URL", "")


@contextlib.contextmanager
def metadata(data_dir: Path) -> Iterator[Database]:
    """A connection to the metadata of the appliance on `data_dir`, whichever engine holds it; commits at the end.

    For tests that look at or change rows behind the appliance's back (the
    shared SQL dialect: ``?`` parameters work on both engines).
    """
    from registry.db import connect, write_transaction

    paths = data_paths(data_dir)
    if paths.database_url is None and not paths.database.is_file():
        raise FileNotFoundError(f"{paths.database} does not exist")  # never create an empty one
    db = connect(paths)
    try:
        with write_transaction(db):
            yield db
    finally:
        db.close()


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run here; the message says why (the tests skip with it)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """One running test cluster."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Fast shutdown (SIGTERM's smart one waits for every session), sent to the postmaster itself:
            # runuser, when it started it, does not pass signals on.
            pidfile = self.root / "data" / "postmaster.pid"
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a throwaway cluster; raises PostgresUnavailable naming what is missing."""
    for tool in ("initdb", "postgres"):
        if not (BIN / tool).is_file():
            raise PostgresUnavailable(f"{BIN / tool} is missing: install Debian's postgresql package "
                                      "(scripts/setup-test-env does)")
    root = Path(tempfile.mkdtemp(prefix="cargohold-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses root: run it as the packaged `postgres` user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no postgres user to run PostgreSQL as") from None
        os.chown(root, owner.pw_uid, owner.pw_gid)
        root.chmod(0o700)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    init = subprocess.run([*prefix, str(BIN / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                           "--locale=C", "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    port = _free_port()
    log = (root / "postgres.log").open("wb")
    if prefix:
        os.chown(root / "postgres.log", pwd.getpwnam("postgres").pw_uid, -1)
    proc = subprocess.Popen(
        [*prefix, str(BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=400"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = PostgresServer(root, port, proc)
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            text = server.log()
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(f"postgres exited with {proc.returncode}:\n{text}")
        try:
            psycopg.connect(server.url("postgres"), connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                server.stop()
                raise PostgresUnavailable("postgres did not accept connections within 60 s") from None
            time.sleep(0.1)
