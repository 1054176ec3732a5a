"""Helpers for the UI tests: Debian's chromium through Playwright, bundles from the real builder, screenshots.

The browser is Debian's ``/usr/bin/chromium`` (scripts/setup-test-env
installs it), driven headless by Playwright with a fresh profile; Playwright's
own browser downloads are never used.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.images import OciLayout

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "ui"


def require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed; scripts/setup-test-env installs it")
    pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")


def screenshot(page: object, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ui/ (gitignored; CI keeps it as an artifact)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def login(page: object, app: Appliance, password: str | None = None) -> None:
    """Sign in through the form."""
    page.goto(f"{app.url}/ui/login")  # type: ignore[attr-defined]
    page.get_by_label("Username").fill(app.admin[0])  # type: ignore[attr-defined]
    page.get_by_label("Password").fill(password or app.admin[1])  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def form_token(html: str) -> str:
    """The CSRF token a UI form carries."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the form carries no CSRF token"
    return match.group(1)


def signed_in(app: Appliance) -> tuple[requests.Session, str]:
    """A requests session signed in to the UI as the admin (through the login form), and its CSRF token."""
    s = requests.Session()
    token = form_token(s.get(f"{app.url}/ui/login", timeout=10).text)
    r = s.post(f"{app.url}/ui/login", data={"username": app.admin[0], "password": app.admin[1],
                                             "csrf_token": token}, timeout=10, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/")
    page = s.get(f"{app.url}/ui/", timeout=10)
    return s, re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def signing_key(directory: Path) -> tuple[Path, Path]:
    """(private PEM, public PEM) of a new RSA key from `cargohold keys generate`."""
    cargohold("keys", "generate", directory / "signing", "--type", "rsa", "--bits", "2048")
    return directory / "signing.pem", directory / "signing.pub.pem"


def build_bundle(directory: Path, key: Path, name: str, version: str, images: dict[str, int],
                 seed: int) -> tuple[Path, dict[str, str]]:
    """A signed bundle from `cargohold bundle build` over fresh images {reference: layer size}; returns it and
    {reference: manifest digest}."""
    layout = OciLayout(directory / f"layout-{name}-{version}")
    digests = {}
    for i, (ref, size) in enumerate(images.items()):
        digests[ref] = str(layout.add_image([size, 20_000], seed=seed + i, ref=ref).digest)
    bundle = directory / f"{name}-{version}.tar.zst"
    cargohold("bundle", "build", "--name", name, "--version", version, "--layout", layout.root, "--sign-key", key,
              "-o", bundle)
    return bundle, digests


def detached_signature(bundle: Path, key: Path) -> Path:
    """An openssl detached signature over the whole file, as the build side's tooling makes it."""
    out = bundle.with_name(bundle.name + ".sig")
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key), "-out", str(out), str(bundle)], check=True)
    return out


def catalog(app: Appliance) -> list[str]:
    import requests

    r = requests.get(f"{app.url}/v2/_catalog?n=1000", auth=app.admin, timeout=10)
    r.raise_for_status()
    return sorted(json.loads(r.text)["repositories"])
