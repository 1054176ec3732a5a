"""`serve --tls`: the generated local CA, the operator's own pair, and real clients trusting the CA.

Clients verify for real: requests and curl with the CA file, skopeo with a
certs directory holding ``ca.crt`` (never --tls-verify=false), and
containerd with ``ca`` in hosts.toml. ``spectro.registry.local`` is resolved
to 127.0.0.1 with curl's --resolve, so /etc/hosts is never touched.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from urllib3.exceptions import InsecureRequestWarning

import web.tls
from tests.appliance import Appliance
from tests.containerd import Containerd  # the `containerd` session fixture comes from tests/conftest.py
from tests.images import OciLayout
from tests.pgengine import env_for
from web.config import Config
from web.tls import SubjectNames, TLSConfigError, TLSFiles, ensure_server_certificate, issue_server_certificate

REPO_ROOT = Path(__file__).resolve().parents[2]
Factory = Callable[..., Appliance]


def run(*cmd: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on unexpected failure raise with its whole output so the test says why."""
    if env is None and "web.cli" in cmd:
        env = {**os.environ, **env_for(cmd)}  # with --db=postgres, the data directory's database
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed; scripts/setup-test-env installs it")


def served_certificate(port: int) -> x509.Certificate:
    """The leaf certificate the server presents on 127.0.0.1:port (fetched without verifying it)."""
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())


def fetch_ca(app: Appliance, dest: Path) -> Path:
    """GET /ca.crt the way an edge host bootstraps trust: before it trusts anything."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        r = requests.get(f"{app.url}/ca.crt", verify=False, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/x-pem-file")
    dest.write_bytes(r.content)
    return dest


def tls_appliance(factory: Factory, *args: str) -> Appliance:
    return factory("--tls", *args, scheme="https")


def test_generated_ca_is_served_and_verifies_the_server(appliance_factory: Factory, tmp_path: Path) -> None:
    app = tls_appliance(appliance_factory, "--tls-san", "10.20.30.40, registry.site.example")
    ca_file = fetch_ca(app, tmp_path / "ca.crt")

    # The same PEM from the CLI on the box, to compare out of band.
    cli = run(sys.executable, "-m", "web.cli", "tls", "ca", "--data-dir", str(app.data_dir))
    assert cli.stdout.encode() == ca_file.read_bytes()

    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is True and constraints.critical
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > datetime.timedelta(days=10 * 365)

    # Trusting the CA is what makes HTTPS work; the system store alone does not.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{app.url}/v2/", timeout=10)
    assert requests.get(f"{app.url}/v2/", verify=str(ca_file), timeout=10).status_code == 401
    ok = requests.get(f"{app.url}/v2/", verify=str(ca_file), auth=app.admin, timeout=10)
    assert ok.status_code == 200
    assert ok.headers["Docker-Distribution-API-Version"] == "registry/2.0"

    leaf = served_certificate(app.port)
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    names = SubjectNames.of_certificate(leaf)
    assert {"spectro.registry.local", "localhost", "registry.site.example"} <= names.dns
    assert socket.gethostname().lower() in names.dns
    assert {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.20.30.40")} <= names.ips
    assert web.tls.host_addresses() <= names.ips

    files = TLSFiles(app.data_dir.resolve() / "tls")
    assert (files.ca_key.stat().st_mode & 0o777) == 0o600
    assert (files.server_key.stat().st_mode & 0o777) == 0o600
    assert "PRIVATE KEY" not in app.log()


def test_curl_trusts_spectro_registry_local_by_name(appliance_factory: Factory, tmp_path: Path) -> None:
    require("curl")
    app = tls_appliance(appliance_factory)
    ca_file = fetch_ca(app, tmp_path / "ca.crt")

    def curl(host: str) -> subprocess.CompletedProcess[str]:
        return run("curl", "--silent", "--show-error", "--output", "/dev/null", "--write-out", "%{http_code}",
                   "--resolve", f"{host}:{app.port}:127.0.0.1", "--cacert", str(ca_file), "--user", app.creds,
                   f"https://{host}:{app.port}/v2/", check=False)

    ok = curl("spectro.registry.local")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "200"
    # A name the certificate does not carry is refused (curl: 60, peer certificate cannot be authenticated).
    wrong = curl("not-in-the-certificate.example")
    assert wrong.returncode == 60, (wrong.returncode, wrong.stderr)


def test_skopeo_and_containerd_pull_over_https_trusting_the_ca(
        appliance_factory: Factory, containerd: Containerd, tmp_path: Path) -> None:
    require("skopeo")
    app = tls_appliance(appliance_factory)
    certs = tmp_path / "certs.d"
    certs.mkdir()
    fetch_ca(app, certs / "ca.crt")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    layout = OciLayout(tmp_path / "layout")
    manifest = layout.add_image([20_000], seed=41, ref="1")
    name = f"tls-{uuid.uuid4().hex[:10]}"
    dest = f"docker://{app.host}/spectro-images/docker.io/library/{name}:1"

    # Without the CA, skopeo refuses the certificate: the trust below is real.
    refused = run("skopeo", "inspect", "--cert-dir", str(tmp_path), dest, check=False, env=env)
    assert refused.returncode != 0
    assert "certificate" in refused.stderr

    run("skopeo", "copy", "--dest-cert-dir", str(certs), "--dest-creds", app.creds,
        f"oci:{layout.root}:1", dest, env=env)
    inspected = run("skopeo", "inspect", "--raw", "--cert-dir", str(certs), dest, env=env).stdout
    assert inspected.encode() == layout.read(manifest)
    back = tmp_path / "back"
    run("skopeo", "copy", "--src-cert-dir", str(certs), dest, f"oci:{back}:1", env=env)
    assert (back / "blobs" / "sha256" / manifest.digest.split(":", 1)[1]).read_bytes() == layout.read(manifest)

    # containerd mirrors docker.io to the appliance, trusting it through hosts.toml's `ca`.
    hosts = tmp_path / "hosts"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."https://{app.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f'  ca = "{certs / "ca.crt"}"\n')
    ref = f"docker.io/library/{name}:1"
    containerd.ctr("images", "pull", "--platform", "linux/amd64", ref, hosts_dir=hosts)
    assert containerd.image_digest(ref) == manifest.digest
    containerd.ctr("images", "rm", ref)


def test_operator_certificate_is_used_and_no_ca_is_offered(appliance_factory: Factory, tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca("site CA")
    cert_path, key_path = make_leaf(tmp_path, ca_key, ca_cert, ["localhost"], ["127.0.0.1"])
    (tmp_path / "site-ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    app = appliance_factory("--tls", "--tls-cert", str(cert_path), "--tls-key", str(key_path), scheme="https")
    ok = requests.get(f"{app.url}/v2/", verify=str(tmp_path / "site-ca.crt"), auth=app.admin, timeout=10)
    assert ok.status_code == 200
    assert served_certificate(app.port).fingerprint(hashes.SHA256()) == x509.load_pem_x509_certificate(
        cert_path.read_bytes()).fingerprint(hashes.SHA256())

    missing = requests.get(f"{app.url}/ca.crt", verify=str(tmp_path / "site-ca.crt"), timeout=10)
    assert missing.status_code == 404
    assert "operator-provided certificate" in missing.json()["errors"][0]["message"]
    assert not (app.data_dir / "tls" / "ca.key").exists()


def test_mismatched_key_is_refused_with_a_clear_error(appliance_factory: Factory, tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca("site CA")
    cert_path, _ = make_leaf(tmp_path, ca_key, ca_cert, ["localhost"], ["127.0.0.1"])
    _, other_key = make_leaf(tmp_path / "other", ca_key, ca_cert, ["localhost"], ["127.0.0.1"])

    with pytest.raises(RuntimeError) as failed:
        appliance_factory("--tls", "--tls-cert", str(cert_path), "--tls-key", str(other_key), scheme="https")
    message = str(failed.value)
    assert f"TLS key {other_key} does not match certificate {cert_path}" in message
    assert "Traceback" not in message
    assert "BEGIN" not in message  # no key material in the error


def test_plain_http_appliance_has_no_ca(appliance: Appliance, tmp_path: Path) -> None:
    r = requests.get(f"{appliance.url}/ca.crt", timeout=10)
    assert r.status_code == 404
    assert "cargohold serve --tls" in r.json()["errors"][0]["message"]

    cli = run(sys.executable, "-m", "web.cli", "tls", "ca", "--data-dir", str(appliance.data_dir), check=False)
    assert cli.returncode != 0
    assert "no local CA at" in cli.stderr and "cargohold serve --tls" in cli.stderr
    # A directory without an appliance is refused as such (and not created).
    cli = run(sys.executable, "-m", "web.cli", "tls", "ca", "--data-dir", str(tmp_path / "empty"), check=False)
    assert cli.returncode != 0 and "holds no cargohold appliance" in cli.stderr
    assert not (tmp_path / "empty").exists()


# The rules for keeping and reissuing, driven through the same function `serve --tls` calls.

def config_for(data_dir: Path, **overrides: object) -> Config:
    return Config.from_env({}, data_dir=data_dir, tls=True, **overrides)


def test_ca_and_server_certificate_are_kept_when_names_change_until_issued_explicitly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cert, key = ensure_server_certificate(config_for(data))
    files = TLSFiles(data.resolve() / "tls")
    ca_pem, cert_pem = files.ca_cert.read_bytes(), cert.read_bytes()

    assert ensure_server_certificate(config_for(data)) == (cert, key)
    assert cert.read_bytes() == cert_pem, "same names: the certificate is kept"

    # serve with new names keeps the certificate edge hosts already use; only `tls issue` changes it.
    ensure_server_certificate(config_for(data, tls_san="10.0.0.100,vip.site.example"))
    assert cert.read_bytes() == cert_pem, "serve replaced an existing certificate"
    issued = issue_server_certificate(config_for(data, tls_san="10.0.0.100,vip.site.example"))
    assert files.ca_cert.read_bytes() == ca_pem, "the CA edge hosts trust never changes"
    reissued = x509.load_pem_x509_certificate(cert.read_bytes())
    assert cert.read_bytes() != cert_pem
    names = SubjectNames.of_certificate(reissued)
    assert "vip.site.example" in names.dns and ipaddress.ip_address("10.0.0.100") in names.ips
    assert issued.old is not None and issued.old.names == SubjectNames.of_certificate(
        x509.load_pem_x509_certificate(cert_pem))
    assert issued.new.names == names
    reissued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    check_pair_matches(cert, key)


def test_serve_refuses_a_certificate_it_cannot_use_and_points_at_tls_issue(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cert, key = ensure_server_certificate(config_for(data))
    other = ec.generate_private_key(ec.SECP256R1())
    key.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    cert_pem = cert.read_bytes()
    with pytest.raises(TLSConfigError, match=r"does not match .*server.crt; issue a new one with `cargohold tls"):
        ensure_server_certificate(config_for(data))
    assert cert.read_bytes() == cert_pem


def test_server_certificate_near_expiry_is_renewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    cert, key = ensure_server_certificate(config_for(data))
    before = x509.load_pem_x509_certificate(cert.read_bytes())
    # Anything closer to expiry than the whole validity counts as "near": the fresh one is renewed.
    monkeypatch.setattr(web.tls, "RENEW_BEFORE", web.tls.SERVER_VALIDITY + datetime.timedelta(days=1))
    ensure_server_certificate(config_for(data))
    after = x509.load_pem_x509_certificate(cert.read_bytes())
    assert after.serial_number != before.serial_number
    check_pair_matches(cert, key)


def test_bad_tls_settings_name_the_problem_and_change_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(TLSConfigError, match=r"tls_san entry 'not a name!' is neither an IP address nor a DNS name"):
        ensure_server_certificate(config_for(data, tls_san="10.0.0.1,not a name!"))
    assert not (data / "tls" / "ca.key").exists()

    with pytest.raises(TLSConfigError, match=r"TLS certificate .*nope.crt does not exist"):
        ensure_server_certificate(config_for(data, tls_cert=tmp_path / "nope.crt", tls_key=tmp_path / "nope.key"))
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    (tmp_path / "k.key").write_text("")
    with pytest.raises(TLSConfigError, match=r"garbage.crt holds no PEM certificate"):
        ensure_server_certificate(config_for(data, tls_cert=tmp_path / "garbage.crt", tls_key=tmp_path / "k.key"))
    with pytest.raises(TLSConfigError, match=r"give both tls_cert and tls_key"):
        ensure_server_certificate(config_for(data, tls_cert=tmp_path / "garbage.crt"))

    # A CA certificate without its key is never silently replaced: edge hosts trust it.
    ensure_server_certificate(config_for(data))
    files = TLSFiles(data.resolve() / "tls")
    files.ca_key.unlink()
    ca_pem = files.ca_cert.read_bytes()
    with pytest.raises(TLSConfigError, match=r"local CA is incomplete: .*ca.key is missing"):
        ensure_server_certificate(config_for(data))
    assert files.ca_cert.read_bytes() == ca_pem


def test_expired_operator_certificate_is_refused(tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca("site CA")
    cert_path, key_path = make_leaf(tmp_path, ca_key, ca_cert, ["localhost"], [],
                                    valid=datetime.timedelta(days=-1))
    with pytest.raises(TLSConfigError, match=r"expired on"):
        ensure_server_certificate(config_for(tmp_path / "data", tls_cert=cert_path, tls_key=key_path))


# Helpers: certificates made with cryptography, as an operator's own PKI would.

def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, dns: list[str],
              ips: list[str], valid: datetime.timedelta = datetime.timedelta(days=10)) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2)).not_valid_after(now + valid)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def check_pair_matches(cert_path: Path, key_path: Path) -> None:
    """The certificate and key on disk belong together (TLS handshakes would fail otherwise)."""
    web.tls.check_certificate_pair(cert_path, key_path)
