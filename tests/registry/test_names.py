"""Unit tests of registry.names: the <name> grammar, tags, references and how they nest."""

from __future__ import annotations

import hashlib

import pytest

from registry.digest import Digest
from registry.errors import RegistryError
from registry.names import (
    ImageReference,
    MappingRule,
    is_digest_reference,
    map_reference,
    mirror_repository,
    nest_domain,
    normalize_domain,
    split_local_repository,
    unnest_domain,
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
    local = ref.local_repository("spectro-images")
    assert local == f"spectro-images/{domain.replace(':', '_')}/{path}"
    assert validate_name(local) == local
    assert split_local_repository("spectro-images", local) == (domain, path)
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
    ("[::1]:5000/x:1", "NAME_INVALID"),
    ("my_reg.local/x:1", "NAME_INVALID"),
    ("myreg.local:http/x:1", "NAME_INVALID"),
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


# Hosts that nest under a project: plain names, IPv4 with and without a port, localhost, Docker Hub.
HOSTS = [
    ("docker.io", "docker.io"),
    ("gcr.io", "gcr.io"),
    ("myreg.local", "myreg.local"),
    ("myreg.local:5000", "myreg.local_5000"),
    ("10.0.0.5", "10.0.0.5"),
    ("10.0.0.5:8443", "10.0.0.5_8443"),
    ("10.0.0.58:443", "10.0.0.58_443"),
    ("10.0.0.5:8443:1", None),
    ("localhost", "localhost"),
    ("localhost:5000", "localhost_5000"),
    ("localhost:50001", "localhost_50001"),
    ("registry-1.example.com:443", "registry-1.example.com_443"),
]


@pytest.mark.parametrize(("domain", "nested"), [h for h in HOSTS if h[1] is not None])
def test_nest_domain_round_trip(domain: str, nested: str) -> None:
    assert nest_domain(domain) == nested
    assert validate_name(f"spectro-images/{nested}/team/app")
    assert unnest_domain(nested) == domain


def test_nest_domain_is_injective() -> None:
    nested = [nest_domain(d) for d, n in HOSTS if n is not None]
    assert len(set(nested)) == len(nested)
    # Every valid component unnests to exactly one host, which nests back to it.
    for component in nested:
        assert nest_domain(unnest_domain(component)) == component


@pytest.mark.parametrize(("domain", "why"), [
    ("[::1]:5000", "IPv6 literal hosts are not supported"),
    ("[fd00::1]", "IPv6 literal hosts are not supported"),
    ("fd00::1", "IPv6 literal hosts are not supported"),
    ("my_reg.local", "cannot contain '_'"),
    ("myreg.local_5000", "cannot contain '_'"),
    ("myreg.local:", "port '' is not a number"),
    ("myreg.local:http", "port 'http' is not a number"),
    ("myreg.local:123456", "port '123456' is not a number"),
    ("-bad.host:5000", "lowercase letters"),
    ("Upper.io", "lowercase letters"),
    ("a b", "lowercase letters"),
])
def test_hosts_that_cannot_be_nested_are_refused(domain: str, why: str) -> None:
    with pytest.raises(RegistryError) as exc:
        nest_domain(domain)
    assert exc.value.code == "NAME_INVALID" and why in exc.value.message and domain in exc.value.message


@pytest.mark.parametrize("component", ["a_b", "a_5000_1", "a__5000", "_5000", "x_", "a_99999999"])
def test_components_that_nest_no_host_are_refused(component: str) -> None:
    with pytest.raises(RegistryError) as exc:
        unnest_domain(component)
    assert exc.value.code == "NAME_INVALID" and component in exc.value.message


@pytest.mark.parametrize(("name", "expected"), [
    ("p/myreg.local_5000/team/app", ("myreg.local:5000", "team/app")),
    ("p/localhost_5000/app", ("localhost:5000", "app")),
    ("p/docker.io/library/nginx", ("docker.io", "library/nginx")),
    ("p/team/app", None),  # a local project's own repository: 'team' is no host
    ("p/my_team/app", None),
    ("p/myreg.local_5000", None),
    ("q/myreg.local_5000/app", None),
])
def test_split_local_repository(name: str, expected: tuple[str, str] | None) -> None:
    assert split_local_repository("p", name) == expected


@pytest.mark.parametrize(("ns", "name", "expected"), [
    ("myreg.local:5000", "team/app", "spectro-images/myreg.local_5000/team/app"),
    ("myreg:5000", "library/x", "spectro-images/myreg_5000/library/x"),
    ("myreg:5000", "x", "spectro-images/myreg_5000/x"),  # only Docker Hub gets library/
    ("10.0.0.5:8443", "x", "spectro-images/10.0.0.5_8443/x"),
    ("LOCALHOST:5000", "y", "spectro-images/localhost_5000/y"),
    ("localhost:5000", "spectro-images/localhost_5000/y", "spectro-images/localhost_5000/y"),  # already nested
])
def test_mirror_repository_with_ports(ns: str, name: str, expected: str) -> None:
    assert mirror_repository("spectro-images", ns, name) == expected


def test_mirror_repository_refuses_an_ipv6_ns() -> None:
    with pytest.raises(RegistryError) as exc:
        mirror_repository("spectro-images", "[::1]:5000", "x")
    assert exc.value.code == "NAME_INVALID" and "IPv6" in exc.value.message


def test_map_reference_nests_ports_after_mapping() -> None:
    ref = ImageReference.parse("myreg.local:5000/team/app:1")
    assert map_reference(ref, (), "p") == "p/myreg.local_5000/team/app"
    # Rules are written in the original form; a port in the replacement nests too.
    rules = (MappingRule("myreg.local:5000/team", "quay.io/mirror"),)
    assert map_reference(ref, rules, "p") == "p/quay.io/mirror/app"
    to_port = (MappingRule("gcr.io/org", "registry.site:5000/gcr"),)
    assert map_reference(ImageReference.parse("gcr.io/org/img:1"), to_port, "p") == "p/registry.site_5000/gcr/img"
    bad = (MappingRule("gcr.io/org", "[::1]:5000/gcr"),)
    with pytest.raises(RegistryError) as exc:
        map_reference(ImageReference.parse("gcr.io/org/img:1"), bad, "p")
    assert exc.value.code == "NAME_INVALID" and "IPv6" in exc.value.message
