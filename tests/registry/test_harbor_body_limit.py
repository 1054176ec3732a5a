"""The Harbor API reads JSON bodies with a size cap, so one request cannot fill the worker's memory."""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests

from registry.harbor import MAX_JSON_BYTES
from tests.appliance import Appliance
from tests.registry.harborapi import Harbor


def test_an_oversized_json_body_is_refused_with_413_and_changes_nothing(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    # A valid object (werkzeug would otherwise read all of it into memory and apply it).
    body = json.dumps({"metadata": {"public": "true"}, "padding": "x" * (MAX_JSON_BYTES + 1024)})
    r = admin("PUT", f"/projects/{project}", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["errors"][0]["code"] == "BAD_REQUEST"
    assert admin("GET", f"/projects/{project}").json()["metadata"]["public"] == "false"


def test_an_oversized_chunked_json_body_is_refused_too(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    payload = json.dumps({"metadata": {"public": "true"}, "padding": "x" * (MAX_JSON_BYTES + 1024)}).encode()

    def chunks() -> Iterator[bytes]:  # a generator body: sent chunked, with no Content-Length
        for i in range(0, len(payload), 64 << 10):
            yield payload[i:i + (64 << 10)]

    r = requests.put(f"{appliance.url}/api/v2.0/projects/{project}", data=chunks(), auth=appliance.admin,
                     headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413, r.text
    assert admin("GET", f"/projects/{project}").json()["metadata"]["public"] == "false"


def test_an_ordinary_body_still_works(appliance: Appliance) -> None:
    admin = Harbor(appliance, appliance.admin)
    project = admin.create_project(public=False)
    r = admin("PUT", f"/projects/{project}", json={"metadata": {"public": "true"}, "padding": "x" * 1000})
    assert r.status_code == 200, r.text
    assert admin("GET", f"/projects/{project}").json()["metadata"]["public"] == "true"
