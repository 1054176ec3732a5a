"""A small Distribution API client over `requests` for the /v2/ HTTP tests.

It speaks the wire protocol exactly as the OCI distribution spec writes it
(POST/PATCH/PUT uploads, manifest PUTs with a Content-Type), so the tests can
also send what a well-behaved client never would. Every helper asserts the
status it expects, so a test fails where the protocol broke.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import requests

from tests.appliance import Appliance

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TIMEOUT = 30


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Pushed:
    """A manifest pushed by the tests: its bytes, digest and media type."""

    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.body)


class V2:
    """Requests against one appliance, with or without credentials."""

    def __init__(self, appliance: Appliance, auth: bool = True) -> None:
        self.appliance = appliance
        self.base = appliance.url
        self.auth = appliance.admin if auth else None

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("auth", self.auth)
        kw.setdefault("allow_redirects", False)
        # A fresh connection per request: nothing pins a test to one gunicorn worker.
        kw.setdefault("headers", {})
        kw["headers"].setdefault("Connection", "close")
        return requests.request(method, self.url(path), **kw)

    # -- blobs ----------------------------------------------------------------

    def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic push: POST then PUT with the whole body. Returns the digest."""
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        digest = sha256(data)
        r = self.request("PUT", r.headers["Location"], params={"digest": digest}, data=data,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == digest
        return digest

    def start_upload(self, repo: str) -> str:
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        assert r.headers["Location"].startswith(f"/v2/{repo}/blobs/uploads/")
        return str(r.headers["Location"])

    # -- manifests ------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str,
                     expect: int = 201) -> requests.Response:
        r = self.request("PUT", f"/v2/{repo}/manifests/{reference}", data=body,
                         headers={"Content-Type": media_type})
        assert r.status_code == expect, r.text
        return r

    def push_image(self, repo: str, tag: str | None = None, seed: bytes = b"", docker: bool = False,
                   layer_size: int = 1000, extra: dict[str, Any] | None = None,
                   platform: str = "linux/amd64") -> Pushed:
        """Push config + one layer + a manifest (OCI, or Docker schema2 with `docker`)."""
        os_name, arch = platform.split("/")
        config = canonical({"architecture": arch, "os": os_name, "seed": seed.hex(),
                            "rootfs": {"type": "layers", "diff_ids": []}})
        layer = seed + os.urandom(layer_size)
        self.push_blob(repo, config)
        self.push_blob(repo, layer)
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
            "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer)],
            **(extra or {}),
        }
        pushed = Pushed(canonical(doc), str(doc["mediaType"]))
        self.put_manifest(repo, tag or pushed.digest, pushed.body, pushed.media_type)
        return pushed

    def push_index(self, repo: str, children: list[tuple[Pushed, str]], tag: str | None = None,
                   docker: bool = False) -> Pushed:
        """Push an index (or Docker manifest list) over already pushed (manifest, "os/arch") children."""
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST if docker else OCI_INDEX,
            "manifests": [descriptor(child.media_type, child.body,
                                     platform={"os": p.split("/")[0], "architecture": p.split("/")[1]})
                          for child, p in children],
        }
        pushed = Pushed(canonical(doc), str(doc["mediaType"]))
        self.put_manifest(repo, tag or pushed.digest, pushed.body, pushed.media_type)
        return pushed


def error_codes(r: requests.Response) -> list[str]:
    """The OCI error codes of a response; asserts the spec's error body shape."""
    assert r.headers.get("Content-Type", "").startswith("application/json"), (r.status_code, r.headers, r.text)
    body = r.json()
    assert isinstance(body.get("errors"), list) and body["errors"], body
    for entry in body["errors"]:
        assert isinstance(entry["code"], str) and isinstance(entry["message"], str) and entry["message"], entry
    return [e["code"] for e in body["errors"]]


def assert_challenge(r: requests.Response) -> None:
    """A 401 with the spec's error body and a WWW-Authenticate challenge naming a realm."""
    assert r.status_code == 401, r.text
    assert error_codes(r) == ["UNAUTHORIZED"]
    challenge = r.headers.get("WWW-Authenticate", "")
    assert challenge.startswith(("Basic ", "Bearer ")) and 'realm="' in challenge, challenge
