"""Tags list and catalog pagination, repository names, and containerd's ``?ns=`` mirror requests.

Plain HTTP against the real appliance, checked against the OCI Distribution
Specification v1.1 ("Listing Tags", the catalog extension, the <name> grammar).
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.appliance import Appliance
from tests.registry.v2client import OCI_MANIFEST, V2, assert_challenge, error_codes


@pytest.fixture
def v2(appliance: Appliance) -> V2:
    return V2(appliance)


def next_link(link: str) -> tuple[str, dict[str, list[str]]]:
    m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert m, link
    parts = urlsplit(m.group(1))
    return parts.path, parse_qs(parts.query)


# -- tags -------------------------------------------------------------------------------------------

TAGS = ["v2", "b", "a", "10", "9", "Z", "a_1", "a.1", "latest"]


def test_tags_list_is_lexically_sorted(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, TAGS[0])
    for tag in TAGS[1:]:
        v2.put_manifest(repo, tag, image.body, image.media_type)
    r = v2.request("GET", f"/v2/{repo}/tags/list", auth=None)
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": sorted(TAGS)}
    assert "Link" not in r.headers


def test_tags_list_pagination_with_n_last_and_link(v2: V2, repo: str) -> None:
    image = v2.push_image(repo, TAGS[0])
    for tag in TAGS[1:]:
        v2.put_manifest(repo, tag, image.body, image.media_type)
    expected = sorted(TAGS)
    seen: list[str] = []
    path, query = f"/v2/{repo}/tags/list", {"n": ["4"]}
    pages = 0
    while True:
        r = v2.request("GET", path, params={k: v[0] for k, v in query.items()})
        assert r.status_code == 200, r.text
        page = r.json()["tags"]
        assert len(page) <= 4
        seen += page
        pages += 1
        if "Link" not in r.headers:
            break
        path, query = next_link(r.headers["Link"])
        assert path == f"/v2/{repo}/tags/list"
        assert query["last"] == [page[-1]] and query["n"] == ["4"]
    assert seen == expected and pages == 3
    # last without n: everything after it.
    r = v2.request("GET", f"/v2/{repo}/tags/list", params={"last": "a"})
    assert r.json()["tags"] == [t for t in expected if t > "a"]
    # n larger than what is left: no Link.
    r = v2.request("GET", f"/v2/{repo}/tags/list", params={"n": "100"})
    assert r.json()["tags"] == expected and "Link" not in r.headers
    r = v2.request("GET", f"/v2/{repo}/tags/list", params={"n": "0"})
    assert r.status_code == 200 and r.json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "\u00b2", "", " 3"])
def test_invalid_n_is_400(v2: V2, repo: str, n: str) -> None:
    v2.push_image(repo, "1")
    for path in (f"/v2/{repo}/tags/list", "/v2/_catalog"):
        r = v2.request("GET", path, params={"n": n})
        assert r.status_code == 400, (path, n, r.text)
        assert error_codes(r) == ["PAGINATION_NUMBER_INVALID"]


def test_tags_of_unknown_repository_is_name_unknown(v2: V2, repo: str) -> None:
    r = v2.request("GET", f"/v2/{repo}/tags/list")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]


# -- catalog ------------------------------------------------------------------------------------


def test_catalog_needs_credentials_and_paginates(appliance: Appliance, v2: V2, repo: str) -> None:
    names = [f"{repo}/{c}" for c in ("e", "a", "d", "c", "b")]
    for name in names:
        v2.push_blob(name, name.encode())
    r = V2(appliance, auth=False).request("GET", "/v2/_catalog")
    assert_challenge(r)
    r = v2.request("GET", "/v2/_catalog", auth=("admin", "wrong"))
    assert r.status_code == 401
    # Every repository name sorting after `repo` and starting with "repo/" is one of ours.
    r = v2.request("GET", "/v2/_catalog", params={"n": "2", "last": repo})
    assert r.status_code == 200
    assert r.json() == {"repositories": sorted(names)[:2]}
    path, query = next_link(r.headers["Link"])
    assert path == "/v2/_catalog" and query == {"n": ["2"], "last": [sorted(names)[1]]}
    r = v2.request("GET", path, params={"n": "2", "last": query["last"][0]})
    assert r.json() == {"repositories": sorted(names)[2:4]}
    whole = v2.request("GET", "/v2/_catalog").json()["repositories"]
    assert whole == sorted(whole)
    assert set(names) <= set(whole)


# -- names -----------------------------------------------------------------------------------------


def test_multi_component_names(v2: V2) -> None:
    name = f"spectro-images/docker.io/library/n{os.urandom(4).hex()}"
    image = v2.push_image(name, "1.25")
    r = v2.request("GET", f"/v2/{name}/manifests/1.25", auth=None)
    assert r.status_code == 200 and r.content == image.body
    assert v2.request("GET", f"/v2/{name}/tags/list").json() == {"name": name, "tags": ["1.25"]}
    deep = f"{name}/a/b/c/d/e/f"
    assert v2.request("POST", f"/v2/{deep}/blobs/uploads/").status_code == 202


@pytest.mark.parametrize("name", [
    "Upper/case", "a//b", "-lead", "trail-", "a_", "a/.hidden", "a..b", "x" * 256, "a/" * 127 + "bb", "a%0A",
])
def test_invalid_names_are_name_invalid(v2: V2, name: str) -> None:
    for method, path in (("GET", f"/v2/{name}/manifests/latest"),
                         ("GET", f"/v2/{name}/tags/list"),
                         ("POST", f"/v2/{name}/blobs/uploads/")):
        r = v2.request(method, path)
        assert r.status_code in (400, 404), (name, method, r.text)
        if r.status_code == 404:
            # Names the router cannot even split (a newline) are unknown endpoints, still in OCI JSON.
            assert name == "a%0A" and error_codes(r)
        else:
            assert error_codes(r) == ["NAME_INVALID"], (name, r.text)


def test_longest_valid_name_is_accepted(v2: V2) -> None:
    name = ("spectro-images/" + os.urandom(4).hex() + "/").ljust(255, "x")
    assert len(name) == 255
    assert v2.request("POST", f"/v2/{name}/blobs/uploads/").status_code == 202


# -- ?ns= mirror requests -------------------------------------------------------------------------


def test_ns_docker_io_resolves_under_the_project(appliance: Appliance, v2: V2) -> None:
    short = f"n{os.urandom(4).hex()}"
    local = f"spectro-images/docker.io/library/{short}"
    image = v2.push_image(local, "1.25")
    anon = V2(appliance, auth=False)
    for name, ns in ((f"library/{short}", "docker.io"), (short, "docker.io"),
                     (f"library/{short}", "index.docker.io"), (f"library/{short}", "registry-1.docker.io"),
                     (f"library/{short}", "Docker.IO")):
        for ref in ("1.25", image.digest):
            r = anon.request("GET", f"/v2/{name}/manifests/{ref}", params={"ns": ns}, headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200, (name, ns, r.text)
            assert r.content == image.body
    layer = image_layer_digest(image.body)
    r = anon.request("GET", f"/v2/library/{short}/blobs/{layer}", params={"ns": "docker.io"})
    assert r.status_code == 200
    r = anon.request("GET", f"/v2/library/{short}/tags/list", params={"ns": "docker.io"})
    assert r.json()["tags"] == ["1.25"]


def test_ns_other_registry_keeps_the_path(v2: V2) -> None:
    path = f"org{os.urandom(3).hex()}/img"
    image = v2.push_image(f"spectro-images/quay.io/{path}", "1")
    r = v2.request("GET", f"/v2/{path}/manifests/1", params={"ns": "quay.io"})
    assert r.status_code == 200 and r.content == image.body
    # No library/ for a one-component name on another registry.
    r = v2.request("GET", f"/v2/img{os.urandom(3).hex()}/manifests/1", params={"ns": "quay.io"})
    assert r.status_code == 404


def test_ns_equal_to_the_appliance_itself_is_not_rewritten(appliance: Appliance, v2: V2, repo: str) -> None:
    image = v2.push_image(repo, "1")
    for ns in (appliance.host, "127.0.0.1", "localhost", "spectro.registry.local"):
        r = v2.request("GET", f"/v2/{repo}/manifests/1", params={"ns": ns})
        assert r.status_code == 200, (ns, r.text)
        assert r.content == image.body


def test_ns_that_makes_an_invalid_name_is_400(v2: V2) -> None:
    for ns, why in (("bad host", "lowercase letters"), ("[::1]:5000", "IPv6 literal hosts are not supported"),
                    ("my_reg.local", "cannot contain '_'"), ("myreg.local:http", "is not a number")):
        r = v2.request("GET", "/v2/library/x/manifests/1", params={"ns": ns})
        assert r.status_code == 400 and error_codes(r) == ["NAME_INVALID"], ns
        assert why in r.json()["errors"][0]["message"], (ns, r.text)


def test_ns_with_a_port_resolves_to_the_nested_host(appliance: Appliance, v2: V2) -> None:
    """``?ns=host:port`` resolves to ``<project>/host_port/...`` (':' cannot be in a repository name)."""
    host = f"r{os.urandom(4).hex()}.local"
    image = v2.push_image(f"spectro-images/{host}_5000/team/app", "1")
    other = v2.push_image(f"spectro-images/{host}_5001/team/app", "1", seed=b"other port")
    anon = V2(appliance, auth=False)
    for ref in ("1", image.digest):
        r = anon.request("GET", f"/v2/team/app/manifests/{ref}", params={"ns": f"{host}:5000"},
                         headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200, r.text
        assert r.content == image.body
    r = anon.request("GET", "/v2/team/app/manifests/1", params={"ns": f"{host}:5001"}, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == other.body != image.body
    layer = image_layer_digest(image.body)
    r = anon.request("GET", f"/v2/team/app/blobs/{layer}", params={"ns": f"{host}:5000"})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == layer
    assert anon.request("GET", "/v2/team/app/tags/list", params={"ns": f"{host}:5000"}).json()["tags"] == ["1"]
    # The same host without the port is another registry, which has nothing here.
    r = anon.request("GET", "/v2/team/app/manifests/1", params={"ns": host})
    assert r.status_code == 404, r.text
    # An override_path / rewrite request that already names the nested path is not nested again.
    r = anon.request("GET", f"/v2/spectro-images/{host}_5000/team/app/manifests/1", params={"ns": f"{host}:5000"})
    assert r.status_code == 200 and r.content == image.body


def image_layer_digest(body: bytes) -> str:
    import json

    return str(json.loads(body)["layers"][0]["digest"])


def test_ns_on_an_already_nested_name_is_not_nested_again(v2: V2) -> None:
    name = f"spectro-images/docker.io/library/n{os.urandom(4).hex()}"
    image = v2.push_image(name, "1")
    r = v2.request("GET", f"/v2/{name}/manifests/1", params={"ns": "docker.io"})
    assert r.status_code == 200 and r.content == image.body


def test_repository_in_a_project_that_does_not_exist(appliance: Appliance, v2: V2) -> None:
    name = f"noproject{os.urandom(4).hex()}/img"
    r = v2.request("POST", f"/v2/{name}/blobs/uploads/")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]
    assert "create it" in r.json()["errors"][0]["message"]
    assert_challenge(V2(appliance, auth=False).request("GET", f"/v2/{name}/manifests/1"))
    r = v2.request("GET", f"/v2/{name}/manifests/1")
    assert r.status_code == 403 and error_codes(r) == ["DENIED"]
