"""Signed cluster definitions: a standalone definition needs a trusted key's signature (CLI and HTTP).

Against real appliances of their own (a fresh trust store each), with keys
from `cargohold keys generate`, signatures from `cargohold clusterdef sign`
and from `openssl dgst -sha256 -sign` (the build side's own tooling), and
the definitions read back through the API.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.images import OciLayout
from tests.pgengine import metadata

DEFS = "/api/cargohold/v1/cluster-definitions"


def upload(app: Appliance, archive: Path, signature: Path | bytes | None = None) -> requests.Response:
    files: dict[str, Any] = {"file": (archive.name, archive.read_bytes(), "application/gzip")}
    if signature is not None:
        files["signature"] = ("d.sig", signature.read_bytes() if isinstance(signature, Path) else signature)
    return requests.post(f"{app.url}{DEFS}", auth=app.admin, files=files, timeout=30)


def refusal(r: requests.Response) -> tuple[str, str]:
    assert r.status_code == 400, r.text
    error = r.json()["errors"][0]
    return error["code"], error["message"]


def stored(app: Appliance) -> list[tuple[str, str]]:
    """Every stored definition row (name, digest), read from the database itself."""
    with metadata(app.data_dir) as conn:
        return sorted(conn.execute("SELECT name, digest FROM cluster_definitions").fetchall())


def key(directory: Path, name: str, kind: str = "rsa") -> tuple[Path, Path, str]:
    """(private PEM, public PEM, key id) of a new key from `cargohold keys generate`."""
    extra = ["--bits", "2048"] if kind == "rsa" else []
    proc = cargohold("keys", "generate", directory / name, "--type", kind, *extra)
    return directory / f"{name}.pem", directory / f"{name}.pub.pem", proc.stdout.strip()


def openssl_sign(archive: Path, private: Path) -> Path:
    out = archive.with_name(archive.name + ".openssl.sig")
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(private), "-out", str(out), str(archive)],
                   check=True, capture_output=True)
    return out


def rewrite(src: Path, dst: Path, change: Callable[[dict[str, bytes]], object]) -> Path:
    """A copy of a .tgz whose members `change` edits in place (the envelope members kept as they were)."""
    members: dict[str, bytes] = {}
    with tarfile.open(src, "r:gz") as tar:
        for info in tar:
            f = tar.extractfile(info)
            members[info.name] = f.read() if f else b""
    change(members)
    with tarfile.open(dst, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    return d


def test_unsigned_and_untrusted_definitions_are_refused_and_signed_ones_stored(
        appliance_factory: Callable[..., Appliance], tmp_path: Path, keydir: Path) -> None:
    app = appliance_factory()
    data = ["--data-dir", str(app.data_dir)]
    archive = build_archive(tmp_path / "edge.tgz", simple_definition("edge", ["docker.io/library/nginx:1.25"]))
    private, public, kid = key(keydir, "site")
    other_private, _, other_kid = key(keydir, "stranger", "ecdsa-p256")

    # No key trusted: an unsigned definition is refused, by HTTP and by the CLI, and nothing is stored.
    code, message = refusal(upload(app, archive))
    assert code == "DEFINITION_UNSIGNED" and "not signed" in message and "allow_unsigned_definitions" in message
    cli = cargohold("clusterdef", "import", archive, *data, check=False)
    assert cli.returncode == 1 and "refused (DEFINITION_UNSIGNED)" in cli.stderr and "Traceback" not in cli.stderr
    # ... and so is one signed by a key nobody trusts, whichever way it is signed.
    embedded_by_stranger = tmp_path / "edge.stranger.tgz"
    cargohold("clusterdef", "sign", archive, "--sign-key", other_private, "-o", embedded_by_stranger)
    code, message = refusal(upload(app, embedded_by_stranger))
    assert code == "DEFINITION_KEY_UNTRUSTED" and other_kid in message
    code, _ = refusal(upload(app, archive, openssl_sign(archive, private)))
    assert code == "DEFINITION_KEY_UNTRUSTED"  # no RSA/ECDSA key trusted to check a detached signature with
    assert stored(app) == []

    cargohold("keys", "add", public, *data)
    cargohold("keys", "add", keydir / "stranger.pub.pem", *data)
    cargohold("keys", "remove", other_kid, *data)  # trusted once, no longer: its signatures are refused again
    assert refusal(upload(app, embedded_by_stranger))[0] == "DEFINITION_KEY_UNTRUSTED"
    assert refusal(upload(app, archive))[0] == "DEFINITION_UNSIGNED"

    # Detached, as openssl makes it: accepted over HTTP and the CLI, and the signer is recorded.
    r = upload(app, archive, openssl_sign(archive, private))
    assert r.status_code == 201, r.text
    assert r.json()["signedBy"] == kid
    got = cargohold("clusterdef", "import", archive, "--signature", openssl_sign(archive, private), *data)
    assert f"signed by {kid}" in got.stdout
    # Detached, from `clusterdef sign --detached` (FILE.sig beside it): the same.
    cargohold("clusterdef", "sign", archive, "--sign-key", private, "--detached")
    assert upload(app, archive, tmp_path / "edge.tgz.sig").status_code == 201
    as_text = requests.post(f"{app.url}{DEFS}", auth=app.admin, files={"file": (archive.name, archive.read_bytes())},
                            data={"signature": openssl_sign(archive, private).read_bytes().hex()}, timeout=30)
    assert as_text.status_code == 201 and as_text.json()["signedBy"] == kid  # hex text in a plain field works
    # Embedded (a signed copy, NAME.signed.tgz): no separate file to carry.
    printed = cargohold("clusterdef", "sign", archive, "--sign-key", private).stdout.strip()
    assert printed == kid
    signed = tmp_path / "edge.signed.tgz"
    r = upload(app, signed)
    assert r.status_code == 201 and r.json()["signedBy"] == kid, r.text
    assert requests.get(f"{app.url}{DEFS}/edge", auth=app.admin, timeout=10).json()["signedBy"] == kid
    assert f"signed by {kid}" in cargohold("clusterdef", "import", signed, *data).stdout
    rows = stored(app)
    assert rows == [("edge", "sha256:" + hashlib.sha256(signed.read_bytes()).hexdigest())]

    # Anything changed after signing is a bad signature, and the stored definition stays as it was.
    detached = openssl_sign(archive, private)
    altered = rewrite(archive, tmp_path / "altered.tgz",
                      lambda m: m.update({"definition.yaml": m["definition.yaml"].replace(b"nginx:1.25", b"evil:1")}))
    code, message = refusal(upload(app, altered, detached))
    assert code == "DEFINITION_SIGNATURE_INVALID" and "altered" in message
    changed = rewrite(signed, tmp_path / "changed.tgz",
                      lambda m: m.update({"definition.yaml": m["definition.yaml"].replace(b"nginx:1.25", b"evil:1")}))
    code, message = refusal(upload(app, changed))
    assert code == "DEFINITION_SIGNATURE_INVALID" and "'definition.yaml'" in message and "changed after" in message
    added = rewrite(signed, tmp_path / "added.tgz", lambda m: m.update({"extra.yaml": b"x: 1\n"}))
    code, message = refusal(upload(app, added))
    assert code == "DEFINITION_SIGNATURE_INVALID" and "added after signing" in message
    resigned = rewrite(signed, tmp_path / "resigned.tgz", lambda m: m.update(
        {"cargohold-definition.json": m["cargohold-definition.json"].replace(b'"members"', b'"members" ')}))
    code, message = refusal(upload(app, resigned))
    assert code == "DEFINITION_SIGNATURE_INVALID" and "does not match" in message
    torn = rewrite(signed, tmp_path / "torn.tgz", lambda m: m.pop("cargohold-definition.sig"))
    code, message = refusal(upload(app, torn))
    assert code == "DEFINITION_SIGNATURE_INVALID" and "incomplete" in message
    garbage = upload(app, archive, b"not a signature at all\n")
    assert refusal(garbage)[0] == "DEFINITION_SIGNATURE_INVALID"
    oversized = upload(app, archive, b"\0" * (65 << 10))
    assert refusal(oversized)[0] == "DEFINITION_SIGNATURE_INVALID" and "64 KiB" in oversized.text
    pasted = requests.post(f"{app.url}{DEFS}", auth=app.admin, files={"file": (archive.name, archive.read_bytes())},
                           data={"signature": "A" * 700_000}, timeout=30)  # a text field werkzeug will not hold
    assert pasted.status_code == 413 and pasted.json()["errors"][0]["code"] == "PAYLOAD_TOO_LARGE"
    cli = cargohold("clusterdef", "import", changed, *data, check=False)
    assert cli.returncode == 1 and "refused (DEFINITION_SIGNATURE_INVALID)" in cli.stderr
    # --allow-unsigned lets a definition with NO signature in; never one whose signature fails.
    cli = cargohold("clusterdef", "import", changed, "--allow-unsigned", *data, check=False)
    assert cli.returncode == 1 and "DEFINITION_SIGNATURE_INVALID" in cli.stderr
    assert stored(app) == rows


def test_the_policy_setting_and_flag_let_unsigned_definitions_in(
        appliance_factory: Callable[..., Appliance], tmp_path: Path, keydir: Path) -> None:
    archive = build_archive(tmp_path / "lab.tgz", simple_definition("lab", ["docker.io/library/busybox:1"]))
    strict = appliance_factory(name="strict")
    got = cargohold("clusterdef", "import", archive, "--allow-unsigned", "--data-dir", strict.data_dir)
    assert "UNSIGNED (allowed by policy)" in got.stdout
    assert requests.get(f"{strict.url}{DEFS}/lab", auth=strict.admin, timeout=10).json()["signedBy"] is None

    lab = appliance_factory(name="lab", env={"CARGOHOLD_ALLOW_UNSIGNED_DEFINITIONS": "true"})
    r = upload(lab, archive)
    assert r.status_code == 201 and r.json()["signedBy"] is None, r.text
    # The setting does not let a failing signature through.
    private, _, _ = key(keydir, "untrusted", "ecdsa-p256")
    cargohold("clusterdef", "sign", archive, "--sign-key", private, "-o", tmp_path / "lab.signed.tgz")
    assert refusal(upload(lab, tmp_path / "lab.signed.tgz"))[0] == "DEFINITION_KEY_UNTRUSTED"


def test_sign_refuses_what_it_cannot_sign(tmp_path: Path, keydir: Path) -> None:
    archive = build_archive(tmp_path / "d.tgz", simple_definition("d", ["nginx:1"]))
    ed, _, _ = key(keydir, "ed", "ed25519")
    detached = cargohold("clusterdef", "sign", archive, "--sign-key", ed, "--detached", check=False)
    assert detached.returncode == 1 and "Ed25519" in detached.stderr and "Traceback" not in detached.stderr
    assert not (tmp_path / "d.tgz.sig").exists()
    # Embedded signatures take any supported key, Ed25519 included.
    cargohold("clusterdef", "sign", archive, "--sign-key", ed)
    with tarfile.open(tmp_path / "d.signed.tgz", "r:gz") as tar:
        names = tar.getnames()
        envelope = json.loads(tar.extractfile("cargohold-definition.json").read())  # type: ignore[union-attr]
    assert names[:2] == ["cargohold-definition.json", "cargohold-definition.sig"]
    assert [m["path"] for m in envelope["members"]] == ["definition.yaml"]
    # An invalid definition is not signed at all.
    bad = simple_definition("bad", ["nginx:1"])
    bad["profiles"].append({**bad["profiles"][0], "name": "second-infra", "packs": []})
    refused = cargohold("clusterdef", "sign", build_archive(tmp_path / "bad.tgz", bad), "--sign-key", ed, check=False)
    assert refused.returncode == 1 and "at most one infrastructure profile" in refused.stderr
    assert not (tmp_path / "bad.signed.tgz").exists()


def test_definitions_inside_a_signed_bundle_need_no_signature_of_their_own(
        appliance_factory: Callable[..., Appliance], tmp_path: Path, keydir: Path) -> None:
    """A bundle's signature covers what it carries: plain and signed definitions both arrive with it."""
    app = appliance_factory()
    private, public, _ = key(keydir, "org")
    stranger, _, _ = key(keydir, "other", "ecdsa-p256")
    cargohold("keys", "add", public, "--data-dir", app.data_dir)
    layout = OciLayout(tmp_path / "layout")
    layout.add_image([5_000], seed=4242, ref="docker.io/cargotest/signed-def:1")
    plain = build_archive(tmp_path / "plain.tgz", simple_definition("plain", ["docker.io/cargotest/signed-def:1"]))
    enveloped = build_archive(tmp_path / "env.tgz", simple_definition("env", ["docker.io/cargotest/signed-def:1"]))
    cargohold("clusterdef", "sign", enveloped, "--sign-key", stranger, "-o", tmp_path / "env-signed.tgz")
    bundle = tmp_path / "b.tar.zst"
    cargohold("bundle", "build", "--name", "b", "--version", "1", "--layout", layout.root,
              "--cluster-definition", plain, "--cluster-definition", tmp_path / "env-signed.tgz",
              "--sign-key", private, "-o", bundle)
    cargohold("bundle", "import", bundle, "--data-dir", app.data_dir, "--quiet")
    names = [d["name"] for d in requests.get(f"{app.url}{DEFS}", auth=app.admin, timeout=10).json()["definitions"]]
    assert names == ["env", "plain"]
    check = requests.post(f"{app.url}{DEFS}/plain/checks", auth=app.admin, timeout=30).json()
    assert check["ready"] is True, check["findings"]
