"""TLS material never changes behind a live appliance's back: one serve per data directory, explicit `tls issue`.

Real appliances (`cargohold serve --tls` with the nginx front) on loopback
ports, a second serve run by hand as an operator would, and the
certificate read back from the TLS handshake itself.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.appliance import ADMIN_PASSWORD, Appliance, restart_on
from tests.pgengine import env_for
from web.tls import SubjectNames

REPO_ROOT = Path(__file__).resolve().parents[2]
Factory = Callable[..., Appliance]
VIP = "10.77.0.100"


def cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "web.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=timeout,
                          env={**os.environ, "CARGOHOLD_ADMIN_PASSWORD": ADMIN_PASSWORD, **env_for(args)})


def served(port: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def test_a_second_serve_changes_nothing_and_names_the_one_serving(appliance_factory: Factory) -> None:
    app = appliance_factory("--tls", "--tls-san", VIP, scheme="https")
    tls_dir = app.data_dir / "tls"
    before = {p.name: p.read_bytes() for p in tls_dir.iterdir() if p.is_file()}
    assert ipaddress.ip_address(VIP) in SubjectNames.of_certificate(served(app.port)).ips

    # Run by hand without the service's --tls-san, on the same port and on another one.
    for bind in (app.host, "127.0.0.1:1"):
        second = cli("serve", "--data-dir", app.data_dir, "--tls", "--bind", bind)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        assert (f"Error: another cargohold serve (pid {app.process.pid}) is serving {app.data_dir.resolve()}; "
                "stop it first (nothing was changed)") in second.stderr

    after = {p.name: p.read_bytes() for p in tls_dir.iterdir() if p.is_file()}
    assert after == before, "the second serve rewrote TLS material"
    assert ipaddress.ip_address(VIP) in SubjectNames.of_certificate(served(app.port)).ips
    assert app.process.poll() is None


def test_the_lock_goes_with_a_killed_appliance(appliance_factory: Factory) -> None:
    app = appliance_factory()
    app.process.send_signal(signal.SIGKILL)
    app.process.wait(timeout=10)
    # Its workers go with it (parent-death signal); the lock is free once they have: no stale file to clean up.
    again = restart_on(app, timeout=30)
    try:
        assert (app.data_dir / "serve.lock").read_text().strip() == str(again.process.pid)
    finally:
        again.stop()


def serve_again(app: Appliance, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`cargohold serve --tls ARGS` on `app`'s stopped data directory and port; returns once TLS answers there."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "web.cli", "serve", "--data-dir", str(app.data_dir), "--tls",
                                 "--bind", app.host, *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=app.env)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            served(app.port)
            return proc
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_restart_without_the_san_keeps_the_certificate_and_says_what_is_missing(appliance_factory: Factory,
                                                                                tmp_path: Path) -> None:
    app = appliance_factory("--tls", scheme="https")
    original = served(app.port)
    app.stop()
    log = tmp_path / "restart.log"
    proc = serve_again(app, log, "--tls-san", f"{VIP},registry.site.example")
    try:
        text = log.read_text()
        assert f"does not name registry.site.example, {VIP}; keeping it as it is" in text, text
        assert "cargohold tls issue --san" in text
        assert fingerprint(served(app.port)) == fingerprint(original)
    finally:
        stop(proc)


def test_tls_issue_is_refused_while_serving_then_says_what_changes(appliance_factory: Factory,
                                                                  tmp_path: Path) -> None:
    app = appliance_factory("--tls", "--tls-san", VIP, scheme="https")
    cert_path = app.data_dir / "tls" / "server.crt"
    old_pem, ca_pem = cert_path.read_bytes(), (app.data_dir / "tls" / "ca.crt").read_bytes()
    old = x509.load_pem_x509_certificate(old_pem)

    refused = cli("tls", "issue", "--data-dir", app.data_dir, "--san", "registry.site.example")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert (f"Error: cargohold serve (pid {app.process.pid}) is serving {app.data_dir.resolve()}; stop it, run "
            "this `cargohold tls issue` again, then start the appliance (nothing was changed)") in refused.stderr
    assert cert_path.read_bytes() == old_pem

    app.stop()
    issued = cli("tls", "issue", "--data-dir", app.data_dir, "--san", "registry.site.example")
    assert issued.returncode == 0, issued.stderr
    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = SubjectNames.of_certificate(new)
    # The name asked for is added; the VIP of the old certificate is kept (edge hosts use it).
    assert "registry.site.example" in names.dns and ipaddress.ip_address(VIP) in names.ips
    assert f"  old: SHA-256 {fingerprint(old)}" in issued.stdout
    assert f"  new: SHA-256 {fingerprint(new)}" in issued.stdout
    assert "  added: registry.site.example; dropped: none" in issued.stdout
    assert "serves it from its next start" in issued.stderr
    assert (app.data_dir / "tls" / "ca.crt").read_bytes() == ca_pem, "the CA edge hosts trust never changes"
    new.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))

    # Dropping names is asked for explicitly, and reported.
    dropped = cli("tls", "issue", "--data-dir", app.data_dir, "--drop-old-names")
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped: registry.site.example, {VIP}" in dropped.stdout

    proc = serve_again(app, tmp_path / "again.log")
    try:
        assert fingerprint(served(app.port)) == fingerprint(x509.load_pem_x509_certificate(cert_path.read_bytes()))
    finally:
        stop(proc)
