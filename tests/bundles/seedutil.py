"""Helpers for the seed-directory tests: what an installer puts in a seed directory, made by the real tools.

Bundles come from `cargohold bundle build` (signed with a key from `cargohold
keys generate`), detached signatures from openssl, signed definitions from
`cargohold clusterdef sign`; the data directory's trusted key is added with
`cargohold keys add`, as an installer image would at build time.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.images import OciLayout
from tests.pgengine import metadata


def key_pair(directory: Path) -> tuple[Path, Path]:
    """(private PEM, public PEM) of a new RSA key."""
    directory.mkdir(parents=True, exist_ok=True)
    cargohold("keys", "generate", directory / "signing", "--type", "rsa", "--bits", "2048")
    return directory / "signing.pem", directory / "signing.pub.pem"


def trust(data_dir: Path, public: Path) -> None:
    cargohold("keys", "add", public, "--description", "installer", "--data-dir", data_dir)


def bundle(out: Path, key: Path | None, name: str, images: dict[str, int], seed: int, *extra: str) -> Path:
    """`cargohold bundle build` of fresh images {reference: layer size} into `out`; unsigned when `key` is None."""
    layout = OciLayout(out.parent / f".layout-{out.name}")
    for i, (ref, size) in enumerate(images.items()):
        layout.add_image([size, 10_000], seed=seed + i, ref=ref)
    sign = ["--sign-key", str(key)] if key is not None else ["--no-sign"]
    cargohold("bundle", "build", "--name", name, "--version", "1.0", "--layout", layout.root, *sign, *extra,
              "-o", out)
    return out


def openssl_signature(files: list[Path], key: Path, out: Path) -> Path:
    """A detached signature over the concatenation of `files` (a whole bundle, or all its parts in order)."""
    with subprocess.Popen(["openssl", "dgst", "-sha256", "-sign", str(key), "-out", str(out)],
                          stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        for f in files:
            with f.open("rb") as src:
                while chunk := src.read(1 << 20):
                    proc.stdin.write(chunk)
        proc.stdin.close()
        assert proc.wait() == 0
    return out


def signed_definition(directory: Path, key: Path, name: str, images: list[str]) -> Path:
    """`directory`/`name`.tgz with a detached signature `name`.tgz.sig beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = build_archive(directory / f"{name}.tgz", simple_definition(name, images))
    cargohold("clusterdef", "sign", archive, "--sign-key", key, "--detached")
    return archive


def age(*paths: Path, seconds: float = 60) -> None:
    """Set the files' mtime in the past, as files copied a while ago (ctime still says when; see `settle`)."""
    when = time.time() - seconds
    for p in paths:
        os.utime(p, (when, when))


def tamper(path: Path) -> None:
    """Flip one byte in the middle of `path` (a bundle damaged after signing)."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def rows(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the data directory's database."""
    with metadata(data_dir) as db:
        return [tuple(r) for r in db.execute(sql, params).fetchall()]
