"""Bundles made by other tooling (plain `tar` + `zstd` + `openssl dgst -sign`) and split bundles (`split -b`).

Made with the real commands, imported with the real CLI into the running
appliance, pulled back with skopeo.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bundles import keys
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.conftest import (
    assert_pulled_identical,
    cli,
    run,
    skopeo_pull,
    snapshot,
    source_digest,
    unique_layout,
)


def plain_bundle(layout_root: Path, out: Path) -> Path:
    """`tar -C layout -cf - . | zstd -o out`, as any script would."""
    tar = subprocess.Popen(["tar", "-C", str(layout_root), "-cf", "-", "."], stdout=subprocess.PIPE)
    subprocess.run(["zstd", "-q", "-3", "-o", str(out)], stdin=tar.stdout, check=True)
    assert tar.wait() == 0
    return out


def openssl_sign(key: keys.PrivateKey, file: Path, tmp: Path) -> Path:
    pem = tmp / "signing.pem"
    pem.write_bytes(keys.private_pem(key))
    sig = file.with_name(file.name + ".sig")
    run("openssl", "dgst", "-sha256", "-sign", str(pem), "-out", str(sig), str(file))
    pub = tmp / "signing.pub"
    pub.write_bytes(keys.public_pem(key))
    run("openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(file))  # as Palette checks
    return sig


def test_plain_tar_zstd_openssl_bundle_imports_with_raw_base64_and_hex_signatures(
        trusted: Appliance, tmp_path: Path, rsa_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout")
    bundle = plain_bundle(layout.root, tmp_path / "plain.tar.zst")
    raw = openssl_sign(rsa_key, bundle, tmp_path)
    b64 = tmp_path / "plain.sig.b64"
    run("openssl", "base64", "-in", str(raw), "-out", str(b64))
    hexed = tmp_path / "plain.sig.hex"
    hexed.write_text(raw.read_bytes().hex() + "\n")

    for sig in (raw, b64, hexed):
        proc = cli("bundle", "import", str(bundle), "--signature", str(sig), "--data-dir", str(trusted.data_dir),
                   "--json")
        report = json.loads(proc.stdout)
        assert report["bundle"]["format"] == "plain-oci-layout"
        assert report["signatures"] == [{"kind": "detached", "keyId": keys.key_id(rsa_key)}]
        assert sorted(i["reference"] for i in report["images"]) == sorted(refs)
    for i, ref in enumerate(refs):
        digest = skopeo_pull(trusted, ref, tmp_path / f"pulled-{i}")
        assert digest == source_digest(layout.root, ref)
        assert_pulled_identical(tmp_path / f"pulled-{i}", layout.root, digest)


def test_plain_bundle_refusals(trusted: Appliance, tmp_path: Path, rsa_key: keys.PrivateKey) -> None:
    layout, _refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = plain_bundle(layout.root, tmp_path / "plain.tar.zst")
    before = snapshot(trusted.data_dir)["tables"]

    proc = cli("bundle", "import", str(bundle), "--data-dir", str(trusted.data_dir), check=False)
    assert proc.returncode == 1 and "no detached signature was given" in proc.stderr

    other = openssl_sign(keys.generate("rsa", 2048), bundle, tmp_path)
    proc = cli("bundle", "import", str(bundle), "--signature", str(other), "--data-dir", str(trusted.data_dir),
               check=False)
    assert proc.returncode == 1 and "detached signature does not verify" in proc.stderr

    good = openssl_sign(rsa_key, bundle, tmp_path)
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    proc = cli("bundle", "import", str(bundle), "--signature", str(good), "--data-dir", str(trusted.data_dir),
               check=False)
    assert proc.returncode == 1 and "bundle refused" in proc.stderr
    assert snapshot(trusted.data_dir)["tables"] == before


def test_plain_unsigned_bundle_accepted_when_policy_allows(tmp_path: Path) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = plain_bundle(layout.root, tmp_path / "plain.tar.zst")
    data = str(tmp_path / "data")
    proc = cli("bundle", "import", str(bundle), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "unsigned bundles are refused by policy" in proc.stderr
    report = json.loads(cli("bundle", "import", str(bundle), "--data-dir", data, "--allow-unsigned", "--json").stdout)
    assert report["unsigned"] is True and [i["reference"] for i in report["images"]] == refs
    proc = cli("bundle", "import", str(bundle), "--data-dir", data, "--json",
               env={"CARGOHOLD_ALLOW_UNSIGNED_BUNDLES": "true"})
    assert json.loads(proc.stdout)["blobs"]["new"] == 0


def test_split_bundle_imports_from_its_parts(trusted: Appliance, tmp_path: Path, ec_key: keys.PrivateKey,
                                             rsa_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout")
    whole = craft.write_bundle(tmp_path / "whole.tar.zst", craft.standard_entries(layout.root, ec_key))
    parts_dir = tmp_path / "stick"
    parts_dir.mkdir()
    run("split", "-b", "150k", "-d", "-a", "3", str(whole), str(parts_dir / "site.tar.zst.part"))
    parts = sorted(parts_dir.iterdir())
    assert len(parts) >= 3 and parts[0].name == "site.tar.zst.part000"
    sig = openssl_sign(rsa_key, whole, tmp_path)  # a detached signature covers the concatenation

    # Named by its first part, with a detached signature as well as the embedded one.
    report = json.loads(cli("bundle", "import", str(parts[0]), "--signature", str(sig), "--data-dir",
                            str(trusted.data_dir), "--json").stdout)
    assert report["parts"] == len(parts)
    assert {s["kind"] for s in report["signatures"]} == {"embedded", "detached"}
    for i, ref in enumerate(refs):
        digest = skopeo_pull(trusted, ref, tmp_path / f"pulled-{i}")
        assert_pulled_identical(tmp_path / f"pulled-{i}", layout.root, digest)
    # Named as the bundle whose parts lie beside it.
    again = json.loads(cli("bundle", "import", str(parts_dir / "site.tar.zst"), "--data-dir", str(trusted.data_dir),
                           "--json").stdout)
    assert again["parts"] == len(parts) and again["blobs"]["new"] == 0


def test_split_bundle_with_a_missing_or_short_part_is_refused(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, _ = unique_layout(tmp_path / "layout")
    whole = craft.write_bundle(tmp_path / "whole.tar.zst", craft.standard_entries(layout.root, ec_key))
    run("split", "-b", "100k", "-d", "-a", "3", str(whole), str(tmp_path / "b.tar.zst.part"))
    data = str(tmp_path / "data")
    pub = tmp_path / "ec.pub"
    pub.write_bytes(keys.public_pem(ec_key))
    cli("keys", "add", str(pub), "--data-dir", data)
    last = sorted(tmp_path.glob("b.tar.zst.part*"))[-1]
    last.write_bytes(last.read_bytes()[:-1000])
    proc = cli("bundle", "import", str(tmp_path / "b.tar.zst.part000"), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "truncated" in proc.stderr
    (tmp_path / "b.tar.zst.part001").unlink()
    proc = cli("bundle", "import", str(tmp_path / "b.tar.zst.part000"), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "part 001 of b.tar.zst is missing" in proc.stderr

