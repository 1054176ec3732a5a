"""Unit tests of registry.manifests: parsing and validating pushed manifests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from registry.digest import Digest
from registry.errors import RegistryError
from registry.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_descriptor,
    parse_manifest,
    referrer_artifact_type,
)


def d(data: bytes, media_type: str = "application/octet-stream", **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data),
            **extra}


CONFIG = d(b"config", "application/vnd.oci.image.config.v1+json")
LAYER = d(b"layer", "application/vnd.oci.image.layer.v1.tar+gzip")
FOREIGN = d(b"win", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
IMAGE = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": [LAYER]}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def invalid(doc: Any, content_type: str | None = OCI_MANIFEST) -> str:
    with pytest.raises(RegistryError) as exc:
        parse_manifest(doc if isinstance(doc, bytes) else body(doc), content_type)
    assert exc.value.code == "MANIFEST_INVALID" and exc.value.status == 400
    return exc.value.message


def test_image_manifest() -> None:
    raw = body({**IMAGE, "annotations": {"a": "b"}})
    m = parse_manifest(raw, OCI_MANIFEST)
    assert m.media_type == OCI_MANIFEST and not m.is_index
    assert m.digest == Digest.of_bytes(raw) and m.size == len(raw)
    assert str(m.config.digest) == CONFIG["digest"] if m.config else False
    assert [str(x.digest) for x in m.layers] == [LAYER["digest"]]
    assert m.annotations == {"a": "b"}
    assert [str(x.digest) for x in m.required_blobs] == [CONFIG["digest"], LAYER["digest"]]


def test_foreign_layers_are_not_required() -> None:
    m = parse_manifest(body({**IMAGE, "layers": [LAYER, FOREIGN]}), OCI_MANIFEST)
    assert len(m.layers) == 2
    assert [str(x.digest) for x in m.required_blobs] == [CONFIG["digest"], LAYER["digest"]]


def test_docker_manifest_and_list() -> None:
    m = parse_manifest(body({**IMAGE, "mediaType": DOCKER_MANIFEST}), DOCKER_MANIFEST)
    assert m.media_type == DOCKER_MANIFEST
    child = d(b"child", DOCKER_MANIFEST, platform={"os": "linux", "architecture": "amd64"})
    lst = parse_manifest(body({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [child]}), DOCKER_LIST)
    assert lst.is_index and lst.manifests[0].platform == {"os": "linux", "architecture": "amd64"}
    assert lst.required_blobs == ()


def test_index_with_subject_and_artifact_type() -> None:
    subject = d(b"subject", OCI_MANIFEST)
    idx = parse_manifest(body({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                               "subject": subject, "artifactType": "application/x.sig"}), OCI_INDEX)
    assert idx.subject is not None and str(idx.subject.digest) == subject["digest"]
    assert referrer_artifact_type(idx) == "application/x.sig"


def test_media_type_inferred_when_absent() -> None:
    no_type = {k: v for k, v in IMAGE.items() if k != "mediaType"}
    assert parse_manifest(body(no_type), None).media_type == OCI_MANIFEST
    assert parse_manifest(body(no_type), "application/json").media_type == OCI_MANIFEST
    assert parse_manifest(body({"schemaVersion": 2, "manifests": []}), None).media_type == OCI_INDEX
    # The Content-Type names it when the body does not.
    assert parse_manifest(body(no_type), f"{OCI_MANIFEST}; charset=utf-8").media_type == OCI_MANIFEST


def test_referrer_artifact_type_falls_back_to_config_media_type() -> None:
    m = parse_manifest(body(IMAGE), OCI_MANIFEST)
    assert referrer_artifact_type(m) == CONFIG["mediaType"]
    m = parse_manifest(body({**IMAGE, "artifactType": "application/x.sbom"}), OCI_MANIFEST)
    assert referrer_artifact_type(m) == "application/x.sbom"


@pytest.mark.parametrize(("doc", "needle"), [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff", "not valid JSON"),
    ([], "JSON object"),
    ({**IMAGE, "schemaVersion": "2"}, "schemaVersion"),
    ({**IMAGE, "schemaVersion": 2.0}, "schemaVersion"),
    ({**IMAGE, "schemaVersion": True}, "schema"),
    ({**IMAGE, "schemaVersion": 1}, "schema1"),
    ({**IMAGE, "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws"}, "schema1"),
    ({**IMAGE, "mediaType": ["x"]}, "mediaType must be a string"),
    ({**IMAGE, "config": None}, "config must be a descriptor"),
    ({**IMAGE, "layers": None}, "'layers' array"),
    ({**IMAGE, "layers": [1]}, "layers[0] must be a descriptor"),
    ({**IMAGE, "layers": [{**LAYER, "size": True}]}, "layers[0].size"),
    ({**IMAGE, "layers": [{**LAYER, "size": 1.5}]}, "layers[0].size"),
    ({**IMAGE, "layers": [{**LAYER, "digest": 5}]}, "layers[0].digest must be a string"),
    ({**IMAGE, "layers": [{**LAYER, "digest": "md5:abc"}]}, "layers[0].digest"),
    ({**IMAGE, "layers": [{**LAYER, "artifactType": 1}]}, "layers[0].artifactType"),
    ({**IMAGE, "layers": [{**LAYER, "platform": {"os": "linux"}}]}, "layers[0].platform"),
    ({**IMAGE, "annotations": {"a": None}}, "manifest.annotations"),
    ({**IMAGE, "subject": "sha256:x"}, "subject must be a descriptor"),
    ({**IMAGE, "artifactType": {}}, "artifactType must be a string"),
    ({**IMAGE, "manifests": []}, "must not have 'manifests'"),
])
def test_malformed_manifests_name_the_problem(doc: Any, needle: str) -> None:
    assert needle in invalid(doc)


def test_content_type_mismatch_and_unsupported_types() -> None:
    assert "does not match" in invalid(IMAGE, DOCKER_MANIFEST)
    assert "does not match" in invalid({**IMAGE, "mediaType": OCI_INDEX, "manifests": []}, OCI_MANIFEST)
    assert "unsupported manifest media type" in invalid({**IMAGE, "mediaType": "text/plain"}, "text/plain")
    assert "unsupported manifest media type" in invalid({k: v for k, v in IMAGE.items() if k != "mediaType"},
                                                        "application/vnd.example+json")


def test_index_needs_manifests_and_docker_list_children_must_be_manifests() -> None:
    assert "'manifests' array" in invalid({"schemaVersion": 2, "mediaType": OCI_INDEX}, OCI_INDEX)
    message = invalid({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [LAYER]}, DOCKER_LIST)
    assert "manifests[0].mediaType" in message
    # An OCI index may list artifacts of any type.
    parse_manifest(body({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [LAYER]}), OCI_INDEX)


def test_parse_descriptor_accepts_a_complete_descriptor() -> None:
    desc = parse_descriptor({**LAYER, "annotations": {"k": "v"}, "artifactType": "a/b",
                             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}, "x")
    assert desc.size == LAYER["size"] and desc.annotations == {"k": "v"} and desc.artifact_type == "a/b"
    assert desc.platform == {"os": "linux", "architecture": "arm64", "variant": "v8"}
