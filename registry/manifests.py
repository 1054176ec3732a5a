"""Manifest parsing and validation: what a pushed manifest is and names.

Accepts the OCI image manifest and index and Docker's schema2 manifest and
manifest list. Everything a manifest references (config, layers, child
manifests, subject) comes out as typed descriptors; any malformed field is a
MANIFEST_INVALID error that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry import boundedjson
from registry.digest import Descriptor, Digest
from registry.errors import RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = IMAGE_TYPES + INDEX_TYPES

# Layers that registries do not hold (Windows base layers); never required to exist.
FOREIGN_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)


@dataclass(frozen=True)
class ParsedManifest:
    """A validated manifest and everything it references."""

    media_type: str
    digest: Digest
    size: int
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def required_blobs(self) -> tuple[Descriptor, ...]:
        """Config and layers that must exist in the repository."""
        blobs = ((self.config,) if self.config else ()) + self.layers
        return tuple(d for d in blobs if d.media_type not in FOREIGN_LAYER_TYPES)


def _invalid(message: str) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", message)


def parse_descriptor(value: Any, where: str) -> Descriptor:
    """Validate one descriptor object; `where` names it in errors."""
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType must be a non-empty string")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    digest_text = value.get("digest")
    if not isinstance(digest_text, str):
        raise _invalid(f"{where}.digest must be a string")
    try:
        digest = Digest.parse(digest_text)
    except RegistryError as exc:
        raise _invalid(f"{where}.digest: {exc.message}") from None
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid(f"{where}.artifactType must be a string")
    annotations = _annotations(value.get("annotations"), where)
    platform = value.get("platform")
    if platform is not None and not (isinstance(platform, dict) and isinstance(platform.get("architecture"), str)
                                     and isinstance(platform.get("os"), str)):
        raise _invalid(f"{where}.platform must have string architecture and os")
    return Descriptor(media_type, digest, size, artifact_type, annotations or None, platform)


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid(f"{where}.annotations must map strings to strings")
    return dict(value)


def _content_type(header: str | None) -> str | None:
    if not header:
        return None
    return header.split(";", 1)[0].strip().lower() or None


# The byte size is capped before this (Registry.max_manifest_bytes); these caps bound what parsing may build.
# A real index of a few thousand platforms holds tens of thousands of objects; 4 MiB of "[]" would be two
# million lists (about 130 MB in one worker) and thousands of "[" a RecursionError.
_MANIFEST_JSON_LIMITS = boundedjson.JsonLimits(max_bytes=1 << 30, max_depth=32, max_containers=200_000,
                                               max_elements=500_000)


def parse_manifest(body: bytes, content_type: str | None, digest: Digest | None = None) -> ParsedManifest:
    """Validate manifest bytes pushed with `content_type`.

    Raises MANIFEST_INVALID naming the first problem found, and UNSUPPORTED
    for schema1 manifests.
    """
    try:
        doc = boundedjson.loads(body, "manifest", _MANIFEST_JSON_LIMITS)
    except boundedjson.JsonRefused as exc:
        raise _invalid(exc.message) from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    header_type = _content_type(content_type)
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType must be a string")
    if header_type in DOCKER_SCHEMA1 or body_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise _invalid("Docker schema1 manifests are not supported; push schema2 or OCI")
    if type(doc.get("schemaVersion")) is not int or doc["schemaVersion"] != 2:  # not 2.0, not true
        raise _invalid("schemaVersion must be 2")
    if body_type and header_type and header_type not in ("application/json", "application/octet-stream") \
            and body_type != header_type:
        raise _invalid(f"Content-Type {header_type} does not match the manifest's mediaType {body_type}")
    media_type = body_type or header_type
    if media_type in (None, "application/json", "application/octet-stream"):
        # An OCI manifest may omit mediaType; infer it from its shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type {media_type!r}")
    if digest is None:
        digest = Digest.of_bytes(body)
    annotations = _annotations(doc.get("annotations"), "manifest")
    subject = parse_descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")

    if media_type in INDEX_TYPES:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise _invalid("an index must have a 'manifests' array")
        parsed = tuple(parse_descriptor(c, f"manifests[{i}]") for i, c in enumerate(children))
        for i, child in enumerate(parsed):
            if media_type == DOCKER_LIST and child.media_type not in MANIFEST_TYPES:
                raise _invalid(f"manifests[{i}].mediaType {child.media_type!r} is not a manifest type")
        return ParsedManifest(media_type, digest, len(body), manifests=parsed, subject=subject,
                              artifact_type=artifact_type, annotations=annotations)

    if "manifests" in doc:
        raise _invalid(f"an image manifest ({media_type}) must not have 'manifests'")
    config = parse_descriptor(doc.get("config"), "config")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise _invalid("an image manifest must have a 'layers' array")
    layers = tuple(parse_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers_doc))
    return ParsedManifest(media_type, digest, len(body), config=config, layers=layers, subject=subject,
                          artifact_type=artifact_type, annotations=annotations)


def referrer_artifact_type(manifest: ParsedManifest) -> str | None:
    """The artifactType the referrers API reports (config media type as fallback)."""
    if manifest.artifact_type:
        return manifest.artifact_type
    if manifest.config is not None:
        return manifest.config.media_type
    return None
