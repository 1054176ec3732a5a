"""The site's content inventory: every blob the appliance holds, for delta bundles.

`cargohold inventory export` writes it on the site; `cargohold bundle build
--base INVENTORY.json` reads it on the connected side and leaves out every
blob listed here. The document:

    {"mediaType": "application/vnd.cargohold.inventory.v1+json",
     "name": "<site name>", "created": "<UTC time>",
     "blobs": [{"digest": "sha256:...", "size": N}, ...],         what --base reads
     "repositories": [{"name": ..., "tags": {"tag": "sha256:..."}}]  for humans}

It is read straight from the registry's tables (one query each), so it
costs the same whatever the store's size, and is written as a stream.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from registry.db import open_database
from registry.paths import DataPaths

INVENTORY_MEDIA_TYPE = "application/vnd.cargohold.inventory.v1+json"


class InventoryError(RuntimeError):
    """The inventory cannot be exported; the message says why."""


def _blobs(paths: DataPaths) -> Iterator[tuple[str, int]]:
    db = open_database(paths)
    yield from db.execute("SELECT digest, size FROM blobs ORDER BY digest")


def _repositories(paths: DataPaths) -> Iterator[tuple[str, dict[str, str]]]:
    db = open_database(paths)
    current: str | None = None
    tags: dict[str, str] = {}
    for name, tag, digest in db.execute(
            "SELECT r.name, t.name, t.digest FROM repositories r LEFT JOIN tags t ON t.repository_id = r.id "
            "ORDER BY r.name, t.name"):
        if name != current:
            if current is not None:
                yield current, tags
            current, tags = name, {}
        if tag is not None:
            tags[tag] = digest
    if current is not None:
        yield current, tags


def write_inventory(paths: DataPaths, out: IO[str], name: str | None = None) -> int:
    """Write the inventory of the data directory to `out`; returns the number of blobs listed.

    Raises InventoryError if the data directory holds no appliance database.
    """
    if paths.database_url is None and not paths.database.exists():
        raise InventoryError(f"{paths.root} holds no cargohold database; is --data-dir right?")
    created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    head = {"mediaType": INVENTORY_MEDIA_TYPE, "name": name or socket.gethostname(), "created": created}
    out.write(json.dumps(head)[:-1] + ',\n "blobs": [')
    count = 0
    for digest, size in _blobs(paths):
        out.write(("," if count else "") + "\n  " + json.dumps({"digest": digest, "size": size}))
        count += 1
    out.write('\n ],\n "repositories": [')
    for i, (repo, tags) in enumerate(_repositories(paths)):
        out.write(("," if i else "") + "\n  " + json.dumps({"name": repo, "tags": tags}, sort_keys=True))
    out.write("\n ]\n}\n")
    return count


def export_inventory(paths: DataPaths, target: Path, name: str | None = None) -> int:
    """Write the inventory to `target` atomically (via a .tmp file); returns the number of blobs."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tmp.open("w") as f:
            count = write_inventory(paths, f, name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
