"""Pulling manifests and blobs from a reachable registry (the Distribution API), for bundle builds.

Plain `requests`, streaming: a blob goes from the HTTP response straight into
a spool file on disk while it is hashed, and is refused unless its size and
digest are what the manifest said. Manifests are small (capped at
MAX_MANIFEST_BYTES) and are returned as bytes.

Authentication follows the registry's challenge: Basic, or Bearer tokens
from the realm named in ``WWW-Authenticate`` (Docker Hub, Harbor,
distribution with token auth), cached per scope. Credentials come from the
caller (``--registry-creds``) or from a containers/docker auth file.
`insecure` talks plain HTTP (a local registry on 127.0.0.1); `ca_file` trusts
a private CA for HTTPS. TLS is never left unverified.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.manifests import MANIFEST_TYPES, OCI_INDEX

MAX_MANIFEST_BYTES = 4 << 20
CHUNK = 1 << 20
ACCEPT = ", ".join(MANIFEST_TYPES)
_DOCKER_HUB_API = "registry-1.docker.io"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class PullError(RuntimeError):
    """A registry could not be reached or did not give what was asked; the message says which and why."""


class NotFound(PullError):
    """The registry answered 404: it does not hold what was asked (another source may)."""


Credentials = Callable[[str], "tuple[str, str] | None"]


def auth_file_credentials(path: Path | None = None) -> Credentials:
    """Credentials per registry host from a containers auth.json / docker config.json.

    Without `path`: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    ~/.docker/config.json, the first that exists. A missing file means no credentials.
    """
    candidates = [path] if path else [
        Path(p) for p in (os.environ.get("REGISTRY_AUTH_FILE"),
                          os.environ.get("XDG_RUNTIME_DIR") and f"{os.environ['XDG_RUNTIME_DIR']}/containers/auth.json",
                          Path.home() / ".docker" / "config.json") if p]
    auths: dict[str, Any] = {}
    for candidate in candidates:
        try:
            doc = json.loads(candidate.read_text())
        except FileNotFoundError:
            if path is not None:
                raise PullError(f"auth file {path} does not exist") from None
            continue
        except (OSError, ValueError) as exc:
            raise PullError(f"cannot read auth file {candidate}: {exc}") from None
        auths = doc.get("auths", {}) if isinstance(doc, dict) else {}
        break

    def lookup(host: str) -> tuple[str, str] | None:
        for key in (host, f"https://{host}", f"http://{host}", *(["https://index.docker.io/v1/", "index.docker.io"]
                                                                   if host == "docker.io" else [])):
            entry = auths.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                return user, password
        return None

    return lookup


@dataclass
class RegistryClient:
    """Reads from registries over the Distribution API."""

    insecure: bool = False
    credentials: Credentials = field(default=lambda host: None)
    timeout: float = 60.0
    ca_file: Path | None = None  # extra CA for HTTPS registries (a site CA); None: the system's
    _session: requests.Session = field(default_factory=requests.Session, repr=False)
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _basic: set[str] = field(default_factory=set, repr=False)

    @property
    def _verify(self) -> str | bool:
        # Per request: requests lets $REQUESTS_CA_BUNDLE override a session-wide setting.
        return str(self.ca_file) if self.ca_file is not None else True

    def close(self) -> None:
        self._session.close()

    def _url(self, host: str, repository: str, kind: str, reference: str) -> str:
        api_host = _DOCKER_HUB_API if host == "docker.io" else host
        return f"{'http' if self.insecure else 'https'}://{api_host}/v2/{repository}/{kind}/{reference}"

    def _get(self, host: str, repository: str, url: str, headers: dict[str, str], stream: bool,
             method: str = "GET") -> requests.Response:
        """GET (or HEAD) with the registry's auth scheme, answering one challenge if needed."""
        scope = f"repository:{repository}:pull"
        for attempt in range(2):
            hdrs = dict(headers)
            token = self._tokens.get((host, scope))
            creds = self.credentials(host)
            if token:
                hdrs["Authorization"] = f"Bearer {token}"
            elif host in self._basic and creds:
                hdrs["Authorization"] = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            try:
                resp = self._session.request(method, url, headers=hdrs, stream=stream, timeout=self.timeout,
                                             verify=self._verify)
            except requests.exceptions.SSLError as exc:
                raise PullError(f"registry {host}: TLS verification failed ({exc}); give its CA with "
                                "--registry-ca") from None
            except requests.RequestException as exc:
                raise PullError(f"registry {host} is unreachable: {exc}") from None
            if resp.status_code != 401 or attempt == 1:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            scheme = challenge.split(" ", 1)[0].lower()
            if scheme == "basic":
                if not creds:
                    raise PullError(f"registry {host} requires credentials (use --registry-creds or an auth file)")
                self._basic.add(host)
            elif scheme == "bearer":
                self._tokens[(host, scope)] = self._token(host, challenge, scope, creds)
            else:
                raise PullError(f"registry {host} asks for unsupported authentication {challenge!r}")
        raise AssertionError("unreachable")

    def _token(self, host: str, challenge: str, scope: str, creds: tuple[str, str] | None) -> str:
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise PullError(f"registry {host} sent a Bearer challenge without a realm")
        params["scope"] = scope
        try:
            resp = self._session.get(realm, params=params, auth=creds, timeout=self.timeout, verify=self._verify)
        except requests.RequestException as exc:
            raise PullError(f"token service {realm} for {host} is unreachable: {exc}") from None
        if resp.status_code in (401, 403):
            raise PullError(f"token service of {host} refused the credentials ({resp.status_code})")
        if resp.status_code != 200:
            raise PullError(f"token service of {host} answered {resp.status_code}")
        doc = resp.json()
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str):
            raise PullError(f"token service of {host} sent no token")
        return token

    def _fail(self, resp: requests.Response, what: str, host: str) -> PullError:
        if resp.status_code == 404:
            return NotFound(f"{what} not found in registry {host}")
        if resp.status_code in (401, 403):
            return PullError(f"registry {host} refused access to {what} ({resp.status_code}); check the credentials")
        return PullError(f"registry {host} answered {resp.status_code} for {what}")

    def manifest(self, host: str, repository: str, reference: str) -> tuple[bytes, str]:
        """(body, media type) of a manifest by tag or digest; a digest reference is verified."""
        found = self._manifest(host, repository, reference, missing_ok=False)
        assert found is not None
        return found

    def optional_manifest(self, host: str, repository: str, reference: str) -> tuple[bytes, str] | None:
        """Like `manifest`, but None when the registry answers 404 (e.g. an image has no cosign tag)."""
        return self._manifest(host, repository, reference, missing_ok=True)

    def referrers(self, host: str, repository: str, digest: Digest) -> list[Descriptor] | None:
        """Descriptors from ``GET /v2/<name>/referrers/<digest>`` (OCI 1.1); None if the registry lacks the API.

        A registry without the API answers 404 (or 400/405); the caller then
        falls back to the referrers tag schema (a ``sha256-<hex>`` index tag).
        """
        from registry.manifests import parse_manifest

        url = f"{'http' if self.insecure else 'https'}://{_DOCKER_HUB_API if host == 'docker.io' else host}" \
              f"/v2/{repository}/referrers/{digest}"
        resp = self._get(host, repository, url, {"Accept": OCI_INDEX}, stream=True)
        with resp:
            if resp.status_code in (400, 404, 405):
                return None
            if resp.status_code != 200:
                raise self._fail(resp, f"referrers of {host}/{repository}@{digest}", host)
            body = self._read_capped(resp, f"referrers of {host}/{repository}@{digest}")
        try:
            return list(parse_manifest(body, OCI_INDEX).manifests)
        except RegistryError as exc:
            raise PullError(f"referrers of {host}/{repository}@{digest}: {exc.message}") from None

    @staticmethod
    def _read_capped(resp: requests.Response, what: str) -> bytes:
        body = b""
        for chunk in resp.iter_content(CHUNK):
            body += chunk
            if len(body) > MAX_MANIFEST_BYTES:
                raise PullError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
        return body

    def _manifest(self, host: str, repository: str, reference: str, missing_ok: bool) -> tuple[bytes, str] | None:
        what = f"manifest {host}/{repository}{'@' if ':' in reference else ':'}{reference}"
        if missing_ok:
            # Most images have no cosign tags: ask with HEAD, which registries (Docker Hub) do not count as pulls.
            head = self._get(host, repository, self._url(host, repository, "manifests", reference),
                             {"Accept": ACCEPT}, stream=False, method="HEAD")
            head.close()
            if head.status_code == 404:
                return None
        resp = self._get(host, repository, self._url(host, repository, "manifests", reference),
                         {"Accept": ACCEPT}, stream=True)
        with resp:
            if resp.status_code == 404 and missing_ok:
                return None
            if resp.status_code != 200:
                raise self._fail(resp, what, host)
            body = b""
            for chunk in resp.iter_content(CHUNK):
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise PullError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if ":" in reference:
            expected = Digest.parse(reference)
            if Digest.of_bytes(body, expected.algorithm) != expected:
                raise PullError(f"{what}: the registry sent content that does not match the digest")
        return body, media_type

    def fetch_blob(self, host: str, repository: str, desc: Descriptor, dest: Path,
                   on_bytes: Callable[[int], None] | None = None) -> None:
        """Stream a blob into `dest`, verifying size and digest; raises PullError (and removes `dest`)."""
        what = f"blob {desc.digest} of {host}/{repository}"
        resp = self._get(host, repository, self._url(host, repository, "blobs", str(desc.digest)), {}, stream=True)
        try:
            with resp:
                if resp.status_code != 200:
                    raise self._fail(resp, what, host)
                hasher = desc.digest.hasher()
                size = 0
                with dest.open("wb") as out:
                    for chunk in resp.raw.stream(CHUNK, decode_content=False):
                        size += len(chunk)
                        if size > desc.size:
                            raise PullError(f"{what}: the registry sent more than the {desc.size} bytes expected")
                        hasher.update(chunk)
                        out.write(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                if size != desc.size:
                    raise PullError(f"{what}: got {size} bytes, expected {desc.size}")
                if hasher.hexdigest() != desc.digest.encoded:
                    raise PullError(f"{what}: the registry sent content that does not match the digest")
        except requests.RequestException as exc:
            dest.unlink(missing_ok=True)
            raise PullError(f"{what}: download failed: {exc}") from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
