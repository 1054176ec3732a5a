"""Unit tests of registry.names: the <name> grammar, tags, references and how they nest."""

from __future__ import annotations

import hashlib

import pytest

from registry.digest import Digest
from registry.errors import RegistryError
from registry.names import (
    ImageReference,
    is_digest_reference,
    mirror_repository,
    normalize_domain,
    validate_name,
    validate_tag,
)

HEX = hashlib.sha256(b"img").hexdigest()


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), [
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("docker.io/library/nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("index.docker.io/library/nginx", "docker.io", "library/nginx", "latest", None),
    ("registry-1.docker.io/bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
    ("bitnami/redis", "docker.io", "bitnami/redis", "latest", None),
    (f"gcr.io/org/img@sha256:{HEX}", "gcr.io", "org/img", None, f"sha256:{HEX}"),
    (f"gcr.io/org/img:v1@sha256:{HEX}", "gcr.io", "org/img", "v1", f"sha256:{HEX}"),
    ("localhost:5000/x", "localhost:5000", "x", "latest", None),
    ("localhost/x:2", "localhost", "x", "2", None),
    ("registry.k8s.io/kube-apiserver:v1.29.0", "registry.k8s.io", "kube-apiserver", "v1.29.0", None),
    ("quay.io/a/b/c/d:tag_1", "quay.io", "a/b/c/d", "tag_1", None),
    ("  nginx  ", "docker.io", "library/nginx", "latest", None),
])
def test_image_reference_normalisation(text: str, domain: str, path: str, tag: str | None,
                                       digest: str | None) -> None:
    ref = ImageReference.parse(text)
    assert (ref.domain, ref.path, ref.tag) == (domain, path, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)
    assert ref.repository == f"{domain}/{path}"
    assert ref.local_repository("spectro-images") == f"spectro-images/{domain}/{path}"
    # The string form parses back to the same reference.
    assert ImageReference.parse(str(ref)) == ref


@pytest.mark.parametrize(("text", "code"), [
    ("NGINX", "NAME_INVALID"),
    ("docker.io/Library/nginx", "NAME_INVALID"),
    ("gcr.io/Org/img", "NAME_INVALID"),
    ("nginx:", "TAG_INVALID"),
    ("nginx:-bad", "TAG_INVALID"),
    ("nginx:" + "t" * 129, "TAG_INVALID"),
    ("nginx@sha256:abc", "DIGEST_INVALID"),
    ("nginx@", "DIGEST_INVALID"),
    ("", "NAME_INVALID"),
    ("a//b", "NAME_INVALID"),
    ("gcr.io/", "NAME_INVALID"),
])
def test_bad_references_are_refused_with_their_code(text: str, code: str) -> None:
    with pytest.raises(RegistryError) as exc:
        ImageReference.parse(text)
    assert exc.value.code == code, exc.value.message


def test_uppercase_first_component_is_treated_as_a_domain_and_normalised() -> None:
    # Docker's rule: a first component with uppercase can only be a host, hosts are case-insensitive.
    ref = ImageReference.parse("Quay.IO/org/img:1")
    assert (ref.domain, ref.path) == ("quay.io", "org/img")


@pytest.mark.parametrize("name", [
    "a", "a/b", "spectro-images/docker.io/library/nginx", "a.b_c__d-e---f", "0/1/2", "x" * 255,
])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", "A", "a/", "/a", "a//b", "a/_b", "a_", "-a", "a___b", "a..b", "a b", "a\n", "a/\u00e9", "x" * 256,
    "a:5000/b",
])
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError) as exc:
        validate_name(name)
    assert exc.value.code == "NAME_INVALID" and exc.value.status == 400


@pytest.mark.parametrize("tag", ["latest", "1.25", "v1.2.3-rc.1_b", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a:b", "a/b", "A" * 129, "v1\n", "t\u00e9"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(RegistryError) as exc:
        validate_tag(tag)
    assert exc.value.code == "TAG_INVALID"


def test_digest_references() -> None:
    assert is_digest_reference(f"sha256:{HEX}")
    assert not is_digest_reference("latest")


@pytest.mark.parametrize(("ns", "name", "expected"), [
    ("docker.io", "library/nginx", "spectro-images/docker.io/library/nginx"),
    ("docker.io", "nginx", "spectro-images/docker.io/library/nginx"),
    ("index.docker.io", "bitnami/redis", "spectro-images/docker.io/bitnami/redis"),
    ("registry-1.docker.io", "nginx", "spectro-images/docker.io/library/nginx"),
    ("gcr.io", "org/img", "spectro-images/gcr.io/org/img"),
    ("quay.io", "img", "spectro-images/quay.io/img"),
    ("GCR.IO", "org/img", "spectro-images/gcr.io/org/img"),
])
def test_mirror_repository(ns: str, name: str, expected: str) -> None:
    assert mirror_repository("spectro-images", ns, name) == expected


def test_normalize_domain() -> None:
    assert normalize_domain("Index.Docker.IO") == "docker.io"
    assert normalize_domain("ghcr.io") == "ghcr.io"
