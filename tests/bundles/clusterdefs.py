"""Build cluster definition archives (.tgz) for tests, from plain dicts and file texts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import yaml


def build_archive(path: Path, definition: dict[str, Any], files: dict[str, str] | None = None,
                  profiles: dict[str, dict[str, Any]] | None = None, top: str = "") -> Path:
    """Write a .tgz with definition.yaml, the given profile documents and other files; returns `path`."""
    members: dict[str, bytes] = {"definition.yaml": yaml.safe_dump(definition).encode()}
    for name, doc in (profiles or {}).items():
        members[name] = yaml.safe_dump(doc).encode()
    for name, text in (files or {}).items():
        members[name] = text.encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def simple_definition(name: str, images: list[str], architectures: tuple[str, ...] = ("amd64",),
                      variables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A definition with one infra profile whose single pack lists `images`."""
    return {
        "apiVersion": "cargohold.io/v1", "kind": "ClusterDefinition", "name": name, "version": "1.0.0",
        "architectures": list(architectures),
        "profiles": [{
            "name": "infra", "version": "1.0.0", "type": "infra",
            "variables": variables or [],
            "packs": [{"name": "base", "version": "1.0.0", "type": "spectro", "layer": "os",
                       "content": {"images": [{"image": i} for i in images]}}],
        }],
    }
