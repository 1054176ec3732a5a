"""Cosign image signatures: their format, how to find them, and checking them with a public key.

Cosign (key-pair mode) stores a signature of image ``repo@sha256:<hex>`` as
an OCI image manifest in the same repository, either

- tagged ``sha256-<hex>.sig`` (the "tag scheme"; attestations use ``.att``
  and SBOMs ``.sbom``), or
- as an OCI 1.1 referrer: a manifest whose ``subject`` is the image and whose
  ``artifactType`` is ``application/vnd.dev.cosign.artifact.sig.v1+json``.

Each layer of that manifest (media type
``application/vnd.dev.cosign.simplesigning.v1+json``) is a "simple signing"
payload, a small JSON document naming the signed manifest digest::

    {"critical": {"identity": {"docker-reference": "<repository>"},
                  "image": {"docker-manifest-digest": "sha256:<hex>"},
                  "type": "cosign container image signature"},
     "optional": {...}}

and carries the annotation ``dev.cosignproject.cosign/signature``: base64 of
the signature over the payload's exact bytes (ECDSA as ASN.1 DER with
SHA-256 for the P-256 keys cosign generates; RSA PKCS#1 v1.5/SHA-256 and
Ed25519 are accepted too). A signature counts only when its payload names
the digest being checked: a valid signature of another image copied under
this image's tag proves nothing about this one.

Keyless (Fulcio certificate + Rekor) signatures need the network and are not
checked here: such a layer verifies only if its key is trusted directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.manifests import ParsedManifest, parse_manifest

SIMPLE_SIGNING_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
PAYLOAD_TYPE = "cosign container image signature"
KINDS = ("sig", "att", "sbom")
MAX_PAYLOAD_BYTES = 64 << 10  # a simple-signing payload is a few hundred bytes; never read more
_TAG = re.compile(r"^(sha256)-([0-9a-f]{64})\.(sig|att|sbom)$")

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyRefused(ValueError):
    """A key cannot be used for image signatures; the message says why."""


def cosign_tag(digest: Digest, kind: str = "sig") -> str:
    """The tag cosign gives the signature (``sig``), attestation or SBOM of `digest`."""
    if kind not in KINDS:
        raise ValueError(f"unknown cosign artifact kind {kind!r}")
    return f"{digest.algorithm}-{digest.encoded}.{kind}"


def parse_cosign_tag(tag: str) -> tuple[Digest, str] | None:
    """(subject digest, kind) for a cosign tag such as ``sha256-<hex>.sig``; None for any other tag."""
    m = _TAG.match(tag)
    return (Digest(m.group(1), m.group(2)), m.group(3)) if m else None


def load_public_key(pem: bytes) -> PublicKey:
    """A PEM public key usable for image signatures; raises KeyRefused naming what is wrong."""
    if b"PRIVATE KEY" in pem:
        raise KeyRefused("this is a private key; the appliance stores only public keys "
                        "(cosign writes the public half to cosign.pub)")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyRefused(f"not a PEM public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise KeyRefused(f"ECDSA curve {key.curve.name} is not accepted (use P-256, as cosign does, or P-384)")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyRefused(f"RSA keys need at least 2048 bits, this one has {key.key_size}")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise KeyRefused(f"{type(key).__name__} keys are not accepted (ECDSA P-256/P-384, RSA >= 2048, Ed25519)")


def key_id(key: PublicKey | PrivateKey) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo (the same id bundle-signing keys use)."""
    public = key.public_key() if not isinstance(key, PublicKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def payload(docker_reference: str, digest: Digest, optional: dict[str, str] | None = None) -> bytes:
    """A simple-signing payload for `digest`, as cosign writes it (compact JSON)."""
    doc = {"critical": {"identity": {"docker-reference": docker_reference},
                        "image": {"docker-manifest-digest": str(digest)}, "type": PAYLOAD_TYPE},
           "optional": optional}
    return json.dumps(doc, separators=(",", ":")).encode()


def sign(key: PrivateKey, data: bytes) -> str:
    """base64 signature of `data` as cosign makes it (ECDSA DER/SHA-256, RSA PKCS#1 v1.5, Ed25519)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = key.sign(data)
    return base64.b64encode(raw).decode()


def _verify_raw(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Verdict:
    """Whether an image digest is signed by a trusted key, and why (for messages)."""

    signed: bool
    key_id: str | None
    reason: str


def signature_manifests(tagged: Iterable[tuple[str, Digest]], referrers: Iterable[Descriptor],
                        subject: Digest) -> list[Digest]:
    """The manifests that may hold cosign signatures of `subject`: its ``.sig`` tag and cosign referrers."""
    wanted = cosign_tag(subject)
    found = [d for tag, d in tagged if tag == wanted]
    found += [r.digest for r in referrers if r.artifact_type == SIGNATURE_ARTIFACT_TYPE]
    return list(dict.fromkeys(found))


def verify(subject: Digest, manifests: Iterable[bytes], read_blob: Callable[[Descriptor], bytes | None],
           keys: Iterable[PublicKey]) -> Verdict:
    """Check the cosign signatures in `manifests` (bodies of signature manifests) for `subject`.

    `read_blob` gives a layer's bytes (at most MAX_PAYLOAD_BYTES are asked
    for; None when absent). Signed when one layer's payload names `subject`
    and its signature verifies with one of `keys`. Never raises on bad
    input: a malformed signature is a reason, not an error.
    """
    key_list = list(keys)
    reasons: list[str] = []
    seen_any = False
    for body in manifests:
        try:
            parsed: ParsedManifest = parse_manifest(body, None)
        except RegistryError as exc:
            reasons.append(f"a signature manifest is malformed ({exc.message})")
            continue
        for layer in parsed.layers:
            if layer.media_type != SIMPLE_SIGNING_TYPE:
                continue
            seen_any = True
            encoded = (layer.annotations or {}).get(SIGNATURE_ANNOTATION)
            if not encoded:
                reasons.append("a signature layer has no signature annotation")
                continue
            try:
                raw_sig = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                reasons.append("a signature annotation is not base64")
                continue
            if layer.size > MAX_PAYLOAD_BYTES:
                reasons.append(f"a signature payload is larger than {MAX_PAYLOAD_BYTES} bytes")
                continue
            data = read_blob(layer)
            if data is None:
                reasons.append(f"signature payload {layer.digest} is not present")
                continue
            if len(data) != layer.size or Digest.of_bytes(data, layer.digest.algorithm) != layer.digest:
                reasons.append(f"signature payload {layer.digest} does not match its digest")
                continue
            try:
                doc = json.loads(data)
                critical = doc["critical"]
                named = critical["image"]["docker-manifest-digest"]
                kind = critical["type"]
            except (ValueError, KeyError, TypeError):
                reasons.append("a signature payload is not a cosign simple-signing document")
                continue
            if kind != PAYLOAD_TYPE:
                reasons.append(f"a signature payload has type {kind!r}, not {PAYLOAD_TYPE!r}")
                continue
            if named != str(subject):
                reasons.append(f"a signature is over {named}, not over {subject}")
                continue
            for key in key_list:
                if _verify_raw(key, raw_sig, data):
                    return Verdict(True, key_id(key), "signed")
            reasons.append("a signature is not made by any trusted image-signing key" if key_list
                           else "no image-signing key is trusted on this appliance")
    if not seen_any and not reasons:
        return Verdict(False, None, "it has no cosign signature")
    return Verdict(False, None, "; ".join(dict.fromkeys(reasons)))
