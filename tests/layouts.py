"""Shared test helpers for reading OCI image layouts on disk: streamed file hashes and manifest closures.

The registry, bundle and UI tests all check what a client pulled (or what a
bundle holds) by walking an OCI layout from a manifest digest and re-hashing
each blob; this module is the one place that walk lives.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Manifests and indexes are small; larger blobs are layers and are not parsed.
_MAX_DOCUMENT_BYTES = 4 << 20


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in 1 MiB blocks (never whole)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def json_or_none(path: Path) -> dict[str, object] | None:
    """The JSON object a blob holds, or None for layers, configs that are not objects, and large blobs."""
    if path.stat().st_size > _MAX_DOCUMENT_BYTES:
        return None
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def layout_closure(root: Path, digest: str) -> set[str]:
    """Every digest reachable from manifest `digest` in an OCI layout (itself, children, configs, layers).

    Each blob's bytes are re-hashed, so a layout that holds wrong bytes under
    a digest fails here rather than passing by name.
    """
    seen: set[str] = set()
    stack = [digest]
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        path = root / "blobs" / "sha256" / d.split(":", 1)[1]
        assert path.is_file(), f"{d} is missing from {root}"
        assert sha256_file(path) == d, f"{path} does not hash to its name"
        seen.add(d)
        doc = json_or_none(path)  # configs and layers are not schemaVersion-2 documents
        if doc is not None and doc.get("schemaVersion") == 2:
            stack += [m["digest"] for m in doc.get("manifests", [])]  # type: ignore[attr-defined]
            if isinstance(doc.get("config"), dict):
                stack.append(doc["config"]["digest"])  # type: ignore[index]
            stack += [layer["digest"] for layer in doc.get("layers", [])]  # type: ignore[attr-defined]
    return seen
