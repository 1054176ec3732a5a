"""Pushing manifests over /v2/: validation, references that must exist, size cap, subject and referrers.

Plain HTTP against the real appliance, checked against the OCI Distribution
Specification v1.1 ("Pushing Manifests", "Listing Referrers"). Every refused
push is checked to have changed nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.appliance import Appliance
from tests.registry.v2client import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    V2,
    Pushed,
    assert_challenge,
    canonical,
    descriptor,
    error_codes,
    sha256,
)

EMPTY = b"{}"


@pytest.fixture
def v2(appliance: Appliance) -> V2:
    return V2(appliance)


def image_doc(v2: V2, repo: str, **extra: Any) -> dict[str, Any]:
    """An OCI image manifest whose config and layer are already in `repo`."""
    config = canonical({"architecture": "amd64", "os": "linux", "n": os.urandom(4).hex()})
    layer = os.urandom(500)
    v2.push_blob(repo, config)
    v2.push_blob(repo, layer)
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)], **extra}


def assert_refused(v2: V2, repo: str, body: bytes, content_type: str, status: int, code: str,
                   reference: str = "t") -> dict[str, Any]:
    r = v2.request("PUT", f"/v2/{repo}/manifests/{reference}", data=body, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert error_codes(r) == [code]
    # Nothing changed: the tag does not exist and the manifest is not stored by digest.
    got = v2.request("GET", f"/v2/{repo}/manifests/{sha256(body)}")
    assert got.status_code == 404, got.text
    entry: dict[str, Any] = r.json()["errors"][0]
    return entry


# -- validation -------------------------------------------------------------------------------


def test_valid_manifest_push_answers_location_and_digest(v2: V2, repo: str) -> None:
    body = canonical(image_doc(v2, repo))
    r = v2.put_manifest(repo, "1.0", body, OCI_MANIFEST)
    assert r.headers["Location"] == f"/v2/{repo}/manifests/{sha256(body)}"
    assert r.headers["Docker-Content-Digest"] == sha256(body)
    assert "OCI-Subject" not in r.headers
    # Pushing the identical manifest again is idempotent; by digest too.
    v2.put_manifest(repo, "1.0", body, OCI_MANIFEST)
    v2.put_manifest(repo, sha256(body), body, OCI_MANIFEST)


def test_manifest_without_media_type_is_inferred(v2: V2, repo: str) -> None:
    doc = image_doc(v2, repo)
    del doc["mediaType"]
    body = canonical(doc)
    v2.put_manifest(repo, "plain", body, OCI_MANIFEST)
    r = v2.request("GET", f"/v2/{repo}/manifests/plain")
    assert r.headers["Content-Type"] == OCI_MANIFEST and r.content == body


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: b"{not json", "not valid JSON"),
    (lambda d: b"[1, 2]", "JSON object"),
    (lambda d: b"\xff\xfe", "not valid JSON"),
    (lambda d: {**d, "schemaVersion": 3}, "schemaVersion"),
    (lambda d: {k: v for k, v in d.items() if k != "schemaVersion"}, "schemaVersion"),
    (lambda d: {**d, "schemaVersion": 1}, "schema1"),
    (lambda d: {**d, "mediaType": 7}, "mediaType"),
    (lambda d: {**d, "mediaType": "application/vnd.example+json"}, "mediaType"),
    (lambda d: {**d, "config": "sha256:abc"}, "config"),
    (lambda d: {k: v for k, v in d.items() if k != "config"}, "config"),
    (lambda d: {**d, "layers": {}}, "layers"),
    (lambda d: {**d, "layers": [{"mediaType": OCI_LAYER, "digest": "sha256:abc", "size": 1}]}, "layers[0].digest"),
    (lambda d: {**d, "layers": [{**d["layers"][0], "size": -1}]}, "layers[0].size"),
    (lambda d: {**d, "layers": [{**d["layers"][0], "size": "12"}]}, "layers[0].size"),
    (lambda d: {**d, "layers": [{**d["layers"][0], "mediaType": ""}]}, "layers[0].mediaType"),
    (lambda d: {**d, "layers": [{**d["layers"][0], "annotations": {"a": 1}}]}, "annotations"),
    (lambda d: {**d, "annotations": ["x"]}, "annotations"),
    (lambda d: {**d, "subject": {"digest": "sha256:abc"}}, "subject"),
    (lambda d: {**d, "artifactType": 5}, "artifactType"),
    (lambda d: {**d, "manifests": []}, "manifests"),
])
def test_malformed_manifests_are_manifest_invalid(v2: V2, repo: str, mutate: Any, needle: str) -> None:
    doc = mutate(image_doc(v2, repo))
    body = doc if isinstance(doc, bytes) else canonical(doc)
    entry = assert_refused(v2, repo, body, OCI_MANIFEST, 400, "MANIFEST_INVALID")
    assert needle in entry["message"], entry


def test_content_type_must_match_media_type(v2: V2, repo: str) -> None:
    body = canonical(image_doc(v2, repo))
    entry = assert_refused(v2, repo, body, DOCKER_MANIFEST, 400, "MANIFEST_INVALID")
    assert "does not match" in entry["message"]
    entry = assert_refused(v2, repo, body, OCI_INDEX, 400, "MANIFEST_INVALID")
    assert "does not match" in entry["message"]


def test_index_with_bad_descriptors_is_invalid(v2: V2, repo: str) -> None:
    for doc in (
        {"schemaVersion": 2, "mediaType": OCI_INDEX},
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST}]},
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(b"x"), "size": 1, "platform": {"os": 1}}]},
        {"schemaVersion": 2, "mediaType": DOCKER_LIST,
         "manifests": [{"mediaType": OCI_LAYER, "digest": sha256(b"x"), "size": 1}]},
    ):
        assert_refused(v2, repo, canonical(doc), str(doc["mediaType"]), 400, "MANIFEST_INVALID")


def test_every_referenced_blob_and_child_must_exist(v2: V2, repo: str) -> None:
    doc = image_doc(v2, repo)
    missing_layer = descriptor(OCI_LAYER, os.urandom(10))
    entry = assert_refused(v2, repo, canonical({**doc, "layers": [*doc["layers"], missing_layer]}), OCI_MANIFEST,
                           400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["missing"] == [missing_layer["digest"]]
    missing_config = descriptor(OCI_CONFIG, os.urandom(10))
    entry = assert_refused(v2, repo, canonical({**doc, "config": missing_config}), OCI_MANIFEST,
                           400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["missing"] == [missing_config["digest"]]
    # A blob pushed to another repository does not count.
    other = os.urandom(50)
    v2.push_blob(f"{repo}-elsewhere", other)
    assert_refused(v2, repo, canonical({**doc, "layers": [descriptor(OCI_LAYER, other)]}), OCI_MANIFEST,
                   400, "MANIFEST_BLOB_UNKNOWN")
    # An index whose child manifest is not in the repository.
    child = descriptor(OCI_MANIFEST, canonical(doc), platform={"os": "linux", "architecture": "amd64"})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}
    entry = assert_refused(v2, repo, canonical(index), OCI_INDEX, 400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["missing"] == [child["digest"]]
    # Once the child is pushed, the same index is accepted.
    v2.put_manifest(repo, child["digest"], canonical(doc), OCI_MANIFEST)
    v2.put_manifest(repo, "idx", canonical(index), OCI_INDEX)


def test_manifest_size_cap_is_413(appliance: Appliance, v2: V2, repo: str) -> None:
    doc = image_doc(v2, repo, annotations={"pad": "x" * (4 << 20)})
    body = canonical(doc)
    assert_refused(v2, repo, body, OCI_MANIFEST, 413, "MANIFEST_INVALID")
    # Without a Content-Length (chunked transfer) the cap still holds.
    r = v2.request("PUT", f"/v2/{repo}/manifests/t", data=iter([body[:1000], body[1000:]]),
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 413 and error_codes(r) == ["MANIFEST_INVALID"]


def test_push_by_digest_that_does_not_match_is_digest_invalid(v2: V2, repo: str) -> None:
    body = canonical(image_doc(v2, repo))
    other = sha256(body + b" ")
    r = v2.request("PUT", f"/v2/{repo}/manifests/{other}", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert v2.request("GET", f"/v2/{repo}/manifests/{other}").status_code == 404
    assert v2.request("GET", f"/v2/{repo}/manifests/{sha256(body)}").status_code == 404
    r = v2.request("PUT", f"/v2/{repo}/manifests/sha256:1234", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


def test_invalid_tag_is_tag_invalid(v2: V2, repo: str) -> None:
    body = canonical(image_doc(v2, repo))
    for tag in ("-lead", ".dot", "x" * 129):
        assert_refused(v2, repo, body, OCI_MANIFEST, 400, "TAG_INVALID", reference=tag)


def test_tag_with_trailing_newline_is_refused(v2: V2, repo: str) -> None:
    body = canonical(image_doc(v2, repo))
    assert_refused(v2, repo, body, OCI_MANIFEST, 400, "TAG_INVALID", reference="v1%0A")
    assert v2.request("GET", f"/v2/{repo}/tags/list").json()["tags"] == []


def test_push_and_delete_need_credentials(appliance: Appliance, v2: V2, repo: str) -> None:
    body = canonical(image_doc(v2, repo))
    anon = V2(appliance, auth=False)
    r = anon.request("PUT", f"/v2/{repo}/manifests/1", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert_challenge(r)
    r = v2.request("PUT", f"/v2/{repo}/manifests/1", data=body, headers={"Content-Type": OCI_MANIFEST},
                   auth=("admin", "wrong"))
    assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
    assert v2.request("GET", f"/v2/{repo}/manifests/1").status_code == 404
    for method, path in (("POST", f"/v2/{repo}/blobs/uploads/"),
                         ("DELETE", f"/v2/{repo}/manifests/1"),
                         ("DELETE", f"/v2/{repo}/blobs/{sha256(b'x')}"),
                         ("GET", "/v2/_catalog")):
        r = anon.request(method, path)
        assert_challenge(r)


# -- subject and referrers ----------------------------------------------------------------------


def push_referrer(v2: V2, repo: str, subject: Pushed, artifact_type: str | None,
                  annotations: dict[str, str] | None = None) -> Pushed:
    """An artifact manifest (empty config) whose subject is `subject`."""
    v2.push_blob(repo, EMPTY)
    blob = os.urandom(64)
    v2.push_blob(repo, blob)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": descriptor(OCI_EMPTY, EMPTY),
                           "layers": [descriptor("application/vnd.example.sig", blob)],
                           "subject": descriptor(subject.media_type, subject.body)}
    if artifact_type:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = annotations
    pushed = Pushed(canonical(doc), OCI_MANIFEST)
    r = v2.put_manifest(repo, pushed.digest, pushed.body, OCI_MANIFEST)
    assert r.headers["OCI-Subject"] == subject.digest
    return pushed


def test_referrers_list_and_filter(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, "1")
    sig = push_referrer(v2, repo, image, "application/vnd.example.sig", {"org.example": "yes"})
    sbom = push_referrer(v2, repo, image, "application/vnd.example.sbom")
    plain = push_referrer(v2, repo, image, None)  # artifactType falls back to config.mediaType
    r = v2.request("GET", f"/v2/{repo}/referrers/{image.digest}", auth=None)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == OCI_INDEX
    assert "OCI-Filters-Applied" not in r.headers
    body = r.json()
    assert body["schemaVersion"] == 2 and body["mediaType"] == OCI_INDEX
    by_digest = {m["digest"]: m for m in body["manifests"]}
    assert set(by_digest) == {sig.digest, sbom.digest, plain.digest}
    assert by_digest[sig.digest] == {"mediaType": OCI_MANIFEST, "digest": sig.digest, "size": len(sig.body),
                                     "artifactType": "application/vnd.example.sig",
                                     "annotations": {"org.example": "yes"}}
    assert by_digest[plain.digest]["artifactType"] == OCI_EMPTY
    r = v2.request("GET", f"/v2/{repo}/referrers/{image.digest}",
                   params={"artifactType": "application/vnd.example.sbom"})
    assert r.status_code == 200
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [sbom.digest]


def test_referrer_may_be_pushed_before_its_subject(v2: V2, repo: str) -> None:
    absent = Pushed(canonical({"schemaVersion": 2, "n": os.urandom(4).hex()}), OCI_MANIFEST)
    ref = push_referrer(v2, repo, absent, "application/vnd.example.sig")
    r = v2.request("GET", f"/v2/{repo}/referrers/{absent.digest}")
    assert [m["digest"] for m in r.json()["manifests"]] == [ref.digest]


def test_referrers_of_unknown_subject_is_an_empty_index(v2: V2, repo: str) -> None:
    for name in (repo, f"{repo}/never-pushed"):
        r = v2.request("GET", f"/v2/{name}/referrers/{sha256(os.urandom(8))}")
        assert r.status_code == 200, r.text
        assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_referrers_with_malformed_digest_is_400(v2: V2, repo: str) -> None:
    for bad in ("sha256:abc", "nodigest", "sha256:" + "G" * 64):
        r = v2.request("GET", f"/v2/{repo}/referrers/{bad}")
        assert r.status_code == 400, (bad, r.text)
        assert error_codes(r) == ["DIGEST_INVALID"]


def test_deleting_a_referrer_removes_it_from_the_list(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, "1")
    sig = push_referrer(v2, repo, image, "application/vnd.example.sig")
    assert v2.request("DELETE", f"/v2/{repo}/manifests/{sig.digest}").status_code == 202
    assert v2.request("GET", f"/v2/{repo}/referrers/{image.digest}").json()["manifests"] == []


# -- deletes ---------------------------------------------------------------------------------------


def test_delete_manifest_by_digest_removes_its_tags(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, "a")
    v2.put_manifest(repo, "b", image.body, image.media_type)
    keep = v2.push_image(repo, "keep")
    r = v2.request("DELETE", f"/v2/{repo}/manifests/{image.digest}")
    assert r.status_code == 202
    for ref in ("a", "b", image.digest):
        r = v2.request("GET", f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    assert v2.request("GET", f"/v2/{repo}/tags/list").json()["tags"] == ["keep"]
    assert v2.request("GET", f"/v2/{repo}/manifests/keep").content == keep.body
    r = v2.request("DELETE", f"/v2/{repo}/manifests/{image.digest}")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]


def test_delete_tag_keeps_the_manifest(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, "a")
    v2.put_manifest(repo, "b", image.body, image.media_type)
    assert v2.request("DELETE", f"/v2/{repo}/manifests/a").status_code == 202
    assert v2.request("GET", f"/v2/{repo}/manifests/a").status_code == 404
    assert v2.request("GET", f"/v2/{repo}/manifests/b").content == image.body
    assert v2.request("GET", f"/v2/{repo}/manifests/{image.digest}").content == image.body
    assert v2.request("GET", f"/v2/{repo}/tags/list").json()["tags"] == ["b"]
    r = v2.request("DELETE", f"/v2/{repo}/manifests/a")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    r = v2.request("DELETE", f"/v2/{repo}-nothing/manifests/a")
    assert r.status_code == 404


def test_delete_blob(v2: V2, repo: str) -> None:
    digest = v2.push_blob(repo, os.urandom(100))
    assert v2.request("DELETE", f"/v2/{repo}/blobs/{digest}").status_code == 202
    r = v2.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    r = v2.request("DELETE", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    r = v2.request("DELETE", f"/v2/{repo}/blobs/sha256:bad")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


def test_manifest_json_round_trips_byte_for_byte(v2: V2, repo: str) -> None:
    # Registries must store manifests exactly as pushed (the digest is of the bytes).
    doc = image_doc(v2, repo)
    body = json.dumps(doc, indent=3).encode() + b"\n"
    v2.put_manifest(repo, "pretty", body, OCI_MANIFEST)
    r = v2.request("GET", f"/v2/{repo}/manifests/pretty")
    assert r.content == body and r.headers["Docker-Content-Digest"] == sha256(body)


@pytest.mark.parametrize("front", ["nginx", "none"])
def test_truncated_manifest_body_is_refused(appliance: Appliance, appliance_factory: Callable[..., Appliance],
                                            repo: str, front: str) -> None:
    from tests.registry.test_api_push import basic, raw_http

    if front == "none":
        appliance = appliance_factory("--front", "none")
    v2 = V2(appliance)
    body = canonical(image_doc(v2, repo))
    status, response = raw_http(
        appliance,
        f"PUT /v2/{repo}/manifests/cut HTTP/1.1\nHost: {appliance.host}\nAuthorization: {basic(appliance)}\n"
        f"Content-Type: {OCI_MANIFEST}\nContent-Length: {len(body)}\nConnection: close\n", body[:len(body) // 2])
    if front == "none":
        assert status == 400, response
        assert b'"MANIFEST_INVALID"' in response
    else:
        # nginx buffers a manifest body: one that ends early never reaches the app, and the client,
        # taken as gone, gets a 400 or no answer.
        assert status in (0, 400), response
    assert v2.request("GET", f"/v2/{repo}/manifests/cut").status_code == 404


def test_pushing_a_tag_again_moves_it(v2: V2, repo: str) -> None:
    first = v2.push_image(repo, "1")
    second = v2.push_image(repo, "1")
    assert v2.request("GET", f"/v2/{repo}/manifests/1").content == second.body
    # The old manifest is still there by digest.
    assert v2.request("GET", f"/v2/{repo}/manifests/{first.digest}").content == first.body


def test_index_referrer_and_filter_without_matches(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, "1")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.example.bundle",
             "manifests": [], "subject": descriptor(image.media_type, image.body)}
    body = canonical(index)
    r = v2.put_manifest(repo, sha256(body), body, OCI_INDEX)
    assert r.headers["OCI-Subject"] == image.digest
    listed = v2.request("GET", f"/v2/{repo}/referrers/{image.digest}").json()["manifests"]
    assert listed == [{"mediaType": OCI_INDEX, "digest": sha256(body), "size": len(body),
                       "artifactType": "application/vnd.example.bundle"}]
    r = v2.request("GET", f"/v2/{repo}/referrers/{image.digest}", params={"artifactType": "application/none"})
    assert r.status_code == 200 and r.json()["manifests"] == []
    assert r.headers["OCI-Filters-Applied"] == "artifactType"



@pytest.mark.parametrize(("body", "problem"), [
    # 3.8 MB of "[]," (under the 4 MiB manifest limit): 1.3 million lists, about 90 MB built in one worker.
    (b"[" + b"[]," * 1_300_000 + b"[]]", "objects and arrays"),
    # json.loads recurses per level: a RecursionError.
    (b"[" * 200_000 + b"]" * 200_000, "nests deeper"),
], ids=["1.3 million [] lists", "200,000 nested ["])
def test_a_hostile_manifest_is_refused_before_it_is_parsed(v2: V2, repo: str, body: bytes, problem: str) -> None:
    refused = assert_refused(v2, repo, body, OCI_MANIFEST, 400, "MANIFEST_INVALID")
    assert problem in refused["message"]
