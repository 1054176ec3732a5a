"""Copying an artifact from one repository to another, as Harbor's copy artifact does.

The store is content-addressed, so nothing is copied but references: the
target repository gets links to the manifests and blobs, the children of an
index and the artifact's accessories (manifests whose subject it is), and
the tags the source artifact has. Everything happens in one write
transaction through `Registry.publish_manifest` (which checks every
reference, as a push does) and the tag protections (`registry.protection`):
a tag of the target that is protected and points elsewhere refuses the
whole copy (412) and nothing changes. An artifact already in the target is
not an error (Harbor adds the tags then).
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.blobstore import BlobInfo
from registry.db import write_transaction
from registry.dbengine import Database
from registry.digest import Digest
from registry.errors import RegistryError
from registry.manifests import parse_manifest
from registry.model import Registry
from registry.names import is_digest_reference, validate_name, validate_tag

# An index of indexes nests a level or two; anything deeper is refused rather than followed.
MAX_DEPTH = 8


@dataclass(frozen=True)
class CopySource:
    """``<project>/<repository>:<tag>`` or ``<project>/<repository>@<digest>``, parsed."""

    repository: str
    reference: str

    @staticmethod
    def parse(text: str | None) -> CopySource:
        """Raises RegistryError NAME_INVALID / TAG_INVALID / DIGEST_INVALID naming what is wrong."""
        if not text:
            raise RegistryError("NAME_INVALID", "from is required: <project>/<repository>:<tag> or "
                                "<project>/<repository>@<digest>")
        if "@" in text:
            name, _, reference = text.partition("@")
            if not is_digest_reference(reference):
                raise RegistryError("DIGEST_INVALID", f"from {text[:200]!r}: {reference[:80]!r} is not a digest")
            Digest.parse(reference)
        else:
            name, sep, reference = text.rpartition(":")
            if not sep or "/" in reference:
                raise RegistryError("NAME_INVALID", f"from {text[:200]!r} names no tag or digest: use "
                                    "<project>/<repository>:<tag> or <project>/<repository>@<digest>")
            validate_tag(reference)
        if "/" not in name:
            raise RegistryError("NAME_INVALID", f"from {text[:200]!r}: the repository must be "
                                "<project>/<repository>")
        validate_name(name)
        return CopySource(name, reference)


def copy_artifact(registry: Registry, source: CopySource, target: str) -> Digest:
    """Copy the artifact `source` names into repository `target` (created if new); its digest.

    Raises MANIFEST_UNKNOWN / NAME_UNKNOWN for a missing source,
    MANIFEST_BLOB_UNKNOWN if the source lacks content it references, and
    `TagProtected` (412) when a tag it would move is protected.
    """
    validate_name(target)
    record = registry.resolve(source.repository, source.reference)
    source_id = registry.repository_id(source.repository)
    assert source_id is not None  # resolve found a manifest in it
    with write_transaction(registry.db) as db:
        target_id = registry.ensure_repository(db, target)
        _copy_manifest(registry, db, source_id, target_id, target, record.digest, 0)
        tags = [row[0] for row in db.execute("SELECT name FROM tags WHERE repository_id = ? AND digest = ? "
                                             "ORDER BY name", [source_id, str(record.digest)]).fetchall()]
        for tag in tags:
            registry.protection.before_move(db, target_id, target, tag, record.digest)
            registry.set_tag(db, target_id, tag, record.digest)
    return record.digest


def _copy_manifest(registry: Registry, db: Database, source_id: int, target_id: int, target: str, digest: Digest,
                   depth: int) -> None:
    if depth > MAX_DEPTH:
        raise RegistryError("MANIFEST_INVALID", f"manifest {digest} nests indexes more than {MAX_DEPTH} deep")
    row = db.execute("SELECT media_type, size FROM manifests WHERE repository_id = ? AND digest = ?",
                     [source_id, str(digest)]).fetchone()
    if row is None:
        raise RegistryError("MANIFEST_BLOB_UNKNOWN", f"the source lacks manifest {digest}",
                            detail={"missing": [str(digest)]})
    media_type, size = row[0], int(row[1])
    children = db.execute("SELECT child, kind, size FROM manifest_refs WHERE repository_id = ? AND manifest = ?",
                          [source_id, str(digest)]).fetchall()
    for child, kind, child_size in children:
        if kind == "manifest":
            _copy_manifest(registry, db, source_id, target_id, target, Digest.parse(child), depth + 1)
        elif db.execute("SELECT 1 FROM repository_blobs WHERE repository_id = ? AND digest = ?",
                        [source_id, child]).fetchone():
            registry.link(db, target_id, BlobInfo(Digest.parse(child), int(child_size)))
    exists = db.execute("SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?",
                        [target_id, str(digest)]).fetchone()
    if not exists:
        with registry.store.open(digest) as f:
            body = f.read(registry.max_manifest_bytes + 1)  # manifests are capped at push
        parsed = parse_manifest(body, media_type, digest)
        registry.publish_manifest(db, target_id, target, parsed, BlobInfo(digest, size))
    # Accessories (signatures, SBOMs: manifests whose subject this is) travel with the artifact, as in Harbor.
    for (accessory,) in db.execute("SELECT digest FROM manifests WHERE repository_id = ? AND subject = ?",
                                   [source_id, str(digest)]).fetchall():
        if not db.execute("SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?",
                          [target_id, accessory]).fetchone():
            _copy_manifest(registry, db, source_id, target_id, target, Digest.parse(accessory), depth + 1)
