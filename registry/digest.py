"""Digests and descriptors: parsed once at the edge, typed from then on.

A `Digest` is `algorithm:encoded` as the OCI image spec defines it. Only
sha256 and sha512 are accepted for content we store; anything else is
`DIGEST_INVALID` (or `UNSUPPORTED` for a well-formed unknown algorithm).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from registry.errors import RegistryError

# OCI image-spec descriptor grammar.
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)\Z")  # \Z, not $: no trailing newline
_ENCODED = {"sha256": re.compile(r"^[a-f0-9]{64}\Z"), "sha512": re.compile(r"^[a-f0-9]{128}\Z")}


@dataclass(frozen=True, order=True)
class Digest:
    """A content digest such as ``sha256:9f86d0…``."""

    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate a digest string.

        Raises RegistryError(DIGEST_INVALID) for malformed text and
        RegistryError(UNSUPPORTED) for a well-formed digest of an algorithm
        we do not support.
        """
        m = _DIGEST_RE.match(text or "")
        if not m:
            raise RegistryError("DIGEST_INVALID", f"invalid digest {text!r}: expected algorithm:hex")
        algorithm, encoded = m.group(1), m.group(2)
        pattern = _ENCODED.get(algorithm)
        if pattern is None:
            raise RegistryError("UNSUPPORTED", f"digest algorithm {algorithm!r} is not supported")
        if not pattern.match(encoded):
            raise RegistryError("DIGEST_INVALID", f"invalid {algorithm} digest {text!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of an in-memory byte string (manifests, small JSON)."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def hasher(self) -> hashlib._Hash:
        """A fresh hashlib object of this digest's algorithm."""
        return hashlib.new(self.algorithm)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about content it names."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, object] | None = None

    def to_json(self) -> dict[str, object]:
        """The descriptor as OCI JSON."""
        out: dict[str, object] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out
