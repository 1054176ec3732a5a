"""The appliance's trusted-key store: public keys that may vouch for bundles.

Keys live in SQLite (`trusted_keys`, see `bundles.schema`), one row per key,
identified by `bundles.keys.key_id` (sha256 of the DER SubjectPublicKeyInfo,
the id a bundle's embedded signature names). Several keys may be trusted at
once so an organisation can rotate its signing key. Only public keys are
stored: a private key handed to `add` is refused, because a signing key has
no business on a site appliance. Keys the format does not accept (RSA under
2048 bits, curves other than P-256/P-384, DSA, ...) are refused with the
reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bundles import keys
from registry.db import migrate, open_database, write_transaction
from registry.paths import DataPaths


class TrustError(ValueError):
    """A key could not be added or removed; the message says why."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the appliance accepts bundle signatures from."""

    id: str
    key_type: str
    description: str
    public_pem: str
    added_at: float

    def public_key(self) -> keys.PublicKey:
        return keys.load_public(self.public_pem.encode())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.key_type, "description": self.description,
                "addedAt": self.added_at, "publicKey": self.public_pem}


def key_type(key: keys.PublicKey) -> str:
    """A short name of a key's kind and strength, e.g. ``rsa-3072`` or ``ecdsa-p256``."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(key.curve.name, key.curve.name)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(key).__name__


class TrustStore:
    """Trusted public keys of one data directory."""

    def __init__(self, paths: DataPaths) -> None:
        import bundles.schema  # noqa: F401  (registers the tables)

        self.paths = paths
        migrate(paths)  # idempotent; covers a database opened before bundles.schema was imported

    @property
    def db(self) -> Any:
        return open_database(self.paths)

    def add(self, pem: bytes, description: str = "") -> TrustedKey:
        """Trust a PEM public key; raises TrustError (private key, weak or unusable key, already trusted)."""
        if b"PRIVATE KEY" in pem:
            raise TrustError("this is a private key; the appliance stores only public keys. "
                             "Add its public half (openssl pkey -in key.pem -pubout -out pub.pem)")
        try:
            public = keys.load_public(pem)
        except keys.SignatureError as exc:
            raise TrustError(f"key refused: {exc}") from None
        kid = keys.key_id(public)
        existing = self.get(kid)
        if existing is not None:
            raise TrustError(f"key {kid} is already trusted"
                             + (f" ({existing.description})" if existing.description else ""))
        entry = TrustedKey(kid, key_type(public), description, keys.public_pem(public).decode(), time.time())
        with write_transaction(self.db) as db:
            db.execute("INSERT INTO trusted_keys (id, key_type, description, public_pem, added_at) "
                       "VALUES (?, ?, ?, ?, ?)",
                       [entry.id, entry.key_type, entry.description, entry.public_pem, entry.added_at])
        return entry

    def get(self, kid: str) -> TrustedKey | None:
        row = self.db.execute("SELECT id, key_type, description, public_pem, added_at FROM trusted_keys "
                              "WHERE id = ?", [kid]).fetchone()
        return TrustedKey(row[0], row[1], row[2] or "", row[3], row[4]) if row else None

    def list(self) -> list[TrustedKey]:
        rows = self.db.execute("SELECT id, key_type, description, public_pem, added_at FROM trusted_keys "
                               "ORDER BY added_at, id").fetchall()
        return [TrustedKey(r[0], r[1], r[2] or "", r[3], r[4]) for r in rows]

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one trusted key whose id starts with `prefix` (``sha256:`` optional)."""
        wanted = prefix if prefix.startswith("sha256:") else f"sha256:{prefix}"
        matches = [k.id for k in self.list() if k.id.startswith(wanted)]
        if not matches:
            raise TrustError(f"no trusted key has id {prefix}")
        if len(matches) > 1:
            raise TrustError(f"key id {prefix} is ambiguous: it starts {len(matches)} trusted keys' ids")
        return matches[0]

    def remove(self, kid: str) -> TrustedKey:
        """Stop trusting a key (id or unique id prefix); raises TrustError if none matches."""
        full = self.resolve_id(kid)
        entry = self.get(full)
        with write_transaction(self.db) as db:
            db.execute("DELETE FROM trusted_keys WHERE id = ?", [full])
        assert entry is not None
        return entry
