"""Cosign signature checks (registry.cosign) on signatures made with real ECDSA keys, no server."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry import cosign
from registry.digest import Descriptor, Digest

IMAGE = Digest.of_bytes(b"an image manifest")
OTHER = Digest.of_bytes(b"another image manifest")


def _signature(key: ec.EllipticCurvePrivateKey, signed: Digest, payload: bytes | None = None
               ) -> tuple[bytes, dict[Digest, bytes]]:
    """A cosign signature manifest over `signed` and the blobs it names."""
    body = payload if payload is not None else cosign.payload("registry.example/app", signed)
    layer = Descriptor(cosign.SIMPLE_SIGNING_TYPE, Digest.of_bytes(body), len(body),
                       annotations={cosign.SIGNATURE_ANNOTATION: cosign.sign(key, body)})
    config = b"{}"
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": Descriptor("application/vnd.oci.image.config.v1+json", Digest.of_bytes(config),
                                     len(config)).to_json(),
                "layers": [layer.to_json()]}
    return json.dumps(manifest).encode(), {layer.digest: body}


def _verify(manifest: bytes, blobs: dict[Digest, bytes], keys: list[cosign.PublicKey],
            subject: Digest = IMAGE) -> cosign.Verdict:
    return cosign.verify(subject, [manifest], lambda d: blobs.get(d.digest), keys)


def test_a_signature_by_a_trusted_key_over_the_digest_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    manifest, blobs = _signature(key, IMAGE)
    verdict = _verify(manifest, blobs, [key.public_key()])
    assert verdict.signed and verdict.key_id == cosign.key_id(key.public_key())
    # The signature is plain ECDSA/SHA-256 in DER over the payload's exact bytes, as cosign makes it.
    doc = json.loads(manifest)
    raw = base64.b64decode(doc["layers"][0]["annotations"][cosign.SIGNATURE_ANNOTATION])
    key.public_key().verify(raw, next(iter(blobs.values())), ec.ECDSA(hashes.SHA256()))
    assert json.loads(next(iter(blobs.values())))["critical"]["type"] == "cosign container image signature"


def test_untrusted_key_other_digest_and_tampering_are_refused_with_the_reason() -> None:
    key, stranger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    manifest, blobs = _signature(stranger, IMAGE)
    verdict = _verify(manifest, blobs, [key.public_key()])
    assert not verdict.signed and "not made by any trusted" in verdict.reason

    manifest, blobs = _signature(key, OTHER)  # a real signature, but of another image
    verdict = _verify(manifest, blobs, [key.public_key()])
    assert not verdict.signed and f"over {OTHER}, not over {IMAGE}" in verdict.reason

    manifest, blobs = _signature(key, IMAGE)
    digest = next(iter(blobs))
    blobs[digest] = blobs[digest].replace(b"registry.example", b"registry.exampl3")  # payload altered
    verdict = _verify(manifest, blobs, [key.public_key()])
    assert not verdict.signed and "does not match its digest" in verdict.reason

    assert not _verify(manifest, {}, [key.public_key()]).signed  # payload blob absent
    good, good_blobs = _signature(key, IMAGE)
    assert _verify(good, good_blobs, []).reason == "no image-signing key is trusted on this appliance"
    assert cosign.verify(IMAGE, [], lambda d: None, [key.public_key()]).reason == "it has no cosign signature"
    assert not cosign.verify(IMAGE, [b"not json"], lambda d: None, [key.public_key()]).signed


def test_keys_and_tags() -> None:
    assert cosign.cosign_tag(IMAGE) == f"sha256-{IMAGE.encoded}.sig"
    assert cosign.parse_cosign_tag(f"sha256-{IMAGE.encoded}.att") == (IMAGE, "att")
    assert cosign.parse_cosign_tag("1.25") is None
    with pytest.raises(cosign.KeyRefused, match="private key"):
        cosign.load_public_key(b"-----BEGIN PRIVATE KEY-----\n...")
    with pytest.raises(cosign.KeyRefused, match="not a PEM public key"):
        cosign.load_public_key(b"junk")
    weak = ec.generate_private_key(ec.SECP256K1()).public_key()
    pem = weak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(cosign.KeyRefused, match="curve secp256k1"):
        cosign.load_public_key(pem)
