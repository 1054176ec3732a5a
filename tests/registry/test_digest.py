"""Unit tests of registry.digest: parsing digests once at the edge, and descriptors."""

from __future__ import annotations

import hashlib

import pytest

from registry.digest import Descriptor, Digest
from registry.errors import RegistryError

HEX = hashlib.sha256(b"cargohold").hexdigest()


def test_parse_sha256_and_sha512() -> None:
    d = Digest.parse(f"sha256:{HEX}")
    assert (d.algorithm, d.encoded, str(d)) == ("sha256", HEX, f"sha256:{HEX}")
    long = hashlib.sha512(b"x").hexdigest()
    assert str(Digest.parse(f"sha512:{long}")) == f"sha512:{long}"


@pytest.mark.parametrize("text", [
    "", "sha256", "sha256:", f":{HEX}", f"sha256:{HEX[:-1]}", f"sha256:{HEX}0", f"sha256:{HEX.upper()}",
    f"sha256:{HEX}\n", f" sha256:{HEX}", f"sha256:{HEX} ", f"SHA256:{HEX}", f"sha256::{HEX}", "sha256:../../etc",
    f"sha512:{HEX}",
])
def test_malformed_digests_are_digest_invalid(text: str) -> None:
    with pytest.raises(RegistryError) as exc:
        Digest.parse(text)
    assert exc.value.code == "DIGEST_INVALID"
    assert exc.value.status == 400
    assert repr(text) in exc.value.message


@pytest.mark.parametrize("text", ["md5:d41d8cd98f00b204e9800998ecf8427e", f"sha384:{HEX}", f"blake3:{HEX}"])
def test_well_formed_unknown_algorithms_are_unsupported(text: str) -> None:
    with pytest.raises(RegistryError) as exc:
        Digest.parse(text)
    assert exc.value.code == "UNSUPPORTED"


def test_of_bytes_and_hasher() -> None:
    assert Digest.of_bytes(b"cargohold") == Digest("sha256", HEX)
    d = Digest.of_bytes(b"x", "sha512")
    assert d.encoded == hashlib.sha512(b"x").hexdigest()
    h = d.hasher()
    h.update(b"x")
    assert h.hexdigest() == d.encoded


def test_digests_are_values() -> None:
    a, b = Digest.parse(f"sha256:{HEX}"), Digest("sha256", HEX)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.encoded = "x"  # type: ignore[misc]


def test_descriptor_json_leaves_out_empty_fields() -> None:
    d = Descriptor("application/x", Digest("sha256", HEX), 9)
    assert d.to_json() == {"mediaType": "application/x", "digest": f"sha256:{HEX}", "size": 9}
    full = Descriptor("application/x", Digest("sha256", HEX), 9, "application/art", {"k": "v"},
                      {"os": "linux", "architecture": "arm64"})
    assert full.to_json() == {"mediaType": "application/x", "digest": f"sha256:{HEX}", "size": 9,
                              "artifactType": "application/art", "annotations": {"k": "v"},
                              "platform": {"os": "linux", "architecture": "arm64"}}
