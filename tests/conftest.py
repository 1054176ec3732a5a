"""Fixtures shared by every test package: the running appliance, `containerd` (tests/containerd.py), and
the real S3-compatible engines `ceph_rgw` and `seaweedfs` (tests/s3engines.py).

``--db=postgres`` runs the tests on PostgreSQL metadata (tests/pgengine.py): the
session appliance, every `appliance_factory` appliance and every
`database_url` user get a fresh database of one throwaway PostgreSQL
cluster. Tests that read ``cargohold.db`` with sqlite3 themselves are
marked ``sqlite_only`` and skipped there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.appliance import Appliance, start_appliance
from tests.containerd import containerd  # noqa: F401  (one containerd daemon per session, for any package)
from tests.pgengine import (
    PostgresServer,
    PostgresUnavailable,
    start_postgres,
    use_for_new_data_dirs,
)
from tests.s3engines import ceph_rgw, seaweedfs  # noqa: F401  (real S3 engines, one per session; tests/s3engines.py)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--db", choices=("sqlite", "postgres"), default="sqlite",
                     help="the metadata engine the appliances and registry models use (default sqlite)")
    parser.addoption("--replicas", action="store_true", default=False,
                     help="make the session `appliance` a two-replica site (PostgreSQL + Ceph RGW, nginx round "
                          "robin in front; tests/replicas.py)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: reads or damages cargohold.db itself; skipped with --db=postgres")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--db") != "postgres":
        return
    skip = pytest.mark.skip(reason="reads cargohold.db (SQLite) directly; not run with --db=postgres")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)  # with --db=postgres every data directory gets a database
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer | None]:
    """The session's PostgreSQL cluster with --db=postgres (skips if it cannot run), else None."""
    if request.config.getoption("--db") != "postgres":
        yield None
        return
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"--db=postgres: {exc}")
    use_for_new_data_dirs(server)
    yield server
    use_for_new_data_dirs(None)
    server.stop()


@pytest.fixture(scope="session")
def postgres(postgres_server: PostgresServer | None) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster whatever --db says (the engine's own tests); skipped, saying why, if it cannot run."""
    if postgres_server is not None:
        yield postgres_server
        return
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresServer | None) -> str | None:
    """A fresh PostgreSQL database's URL with --db=postgres; None (SQLite in the data directory) otherwise."""
    return postgres_server.create_database() if postgres_server is not None else None


@pytest.fixture(scope="session")
def appliance(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              postgres_server: PostgresServer | None) -> Iterator[Appliance]:
    """One appliance for the whole session; tests use their own repository names.

    With ``--replicas``: two replicas behind a round-robin balancer, seen as one appliance at the
    balancer's address (tests/replicas.py).
    """
    if request.config.getoption("--replicas"):
        from tests.replicas import start_site

        pg = request.getfixturevalue("postgres")
        engine = request.getfixturevalue("ceph_rgw")
        site = start_site(tmp_path_factory.mktemp("replicas"), pg, engine)
        yield site.as_appliance()
        site.stop()
        return
    data_dir = tmp_path_factory.mktemp("appliance") / "data"
    app = start_appliance(data_dir)  # with --db=postgres, on its own database (tests.pgengine.engine_for)
    yield app
    app.stop()


@pytest.fixture
def appliance_factory(tmp_path: Path, postgres_server: PostgresServer | None) -> Iterator[Callable[..., Appliance]]:
    """Start extra appliances (own data directory each, and own database with --db=postgres) for isolation."""
    started: list[Appliance] = []

    def factory(*args: str, env: dict[str, str] | None = None, name: str | None = None,
                scheme: str = "http") -> Appliance:
        # With --db=postgres, the data directory's own database: a restart on it finds its metadata again.
        app = start_appliance(tmp_path / (name or f"data-{len(started)}"), *args, env=env, scheme=scheme)
        started.append(app)
        return app

    yield factory
    for app in started:
        app.stop()


@pytest.fixture
def repo() -> str:
    """A repository name no other test uses."""
    return f"spectro-images/test/r{uuid.uuid4().hex[:12]}"
