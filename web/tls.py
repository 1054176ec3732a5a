"""TLS material for `cargohold serve --tls`: the operator's own pair, or a local CA and server certificate.

With ``tls_cert`` and ``tls_key`` configured, the pair is checked (both
files exist, parse, the key belongs to the certificate, the certificate is
in its validity period) and used as it is. Without them, cargohold keeps its
own material under `DataPaths.tls`:

    tls/ca.key        the local CA's private key (0600); never leaves the box
    tls/ca.crt        the local CA certificate (self-signed, CA:true, keyCertSign):
                      the file edge hosts trust, served at GET /ca.crt
    tls/server.key    the server certificate's private key (0600)
    tls/server.crt    the server certificate, signed by the CA

The CA is generated once and kept: edge hosts are configured to trust it,
so replacing it would break every one of them. `serve --tls` issues the
server certificate only when there is none yet. Once one exists, serve
never changes its names: when the configured names (``tls_san``, the
host's addresses) are not all in it, serve keeps it and warns which are
missing, because edge hosts that pull by a name it does carry (the
cluster's virtual IP) would break at once if it were replaced by a
certificate without that name. Changing the names is the explicit
`cargohold tls issue` (`issue_server_certificate`), which reports the old
and new names and fingerprints. The one change serve makes by itself is
renewal near expiry: the same CA, the same names, a new validity period,
so nothing an edge host checks changes. A certificate serve cannot use
(unreadable, not matching its key, not issued by the CA) stops serve with
a message pointing at `cargohold tls issue`.

Only one `serve` runs on a data directory (web.datadir's serve lock), and
`tls issue` refuses while one does, so TLS material never changes behind a
running appliance's back.

Key material is never logged; only paths, names and fingerprints are.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry.paths import DataPaths
from web.config import REGISTRY_HOSTNAME, Config

log = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=20 * 365)
SERVER_VALIDITY = datetime.timedelta(days=2 * 365)
# Reissue the server certificate when less than this is left, so a restart
# well before expiry renews it.
RENEW_BEFORE = datetime.timedelta(days=30)
# Backdate notBefore a little: edge hosts' clocks drift, and a certificate
# "not yet valid" by a minute fails the pull.
CLOCK_SKEW = datetime.timedelta(hours=1)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TLSConfigError(ValueError):
    """TLS material is missing, unreadable or inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class TLSFiles:
    """Where the generated material lives under one data directory."""

    root: Path

    @classmethod
    def of(cls, paths: DataPaths) -> TLSFiles:
        return cls(paths.tls)

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


@dataclass(frozen=True)
class SubjectNames:
    """The names a server certificate carries: DNS names and IP addresses."""

    dns: frozenset[str]
    ips: frozenset[IPAddress]

    def general_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(self.dns)]
        names += [x509.IPAddress(ip) for ip in sorted(self.ips, key=lambda a: (a.version, int(a)))]
        return names

    @classmethod
    def of_certificate(cls, cert: x509.Certificate) -> SubjectNames:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return cls(frozenset(), frozenset())
        return cls(frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName)),
                   frozenset(ip for ip in san.get_values_for_type(x509.IPAddress)
                             if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)))


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator needs to know of a server certificate: its names, fingerprint and expiry."""

    names: SubjectNames
    fingerprint: str
    not_after: datetime.datetime

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateInfo:
        return cls(SubjectNames.of_certificate(cert), _fingerprint(cert), cert.not_valid_after_utc)


@dataclass(frozen=True)
class Issued:
    """The result of `issue_server_certificate`: the certificate replaced (None if there was none) and the new one."""

    old: CertificateInfo | None
    new: CertificateInfo
    cert: Path
    key: Path


def ensure_server_certificate(config: Config) -> tuple[Path, Path]:
    """The (certificate, key) paths `serve --tls` should use.

    Uses and checks the configured pair if there is one. Otherwise creates
    the local CA if missing, issues the server certificate if there is none,
    renews it (same names) near expiry, and otherwise keeps it as it is,
    warning about configured names it lacks. Idempotent. Raises
    TLSConfigError naming the file and problem.
    """
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise TLSConfigError("give both tls_cert and tls_key (--tls-cert/--tls-key), or neither to have "
                                 "cargohold generate its own CA and certificate")
        check_certificate_pair(config.tls_cert, config.tls_key)
        return config.tls_cert, config.tls_key
    names = desired_names(config)
    paths = config.paths
    paths.tls.mkdir(parents=True, exist_ok=True)
    files = TLSFiles.of(paths)
    with _locked(files.lock):
        ca_key, ca_cert = _ensure_ca(files)
        if not files.server_cert.exists() and not files.server_key.exists():
            _write_server(files, ca_key, ca_cert, names, "none yet")
            return files.server_cert, files.server_key
        cert = _usable_server_certificate(files, ca_cert)
        current = SubjectNames.of_certificate(cert)
        if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
            _write_server(files, ca_key, ca_cert, current,
                          f"renewed with the same names: the old one expires on {cert.not_valid_after_utc:%Y-%m-%d}")
        _tighten(files.server_key)
        missing = missing_names(current, names)
        if missing:
            log.warning("the server certificate %s does not name %s; keeping it as it is, because edge hosts "
                        "trust the names it has. To add them: stop the appliance, run `cargohold tls issue "
                        "--san NAME,...`, and start it again", files.server_cert, ", ".join(missing))
    return files.server_cert, files.server_key


def issue_server_certificate(config: Config, keep_names: bool = True) -> Issued:
    """Issue a new server certificate for the configured names, by the local CA (created if missing).

    With `keep_names` the new certificate also carries every name of the one
    it replaces, so nothing an edge host uses is dropped by accident. Writes
    the key, then the certificate, each atomically. The caller makes sure no
    appliance serves the data directory (the serve lock). Raises
    TLSConfigError for bad names or unusable CA material.
    """
    names = desired_names(config)
    paths = config.paths
    paths.tls.mkdir(parents=True, exist_ok=True)
    files = TLSFiles.of(paths)
    with _locked(files.lock):
        ca_key, ca_cert = _ensure_ca(files)
        old: CertificateInfo | None = None
        try:
            old = CertificateInfo.of(_read_certificates(files.server_cert)[0])
        except TLSConfigError:
            old = None  # none yet, or unreadable: nothing of it to keep
        if keep_names and old is not None:
            names = SubjectNames(names.dns | old.names.dns, names.ips | old.names.ips)
        new = _write_server(files, ca_key, ca_cert, names, "requested with `cargohold tls issue`")
    return Issued(old, CertificateInfo.of(new), files.server_cert, files.server_key)


def missing_names(have: SubjectNames, want: SubjectNames) -> list[str]:
    """The names in `want` that `have` lacks, as text, sorted (DNS names, then addresses)."""
    return [*sorted(want.dns - have.dns), *sorted(str(ip) for ip in want.ips - have.ips)]


def names_text(names: SubjectNames) -> str:
    """Every name of `names` as one comma-separated line (DNS names, then addresses)."""
    return ", ".join([*sorted(names.dns), *sorted(str(ip) for ip in names.ips)])


def check_certificate_pair(cert_path: Path, key_path: Path) -> x509.Certificate:
    """Check an operator-given certificate/key pair; return the leaf certificate.

    Raises TLSConfigError if a file is missing or unparsable, the key does not
    belong to the certificate, or the certificate is outside its validity period.
    """
    certs = _read_certificates(cert_path)
    key = _read_private_key(key_path)
    leaf = certs[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise TLSConfigError(f"TLS key {key_path} does not match certificate {cert_path} "
                             f"(subject {leaf.subject.rfc4514_string()!r}): the key's public half differs "
                             "from the certificate's public key")
    now = _now()
    if leaf.not_valid_after_utc <= now:
        raise TLSConfigError(f"TLS certificate {cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise TLSConfigError(f"TLS certificate {cert_path} is not valid until "
                             f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)")
    return leaf


def generated_ca(config: Config) -> Path | None:
    """The local CA certificate edge hosts should trust, or None if this appliance has none to offer.

    None when no CA was generated, and when the configured certificate is the
    operator's own (an old generated CA would not vouch for it).
    """
    files = TLSFiles.of(config.paths)
    if not files.ca_cert.is_file():
        return None
    if config.tls_cert is not None and config.tls_cert.resolve() != files.server_cert.resolve():
        return None
    return files.ca_cert


def desired_names(config: Config) -> SubjectNames:
    """Every name edge hosts may use to reach this appliance.

    spectro.registry.local, localhost, loopback, the host name, the host's
    interface addresses, the bind address if it is specific, and the
    comma-separated ``tls_san`` entries (DNS names or IP addresses).
    Raises TLSConfigError for a ``tls_san`` entry that is neither.
    """
    dns = {REGISTRY_HOSTNAME, "localhost"}
    ips: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    hostname = socket.gethostname()
    if hostname and _is_dns_name(hostname):
        dns.add(hostname.lower())
    ips |= host_addresses()
    bind_host = config.bind.rsplit(":", 1)[0].strip("[]") if ":" in config.bind else config.bind
    bind_ip = _parse_ip(bind_host)
    if bind_ip is not None:
        if not bind_ip.is_unspecified:
            ips.add(bind_ip)
    elif bind_host and _is_dns_name(bind_host):
        dns.add(bind_host.lower())
    for entry in (e.strip() for e in (config.tls_san or "").split(",")):
        if not entry:
            continue
        ip = _parse_ip(entry)
        if ip is not None:
            ips.add(ip)
        elif _is_dns_name(entry, wildcard=True):
            dns.add(entry.lower())
        else:
            raise TLSConfigError(f"tls_san entry {entry!r} is neither an IP address nor a DNS name "
                                 "(CARGOHOLD_TLS_SAN is a comma-separated list, e.g. '10.0.0.100,registry.site')")
    return SubjectNames(frozenset(dns), frozenset(ips))


def host_addresses() -> set[IPAddress]:
    """This host's non-loopback, non-link-local addresses, found with the standard library only."""
    found: set[IPAddress] = set()
    for candidate in _interface_addresses():
        ip = _parse_ip(candidate)
        if ip is not None and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast):
            found.add(ip)
    return found


def _interface_addresses() -> Iterator[str]:
    # Addresses the host name resolves to (/etc/hosts, nss-myhostname): portable.
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            yield str(info[4][0]).split("%", 1)[0]
    except OSError:
        pass
    # Every interface's IPv4 address (SIOCGIFADDR) and the kernel's IPv6 table: Linux.
    siocgifaddr = 0x8915
    try:
        interfaces = socket.if_nameindex()
    except OSError:
        interfaces = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in interfaces:
            try:
                ifreq = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # down, or no IPv4 address
            yield socket.inet_ntoa(ifreq[20:24])
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        lines = []
    ifa_f_temporary = 0x01
    for line in lines:
        cols = line.split()
        # Privacy (temporary) addresses rotate by design; naming them would reissue the certificate at every start.
        if len(cols) >= 5 and len(cols[0]) == 32 and not int(cols[4], 16) & ifa_f_temporary:
            yield str(ipaddress.IPv6Address(bytes.fromhex(cols[0])))


def _ensure_ca(files: TLSFiles) -> tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, x509.Certificate]:
    have_key, have_cert = files.ca_key.exists(), files.ca_cert.exists()
    if not have_key and not have_cert:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue_ca(key)
        _write_private(files.ca_key, _key_pem(key))
        _write_public(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
        log.warning("generated a local CA (SHA-256 fingerprint %s) at %s; edge hosts must trust this file "
                    "(GET /ca.crt or `cargohold tls ca`)", _fingerprint(cert), files.ca_cert)
        return key, cert
    if not (have_key and have_cert):
        missing, present = (files.ca_key, files.ca_cert) if not have_key else (files.ca_cert, files.ca_key)
        raise TLSConfigError(f"local CA is incomplete: {missing} is missing but {present} exists. Restore it "
                             f"from a backup, or remove {present} too to generate a new CA (edge hosts will then "
                             "have to trust the new one)")
    ca_key = _read_private_key(files.ca_key)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TLSConfigError(f"local CA key {files.ca_key} is not an EC or RSA key")
    ca_cert = _read_certificates(files.ca_cert)[0]
    if _spki(ca_cert.public_key()) != _spki(ca_key.public_key()):
        raise TLSConfigError(f"local CA key {files.ca_key} does not match {files.ca_cert}; restore the pair "
                             "from a backup, or remove both to generate a new CA")
    _tighten(files.ca_key)
    return ca_key, ca_cert


def _write_server(files: TLSFiles, ca_key: CertificateIssuerPrivateKeyTypes, ca_cert: x509.Certificate,
                  names: SubjectNames, reason: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_server(key, ca_key, ca_cert, names)
    # Key first, then certificate: a crash in between leaves a mismatched
    # pair, which serve reports (pointing at `cargohold tls issue`) instead of using.
    _write_private(files.server_key, _key_pem(key))
    _write_public(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    log.warning("issued server certificate %s (%s; SHA-256 fingerprint %s) for %s", files.server_cert, reason,
                _fingerprint(cert), names_text(names))
    return cert


def _usable_server_certificate(files: TLSFiles, ca_cert: x509.Certificate) -> x509.Certificate:
    """The existing server certificate, if serve can use it; raises TLSConfigError saying why not."""
    fix = ("; issue a new one with `cargohold tls issue` (edge hosts that trust the local CA accept it)")
    for path in (files.server_cert, files.server_key):
        if not path.exists():
            raise TLSConfigError(f"{path} is missing but its partner exists{fix}")
    cert = _read_certificates(files.server_cert)[0]
    key = _read_private_key(files.server_key)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise TLSConfigError(f"the server key {files.server_key} does not match {files.server_cert}{fix}")
    if cert.issuer != ca_cert.subject or not _signed_by(cert, ca_cert):
        raise TLSConfigError(f"the server certificate {files.server_cert} was not issued by the local CA "
                             f"{files.ca_cert}{fix}")
    return cert


def _issue_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cargohold"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"cargohold local CA ({socket.gethostname()})")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_server(key: ec.EllipticCurvePrivateKey, ca_key: CertificateIssuerPrivateKeyTypes,
                  ca_cert: x509.Certificate, names: SubjectNames) -> x509.Certificate:
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cargohold"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, REGISTRY_HOSTNAME)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names.general_names()), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"TLS certificate {path} does not exist") from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read TLS certificate {path}: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSConfigError(f"TLS certificate {path} holds no PEM certificate "
                             "(expected '-----BEGIN CERTIFICATE-----' blocks, leaf first)")
    return certs


def _read_private_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"TLS key {path} does not exist") from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read TLS key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"TLS key {path} is encrypted; give an unencrypted PEM key "
                             "(e.g. `openssl pkey -in KEY -out PLAIN`) readable only by the appliance's user") from None
    except (ValueError, UnsupportedAlgorithm):
        # The parser's message could quote key bytes; say only what is wrong.
        raise TLSConfigError(f"TLS key {path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TLSConfigError(f"TLS key {path} is a {type(key).__name__}; use an RSA or EC (ECDSA) key")
    return key


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode (never briefly world-readable), fsynced,
    # then renamed over the old file: a reader sees the old or the new file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _tighten(key_path: Path) -> None:
    if key_path.exists() and key_path.stat().st_mode & 0o077:
        key_path.chmod(0o600)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    # Two `serve` processes on one data directory must not issue two CAs.
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _is_dns_name(text: str, wildcard: bool = False) -> bool:
    labels = text.rstrip(".").split(".")
    if wildcard and len(labels) > 1 and labels[0] == "*":
        labels = labels[1:]
    return 0 < len(text) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
