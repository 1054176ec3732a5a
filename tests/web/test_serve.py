"""`cargohold serve` on embedded defaults answers the Distribution API."""

from __future__ import annotations

import requests

from tests.appliance import Appliance


def test_base_endpoint_requires_credentials_and_names_api_version(appliance: Appliance) -> None:
    anonymous = requests.get(f"{appliance.url}/v2/", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # Harbor's token auth: the challenge sends clients to the token service.
    assert anonymous.headers["WWW-Authenticate"] == \
        f'Bearer realm="{appliance.url}/service/token",service="harbor-registry"'
    assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"

    ok = requests.get(f"{appliance.url}/v2/", auth=appliance.admin, timeout=5)
    assert ok.status_code == 200
    assert ok.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_wrong_password_is_refused(appliance: Appliance) -> None:
    r = requests.get(f"{appliance.url}/v2/", auth=("admin", "not-the-password"), timeout=5)
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
