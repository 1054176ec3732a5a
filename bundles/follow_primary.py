"""The primary appliance as a follower sees it: its address, the robot it is read as, and its release API.

`PrimaryApi` reads the JSON release API (``/api/cargohold/v1``) with Basic
credentials of a robot account and streams release files, verified against
their digests; its errors are `FollowError` lines that name the problem and
never a credential. The registry side (/v2/) is `bundles.registry_client`.
Used by `bundles.follow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from bundles.registry_client import CHUNK
from registry.digest import Digest

API = "/api/cargohold/v1"
EVENTS_PAGE = 1000


class FollowError(Exception):
    """A round could not finish; the message names the problem (never a credential). Nothing half-done is kept.

    `credentials` is true when the primary refused the robot's credentials: retrying at once would only count
    toward the primary's login limits.
    """

    def __init__(self, message: str, credentials: bool = False) -> None:
        super().__init__(message)
        self.credentials = credentials


class ContentGone(FollowError):
    """The primary lists a release but no longer holds all of its content (collected outside its retention)."""


@dataclass(frozen=True)
class Primary:
    """The appliance followed, and the robot account it is read as."""

    url: str  # scheme://host[:port]
    robot: str
    secret: str = field(repr=False)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") \
                or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(f"primary {self.url!r} must be http(s)://host[:port] with nothing after it")
        if not self.robot or not self.secret:
            raise ValueError("a robot account name and its secret are needed")

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


class PrimaryApi:
    """The primary's JSON release API, read as the robot (Basic)."""

    def __init__(self, primary: Primary, timeout: float = 60.0) -> None:
        self.primary = primary
        self.timeout = timeout
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def _request(self, path: str, stream: bool = False, **params: Any) -> requests.Response:
        url = f"{self.primary.base}{API}{path}"
        try:
            resp = self.session.get(url, params=params or None, auth=(self.primary.robot, self.primary.secret),
                                    timeout=self.timeout, stream=stream,
                                    verify=str(self.primary.ca_file) if self.primary.ca_file else True)
        except requests.exceptions.SSLError:
            raise FollowError(f"primary {self.primary.base}: TLS verification failed; give its CA with --ca") \
                from None
        except requests.RequestException as exc:
            raise FollowError(f"primary {self.primary.base} is unreachable: {type(exc).__name__}") from None
        if resp.status_code == 200:
            return resp
        message = _error_message(resp)
        resp.close()
        if resp.status_code == 401:
            raise FollowError(f"primary {self.primary.base} refused the robot account {self.primary.robot} (401): "
                              "check the robot name and its secret", credentials=True)
        if resp.status_code == 403:
            raise FollowError(f"primary {self.primary.base}: robot {self.primary.robot} may not read releases "
                              f"(403: {message}); it needs pull on the primary's projects")
        raise FollowError(f"primary {self.primary.base} answered {resp.status_code} for {path}: {message}")

    def json(self, path: str, **params: Any) -> Any:
        resp = self._request(path, **params)
        try:
            return resp.json()
        except ValueError:
            raise FollowError(f"primary {self.primary.base} sent no JSON for {path}: is it a cargohold "
                              "appliance?") from None

    def releases(self) -> list[dict[str, Any]]:
        doc = self.json("/releases")
        if not isinstance(doc, dict) or not isinstance(doc.get("releases"), list):
            raise FollowError(f"primary {self.primary.base}: the release list has an unexpected shape")
        return sorted(doc["releases"], key=lambda r: int(r["id"]))

    def release(self, release_id: int) -> dict[str, Any]:
        doc = self.json(f"/releases/{release_id}")
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise FollowError(f"primary {self.primary.base}: release {release_id} has an unexpected shape")
        return doc

    def events(self, after: int) -> tuple[list[dict[str, Any]], int]:
        """Every event after `after`, oldest first, and the primary's last sequence number."""
        found: list[dict[str, Any]] = []
        last = after
        while True:
            doc = self.json("/releases/events", after=str(after), limit=str(EVENTS_PAGE))
            page, last = doc.get("events", []), int(doc.get("last", 0))
            found += page
            if len(page) < EVENTS_PAGE:
                return found, last
            after = int(page[-1]["seq"])

    def fetch_file(self, release_id: int, digest: Digest, size: int, dest: Path) -> None:
        """Stream one release file into `dest`, verified against `digest` and `size`; removes `dest` on failure."""
        what = f"file {digest} of release {release_id} on {self.primary.base}"
        resp = self._request(f"/releases/{release_id}/files/{digest}", stream=True)
        try:
            with resp, dest.open("wb") as out:
                hasher, got = digest.hasher(), 0
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    got += len(chunk)
                    if got > size:
                        raise FollowError(f"{what}: the primary sent more than the {size} bytes expected")
                    hasher.update(chunk)
                    out.write(chunk)
            if got != size:
                raise FollowError(f"{what}: got {got} bytes, expected {size}")
            if hasher.hexdigest() != digest.encoded:
                raise FollowError(f"{what}: the primary sent content that does not match the digest")
        except requests.RequestException as exc:
            dest.unlink(missing_ok=True)
            raise FollowError(f"{what}: download failed: {type(exc).__name__}") from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise


def _error_message(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        return str(errors[0].get("message", ""))[:300] if errors else resp.reason
    except (ValueError, AttributeError, IndexError):
        return str(resp.reason)
