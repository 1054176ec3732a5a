"""Content trust for images: trusted image-signing keys, the per-project cosign policy, and the pull check.

Harbor's project metadata ``enable_content_trust_cosign`` ("true"/"false")
turns the policy on for one project. While it is on, a manifest GET in
that project answers ``412 PROJECT_POLICY_VIOLATION`` unless the manifest is

- signed: a cosign signature (``sha256-<hex>.sig`` tag, or an OCI 1.1
  referrer with the cosign signature artifactType) in the same repository,
  over exactly this digest, verifies with a trusted image-signing key;
- a platform manifest of an index that is signed (clients pull the index,
  then the manifest for their platform by digest); or
- itself an accessory: a manifest with a ``subject`` (signatures, SBOMs,
  attestations pushed as referrers) or one a cosign tag points at, so that
  verifiers can fetch the signatures they need.

HEAD is not refused (as in Harbor): it gives a digest and no content, and a
signer needs that digest. Blob downloads are not checked either: a blob is
reached through a manifest, and the manifest is what the policy guards.
Pushes are never refused for lack of a signature (an image must be pushed
before it can be signed). The bundle importer applies the same check before
it publishes anything (`bundles.image_policy`).

Image-signing keys are a list of their own (``image_signing_keys``), apart
from the keys that vouch for bundles (``trusted_keys``): whoever may sign a
bundle is not thereby trusted to vouch for what runs in a project, and the
registry package must be able to read its keys without the bundles package.

Verification results are cached per (repository, digest, signature manifest
digests, trusted key ids): a new signature, a removed signature or a change
of keys makes a new cache key, so nothing stale is ever used.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from registry import cosign
from registry.access import AccessError, project_of
from registry.db import write_transaction
from registry.digest import Descriptor, Digest
from registry.model import ManifestRecord, Registry

CONTENT_TRUST_COSIGN = "enable_content_trust_cosign"
METADATA_KEYS = (CONTENT_TRUST_COSIGN,)
POLICY_MESSAGE = "The image is not signed by cosign"
_CACHE_SIZE = 4096
_cache: OrderedDict[tuple[Any, ...], cosign.Verdict] = OrderedDict()
_key_cache: dict[tuple[str, ...], list[cosign.PublicKey]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class SigningKey:
    """A public key whose cosign signatures the content-trust policy accepts."""

    id: str
    key_type: str
    description: str
    public_pem: str
    added_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.key_type, "description": self.description,
                "addedAt": self.added_at, "publicKey": self.public_pem}


def _key_type(key: cosign.PublicKey) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}[key.curve.name]
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return "ed25519"


def parse_flag(name: str, value: Any) -> str:
    """A metadata value as Harbor stores it ("true"/"false"); AccessError BAD_REQUEST otherwise."""
    if value in ("true", True):
        return "true"
    if value in ("false", False):
        return "false"
    raise AccessError("BAD_REQUEST", f'metadata.{name} must be "true" or "false", not {value!r}')


class ImageTrust:
    """Image-signing keys and the cosign policy of one registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # -- keys ----------------------------------------------------------------------------------------------

    def add_key(self, pem: bytes, description: str = "") -> SigningKey:
        """Trust a PEM public key for image signatures; raises cosign.KeyRefused (private, weak, duplicate)."""
        public = cosign.load_public_key(pem)
        from cryptography.hazmat.primitives import serialization

        kid = cosign.key_id(public)
        if self.get_key(kid) is not None:
            raise cosign.KeyRefused(f"image-signing key {kid} is already trusted")
        text = public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        entry = SigningKey(kid, _key_type(public), description, text, time.time())
        with write_transaction(self.registry.db) as db:
            db.execute("INSERT INTO image_signing_keys (id, key_type, description, public_pem, added_at) "
                       "VALUES (?, ?, ?, ?, ?)", [entry.id, entry.key_type, entry.description, entry.public_pem,
                                                  entry.added_at])
        return entry

    def get_key(self, kid: str) -> SigningKey | None:
        row = self.registry.db.execute("SELECT id, key_type, description, public_pem, added_at "
                                       "FROM image_signing_keys WHERE id = ?", [kid]).fetchone()
        return SigningKey(row[0], row[1], row[2] or "", row[3], row[4]) if row else None

    def list_keys(self) -> list[SigningKey]:
        rows = self.registry.db.execute("SELECT id, key_type, description, public_pem, added_at "
                                        "FROM image_signing_keys ORDER BY added_at, id").fetchall()
        return [SigningKey(r[0], r[1], r[2] or "", r[3], r[4]) for r in rows]

    def remove_key(self, prefix: str) -> SigningKey:
        """Stop trusting a key (id or unique prefix); raises cosign.KeyRefused if none or several match."""
        wanted = prefix if prefix.startswith("sha256:") else f"sha256:{prefix}"
        matches = [k for k in self.list_keys() if k.id.startswith(wanted)]
        if len(matches) != 1:
            raise cosign.KeyRefused(f"no image-signing key has id {prefix}" if not matches
                                   else f"key id {prefix} is ambiguous: it starts {len(matches)} keys' ids")
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM image_signing_keys WHERE id = ?", [matches[0].id])
        return matches[0]

    def public_keys(self) -> tuple[tuple[str, ...], list[cosign.PublicKey]]:
        """(ids, loaded keys) of the trusted image-signing keys; loading is cached by the id list."""
        rows = self.registry.db.execute("SELECT id, public_pem FROM image_signing_keys ORDER BY id").fetchall()
        ids = tuple(r[0] for r in rows)
        with _lock:
            loaded = _key_cache.get(ids)
        if loaded is None:
            loaded = [cosign.load_public_key(r[1].encode()) for r in rows]
            with _lock:
                _key_cache.clear()
                _key_cache[ids] = loaded
        return ids, loaded

    # -- policy --------------------------------------------------------------------------------------------

    def metadata(self, project_id: int) -> dict[str, str]:
        rows = self.registry.db.execute("SELECT name, value FROM project_metadata WHERE project_id = ?",
                                        [project_id]).fetchall()
        return {name: value for name, value in rows}

    def set_metadata(self, project_id: int, values: dict[str, str]) -> None:
        with write_transaction(self.registry.db) as db:
            for name, value in values.items():
                db.execute("INSERT INTO project_metadata (project_id, name, value) VALUES (?, ?, ?) "
                           "ON CONFLICT (project_id, name) DO UPDATE SET value = excluded.value",
                           [project_id, name, value])

    def protected(self, repository: str) -> bool:
        """True when the project of `repository` has enable_content_trust_cosign = "true"."""
        row = self.registry.db.execute(
            "SELECT m.value FROM project_metadata m JOIN projects p ON p.id = m.project_id "
            "WHERE p.name = ? AND m.name = ?", [project_of(repository), CONTENT_TRUST_COSIGN]).fetchone()
        return bool(row) and row[0] == "true"

    # -- checks --------------------------------------------------------------------------------------------

    def _repo_id(self, repository: str) -> int | None:
        return self.registry.repository_id(repository)

    def verdict(self, repository: str, digest: Digest) -> cosign.Verdict:
        """Whether `digest` in `repository` carries a cosign signature by a trusted key (cached)."""
        repo_id = self._repo_id(repository)
        if repo_id is None:
            return cosign.Verdict(False, None, f"repository {repository} does not exist")
        db = self.registry.db
        tagged = [(t, Digest.parse(d)) for t, d in db.execute(
            "SELECT name, digest FROM tags WHERE repository_id = ? AND name = ?",
            [repo_id, cosign.cosign_tag(digest)]).fetchall()]
        referrers = self.registry.referrers(repository, digest, cosign.SIGNATURE_ARTIFACT_TYPE)
        candidates = cosign.signature_manifests(tagged, referrers, digest)
        ids, keys = self.public_keys()
        cache_key = (repository, str(digest), tuple(map(str, candidates)), ids)
        with _lock:
            cached = _cache.get(cache_key)
            if cached is not None:
                _cache.move_to_end(cache_key)
                return cached
        store = self.registry.store

        def read(desc: Descriptor) -> bytes | None:
            if store.stat(desc.digest) is None:
                return None
            with store.open(desc.digest) as f:
                return f.read(cosign.MAX_PAYLOAD_BYTES + 1)

        bodies = []
        for candidate in candidates:
            if store.stat(candidate) is not None:
                with store.open(candidate) as f:
                    bodies.append(f.read(self.registry.max_manifest_bytes + 1))
        result = cosign.verify(digest, bodies, read, keys)
        with _lock:
            _cache[cache_key] = result
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return result

    def pull_refusal(self, record: ManifestRecord, reference: str) -> str | None:
        """None if `record` may be pulled; otherwise the message of the 412 refusal."""
        repository = record.repository
        if not self.protected(repository):
            return None
        if record.subject is not None or cosign.parse_cosign_tag(reference) is not None:
            return None  # accessories (signatures, SBOMs) stay readable so their subjects can be verified
        repo_id = self._repo_id(repository)
        db = self.registry.db
        for (tag,) in db.execute("SELECT name FROM tags WHERE repository_id = ? AND digest = ?",
                                 [repo_id, str(record.digest)]).fetchall():
            if cosign.parse_cosign_tag(tag) is not None:
                return None
        verdict = self.verdict(repository, record.digest)
        if verdict.signed:
            return None
        parents = [Digest.parse(p) for (p,) in db.execute(
            "SELECT manifest FROM manifest_refs WHERE repository_id = ? AND child = ? AND kind = 'manifest'",
            [repo_id, str(record.digest)]).fetchall()]
        if any(self.verdict(repository, parent).signed for parent in parents):
            return None
        return (f"{POLICY_MESSAGE}: {repository}@{record.digest} is refused because project "
                f"{project_of(repository)} enables {CONTENT_TRUST_COSIGN} ({verdict.reason})")
