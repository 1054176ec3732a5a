"""The content-trust policy at bundle import: which images of a bundle a protected project refuses.

A project whose metadata has ``enable_content_trust_cosign = "true"``
(`registry.image_trust`) serves only images a trusted image-signing key has
signed with cosign. The importer asks `unsigned_images` after it has planned
what to publish and before anything is published: every image it would tag
in such a project must carry a valid signature, found in the bundle itself
(its ``sha256-<hex>.sig`` entry or a cosign referrer) or already in the
repository on the appliance. Any finding refuses the whole bundle
(``IMAGE_UNSIGNED``), naming each image and why, so nothing unverified
becomes visible; the registry's pull check (`registry.image_trust`) then
covers what is pushed over /v2/ instead.

Accessories (cosign tags themselves, manifests with a ``subject``) are not
images and need no signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from registry import cosign
from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.image_trust import ImageTrust
from registry.manifests import ParsedManifest, referrer_artifact_type


class _Plan(Protocol):
    manifests: dict[Digest, tuple[ParsedManifest, Any]]
    tags: dict[str, Digest]
    images: list[Any]


@dataclass(frozen=True)
class Finding:
    """An image a protected project refuses, and why."""

    reference: str
    repository: str
    digest: Digest
    reason: str

    def __str__(self) -> str:
        return f"{self.reference} ({self.digest}): {self.reason}"


def _read(locate: Callable[[Digest], Path | None], digest: Digest, cap: int) -> bytes | None:
    path = locate(digest)
    if path is None:
        return None
    with path.open("rb") as f:
        return f.read(cap + 1)


def unsigned_images(trust: ImageTrust, plans: Mapping[str, _Plan], locate: Callable[[Digest], Path | None],
                    max_manifest_bytes: int) -> list[Finding]:
    """The images of `plans` that a content-trust project would refuse (empty: nothing to refuse)."""
    findings: list[Finding] = []
    keys: list[cosign.PublicKey] | None = None
    registry = trust.registry
    for repository, plan in sorted(plans.items()):
        if not trust.protected(repository):
            continue
        if keys is None:
            keys = trust.public_keys()[1]
        for image in plan.images:
            if image.tag is not None and cosign.parse_cosign_tag(image.tag) is not None:
                continue
            parsed = plan.manifests[image.digest][0]
            if parsed.subject is not None:
                continue
            digest = image.digest
            candidates: list[Digest] = []
            tag = cosign.cosign_tag(digest)
            if tag in plan.tags:
                candidates.append(plan.tags[tag])
            candidates += [d for d, (m, _) in plan.manifests.items()
                           if m.subject is not None and m.subject.digest == digest
                           and referrer_artifact_type(m) == cosign.SIGNATURE_ARTIFACT_TYPE]
            if registry.repository_id(repository) is not None:
                try:
                    stored = registry.resolve(repository, tag)
                    candidates.append(stored.digest)
                except RegistryError:  # no such tag on the appliance: nothing stored to add
                    pass
                candidates += [r.digest for r in registry.referrers(repository, digest, cosign.SIGNATURE_ARTIFACT_TYPE)]
            bodies = [b for d in dict.fromkeys(candidates) if (b := _read(locate, d, max_manifest_bytes))]

            def read_blob(desc: Descriptor) -> bytes | None:
                return _read(locate, desc.digest, cosign.MAX_PAYLOAD_BYTES)

            verdict = cosign.verify(digest, bodies, read_blob, keys)
            if not verdict.signed:
                findings.append(Finding(image.reference, repository, digest, verdict.reason))
    return findings
