"""Signed cluster definitions: the envelope, signing, and the verified import of a standalone definition.

A definition uploaded on its own (CLI, HTTP, UI) is stored only when a key
of the appliance's trust store (`bundles.trust`, the keys that vouch for
bundles) signs it, unless the policy allows unsigned definitions
(``allow_unsigned_definitions`` / ``--allow-unsigned``). Two forms, as for
bundles (docs/cluster-definition-format.md, "Signatures"):

- detached: a ``.sig`` file over the whole ``.tgz``, exactly as
  `openssl dgst -sha256 -sign key.pem -out d.tgz.sig d.tgz` makes it (RSA or
  ECDSA; checked against the SHA-256 computed while the archive streams);
- embedded: a signed envelope inside the ``.tgz``: ``cargohold-definition.json``
  lists every other member with its size and sha256, and
  ``cargohold-definition.sig`` is a signature over that JSON's exact bytes
  (the bundle's embedded-signature format, any supported key type).

A signature that is present must hold, whatever the policy: the policy only
lets a definition with no signature at all through. Refusals carry a stable
code (`UNSIGNED`, `KEY_UNTRUSTED`, `SIGNATURE_INVALID`) and nothing is
stored. Definitions inside a bundle are vouched for by the bundle's
signature and never come here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bundles import keys
from bundles.clusterdef import (
    ENVELOPE_MANIFEST,
    ENVELOPE_MEMBERS,
    ENVELOPE_SIGNATURE,
    ClusterDefinition,
    ClusterDefinitions,
    DefinitionError,
    parse_members,
    read_members,
)
from bundles.trust import TrustStore

ENVELOPE_KIND = "SignedClusterDefinition"
ENVELOPE_API_VERSION = "cargohold.io/v1"

MAX_SIGNATURE_BYTES = 64 << 10  # a detached signature file; keys.read_signature_file refuses more

UNSIGNED = "DEFINITION_UNSIGNED"
KEY_UNTRUSTED = "DEFINITION_KEY_UNTRUSTED"
SIGNATURE_INVALID = "DEFINITION_SIGNATURE_INVALID"


class SignatureRefused(DefinitionError):
    """The definition's signature (or its absence) is not acceptable; `code` is one of the codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SignaturePolicy:
    """Whom to trust, and whether a definition nobody signed may be stored."""

    trust: TrustStore
    allow_unsigned: bool = False


# -- signing (the connected side) ----------------------------------------------------------------


def envelope_manifest(members: dict[str, bytes]) -> bytes:
    """The envelope's JSON listing every member but the envelope's own (sorted; the exact bytes are signed)."""
    listed = [{"path": path, "size": len(data), "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
              for path, data in sorted(members.items()) if path not in ENVELOPE_MEMBERS]
    return json.dumps({"apiVersion": ENVELOPE_API_VERSION, "kind": ENVELOPE_KIND, "members": listed},
                      indent=1, sort_keys=True).encode()


def signed_archive(archive: IO[bytes] | Path, key: keys.PrivateKey) -> bytes:
    """A copy of a definition archive with a signed envelope (an earlier envelope is replaced).

    The archive is validated first (raises DefinitionError), so nothing
    unusable gets signed. Members are written in sorted order with fixed
    metadata, so signing the same content twice gives the same archive.
    """
    members, digest = _read(archive)
    parse_members(members, digest)
    content = {k: v for k, v in members.items() if k not in ENVELOPE_MEMBERS}
    manifest = envelope_manifest(content)
    signature = json.dumps(keys.sign(key, manifest).to_json(), indent=1).encode()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in [(ENVELOPE_MANIFEST, manifest), (ENVELOPE_SIGNATURE, signature), *sorted(content.items())]:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def detached_signature(archive: Path, key: keys.PrivateKey) -> bytes:
    """A detached signature over the whole archive file (raw bytes, as openssl writes them)."""
    sha = hashlib.sha256()
    with archive.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return keys.sign_detached(key, sha.digest())


# -- verifying (the site) ------------------------------------------------------------------------


def import_archive(store: ClusterDefinitions, archive: IO[bytes] | Path | str, source: str,
                   policy: SignaturePolicy, signature: bytes | None = None) -> ClusterDefinition:
    """Verify, parse and store a standalone definition archive; returns it as stored.

    `signature` is a detached signature file's content (raw, base64 or
    hex). Raises SignatureRefused (unsigned, untrusted key, bad signature)
    or DefinitionError (an invalid archive); either way nothing is stored.
    """
    members, digest = _read(archive)
    signer = verify(members, digest, signature, policy)
    definition = parse_members(members, digest, source)
    return store.put(ClusterDefinition(**{**definition.__dict__, "signed_by": signer or ""}))


def verify(members: dict[str, bytes], sha256_hex: str, signature: bytes | None, policy: SignaturePolicy) -> str | None:
    """The id of the trusted key that signs the archive, or None when unsigned and the policy allows that.

    Every signature present (embedded and detached) must hold. Raises SignatureRefused.
    """
    signers = []
    if any(m in members for m in ENVELOPE_MEMBERS):
        signers.append(_check_envelope(members, policy.trust))
    if signature is not None:
        signers.append(_check_detached(signature, bytes.fromhex(sha256_hex), policy.trust))
    if signers:
        return signers[0]
    if policy.allow_unsigned:
        return None
    raise SignatureRefused(UNSIGNED, "the cluster definition is not signed (no detached signature and no "
                                     f"{ENVELOPE_SIGNATURE} in the archive), and unsigned definitions are refused "
                                     "by policy (allow_unsigned_definitions); sign it with `cargohold clusterdef "
                                     "sign` using a key this appliance trusts")


def _check_envelope(members: dict[str, bytes], trust: TrustStore) -> str:
    if ENVELOPE_MANIFEST not in members or ENVELOPE_SIGNATURE not in members:
        have, lacks = ((ENVELOPE_MANIFEST, ENVELOPE_SIGNATURE) if ENVELOPE_MANIFEST in members
                       else (ENVELOPE_SIGNATURE, ENVELOPE_MANIFEST))
        raise SignatureRefused(SIGNATURE_INVALID, f"the archive has {have} but no {lacks}: its signed envelope "
                                                  "is incomplete")
    manifest_bytes = members[ENVELOPE_MANIFEST]
    try:
        sig = keys.Signature.from_json(json.loads(members[ENVELOPE_SIGNATURE]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureRefused(SIGNATURE_INVALID, f"{ENVELOPE_SIGNATURE} is not a valid signature: {exc}") from None
    trusted = trust.get(sig.key_id)
    if trusted is None:
        raise SignatureRefused(KEY_UNTRUSTED, f"the cluster definition is signed by key {sig.key_id}, which this "
                                              "appliance does not trust (add it with `cargohold keys add`)")
    try:
        keys.verify(trusted.public_key(), sig, manifest_bytes)
    except keys.SignatureError as exc:
        raise SignatureRefused(SIGNATURE_INVALID, f"the cluster definition's signature is invalid: {exc}") from None
    # The signature holds for the list; now every member must be exactly what the list says, and nothing more.
    listed = _listed(manifest_bytes)
    for path, data in members.items():
        if path in ENVELOPE_MEMBERS:
            continue
        entry = listed.pop(path, None)
        if entry is None:
            raise SignatureRefused(SIGNATURE_INVALID, f"archive member {path!r} is not listed in "
                                                      f"{ENVELOPE_MANIFEST}: it was added after signing")
        if entry != (len(data), "sha256:" + hashlib.sha256(data).hexdigest()):
            raise SignatureRefused(SIGNATURE_INVALID, f"archive member {path!r} differs from what "
                                                      f"{ENVELOPE_MANIFEST} lists: it was changed after signing")
    if listed:
        raise SignatureRefused(SIGNATURE_INVALID, f"archive member {sorted(listed)[0]!r} listed in "
                                                  f"{ENVELOPE_MANIFEST} is missing: it was removed after signing")
    return trusted.id


def _listed(manifest_bytes: bytes) -> dict[str, tuple[int, str]]:
    def bad(why: str) -> SignatureRefused:
        return SignatureRefused(SIGNATURE_INVALID, f"{ENVELOPE_MANIFEST}: {why}")

    try:
        doc: Any = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError):
        raise bad("not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != ENVELOPE_KIND or not isinstance(doc.get("members"), list):
        raise bad(f"expected an object with kind {ENVELOPE_KIND!r} and a 'members' list")
    out: dict[str, tuple[int, str]] = {}
    for i, m in enumerate(doc["members"]):
        if (not isinstance(m, dict) or not isinstance(m.get("path"), str) or not isinstance(m.get("digest"), str)
                or not isinstance(m.get("size"), int) or isinstance(m.get("size"), bool)):
            raise bad(f"members[{i}] must have a string path and digest and an integer size")
        if m["path"] in out:
            raise bad(f"member {m['path']!r} is listed twice")
        out[m["path"]] = (m["size"], m["digest"])
    return out


def _check_detached(signature: bytes, sha256_digest: bytes, trust: TrustStore) -> str:
    try:
        raw = keys.read_signature_file(signature)
    except keys.SignatureError as exc:
        raise SignatureRefused(SIGNATURE_INVALID, f"detached signature: {exc}") from None
    candidates = [k for k in trust.list() if k.key_type != "ed25519"]
    if not candidates:
        raise SignatureRefused(KEY_UNTRUSTED, "a detached signature was given but this appliance trusts no RSA or "
                                              "ECDSA key to check it with (add one with `cargohold keys add`)")
    for key in candidates:
        try:
            keys.verify_detached(key.public_key(), raw, sha256_digest)
            return key.id
        except keys.SignatureError:
            continue
    # A detached signature does not name its key: a wrong key and an altered file look the same.
    raise SignatureRefused(SIGNATURE_INVALID, f"the detached signature does not verify the cluster definition with "
                                              f"any of the {len(candidates)} trusted RSA/ECDSA key(s): it was made "
                                              "by a key this appliance does not trust, or the file or signature "
                                              "was altered")


def _read(archive: IO[bytes] | Path | str) -> tuple[dict[str, bytes], str]:
    if isinstance(archive, (str, Path)):
        try:
            with Path(archive).open("rb") as f:
                return read_members(f)
        except OSError as exc:
            raise DefinitionError(f"cannot read {archive}: {exc.strerror}") from None
    return read_members(archive)
