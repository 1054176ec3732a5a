"""A tus upload belongs to the principal that created it (issue 11, item 11), on the real appliance.

Two administrators: the admin user and a system robot with every
permission (created through the Harbor API). Whatever one creates, the
other cannot see, continue, terminate, concatenate or name as a signature:
each such request answers 404, as for an unknown upload, and changes
nothing. The creator keeps working with any of its credentials (Basic, or a
UI session), and tuspy, given the other's upload URL, gets the 404 back.
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid

import pytest
import requests
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from tests.appliance import Appliance
from tests.registry.harborapi import Harbor
from tests.web.uiutil import signed_in

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {"Content-Type": "application/offset+octet-stream"}


def _basic(user: str, password: str) -> dict[str, str]:
    return {**TUS, "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def other(ui_app: Appliance) -> dict[str, str]:
    """Headers of a second administrator: a system robot with every permission."""
    robot = Harbor(ui_app, ui_app.admin).create_robot(
        f"ops{uuid.uuid4().hex[:8]}", "system",
        [{"kind": "system", "namespace": "/", "access": [{"resource": "*", "action": "*"}]}])
    return _basic(*robot.auth)


def _create(app: Appliance, headers: dict[str, str], length: int, **extra: str) -> str:
    r = requests.post(f"{app.url}/api/v1/uploads", headers={**headers, "Upload-Length": str(length), **extra},
                      timeout=10)
    assert r.status_code == 201, r.text
    return app.url + r.headers["Location"]


def test_only_the_creator_sees_continues_and_terminates_an_upload(ui_app: Appliance, other: dict[str, str]) -> None:
    mine = _basic(*ui_app.admin)
    data = b"0123456789" * 100
    url = _create(ui_app, mine, len(data), **{"Upload-Metadata": "kind " + base64.b64encode(b"signature").decode()})
    assert requests.patch(url, data=data[:400], headers={**mine, **CHUNK, "Upload-Offset": "0"},
                          timeout=10).status_code == 204

    # The other administrator: every request about it is a 404, and none changes it.
    head = requests.head(url, headers=other, timeout=10)
    assert head.status_code == 404 and "Upload-Offset" not in head.headers
    got = requests.get(url, headers=other, timeout=10)
    assert got.status_code == 404 and "another user" in got.text
    r = requests.patch(url, data=data[400:], headers={**other, **CHUNK, "Upload-Offset": "400"}, timeout=10)
    assert r.status_code == 404, r.text
    assert requests.delete(url, headers=other, timeout=10).status_code == 404
    head = requests.head(url, headers=mine, timeout=10)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == "400"

    # tuspy, resuming from that URL with the other's credentials, is told the upload does not exist.
    client = tus_client.TusClient(f"{ui_app.url}/api/v1/uploads", headers={"Authorization": other["Authorization"]})
    with pytest.raises(TusCommunicationError) as exc:  # tuspy asks for the offset as it is set up
        client.uploader(file_stream=io.BytesIO(data), url=url, chunk_size=100).upload()
    assert exc.value.status_code == 404

    # The creator goes on, here from a UI session (the same principal with other credentials), and finishes.
    session, csrf = signed_in(ui_app)
    r = session.patch(url, data=data[400:], timeout=10,
                      headers={**TUS, **CHUNK, "Upload-Offset": "400", "X-CSRF-Token": csrf})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(len(data)), r.text
    assert r.headers["Cargohold-Upload-Sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()

    # A completed signature upload is still the creator's alone: the other cannot name it for its bundle.
    sig_id = url.rsplit("/", 1)[1]
    meta = "signature " + base64.b64encode(sig_id.encode()).decode()
    r = requests.post(f"{ui_app.url}/api/v1/uploads", headers={**other, "Upload-Length": "10",
                                                                "Upload-Metadata": meta}, timeout=10)
    assert r.status_code == 400 and "does not name a completed signature upload" in r.text

    assert requests.delete(url, headers=other, timeout=10).status_code == 404
    assert requests.delete(url, headers=mine, timeout=10).status_code == 204
    assert requests.head(url, headers=mine, timeout=10).status_code == 404


def test_only_the_creator_concatenates_its_partial_uploads(ui_app: Appliance, other: dict[str, str]) -> None:
    mine = _basic(*ui_app.admin)
    url = _create(ui_app, other, 5, **{"Upload-Concat": "partial"})
    assert requests.patch(url, data=b"thers", headers={**other, **CHUNK, "Upload-Offset": "0"},
                          timeout=10).status_code == 204
    r = requests.post(f"{ui_app.url}/api/v1/uploads", headers={**mine, "Upload-Concat": f"final;{url}"}, timeout=10)
    assert r.status_code == 404 and "another user" in r.text
    head = requests.head(url, headers=other, timeout=10)  # still whole, unclaimed, and its creator's to use
    assert head.status_code == 200 and head.headers["Upload-Offset"] == "5"
    made = requests.post(f"{ui_app.url}/api/v1/uploads", headers={**other, "Upload-Concat": f"final;{url}"},
                         timeout=10)
    assert made.status_code == 201, made.text
    assert requests.delete(ui_app.url + made.headers["Location"], headers=other, timeout=10).status_code == 204
