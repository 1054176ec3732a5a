"""The data directory's layout and permissions."""

from __future__ import annotations

import stat
from pathlib import Path

from registry.paths import DataPaths


def test_data_root_and_keys_are_private_to_the_service_user(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    paths.ensure()
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.keys.stat().st_mode) == 0o700
    for d in (paths.blobs, paths.tmp, paths.uploads, paths.quarantine, paths.tls, paths.imports):
        assert d.is_dir()


def test_ensure_tightens_an_existing_world_readable_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    DataPaths(root).ensure()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
