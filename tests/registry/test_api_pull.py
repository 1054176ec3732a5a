"""Pulling over /v2/: the base endpoint, manifests with content negotiation, blobs with Range.

Plain HTTP against the real appliance (gunicorn, two workers), checked
against the OCI Distribution Specification v1.1 "Pull" section.
"""

from __future__ import annotations

import os

import pytest
import requests

from tests.appliance import Appliance
from tests.registry.v2client import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    V2,
    assert_challenge,
    error_codes,
    sha256,
)


@pytest.fixture
def v2(appliance: Appliance) -> V2:
    return V2(appliance)


@pytest.fixture
def anon(appliance: Appliance) -> V2:
    return V2(appliance, auth=False)


# -- GET /v2/ -------------------------------------------------------------------


def test_base_endpoint_challenges_anonymous_and_accepts_credentials(v2: V2, anon: V2) -> None:
    r = anon.request("GET", "/v2/")
    assert_challenge(r)
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    r = v2.request("GET", "/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert r.json() == {}


def test_base_endpoint_refuses_wrong_password_and_malformed_credentials(v2: V2) -> None:
    r = v2.request("GET", "/v2/", auth=("admin", "wrong"))
    assert_challenge(r)
    r = v2.request("GET", "/v2/", auth=None, headers={"Authorization": "Basic !!!notbase64"})
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
    r = v2.request("GET", "/v2/", auth=None, headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]


# -- manifests ----------------------------------------------------------------------


def test_manifest_by_tag_and_digest_get_and_head(v2: V2, anon: V2, repo: str) -> None:
    image = v2.push_image(repo, "1.0")
    for ref in ("1.0", image.digest):
        r = anon.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200, r.text
        assert r.content == image.body
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == image.digest
        assert r.headers["ETag"] == f'"{image.digest}"'
        assert int(r.headers["Content-Length"]) == len(image.body)
        h = anon.request("HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert h.status_code == 200
        assert h.content == b""
        assert h.headers["Docker-Content-Digest"] == image.digest
        assert int(h.headers["Content-Length"]) == len(image.body)
        assert h.headers["Content-Type"] == OCI_MANIFEST


def test_manifest_unknown_tag_digest_and_repository(anon: V2, v2: V2, repo: str) -> None:
    r = anon.request("GET", f"/v2/{repo}/manifests/latest")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]
    v2.push_image(repo, "1.0")
    r = anon.request("GET", f"/v2/{repo}/manifests/2.0")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    r = anon.request("GET", f"/v2/{repo}/manifests/{sha256(os.urandom(8))}")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    h = anon.request("HEAD", f"/v2/{repo}/manifests/2.0")
    assert h.status_code == 404 and h.content == b""
    # Neither a tag nor a digest names no manifest: 404, as CNCF distribution answers (issue 11; the odd-input
    # tests in test_odd_input.py cover HEAD and PUT too).
    r = anon.request("GET", f"/v2/{repo}/manifests/sha256:xyz")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    r = anon.request("GET", f"/v2/{repo}/manifests/-bad-tag")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]


def test_content_negotiation_serves_each_stored_type_when_accepted(v2: V2, anon: V2, repo: str) -> None:
    oci = v2.push_image(repo, "oci")
    docker = v2.push_image(repo, "docker", docker=True)
    index = v2.push_index(repo, [(oci, "linux/amd64")], tag="index")
    mlist = v2.push_index(repo, [(docker, "linux/amd64")], tag="list", docker=True)
    everything = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
    for tag, pushed in (("oci", oci), ("docker", docker), ("index", index), ("list", mlist)):
        for accept in (pushed.media_type, everything, f"{pushed.media_type};q=0.9", "*/*", None):
            headers = {"Accept": accept} if accept else {}
            r = anon.request("GET", f"/v2/{repo}/manifests/{tag}", headers=headers)
            assert r.status_code == 200, (tag, accept, r.text)
            assert r.headers["Content-Type"] == pushed.media_type
            assert r.content == pushed.body


def test_docker_manifest_list_falls_back_to_linux_amd64(v2: V2, anon: V2, repo: str) -> None:
    arm = v2.push_image(repo, docker=True, platform="linux/arm64", seed=b"arm")
    amd = v2.push_image(repo, docker=True, platform="linux/amd64", seed=b"amd")
    mlist = v2.push_index(repo, [(arm, "linux/arm64"), (amd, "linux/amd64")], tag="1", docker=True)
    # A schema2-only client (old Docker) gets the linux/amd64 image, not the list.
    r = anon.request("GET", f"/v2/{repo}/manifests/1", headers={"Accept": DOCKER_MANIFEST})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == DOCKER_MANIFEST
    assert r.headers["Docker-Content-Digest"] == amd.digest
    assert r.content == amd.body
    # Asking for the list still gets the list.
    r = anon.request("GET", f"/v2/{repo}/manifests/1", headers={"Accept": f"{DOCKER_LIST}, {DOCKER_MANIFEST}"})
    assert r.headers["Docker-Content-Digest"] == mlist.digest


def test_unacceptable_types_are_refused(v2: V2, anon: V2, repo: str) -> None:
    arm = v2.push_image(repo, docker=True, platform="linux/arm64")
    v2.push_index(repo, [(arm, "linux/arm64")], tag="armonly", docker=True)
    oci = v2.push_image(repo, "oci")
    v2.push_index(repo, [(oci, "linux/amd64")], tag="index")
    cases = [
        ("armonly", DOCKER_MANIFEST),  # a list with no linux/amd64 child: nothing to fall back to
        ("oci", DOCKER_MANIFEST),
        ("index", OCI_MANIFEST),  # an OCI index never falls back
        ("oci", "application/json"),
    ]
    for tag, accept in cases:
        r = anon.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
        assert r.status_code == 404, (tag, accept, r.text)
        assert error_codes(r) == ["MANIFEST_UNKNOWN"]
        assert r.json()["errors"][0]["detail"]["mediaType"] in (DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)


# -- blobs -----------------------------------------------------------------------


def test_blob_get_and_head(v2: V2, anon: V2, repo: str) -> None:
    data = os.urandom(70_000)
    digest = v2.push_blob(repo, data)
    r = anon.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["ETag"] == f'"{digest}"'
    assert r.headers["Accept-Ranges"] == "bytes"
    h = anon.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert h.status_code == 200 and h.content == b""
    assert int(h.headers["Content-Length"]) == len(data)
    assert h.headers["Docker-Content-Digest"] == digest


def test_blob_conditional_get(v2: V2, anon: V2, repo: str) -> None:
    data = os.urandom(5000)
    digest = v2.push_blob(repo, data)
    r = anon.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert r.status_code == 304 and r.content == b""
    r = anon.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"If-None-Match": '"sha256:other"'})
    assert r.status_code == 200 and r.content == data


@pytest.mark.parametrize(("spec", "start", "end"), [
    ("bytes=0-0", 0, 0),
    ("bytes=100-199", 100, 199),
    ("bytes=9000-", 9000, 9999),
    ("bytes=-10", 9990, 9999),
    ("bytes=9990-20000", 9990, 9999),  # an end past the blob is clamped
])
def test_blob_range(v2: V2, anon: V2, repo: str, spec: str, start: int, end: int) -> None:
    data = os.urandom(10_000)
    digest = v2.push_blob(repo, data)
    r = anon.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": spec})
    assert r.status_code == 206, r.text
    assert r.content == data[start:end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/10000"
    assert int(r.headers["Content-Length"]) == end - start + 1
    assert r.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize("spec", [
    "bytes=10000-",  # starts at the end
    "bytes=20000-30000",  # wholly past the end
    "bytes=5-2",  # end before start
    "bytes=abc",  # does not parse
    "pages=1-2",  # a unit other than bytes
    "bytes=0-1,5-6",  # several ranges: one range per request is all the spec asks for
])
def test_blob_unsatisfiable_or_invalid_range_is_416_in_oci_json(v2: V2, anon: V2, repo: str, spec: str) -> None:
    data = os.urandom(10_000)
    digest = v2.push_blob(repo, data)
    r = anon.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": spec})
    assert r.status_code == 416
    assert error_codes(r) == ["RANGE_INVALID"]
    assert r.headers["Content-Range"] == "bytes */10000"
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_blob_unknown_and_invalid_digest(v2: V2, anon: V2, repo: str) -> None:
    digest = v2.push_blob(repo, b"known")
    other = sha256(os.urandom(16))
    r = anon.request("GET", f"/v2/{repo}/blobs/{other}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    h = anon.request("HEAD", f"/v2/{repo}/blobs/{other}")
    assert h.status_code == 404 and h.content == b""
    # Known to the store, but not linked into this repository: not servable from it.
    r = anon.request("GET", f"/v2/{repo}-other/blobs/{digest}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    r = anon.request("GET", f"/v2/{repo}/blobs/sha256:abc")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    r = anon.request("GET", f"/v2/{repo}/blobs/notadigest")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


def test_pulls_are_anonymous_but_wrong_credentials_are_refused(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, "1")
    r = requests.get(v2.url(f"/v2/{repo}/manifests/1"), headers={"Accept": OCI_MANIFEST}, timeout=10)
    assert r.status_code == 200 and r.content == image.body
    r = requests.get(v2.url(f"/v2/{repo}/manifests/1"), auth=("admin", "nope"), timeout=10)
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]


def test_docker_manifest_list_fallback_on_head(v2: V2, anon: V2, repo: str) -> None:
    amd = v2.push_image(repo, docker=True, platform="linux/amd64")
    v2.push_index(repo, [(amd, "linux/amd64")], tag="1", docker=True)
    h = anon.request("HEAD", f"/v2/{repo}/manifests/1", headers={"Accept": DOCKER_MANIFEST})
    assert h.status_code == 200
    assert h.headers["Docker-Content-Digest"] == amd.digest
    assert int(h.headers["Content-Length"]) == len(amd.body)


def test_base_endpoint_head_and_empty_basic_credentials(v2: V2, repo: str) -> None:
    assert v2.request("HEAD", "/v2/").status_code == 200
    # containers/image answers a challenge with empty credentials when it has none: anonymous,
    # so /v2/ still challenges, and an anonymous pull works where wrong credentials would not.
    assert_challenge(v2.request("GET", "/v2/", auth=("", "")))
    image = v2.push_image(repo, "1")
    r = v2.request("GET", f"/v2/{repo}/manifests/1", auth=("", ""))
    assert r.status_code == 200 and r.content == image.body


def test_blob_responses_are_cacheable(v2: V2, anon: V2, repo: str) -> None:
    digest = v2.push_blob(repo, b"cache me")
    r = anon.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert "max-age=31536000" in r.headers["Cache-Control"]
    assert r.headers["Content-Type"] == "application/octet-stream"
