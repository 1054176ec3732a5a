"""Errors over /v2/: unknown endpoints and methods answer in the spec's JSON, and bad input never gets a 5xx.

The property-based test throws random paths, methods, headers and bodies at
the real appliance (bounded: a fixed number of examples) and asserts that no
answer is a server error and that every /v2/ error carries the OCI error body.
"""

from __future__ import annotations

import base64
import hashlib
import os
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.appliance import Appliance
from tests.registry.v2client import OCI_MANIFEST, V2, error_codes

KNOWN_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
    "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS", "RANGE_INVALID", "TAG_INVALID", "PAGINATION_NUMBER_INVALID",
}


@pytest.fixture
def v2(appliance: Appliance) -> V2:
    return V2(appliance)


@pytest.mark.parametrize("path", [
    "/v2/nothing-here", "/v2/a/b/c", "/v2/a/manifests", "/v2/a/blobs/", "/v2/a/tags", "/v2/a/referrers",
    "/v2/a/blobs", "/v2/_catalog/x", "/v2/a/b/",
])
def test_unknown_endpoints_are_404_in_oci_json(v2: V2, path: str) -> None:
    r = v2.request("GET", path)
    assert r.status_code == 404, r.text
    assert error_codes(r)[0] in KNOWN_CODES
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("POST", "/v2/a/manifests/latest", {"GET", "HEAD", "PUT", "DELETE"}),
    ("PATCH", "/v2/a/manifests/latest", {"GET", "HEAD", "PUT", "DELETE"}),
    ("PUT", "/v2/a/blobs/sha256:" + "0" * 64, {"GET", "HEAD", "DELETE"}),
    ("POST", "/v2/a/tags/list", {"GET", "HEAD"}),
    ("DELETE", "/v2/", {"GET", "HEAD"}),
    ("PUT", "/v2/_catalog", {"GET", "HEAD"}),
    ("GET", "/v2/a/blobs/uploads/", {"POST"}),
    ("POST", "/v2/a/referrers/sha256:" + "0" * 64, {"GET", "HEAD"}),
])
def test_unsupported_methods_are_405_with_allow(v2: V2, method: str, path: str, allowed: set[str]) -> None:
    r = v2.request(method, path)
    assert r.status_code == 405, r.text
    assert error_codes(r) == ["UNSUPPORTED"]
    assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}


def test_error_bodies_carry_the_api_version_header(v2: V2, repo: str) -> None:
    for method, path in (("GET", f"/v2/{repo}/manifests/x"), ("GET", f"/v2/{repo}/blobs/sha256:bad"),
                         ("GET", "/v2/BAD/tags/list"), ("PUT", f"/v2/{repo}/manifests/x")):
        r = v2.request(method, path, data=b"{}", headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code >= 400
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert set(error_codes(r)) <= KNOWN_CODES


# -- property-based: nothing a client sends makes the server fail ------------------------------------

_DIGEST = "sha256:" + hashlib.sha256(b"fuzz").hexdigest()
_SEGMENTS = st.sampled_from([
    "manifests", "blobs", "uploads", "tags", "list", "referrers", "_catalog", "latest", "v1", _DIGEST,
    "sha256:", "sha512:abc", "md5:" + "0" * 32, "0" * 32, "..", ".", "", "spectro-images", "fuzz", "UPPER",
    "a__b", "x" * 300, "%00", "%0A", "%2F", "%FF", "é", "a b", "a;b", "*",
])
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
_HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.lstrip)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], dict[str, str], bytes]:
    segments = draw(st.lists(st.one_of(_SEGMENTS, _TEXT.map(lambda t: quote(t, safe=""))), min_size=0, max_size=7))
    path = "/v2/" + "/".join(["spectro-images", "fuzz", *segments] if draw(st.booleans()) else segments)
    if draw(st.booleans()):
        path += "/"
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]))
    params = draw(st.dictionaries(st.sampled_from(["n", "last", "digest", "mount", "from", "ns", "artifactType"]),
                                  st.one_of(_TEXT, st.sampled_from([_DIGEST, "10", "-1", "docker.io", ""])),
                                  max_size=3))
    headers = draw(st.dictionaries(
        st.sampled_from(["Accept", "Content-Type", "Range", "Content-Range", "If-None-Match",
                         "Content-Length", "Transfer-Encoding"]),
        st.one_of(_HEADER_VALUE, st.sampled_from([
            OCI_MANIFEST, "bytes=0-10", "bytes=5-", "0-3", "bytes */*", "*", "chunked", "0", "99999999999",
        ])),
        max_size=4))
    # Authorization only from a fixed set: every distinct wrong password counts towards the
    # login lockout of 127.0.0.1, which the whole test session shares.
    authorization = draw(st.sampled_from([None, "Basic " + base64.b64encode(b":").decode(),
                                          "Basic " + base64.b64encode(b"admin:x").decode(), "Bearer x",
                                          "Bearer a.b.c", "Basic", "Basic !!!", "Digest x", "Basic YWRtaW4="]))
    if authorization is not None:
        headers["Authorization"] = authorization
    body = draw(st.one_of(st.binary(max_size=300), st.sampled_from([
        b"", b"{}", b'{"schemaVersion": 2}', b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'",'
        b' "config": {"mediaType": "a", "digest": "' + _DIGEST.encode() + b'", "size": 1}, "layers": []}',
        b"[]", b"null", b'{"manifests": 5, "schemaVersion": 2}',
    ])))
    return method, path, params, headers, body


# 200 in the default run; CARGOHOLD_FUZZ_EXAMPLES=5000 for a longer hunt.
@settings(max_examples=int(os.environ.get("CARGOHOLD_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=_requests(), authenticated=st.booleans())
def test_random_requests_never_get_a_server_error(appliance: Appliance, req: tuple[str, str, dict[str, str],
                                                  dict[str, str], bytes], authenticated: bool) -> None:
    method, path, params, headers, body = req
    # Headers that would make `requests` itself misframe the body are the HTTP layer's business, not ours.
    length = headers.pop("Content-Length", None)
    encoding = headers.pop("Transfer-Encoding", None)
    session = requests.Session()
    prepared = requests.Request(method, appliance.url + path, params=params, headers=headers, data=body,
                                auth=appliance.admin if authenticated and "Authorization" not in headers else None,
                                ).prepare()
    if length is not None and length.isdigit() and int(length) == len(body):
        prepared.headers["Content-Length"] = length
    del encoding
    try:
        r = session.send(prepared, timeout=30, allow_redirects=False)
    finally:
        session.close()
    assert r.status_code < 500, (method, path, params, headers, body[:100], r.status_code, r.text[:500])
    if r.status_code >= 400 and method != "HEAD" and r.request.path_url.startswith("/v2/"):
        assert set(error_codes(r)) <= KNOWN_CODES, r.text


def test_server_is_healthy_after_the_fuzzing(v2: V2, repo: str) -> None:
    data = os.urandom(1000)
    assert v2.push_blob(repo, data)
    assert v2.request("GET", "/v2/").status_code == 200


def test_deeply_nested_json_is_a_client_error(v2: V2, repo: str) -> None:
    # json.loads recurses per nesting level: without care a few thousand '[' are a RecursionError, a 500.
    nested = b"[" * 5000 + b"]" * 5000
    r = v2.request("PUT", f"/v2/{repo}/manifests/deep", data=nested, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_INVALID"]
    token = ".".join(base64.urlsafe_b64encode(part).decode().rstrip("=") for part in (nested[:3000], nested[:3000],
                                                                                      b"x" * 64))
    r = v2.request("GET", f"/v2/{repo}/tags/list", auth=None, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]


# Manifest-shaped JSON: the right keys with values of every type, so the validator's every branch is reached.
_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2, max_value=2**70), st.floats(allow_nan=False),
                       st.text(max_size=20), st.sampled_from([_DIGEST, OCI_MANIFEST, "application/vnd.oci.image.index"
                                                              ".v1+json", "linux", "amd64"]))
_KEYS = st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "digest", "size",
                         "annotations", "artifactType", "platform", "os", "architecture", "urls"])
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_KEYS, inner, max_size=6)), max_leaves=25)


@settings(max_examples=int(os.environ.get("CARGOHOLD_FUZZ_EXAMPLES", "100")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=_JSON, content_type=st.sampled_from([OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                                               "application/vnd.docker.distribution.manifest.v2+json",
                                               "application/json", "text/plain", ""]),
       reference=st.sampled_from(["t", _DIGEST, "sha512:" + "a" * 128]),
       chunk=st.tuples(st.integers(-1, 40), st.integers(-1, 40), st.binary(max_size=30)),
       range_header=st.sampled_from(["{s}-{e}", "bytes {s}-{e}/*", "bytes={s}-{e}", "{s}-", "-{e}", "{s}", ""]))
def test_random_manifests_and_chunks_never_get_a_server_error(
        appliance: Appliance, doc: object, content_type: str, reference: str,
        chunk: tuple[int, int, bytes], range_header: str) -> None:
    import json

    v2 = V2(appliance)
    repo = "spectro-images/fuzz/deep"
    r = v2.request("PUT", f"/v2/{repo}/manifests/{reference}", data=json.dumps(doc).encode(),
                   headers={"Content-Type": content_type} if content_type else {})
    assert r.status_code < 500, (doc, content_type, r.text)
    if r.status_code >= 400:
        assert set(error_codes(r)) <= KNOWN_CODES
    start, end, data = chunk
    location = v2.start_upload(repo)
    headers = {"Content-Range": range_header.format(s=start, e=end)} if range_header else {}
    for method in ("PATCH", "PUT"):
        r = v2.request(method, location, data=data, headers=headers,
                       params={"digest": sha256_text(data)} if method == "PUT" else None)
        assert r.status_code < 500, (method, headers, r.text)
    v2.request("DELETE", location)


def sha256_text(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_deeply_nested_json_on_the_harbor_api_is_a_client_error(appliance: Appliance) -> None:
    nested = b"[" * 5000 + b"]" * 5000
    r = requests.post(f"{appliance.url}/api/v2.0/projects", data=nested, auth=appliance.admin, timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
