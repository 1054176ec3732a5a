"""Registry bearer tokens: the signing key, and JWTs carrying granted access.

The token service (`registry.token_api`) issues, and the /v2/ API verifies,
ES256-signed JWTs in the shape Harbor's and distribution's token auth use::

    {"iss": "harbor-token-issuer", "sub": "<user or robot$...>", "aud": "harbor-registry",
     "iat": ..., "nbf": ..., "exp": ..., "jti": "...",
     "access": [{"type": "repository", "name": "p/r", "actions": ["pull", "push"]}]}

plus one private claim naming the account the token was issued to, by its
row id and a keyed fingerprint of its credential as it was at issue
(``"cargohold": {"kind": "robot", "id": 17, "cred": "..."}``; `Holder`).
`registry.token_api` compares it with the account as it stands on every
request, so a refreshed secret, a changed password or a deleted account (even
one replaced by a new account of the same name) ends the token at once.

The P-256 key is generated on first start under ``DataPaths.keys`` (0600) and
shared by every worker through the file. Encoding and verifying are PyJWT's,
with only ES256 accepted (no ``alg`` negotiation, no ``none``). ECDSA
signatures are malleable: if ``(r, s)`` verifies, so does ``(r, n - s)``, a
second token string with the same claims. PyJWT (like OpenSSL underneath)
accepts both, so issued signatures are normalised to the low ``s`` and a high
``s`` is refused before PyJWT sees the token: every token has exactly one
valid spelling, which is what the verified-token cache and any list of
tokens keyed by their text rely on.

Clients send the same token on every request for its whole life, and the
signature check was the largest cost of a token-authenticated manifest GET,
so each signer remembers the tokens it has verified (`VerifiedTokens`:
bounded, each entry gone once its token expires). Only the cryptographic
verdict is remembered, which cannot change for a given token string;
whether its subject may still act (revocation) is decided on every request
by `registry.token_api.request_principal`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.paths import DataPaths

ISSUER = "harbor-token-issuer"
SERVICE = "harbor-registry"
KEY_FILE = "token-signing-key.pem"
BINDING_KEY_FILE = "token-binding.key"
HOLDER_CLAIM = "cargohold"
# The order of P-256's base point: a signature's s above half of it is the malleated twin of a low one.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ACTIONS = ("pull", "push", "delete")
_SCOPE = re.compile(r"^(repository|registry)(?:\([a-z0-9]+\))?:([^:]+):([a-z*,]*)$")


class TokenError(Exception):
    """A token that is malformed, badly signed, expired or not for this service."""


@dataclass(frozen=True)
class Scope:
    """One requested or granted access: ``repository:<name>:pull,push``, ``registry:catalog:*``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse one scope string; raises ValueError naming it when malformed."""
        m = _SCOPE.match(text.strip())
        if not m:
            raise ValueError(f"invalid scope {text!r}: expected repository:<name>:<actions>")
        actions = tuple(a for a in m.group(3).split(",") if a)
        return cls(m.group(1), m.group(2), actions)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scopes(values: list[str]) -> list[Scope]:
    """Scopes from ``scope`` query values; each value may hold several, space-separated."""
    return [Scope.parse(part) for value in values for part in value.split(" ") if part]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Holder:
    """The account a token was issued to: ``user`` or ``robot``, its row id, and its credential's fingerprint."""

    kind: str
    id: int
    credential: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "cred": self.credential}

    @classmethod
    def from_json(cls, value: Any) -> Holder | None:
        """The holder from a verified token's claim; None when absent or not in this shape."""
        if not isinstance(value, dict):
            return None
        kind, row_id, credential = value.get("kind"), value.get("id"), value.get("cred")
        if kind not in ("user", "robot") or not isinstance(row_id, int) or isinstance(row_id, bool) \
                or not isinstance(credential, str):
            return None
        return cls(kind, row_id, credential)


@dataclass(frozen=True)
class Claims:
    """What a verified token says; `holder` is None for a token issued to an anonymous caller."""

    subject: str
    access: tuple[Scope, ...]
    expires_at: float
    holder: Holder | None = None


class VerifiedTokens:
    """Tokens whose signature and claims checked out, with their claims, until each expires.

    Bounded to `max_entries`: past that the oldest entries go first. An
    expired entry is never answered; it leaves on lookup, or in the sweep from
    the oldest end that every insert makes (tokens of one signer share a
    lifetime and are mostly first seen soon after issue, so that end is
    roughly the earliest to expire; what the sweep misses, the bound takes).
    Thread-safe: a gthread worker's threads share it.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        # token -> (claims, not before); a dict keeps insertion order, which the sweeps rely on.
        self._entries: dict[str, tuple[Claims, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Claims | None:
        """The claims of `token` if it was verified and is valid at `now`; None otherwise (verify it then)."""
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            claims, not_before = entry
            if now >= claims.expires_at:
                del self._entries[token]
                return None
            # Not valid yet (a clock step back): leave it to the full check, which says why.
            return claims if now >= not_before else None

    def put(self, token: str, claims: Claims, not_before: float, now: float) -> None:
        """Remember a token that was just verified at `now`."""
        with self._lock:
            self._entries.pop(token, None)
            while self._entries:
                oldest = next(iter(self._entries))
                if now < self._entries[oldest][0].expires_at and len(self._entries) < self.max_entries:
                    break
                del self._entries[oldest]
            self._entries[token] = (claims, not_before)


class TokenSigner:
    """Issues and verifies tokens with the appliance's signing key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, lifetime: int = 1800, cache_size: int = 4096,
                 binding_key: bytes | None = None) -> None:
        self._key = key
        self._public = key.public_key()
        self._binding_key = binding_key if binding_key is not None else secrets.token_bytes(32)
        self.lifetime = lifetime
        self.verified = VerifiedTokens(cache_size)
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        # A stable key id like distribution's libtrust fingerprint: lets clients tell keys apart.
        digest = hashes.Hash(hashes.SHA256())
        digest.update(public)
        self.kid = _b64(digest.finalize()[:15])

    @classmethod
    def load_or_create(cls, paths: DataPaths, lifetime: int = 1800) -> TokenSigner:
        """The key under ``keys/``, generated (0600) on first start; idempotent across workers."""
        paths.ensure()
        path = paths.keys / KEY_FILE

        def new_pem() -> bytes:
            key = ec.generate_private_key(ec.SECP256R1())
            return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

        if paths.database_url:
            # Replicas sharing the metadata sign and verify with one key (shared_secret).
            pem = shared_secret(paths, KEY_FILE, lambda: path.read_bytes() if path.exists() else new_pem())
        else:
            if not path.exists():
                _write_new(path, new_pem())
            pem = path.read_bytes()
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an EC private key")
        # Shared by every worker, like the signing key: a token fetched from one is checked by another.
        return cls(loaded, lifetime, binding_key=load_or_create_secret(paths, BINDING_KEY_FILE))

    def credential(self, kind: str, row_id: int, stored_hash: str) -> str:
        """The fingerprint of an account's current credential that its tokens carry (never the hash itself).

        Any change of the stored hash (a new password or secret: scrypt salts
        afresh every time) gives another fingerprint, and so does another
        account that happens to get the same row id.
        """
        mac = hmac.new(self._binding_key, f"{kind}\0{row_id}\0{stored_hash}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def issue(self, subject: str, access: list[Scope], now: float | None = None,
              holder: Holder | None = None) -> tuple[str, int, float]:
        """A signed token for `subject` (held by `holder`) granting `access`: (token, expires_in, issued_at)."""
        now = time.time() if now is None else now
        claims: dict[str, Any] = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": int(now),
                                  "nbf": int(now) - 5, "exp": int(now) + self.lifetime,
                                  "jti": secrets.token_urlsafe(16), "access": [s.to_json() for s in access]}
        if holder is not None:
            claims[HOLDER_CLAIM] = holder.to_json()
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})
        return _low_s(token), self.lifetime, now

    def verify(self, token: str, now: float | None = None) -> Claims:
        """The claims of a valid token; raises TokenError saying what is wrong.

        A token verified before is answered from `verified` until it expires;
        this says nothing about whether its subject may still act.
        """
        now = time.time() if now is None else now
        cached = self.verified.get(token, now)
        if cached is not None:
            return cached
        claims, not_before = self._verify(token, now)
        self.verified.put(token, claims, not_before, now)
        return claims

    def _verify(self, token: str, now: float) -> tuple[Claims, float]:
        """Signature and claims check of `token` at `now`: (claims, not before); raises TokenError."""
        if _signature_s(token) > _P256_ORDER // 2:
            # The high-s twin of a valid signature: never issued here (see the module docstring).
            raise TokenError("token signature is invalid (not in canonical low-s form)")
        try:
            # Time claims are checked below against `now`, which the verified-token cache needs anyway.
            claims = jwt.decode(token, self._public, algorithms=["ES256"], audience=SERVICE, issuer=ISSUER,
                                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                         "require": ["exp", "iss", "aud"]})
        except jwt.InvalidAlgorithmError:
            raise TokenError("token is not signed with ES256") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token signature is invalid") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise TokenError("token was issued for another service") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token lacks its {exc.claim!r} claim") from None
        except jwt.DecodeError:
            raise TokenError("malformed token") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float) or isinstance(exp, bool) \
                or isinstance(nbf, bool):
            raise TokenError("token lacks a valid expiry")
        if now >= exp:
            raise TokenError("token has expired")
        if now < nbf:
            raise TokenError("token is not valid yet")
        access = []
        for entry in claims.get("access") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("type"), str):
                actions = tuple(a for a in entry.get("actions") or [] if isinstance(a, str))
                access.append(Scope(entry["type"], entry["name"], actions))
        holder = Holder.from_json(claims.get(HOLDER_CLAIM))
        return Claims(str(claims.get("sub") or ""), tuple(access), float(exp), holder), float(nbf)


def _signature_s(token: str) -> int:
    """The s half of an ES256 token's signature; 0 when it has none of the right size (PyJWT then refuses it)."""
    signature = token.rpartition(".")[2]
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (ValueError, binascii.Error):
        return 0
    return int.from_bytes(raw[32:], "big") if len(raw) == 64 else 0


def _low_s(token: str) -> str:
    """`token` with its ES256 signature's s replaced by n - s when above n/2: the same proof, one spelling."""
    signing_input, _, signature = token.rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    s = int.from_bytes(raw[32:], "big")
    if s <= _P256_ORDER // 2:
        return token
    return f"{signing_input}.{_b64(raw[:32] + (_P256_ORDER - s).to_bytes(32, 'big'))}"


def load_or_create_secret(paths: DataPaths, name: str, size: int = 32) -> bytes:
    """Random bytes kept in ``keys/<name>`` (0600), generated on first use; the same for every worker.

    With PostgreSQL metadata, in the database instead (`shared_secret`): the
    same for every replica sharing it.
    """
    paths.ensure()
    path = paths.keys / name
    if paths.database_url:
        return shared_secret(paths, name, lambda: path.read_bytes() if path.exists() else secrets.token_bytes(size))
    if not path.exists():
        _write_new(path, secrets.token_bytes(size))
    return path.read_bytes()


def shared_secret(paths: DataPaths, name: str, make: Callable[[], bytes]) -> bytes:
    """The secret `name` of the shared metadata (table ``shared_secrets``), made by `make` on first use.

    Why in the database: replicas behind one load balancer (PostgreSQL
    metadata, docs/operations.md "Scaling out") must sign, verify and bind
    with the same keys, and the database is the one store they all reach
    with its own access control; a file per machine would give each replica
    its own key and every token or session cookie would work on one replica
    only. The first replica to start makes it, under the write lock, so two
    starting together agree; an appliance moved from files to PostgreSQL
    brings its existing key along (`make` reads the file), so its tokens
    stay valid.
    """
    from registry.db import open_database, write_transaction  # registry.db imports nothing of this module

    db = open_database(paths)
    select = "SELECT value FROM shared_secrets WHERE name = ?"
    row = db.execute(select, [name]).fetchone()
    if row is None:
        with write_transaction(db):
            row = db.execute(select, [name]).fetchone()
            if row is None:
                value = make()
                db.execute("INSERT INTO shared_secrets (name, value, created_at) VALUES (?, ?, ?)",
                           [name, value, time.time()])
                return value
    return bytes(row[0])


def _write_new(path: Path, data: bytes) -> None:
    """Write a secret file 0600; when two workers race, the first one's file wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another worker got there first: keep theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
