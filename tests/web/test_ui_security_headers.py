"""Security headers (issue 11, item 11): the UI works under its CSP in Debian's chromium, and every answer says nosniff.

The UI's pages carry a Content-Security-Policy with no 'unsafe-inline' and
frame-ancestors 'none', X-Frame-Options DENY and a Referrer-Policy; every
other answer (registry, APIs, static files) at least nosniff, DENY and a
policy that loads nothing. In chromium, a whole session (sign in, trust a
key, upload a signed bundle with tus-js-client, follow its import, then every
page, a confirmation dialog and the copy button) runs with no CSP violation,
while an inline script injected into a page is blocked. HSTS is sent only
over TLS (checked on an appliance serving HTTPS through its nginx front).
"""

from __future__ import annotations

import re
import socket
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning

from tests.appliance import Appliance
from tests.registry.v2client import V2
from tests.web.uiutil import build_bundle, detached_signature, login, signed_in

# Every violation chromium sees is reported to the console, where the test collects it across navigations.
CSP_REPORTER = """
document.addEventListener('securitypolicyviolation', (e) => console.error(
  'CSP-VIOLATION ' + e.violatedDirective + ' blocked=' + e.blockedURI + ' at ' + e.sourceFile + ':' + e.lineNumber));
"""

UI_PAGES = ["/ui/", "/ui/upload", "/ui/imports", "/ui/releases/", "/ui/repositories", "/ui/definitions",
            "/ui/keys", "/ui/robots", "/ui/audit", "/ui/password", "/ui/login"]


def _check_ui_policy(resp: requests.Response, where: str) -> None:
    csp = resp.headers.get("Content-Security-Policy", "")
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";") if d.strip()}
    assert directives.get("default-src") == "default-src 'self'", (where, csp)
    assert directives.get("script-src") == "script-src 'self'", (where, csp)
    assert directives.get("style-src") == "style-src 'self'", (where, csp)
    assert directives.get("frame-ancestors") == "frame-ancestors 'none'", (where, csp)
    assert directives.get("object-src") == "object-src 'none'", (where, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, (where, csp)
    assert resp.headers.get("X-Frame-Options") == "DENY", where
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", where
    assert resp.headers.get("Referrer-Policy") == "same-origin", where


def test_every_ui_page_and_every_other_answer_carries_the_headers(ui_app: Appliance) -> None:
    session, _ = signed_in(ui_app)
    for path in UI_PAGES:
        r = session.get(f"{ui_app.url}{path}", timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html"), (path, r.status_code)
        _check_ui_policy(r, path)
        assert "Strict-Transport-Security" not in r.headers  # plain HTTP: HSTS would mean nothing
    # A client cannot claim TLS: the front sets X-Forwarded-Proto itself.
    spoofed = requests.get(f"{ui_app.url}/ui/login", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert "Strict-Transport-Security" not in spoofed.headers
    # Error pages and redirects of the UI too.
    _check_ui_policy(session.get(f"{ui_app.url}/ui/repositories/no/such/repo", timeout=10), "404 page")
    _check_ui_policy(requests.get(f"{ui_app.url}/ui/", timeout=10, allow_redirects=False), "sign-in redirect")

    # Everything else: JSON, registry answers, errors, static files.
    for path, auth in (("/v2/", ui_app.admin), ("/v2/", None), ("/api/v2.0/projects", ui_app.admin),
                       ("/api/v2.0/nothing-here", None), ("/api/v1/imports", ui_app.admin),
                       ("/static/ui.js", None), ("/static/ui.css", None)):
        r = requests.get(f"{ui_app.url}{path}", auth=auth, timeout=10)
        assert r.headers.get("X-Content-Type-Options") == "nosniff", (path, r.headers)
        assert r.headers.get("X-Frame-Options") == "DENY", path
        if not r.headers.get("Content-Type", "").startswith("text/html"):
            assert r.headers.get("Content-Security-Policy", "").startswith("default-src 'none'"), (path, r.headers)

    # A blob body, which the nginx front sends itself (X-Accel-Redirect), carries the app's headers too.
    v2 = V2(ui_app)
    repo = f"spectro-images/hdr{uuid.uuid4().hex[:8]}"
    digest = v2.push_blob(repo, b"not html, whatever it looks like: <script>alert(1)</script>")
    blob = v2.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert blob.status_code == 200 and blob.headers.get("X-Content-Type-Options") == "nosniff", blob.headers
    assert blob.headers.get("X-Frame-Options") == "DENY"
    assert blob.headers.get("Content-Security-Policy", "").startswith("default-src 'none'")
    # And so does an answer nginx makes on its own (here: a Content-Length that is no number).
    with socket.create_connection(("127.0.0.1", ui_app.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 400") and "X-Content-Type-Options: nosniff" in head, head


def test_no_template_has_inline_script_style_or_event_handlers() -> None:
    templates = Path(__file__).resolve().parents[2] / "web" / "templates"
    for path in templates.rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", text), f"{path}: inline <script>"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{path}: inline event handler"
        assert not re.search(r"\sstyle\s*=|<style", text), f"{path}: inline style"
        assert "javascript:" not in text, f"{path}: javascript: URL"


def _collect(page: Any, sink: list[str]) -> None:
    """CSP violations (our reporter's, and chromium's own "Content Security Policy" console errors) and uncaught
    script errors, into `sink`. (Other console errors, such as the 404 of /favicon.ico, are not the CSP's.)"""
    page.on("console", lambda m: sink.append(m.text) if m.type == "error" and (
        "CSP-VIOLATION" in m.text or "Content Security Policy" in m.text) else None)
    page.on("pageerror", lambda e: sink.append(f"pageerror {e}"))


def test_the_ui_works_in_chromium_under_its_csp(ui_app: Appliance, context: Any, key_pair: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    private, public = key_pair
    bundle, _ = build_bundle(tmp_path, private, "csp", "1.0.0", {"docker.io/library/csp:1": 400_000}, seed=91)
    signature = detached_signature(bundle, private)
    context.add_init_script(CSP_REPORTER + "window.CARGOHOLD_CHUNK_SIZE = 131072;")
    errors: list[str] = []
    page = context.new_page()
    _collect(page, errors)

    def no_errors(step: str) -> None:
        assert errors == [], (step, errors)

    login(page, ui_app)
    page.wait_for_url(f"{ui_app.url}/ui/")
    no_errors("sign in")

    # An inline script injected into the page is refused, and the violation reaches the collector.
    ran = page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
                                   document.head.append(s); return window.__ran === 1; }""")
    assert ran is False
    page.wait_for_timeout(200)
    assert any("CSP-VIOLATION script-src" in e for e in errors), errors
    errors.clear()

    page.goto(f"{ui_app.url}/ui/keys")
    page.get_by_label("Public key (PEM)").fill(public.read_text())
    page.get_by_label("Description").fill("csp test")
    page.get_by_role("button", name="Trust this key").click()
    page.get_by_text("Now trusting key sha256:").wait_for()
    no_errors("trust a key")

    page.goto(f"{ui_app.url}/ui/upload")
    page.get_by_label("Bundle file").set_input_files(str(bundle))
    page.get_by_label("Detached signature (optional)").set_input_files(str(signature))
    page.get_by_role("button", name="Upload and import").click()
    page.wait_for_url(re.compile(r".*/ui/imports/[0-9a-f]{32}$"), timeout=60_000)
    page.wait_for_function("() => document.getElementById('job-state').textContent === 'done'", timeout=60_000)
    no_errors("upload and import")

    visit: Callable[[str], None] = lambda path: (page.goto(f"{ui_app.url}{path}"), no_errors(path))  # noqa: E731
    for path in UI_PAGES[:-1]:
        visit(path)
    page.goto(f"{ui_app.url}/ui/releases/")
    page.locator("a[href*='/ui/releases/']").filter(has_text=re.compile(r"\d")).first.click()
    form = page.locator("form[data-confirm]").first
    form.get_by_role("button").click()  # ui.js opens its confirmation <dialog>
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    no_errors("release page and its confirmation dialog")

    page.goto(f"{ui_app.url}/ui/repositories")
    page.get_by_role("link", name="spectro-images/docker.io/library/csp").click()
    page.get_by_role("link", name="1", exact=True).click()
    no_errors("repository and artifact")

    page.goto(f"{ui_app.url}/ui/robots")
    page.get_by_label("Name").fill("cspbot")
    page.get_by_role("button", name=re.compile("Create")).click()
    page.locator("button[data-copy]").first.click()
    no_errors("robot created and its secret copied")


@pytest.mark.parametrize("front", ["nginx", "none"])
def test_hsts_only_over_tls(appliance_factory: Callable[..., Appliance], front: str) -> None:
    # nginx terminates TLS and tells the app in X-Forwarded-Proto; with no front, gunicorn serves TLS itself.
    app = appliance_factory("--tls", "--front", front, scheme="https")
    with warnings.catch_warnings():
        # The headers are under test here, not the certificate (tests/web/test_tls.py verifies the CA).
        warnings.simplefilter("ignore", InsecureRequestWarning)
        for path in ("/ui/login", "/v2/", "/api/v2.0/ping"):
            r = requests.get(f"{app.url}{path}", verify=False, timeout=10)
            assert r.headers.get("Strict-Transport-Security") == "max-age=31536000", (path, r.headers)
            assert r.headers.get("X-Content-Type-Options") == "nosniff"
        _check_ui_policy(requests.get(f"{app.url}/ui/login", verify=False, timeout=10), "login over TLS")
