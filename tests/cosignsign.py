"""A cosign-compatible image signer for tests: signs with `cryptography`, pushes like cosign does.

Neither cosign (not packaged for Debian bookworm) nor skopeo's sigstore
signer (Debian builds it with "sigstore disabled") can sign here, so this
module writes what ``cosign sign --key cosign.key`` writes, following the
cosign signature format (see registry/cosign.py):

- the payload is the simple-signing JSON naming the image's manifest digest;
- the signature is ECDSA P-256 / SHA-256 over the payload bytes, ASN.1 DER,
  base64 in the layer annotation ``dev.cosignproject.cosign/signature``;
- the signature manifest is an OCI image manifest whose config is a minimal
  image config listing the payload's digest as its diff_id, and whose one
  layer is the payload (media type application/vnd.dev.cosign.simplesigning.v1+json);
- tag scheme: it is pushed as ``sha256-<hex>.sig`` in the image's repository;
  referrer scheme (cosign's OCI 1.1 mode): it carries ``subject``, its config
  has media type ``application/vnd.dev.cosign.artifact.sig.v1+json`` (which the
  referrers API reports as its artifactType), and it is pushed by digest.

No independent verifier runs here either (Debian's skopeo and podman refuse
sigstore policies the same way), so the verifier is checked against this
signer and against refusals: wrong key, payload over another digest,
tampered payload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry import cosign
from registry.digest import Digest
from registry.manifests import OCI_MANIFEST


@dataclass(frozen=True)
class CosignKey:
    private: ec.EllipticCurvePrivateKey
    pub_file: Path  # cosign.pub: the PEM public key an operator trusts

    @property
    def public_pem(self) -> bytes:
        return self.pub_file.read_bytes()


def generate(directory: Path, name: str = "cosign") -> CosignKey:
    """An ECDSA P-256 key pair, as `cosign generate-key-pair` makes; NAME.pub written to `directory`."""
    private = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    pub = directory / f"{name}.pub"
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return CosignKey(private, pub)


def _push_blob(url: str, repo: str, data: bytes, auth: tuple[str, str]) -> Digest:
    digest = Digest.of_bytes(data)
    started = requests.post(f"{url}/v2/{repo}/blobs/uploads/", auth=auth, timeout=10)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    location = location if location.startswith("http") else url + location
    done = requests.put(location, params={"digest": str(digest)}, data=data, auth=auth, timeout=10,
                        headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    return digest


def signature_manifest(url: str, repo: str, docker_reference: str, signed: Digest, key: ec.EllipticCurvePrivateKey,
                       auth: tuple[str, str], subject: tuple[Digest, int, str] | None = None) -> bytes:
    """Push payload and config blobs for a signature of `signed`; returns the signature manifest's bytes."""
    body = cosign.payload(docker_reference, signed)
    payload_digest = _push_blob(url, repo, body, auth)
    config = json.dumps({"architecture": "", "config": {}, "created": "0001-01-01T00:00:00Z",
                         "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
                         "rootfs": {"type": "layers", "diff_ids": [str(payload_digest)]}}).encode()
    config_digest = _push_blob(url, repo, config, auth)
    # Tag scheme: an image config; referrer scheme: cosign names the artifact type by the config's media type.
    config_type = "application/vnd.oci.image.config.v1+json" if subject is None else cosign.SIGNATURE_ARTIFACT_TYPE
    doc: dict[str, object] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "size": len(config), "digest": str(config_digest)},
        "layers": [{"mediaType": cosign.SIMPLE_SIGNING_TYPE, "size": len(body), "digest": str(payload_digest),
                    "annotations": {cosign.SIGNATURE_ANNOTATION: cosign.sign(key, body)}}]}
    if subject is not None:
        doc["subject"] = {"mediaType": subject[2], "digest": str(subject[0]), "size": subject[1]}
    return json.dumps(doc).encode()


def put_manifest(url: str, repo: str, reference: str, body: bytes, auth: tuple[str, str]) -> Digest:
    resp = requests.put(f"{url}/v2/{repo}/manifests/{reference}", data=body, auth=auth, timeout=10,
                        headers={"Content-Type": OCI_MANIFEST})
    assert resp.status_code == 201, resp.text
    return Digest.parse(resp.headers["Docker-Content-Digest"])


def sign_tag_scheme(url: str, repo: str, signed: Digest, key: CosignKey, auth: tuple[str, str],
                    over: Digest | None = None) -> Digest:
    """`cosign sign --key`: push a signature of `signed` as ``sha256-<hex>.sig``.

    `over` signs another digest's payload but pushes it under `signed`'s tag
    (a forged placement the verifier must refuse).
    """
    host = url.split("://", 1)[1]
    body = signature_manifest(url, repo, f"{host}/{repo}", over or signed, key.private, auth)
    return put_manifest(url, repo, cosign.cosign_tag(signed), body, auth)


def sign_referrer(url: str, repo: str, signed: Digest, size: int, media_type: str, key: CosignKey,
                  auth: tuple[str, str]) -> Digest:
    """Newer cosign's OCI 1.1 mode: the signature manifest names `signed` as its subject."""
    host = url.split("://", 1)[1]
    body = signature_manifest(url, repo, f"{host}/{repo}", signed, key.private, auth, (signed, size, media_type))
    return put_manifest(url, repo, str(Digest.of_bytes(body)), body, auth)
