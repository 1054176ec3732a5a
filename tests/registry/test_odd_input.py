"""Odd input never makes a 500 (issue 11, item 8), driven against the real appliance with requests.

Numbers: ``"²".isdigit()`` is true but ``int("²")`` raises, ``int("٣")`` is
3, and numbers past 2**63 - 1 overflow SQLite; every path segment, query
parameter and header that takes a number answers a 400 naming it (or a 404
where the number names something that cannot exist). Manifests: a descriptor
whose size is not the stored blob's is refused; GET/HEAD of a reference
that is neither a tag nor a digest is 404 MANIFEST_UNKNOWN (PUT stays 400).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import requests

from tests.appliance import Appliance
from tests.registry.v2client import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    V2,
    canonical,
    descriptor,
    error_codes,
    sha256,
)

SUPERSCRIPT_TWO = "%C2%B2"  # "²": str.isdigit() says yes, int() says no
ARABIC_THREE = "%D9%A3"  # "٣": str.isdigit() and int() both say 3
HUGE = "9" * 25  # past SQLite's INTEGER


def _get(app: Appliance, path: str, **kw: Any) -> requests.Response:
    kw.setdefault("auth", app.admin)
    kw.setdefault("timeout", 30)
    return requests.get(f"{app.url}{path}", **kw)


def _message(r: requests.Response) -> str:
    return str(r.json()["errors"][0]["message"])


@pytest.mark.parametrize("odd", [SUPERSCRIPT_TWO, ARABIC_THREE, HUGE, "-1", "0"])
@pytest.mark.parametrize("suffix", ["", "/summary", "/members", "/members/1", "/repositories",
                                    "/repositories/x/artifacts"])
def test_a_project_id_that_is_no_number_is_not_found(appliance: Appliance, odd: str, suffix: str) -> None:
    r = _get(appliance, f"/api/v2.0/projects/{odd}{suffix}")
    assert r.status_code == 404, r.text
    assert r.json()["errors"][0]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("path", ["/api/v2.0/projects/1/members/{}", "/api/v2.0/robots/{}"])
@pytest.mark.parametrize("odd", [SUPERSCRIPT_TWO, ARABIC_THREE, HUGE])
def test_member_and_robot_ids_that_are_no_numbers_are_not_found(appliance: Appliance, path: str, odd: str) -> None:
    r = _get(appliance, path.format(odd))
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND", r.text


@pytest.mark.parametrize(("path", "key"), [("/api/v2.0/projects", "project_id"), ("/api/v2.0/robots", "ProjectID")])
@pytest.mark.parametrize("odd", ["\u00b2", "\u0663", HUGE, " 1", "+1", "1_0"])
def test_a_q_filter_number_is_ascii_digits_or_a_400_naming_it(appliance: Appliance, path: str, key: str,
                                                               odd: str) -> None:
    r = _get(appliance, path, params={"q": f"{key}={odd}"})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["code"] == "BAD_REQUEST" and key in _message(r)


@pytest.mark.parametrize("param", ["page", "page_size"])
@pytest.mark.parametrize("odd", ["\u00b2", "\u0663", HUGE, "101000000", " 2", "+2"])
def test_paging_numbers_are_ascii_digits_and_bounded(appliance: Appliance, param: str, odd: str) -> None:
    for path in ("/api/v2.0/projects", "/api/v2.0/audit-logs", "/api/v2.0/robots", "/api/v2.0/repositories"):
        r = _get(appliance, path, params={param: odd})
        assert r.status_code == 400, (path, r.text)
        assert param in _message(r)
    r = _get(appliance, "/api/v2.0/projects", params={"page_size": "101"})
    assert r.status_code == 400 and "100" in _message(r)  # Harbor's page_size maximum


@pytest.mark.parametrize("odd", ["\u00b2", "\u0663", HUGE, "1001", "-1"])
def test_the_imports_limit_is_ascii_digits_up_to_1000(appliance: Appliance, odd: str) -> None:
    r = _get(appliance, "/api/v1/imports", params={"limit": odd})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["code"] == "FORMAT" and "limit" in _message(r)
    ok = _get(appliance, "/api/v1/imports", params={"limit": "1000"})
    assert ok.status_code == 200 and isinstance(ok.json()["imports"], list)


def test_ids_in_paths_past_sqlite_integers_are_not_found(appliance: Appliance) -> None:
    r = _get(appliance, f"/api/cargohold/v1/releases/{HUGE}")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND", r.text
    r = _get(appliance, f"/api/cargohold/v1/releases/{ARABIC_THREE}")
    assert r.status_code == 400 and "not a release id" in _message(r)
    # An <int:...> route segment too large for SQLite matches no route.
    r = _get(appliance, f"/api/cargohold/v1/cluster-definitions/none/checks/{HUGE}")
    assert r.status_code == 404, r.text


def test_a_huge_n_is_the_largest_page(appliance: Appliance, repo: str) -> None:
    V2(appliance).push_image(repo, "1")
    for n in (HUGE, "9" * 5000):  # int() refuses more than 4300 digits
        r = _get(appliance, f"/v2/{repo}/tags/list", params={"n": n})
        assert r.status_code == 200 and r.json()["tags"] == ["1"], r.text
        assert _get(appliance, "/v2/_catalog", params={"n": n}).status_code == 200


def test_a_content_range_takes_ascii_digits_only(appliance: Appliance, repo: str) -> None:
    v2 = V2(appliance)
    location = v2.start_upload(repo)
    # "0-²" (Latin-1, so it arrives as written): str.isdigit() takes "²", int() does not.
    headers = {"Content-Type": "application/octet-stream", "Content-Range": "0-\u00b2"}
    r = v2.request("PATCH", location, data=b"abc", headers=headers)
    assert r.status_code == 416, r.text
    assert error_codes(r) == ["RANGE_INVALID"]
    r = v2.request("PATCH", location, data=b"abc", headers={"Content-Type": "application/octet-stream",
                                                            "Content-Range": "0-2"})
    assert r.status_code == 202 and r.headers["Range"] == "0-2", r.text  # the refused chunk took nothing


# -- manifests ---------------------------------------------------------------------------


def _image(v2: V2, repo: str, layer_size_delta: int = 0, config_size_delta: int = 0) -> tuple[bytes, str, str]:
    """(manifest body, layer digest, config digest) over freshly pushed blobs, with the declared sizes off by
    the deltas."""
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                        "seed": os.urandom(8).hex()})
    layer = os.urandom(2000)
    v2.push_blob(repo, config)
    v2.push_blob(repo, layer)
    config_desc = descriptor(OCI_CONFIG, config)
    layer_desc = descriptor(OCI_LAYER, layer)
    config_desc["size"] += config_size_delta
    layer_desc["size"] += layer_size_delta
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": [layer_desc]}
    return canonical(doc), layer_desc["digest"], config_desc["digest"]


@pytest.mark.parametrize(("layer_delta", "config_delta", "which"), [(1, 0, "layer"), (-1, 0, "layer"),
                                                                    (0, 7, "config")])
def test_a_descriptor_size_that_is_not_the_stored_blobs_is_refused(appliance: Appliance, repo: str,
                                                                   layer_delta: int, config_delta: int,
                                                                   which: str) -> None:
    v2 = V2(appliance)
    body, layer, config = _image(v2, repo, layer_delta, config_delta)
    r = v2.put_manifest(repo, "wrong-size", body, OCI_MANIFEST, expect=400)
    assert error_codes(r) == ["MANIFEST_INVALID"]
    bad = layer if which == "layer" else config
    entry = r.json()["errors"][0]
    assert bad in entry["message"]
    assert [m["digest"] for m in entry["detail"]["sizeMismatch"]] == [bad]
    # Nothing was stored: the tag and the manifest are unknown.
    assert v2.request("GET", f"/v2/{repo}/manifests/wrong-size").status_code == 404
    assert v2.request("GET", f"/v2/{repo}/manifests/{sha256(body)}").status_code == 404
    # The same image with the right sizes is taken.
    good, _, _ = _image(v2, repo)
    v2.put_manifest(repo, "right-size", good, OCI_MANIFEST)


def test_an_index_entry_size_that_is_not_the_stored_manifests_is_refused(appliance: Appliance, repo: str) -> None:
    v2 = V2(appliance)
    child = v2.push_image(repo, "child")
    entry = descriptor(child.media_type, child.body, platform={"os": "linux", "architecture": "amd64"})
    entry["size"] += 3
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    r = v2.put_manifest(repo, "index", index, OCI_INDEX, expect=400)
    assert error_codes(r) == ["MANIFEST_INVALID"] and child.digest in _message(r)


@pytest.mark.parametrize("reference", ["-bad-tag", "bad%20tag", "t" * 129, "sha256:xyz", "sha256:abcd",
                                       "md5:" + "a" * 32, ".hidden"])
def test_get_and_head_of_a_reference_that_is_neither_tag_nor_digest_are_manifest_unknown(
        appliance: Appliance, repo: str, reference: str) -> None:
    v2 = V2(appliance)
    pushed = v2.push_image(repo, "1")
    r = v2.request("GET", f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 404, r.text
    assert error_codes(r) == ["MANIFEST_UNKNOWN"]
    h = v2.request("HEAD", f"/v2/{repo}/manifests/{reference}")
    assert h.status_code == 404 and h.content == b""
    # A PUT to such a reference is still refused as a bad tag (or digest), and stores nothing.
    p = v2.request("PUT", f"/v2/{repo}/manifests/{reference}", data=pushed.body,
                   headers={"Content-Type": OCI_MANIFEST})
    expected = ("DIGEST_INVALID", 400) if reference.startswith("sha256:") else \
        ("UNSUPPORTED", 405) if reference.startswith("md5:") else ("TAG_INVALID", 400)
    assert (error_codes(p), p.status_code) == ([expected[0]], expected[1]), p.text
    tags = v2.request("GET", f"/v2/{repo}/tags/list").json()["tags"]
    assert tags == ["1"]


def test_no_odd_input_above_left_a_traceback_in_the_log(appliance: Appliance) -> None:
    """Belt and braces: the session appliance logged no unhandled error (runs after the tests above)."""
    log = appliance.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]
