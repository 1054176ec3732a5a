"""Signing keys: generate, load, fingerprint, sign and verify.

Supported: RSA (>= 2048 bits; PKCS#1 v1.5 and PSS, SHA-256), ECDSA P-256
(SHA-256) and P-384 (SHA-384), Ed25519, all in PEM. A key's id is
``sha256:<hex>`` of its DER SubjectPublicKeyInfo, the same for the private
key and its public half, so a signature names the key that made it.

Two kinds of signature are verified:
- embedded: over the exact bytes of a bundle's manifest member (small);
- detached: over a whole bundle file, as `openssl dgst -sha256 -sign` makes
  it. That is checked against the SHA-256 computed while the file streams
  (a pre-hashed verify), so the file is never held in memory. Ed25519 cannot
  verify a pre-hashed message, so detached Ed25519 signatures are refused
  with a message saying so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

KEY_TYPES = ("rsa", "ecdsa-p256", "ecdsa-p384", "ed25519")
ALGORITHMS = ("rsa-pkcs1v15-sha256", "rsa-pss-sha256", "ecdsa-p256-sha256", "ecdsa-p384-sha384", "ed25519")
MIN_RSA_BITS = 2048


class SignatureError(ValueError):
    """A key or signature problem, with a message that names it."""


@dataclass(frozen=True)
class Signature:
    """An embedded signature: which algorithm and key, and the signature bytes."""

    algorithm: str
    key_id: str
    value: bytes

    def to_json(self) -> dict[str, str]:
        return {"algorithm": self.algorithm, "keyId": self.key_id, "signature": base64.b64encode(self.value).decode()}

    @classmethod
    def from_json(cls, doc: object) -> Signature:
        """Parse the signature member's JSON; raises SignatureError naming the bad field."""
        if not isinstance(doc, dict):
            raise SignatureError("signature must be a JSON object")
        algorithm, key_id, value = doc.get("algorithm"), doc.get("keyId"), doc.get("signature")
        if algorithm not in ALGORITHMS:
            raise SignatureError(f"unsupported signature algorithm {algorithm!r}; "
                                 f"expected one of {', '.join(ALGORITHMS)}")
        if not isinstance(key_id, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", key_id):
            raise SignatureError("signature keyId must be sha256:<64 hex>")
        if not isinstance(value, str):
            raise SignatureError("signature value must be base64 text")
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise SignatureError("signature value is not valid base64") from None
        return cls(algorithm, key_id, raw)


def generate(kind: str = "rsa", bits: int = 3072) -> PrivateKey:
    """A new private key of `kind` (one of KEY_TYPES)."""
    if kind == "rsa":
        if bits < MIN_RSA_BITS:
            raise SignatureError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise SignatureError(f"unknown key type {kind!r}; expected one of {', '.join(KEY_TYPES)}")


def private_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of a private key, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def public_half(key: PrivateKey | PublicKey) -> PublicKey:
    """The public key of a private key; a public key as it is."""
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        return key.public_key()
    return key


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a key's public half."""
    return public_half(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_supported(key: PrivateKey | PublicKey) -> None:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size < MIN_RSA_BITS:
            raise SignatureError(f"RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required")
    elif isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise SignatureError(f"ECDSA curve {key.curve.name} is not supported; use P-256 or P-384")
    elif not isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        raise SignatureError(f"unsupported key type {type(key).__name__}")


def load_private(pem: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key; raises SignatureError for anything unusable."""
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"not a usable PEM private key: {exc}") from None
    _check_supported(key)  # type: ignore[arg-type]
    return key  # type: ignore[return-value]


def load_public(pem: bytes) -> PublicKey:
    """Load a PEM public key (or take the public half of a private key PEM)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in pem:
            return load_private(pem).public_key()
        raise SignatureError("not a usable PEM public key") from None
    _check_supported(key)  # type: ignore[arg-type]
    return key  # type: ignore[return-value]


def key_id(key: PrivateKey | PublicKey) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo."""
    der = public_half(key).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def default_algorithm(key: PrivateKey | PublicKey) -> str:
    """The algorithm `sign` uses for a key (RSA: PSS)."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa-pss-sha256"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa-p384-sha384" if key.curve.name == "secp384r1" else "ecdsa-p256-sha256"
    return "ed25519"


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def sign(key: PrivateKey, data: bytes, algorithm: str | None = None) -> Signature:
    """Sign `data` (a bundle manifest's bytes) with `key`."""
    algorithm = algorithm or default_algorithm(key)
    if isinstance(key, rsa.RSAPrivateKey) and algorithm == "rsa-pss-sha256":
        value = key.sign(data, _pss(), hashes.SHA256())
    elif isinstance(key, rsa.RSAPrivateKey) and algorithm == "rsa-pkcs1v15-sha256":
        value = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey) and algorithm == default_algorithm(key):
        value = key.sign(data, ec.ECDSA(hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()))
    elif isinstance(key, ed25519.Ed25519PrivateKey) and algorithm == "ed25519":
        value = key.sign(data)
    else:
        raise SignatureError(f"algorithm {algorithm} does not fit a {type(key).__name__}")
    return Signature(algorithm, key_id(key), value)


def verify(key: PublicKey, signature: Signature, data: bytes) -> None:
    """Check an embedded signature over `data`; raises SignatureError if it does not hold."""
    if signature.key_id != key_id(key):
        raise SignatureError(f"signature was made by key {signature.key_id}, not {key_id(key)}")
    try:
        if isinstance(key, rsa.RSAPublicKey) and signature.algorithm == "rsa-pss-sha256":
            key.verify(signature.value, data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                          salt_length=padding.PSS.AUTO), hashes.SHA256())
        elif isinstance(key, rsa.RSAPublicKey) and signature.algorithm == "rsa-pkcs1v15-sha256":
            key.verify(signature.value, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey) and signature.algorithm == default_algorithm(key):
            key.verify(signature.value, data,
                       ec.ECDSA(hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey) and signature.algorithm == "ed25519":
            key.verify(signature.value, data)
        else:
            raise SignatureError(f"algorithm {signature.algorithm} does not fit key {signature.key_id}")
    except InvalidSignature:
        raise SignatureError(f"signature by key {signature.key_id} does not match the signed content") from None


def verify_detached(key: PublicKey, signature: bytes, sha256_digest: bytes) -> str:
    """Check a detached whole-file signature against the file's SHA-256.

    Accepts what `openssl dgst -sha256 -sign` makes: RSA PKCS#1 v1.5 (or PSS
    with `-sigopt rsa_padding_mode:pss`) and ECDSA. Returns the algorithm
    that verified; raises SignatureError otherwise.
    """
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, sha256_digest, padding.PKCS1v15(), prehashed)
                return "rsa-pkcs1v15-sha256"
            except InvalidSignature:
                key.verify(signature, sha256_digest,
                           padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO), prehashed)
                return "rsa-pss-sha256"
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, sha256_digest, ec.ECDSA(prehashed))
            return "ecdsa-sha256"
    except InvalidSignature:
        raise SignatureError(f"detached signature does not match the bundle file for key {key_id(key)}") from None
    raise SignatureError("Ed25519 keys cannot verify a detached signature over a whole file; "
                    "use the bundle's embedded signature or an RSA/ECDSA key")


def sign_detached(key: PrivateKey, sha256_digest: bytes) -> bytes:
    """A detached signature over a whole file, given its SHA-256, as `openssl dgst -sha256 -sign` makes it.

    RSA signs PKCS#1 v1.5 (openssl's default), ECDSA a DER signature over
    the SHA-256; `verify_detached` accepts both. Raises SignatureError for
    an Ed25519 key, which cannot sign a pre-hashed file.
    """
    prehashed = utils.Prehashed(hashes.SHA256())
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(sha256_digest, padding.PKCS1v15(), prehashed)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(sha256_digest, ec.ECDSA(prehashed))
    raise SignatureError("an Ed25519 key cannot make a detached signature over a whole file; "
                         "use an embedded signature or an RSA/ECDSA key")


def read_signature_file(data: bytes) -> bytes:
    """The raw signature bytes of a detached signature file: raw, base64 or hex.

    Raises SignatureError for an empty or oversized file.
    """
    if not data:
        raise SignatureError("the signature file is empty")
    if len(data) > 64 * 1024:
        raise SignatureError("the signature file is larger than 64 KiB; is it the right file?")
    text = data.strip()
    if re.fullmatch(rb"[0-9a-fA-F]+", text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode())
    if re.fullmatch(rb"[A-Za-z0-9+/=\s]+", text):
        try:
            return base64.b64decode(b"".join(text.split()), validate=True)
        except binascii.Error:
            pass
    return data
