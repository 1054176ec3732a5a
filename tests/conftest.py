"""Fixtures shared by every test package: the running appliance, `containerd` (tests/containerd.py), and
the real S3-compatible engines `ceph_rgw` and `seaweedfs` (tests/s3engines.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.appliance import Appliance, start_appliance
from tests.containerd import containerd  # noqa: F401  (one containerd daemon per session, for any package)
from tests.s3engines import ceph_rgw, seaweedfs  # noqa: F401  (real S3 engines, one per session; tests/s3engines.py)


@pytest.fixture(scope="session")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One appliance for the whole session; tests use their own repository names."""
    app = start_appliance(tmp_path_factory.mktemp("appliance") / "data")
    yield app
    app.stop()


@pytest.fixture
def appliance_factory(tmp_path: Path) -> Iterator[Callable[..., Appliance]]:
    """Start extra appliances (own data directory each) for tests that need isolation."""
    started: list[Appliance] = []

    def factory(*args: str, env: dict[str, str] | None = None, name: str | None = None,
                scheme: str = "http") -> Appliance:
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
