"""Where the data directory's space goes: every top-level area (blobs, database, imports, ...) with its size.

`disk_areas` lists every top-level entry of the data directory, with
``imports/tus`` (browser uploads) and ``imports/staging`` (blobs verified by
an import, waiting to be published) apart, so nothing on the volume goes
uncounted. The dashboard, the Maintenance page, ``GET /api/cargohold/v1/disk``
and ``cargohold disk`` show it. Sizes are apparent file sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from registry.paths import DataPaths


@dataclass(frozen=True)
class Area:
    """One top-level entry of the data directory and the bytes under it."""

    name: str
    size: int


def tree_size(path: Path) -> tuple[int, float]:
    """(apparent bytes of the regular files under `path`, newest mtime); 0 for what vanished meanwhile."""
    total, newest = 0, 0.0
    try:
        st = path.lstat()
    except OSError:
        return 0, 0.0
    newest = st.st_mtime
    if not path.is_dir() or path.is_symlink():
        return st.st_size, newest
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                s = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            newest = max(newest, s.st_mtime)
            if name in files:
                total += s.st_size
    return total, newest


def disk_areas(paths: DataPaths) -> list[Area]:
    """Every top-level entry of the data directory with its size, largest first; imports split by area."""
    areas: list[Area] = []
    try:
        entries = sorted(paths.root.iterdir())
    except OSError:
        return areas
    for entry in entries:
        if entry == paths.imports and entry.is_dir():
            rest = 0
            for sub in sorted(entry.iterdir()):
                size = tree_size(sub)[0]
                if sub.name in ("tus", "staging"):
                    areas.append(Area(f"imports/{sub.name}", size))
                else:
                    rest += size
            if rest:
                areas.append(Area("imports (other)", rest))
            continue
        areas.append(Area(entry.name, tree_size(entry)[0]))
    return sorted(areas, key=lambda a: (-a.size, a.name))
