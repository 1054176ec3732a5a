"""The files a site holds: file artifacts (`bundles.artifacts`) found in the registry, for download over HTTP.

A file is any tagged manifest whose artifactType is
``application/vnd.cargohold.file.v1`` with one layer titled with the file
name: what a format-2 bundle carries for ``bundle build --file``, or what
``oras push --artifact-type application/vnd.cargohold.file.v1`` pushes. Nothing
is recorded beside the registry: a file is visible exactly while its tag is,
so releases, promotion, rollback, garbage collection and scrub govern files
as they govern images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bundles import artifacts
from registry.blobstore import BlobStore
from registry.digest import Digest
from registry.errors import RegistryError
from registry.model import Registry

MAX_FILE_MANIFEST = 64 << 10  # a one-layer artifact manifest is < 2 KiB; a bigger one is not a file artifact


class FileUnknown(LookupError):
    """No file by that name, version or digest (among those the caller may see)."""


@dataclass(frozen=True)
class SiteFile:
    """One tagged file artifact: the file's name, size and sha256, and where it is published."""

    name: str  # the file name (the layer's org.opencontainers.image.title)
    version: str  # the tag
    repository: str
    digest: Digest  # of the file's bytes
    size: int
    media_type: str
    manifest_digest: Digest
    updated: float

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "repository": self.repository,
                "reference": self.reference, "digest": str(self.digest), "size": self.size,
                "mediaType": self.media_type, "manifestDigest": str(self.manifest_digest)}


def tagged_files(db: Any, store: BlobStore) -> list[SiteFile]:
    """Every tagged file artifact of a registry database, by repository, newest tag first (one query, then
    one small read per manifest)."""
    rows = db.execute(
        "SELECT r.name, t.name, m.digest, m.size, t.updated_at FROM tags t "
        "JOIN repositories r ON r.id = t.repository_id "
        "JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest "
        "WHERE m.artifact_type = ? ORDER BY r.name, t.updated_at DESC, t.name",
        [artifacts.FILE_ARTIFACT_TYPE]).fetchall()
    out = []
    for repository, tag, digest, size, updated in rows:
        found = _file(store, repository, Digest.parse(digest), int(size), tag, float(updated or 0))
        if found is not None:
            out.append(found)
    return out


def _file(store: BlobStore, repository: str, manifest: Digest, size: int, tag: str,
          updated: float) -> SiteFile | None:
    try:
        with store.open(manifest) as f:
            doc = json.loads(f.read(min(size, MAX_FILE_MANIFEST) + 1))
    except (OSError, ValueError, RegistryError):
        return None  # a manifest blob scrub quarantined: not offered
    layer = artifacts.file_layer(doc) if isinstance(doc, dict) else None
    if layer is None:
        return None
    try:
        digest = Digest.parse(str(layer.get("digest")))
    except RegistryError:
        return None
    length = layer.get("size")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        return None
    return SiteFile(layer["annotations"][artifacts.TITLE_ANNOTATION], tag, repository, digest, length,
                    str(layer.get("mediaType") or artifacts.FILE_MEDIA_TYPE), manifest, updated)


class SiteFiles:
    """Lists and resolves the file artifacts of one registry."""

    def __init__(self, registry: Registry, project: str) -> None:
        self.registry = registry
        self.project = project

    def all(self) -> list[SiteFile]:
        """Every tagged file artifact, by repository and version (newest tag first within a repository)."""
        return tagged_files(self.registry.db, self.registry.store)

    def find(self, spec: str, visible: Any) -> SiteFile:
        """The file `spec` names: ``sha256:<hex>`` (its bytes' digest), ``NAME`` or ``NAME:VERSION``.

        A name is looked up in the default project, in ``files/<name>``, and
        matched against the file name too; without a version, the most
        recently tagged version. `visible(repository)` says what the caller
        may pull. Raises FileUnknown.
        """
        candidates = [f for f in self.all() if visible(f.repository)]
        if spec.startswith("sha256:"):
            found = [f for f in candidates if str(f.digest) == spec]
            if not found:
                raise FileUnknown(f"no file with digest {spec}")
            return found[0]
        name, _, version = spec.partition(":")  # a file name holds no ':'
        try:
            repository = f"{self.project}/{artifacts.file_repository(name)}"
        except artifacts.ArtifactError:
            raise FileUnknown(f"no file named {name!r}") from None
        found = [f for f in candidates if f.repository == repository and (not version or f.version == version)]
        if not found:
            raise FileUnknown(f"no file named {name}" + (f" with version {version}" if version else ""))
        return max(found, key=lambda f: f.updated)
