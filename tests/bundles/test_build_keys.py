"""`cargohold keys generate`: every key type, file modes, key id, passphrases."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from bundles import keys
from tests.bundles.buildutil import cargohold


@pytest.mark.parametrize("kind", keys.KEY_TYPES)
def test_generate_writes_a_private_and_public_pem_and_prints_the_key_id(tmp_path: Path, kind: str) -> None:
    proc = cargohold("keys", "generate", tmp_path / "signing", "--type", kind)
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = keys.load_private(private.read_bytes())
    pub = keys.load_public(public.read_bytes())
    assert proc.stdout.strip() == keys.key_id(key) == keys.key_id(pub)
    assert keys.default_algorithm(key).startswith({"rsa": "rsa", "ecdsa-p256": "ecdsa-p256",
                                                   "ecdsa-p384": "ecdsa-p384", "ed25519": "ed25519"}[kind])
    if kind == "rsa":
        assert key.key_size == 3072  # type: ignore[union-attr]
    # openssl reads both files as they are.
    subprocess.run(["openssl", "pkey", "-in", private, "-noout"], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-pubin", "-in", public, "-noout"], check=True, capture_output=True)
    # An existing key is never overwritten by accident.
    again = cargohold("keys", "generate", tmp_path / "signing", "--type", kind, check=False)
    assert again.returncode != 0 and "exists" in again.stderr
    assert keys.key_id(keys.load_private(private.read_bytes())) == keys.key_id(key)


def test_generate_rsa_bits_and_refusals(tmp_path: Path) -> None:
    cargohold("keys", "generate", tmp_path / "k", "--bits", "2048")
    assert keys.load_private((tmp_path / "k.pem").read_bytes()).key_size == 2048  # type: ignore[union-attr]
    proc = cargohold("keys", "generate", tmp_path / "weak", "--bits", "1024", check=False)
    assert proc.returncode != 0 and "at least 2048" in proc.stderr and not (tmp_path / "weak.pem").exists()
    proc = cargohold("keys", "generate", tmp_path / "x", "--type", "dsa", check=False)
    assert proc.returncode != 0 and "dsa" in proc.stderr


def test_generate_with_a_passphrase_and_sign_with_it(tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    cargohold("keys", "generate", tmp_path / "k", "--type", "ecdsa-p256", "--passphrase-file", secret)
    pem = (tmp_path / "k.pem").read_bytes()
    assert b"ENCRYPTED" in pem
    with pytest.raises(keys.SignatureError):
        keys.load_private(pem)
    keys.load_private(pem, b"correct horse battery staple")
    assert b"correct horse" not in pem

    from tests.images import OciLayout

    lay = OciLayout(tmp_path / "oci")
    lay.add_image([1_000], seed=4, ref="docker.io/acme/a:1")
    out = tmp_path / "b.tar.zst"
    proc = cargohold("bundle", "build", "--name", "n", "--version", "1", "--layout", lay.root, "--sign-key",
                     tmp_path / "k.pem", "-o", out, check=False)
    assert proc.returncode != 0 and "encrypted" in proc.stderr and not out.exists()
    cargohold("bundle", "build", "--name", "n", "--version", "1", "--layout", lay.root, "--sign-key",
              tmp_path / "k.pem", "-o", out, env={"CARGOHOLD_KEY_PASSPHRASE": "correct horse battery staple"})
    assert out.exists()
    proc = cargohold("bundle", "build", "--name", "n", "--version", "1", "--layout", lay.root, "--sign-key",
                     tmp_path / "k.pem", "-o", tmp_path / "c.tar.zst", env={"CARGOHOLD_KEY_PASSPHRASE": "wrong"},
                     check=False)
    assert proc.returncode != 0 and "unusable" in proc.stderr
