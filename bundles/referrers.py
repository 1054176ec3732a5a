"""Finding an image's signatures, SBOMs and attestations at build time, so they travel with it.

Two ways a registry or layout holds them, both looked for:

- **OCI 1.1 referrers**: manifests whose ``subject`` is the image. From a
  registry, ``GET /v2/<name>/referrers/<digest>``; where the registry lacks
  that API (CNCF distribution 2.8 answers 404), the referrers tag schema:
  an index tagged ``sha256-<hex>`` listing them. From a layout, index.json
  entries whose manifest names the image as its subject.
- **cosign's tag scheme**: ``sha256-<hex>.sig``, ``.att`` and ``.sbom`` in the
  image's repository (a layout entry named with that tag).

The bundle carries each as the registry has it, byte for byte: cosign tags
as tagged index.json entries in the image's repository (so the site serves
them by the same tag), referrers as untagged entries that the importer
places next to their subject (so the site's referrers API lists them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bundles.registry_client import PullError, RegistryClient
from registry import cosign
from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.manifests import OCI_INDEX, parse_manifest, referrer_artifact_type

REFERRER = "referrer"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


class ReferrerError(RuntimeError):
    """A referrer could not be read; the message names it."""


@dataclass(frozen=True)
class Found:
    """One accessory of an image: its kind (``sig``, ``att``, ``sbom`` or ``referrer``) and descriptor."""

    kind: str
    descriptor: Descriptor
    tag: str | None = None  # cosign tag scheme: the tag it travels under
    body: bytes | None = None  # the manifest, when it was already fetched to find it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": str(self.descriptor.digest), "kind": self.kind,
                               "mediaType": self.descriptor.media_type, "size": self.descriptor.size}
        if self.descriptor.artifact_type:
            out["artifactType"] = self.descriptor.artifact_type
        if self.tag:
            out["tag"] = self.tag
        return out


def _described(body: bytes, media_type: str | None, what: str) -> Descriptor:
    try:
        parsed = parse_manifest(body, media_type or None)
    except RegistryError as exc:
        raise ReferrerError(f"{what}: {exc.message}") from None
    return Descriptor(parsed.media_type, Digest.of_bytes(body), len(body), referrer_artifact_type(parsed))


def from_registry(client: RegistryClient, host: str, repository: str, digest: Digest) -> list[Found]:
    """The referrers and cosign-tag accessories of `digest` in a registry repository."""
    where = f"{host}/{repository}@{digest}"
    try:
        listed = client.referrers(host, repository, digest)
        if listed is None:  # no referrers API: the referrers tag schema
            fallback = client.optional_manifest(host, repository, f"{digest.algorithm}-{digest.encoded}")
            listed = []
            if fallback is not None:
                try:
                    index = parse_manifest(fallback[0], fallback[1] or OCI_INDEX)
                except RegistryError as exc:
                    raise ReferrerError(f"referrers tag of {where}: {exc.message}") from None
                listed = list(index.manifests) if index.is_index else []
        found = [Found(REFERRER, d) for d in listed]
        for kind in cosign.KINDS:
            tag = cosign.cosign_tag(digest, kind)
            got = client.optional_manifest(host, repository, tag)
            if got is not None:
                found.append(Found(kind, _described(got[0], got[1], f"{host}/{repository}:{tag}"), tag, got[0]))
    except PullError as exc:
        raise ReferrerError(f"referrers of {where}: {exc}") from None
    return _unique(found)


class LayoutAccessories:
    """The accessories among a layout's index.json entries, indexed once for every image of the layout.

    A cosign tag is recognised by the entry's ``org.opencontainers.image.ref.name``
    (full reference or bare tag) ending in ``sha256-<hex>.sig|att|sbom``; a
    referrer by its manifest's ``subject``. Only untagged entries and entries
    with an artifactType are read to find subjects (images are not), each once.
    """

    def __init__(self, entries: Iterable[Descriptor], read_manifest: Callable[[Descriptor], bytes]) -> None:
        self._by_subject: dict[Digest, list[Found]] = {}
        for entry in entries:
            name = (entry.annotations or {}).get(REF_NAME_ANNOTATION)
            tag = name.rsplit(":", 1)[-1] if name and ":" in name else name
            tagged = cosign.parse_cosign_tag(tag) if tag else None
            if tagged is not None and tag is not None:
                self._by_subject.setdefault(tagged[0], []).append(Found(tagged[1], entry, tag))
                continue
            if name and not entry.artifact_type:
                continue
            try:
                parsed = parse_manifest(read_manifest(entry), entry.media_type, entry.digest)
            except RegistryError:
                continue  # not a manifest this build packs; the image walk reports real damage
            if parsed.subject is not None:
                self._by_subject.setdefault(parsed.subject.digest, []).append(Found(REFERRER, Descriptor(
                    entry.media_type, entry.digest, entry.size, referrer_artifact_type(parsed))))

    def of(self, digest: Digest) -> list[Found]:
        """The accessories of `digest` (empty when it has none)."""
        return _unique(self._by_subject.get(digest, []))


def _unique(found: list[Found]) -> list[Found]:
    seen: set[tuple[str, Digest]] = set()
    out = []
    for f in found:
        key = (f.tag or REFERRER, f.descriptor.digest)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out

