"""A request body the app does not read must not break the client's next request on that connection.

gunicorn drains at most 64 KiB of an unread body before reusing a keep-alive
connection and otherwise drops it after answering; web.server.CloseOnUnreadBody
makes such answers say ``Connection: close`` so clients reconnect instead of
failing (oras-py's retry with credentials after a 401 did).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.appliance import Appliance


@pytest.fixture(params=["nginx", "none"])
def served(request: pytest.FixtureRequest, appliance: Appliance,
           appliance_factory: Callable[..., Appliance]) -> Appliance:
    """The appliance behind the nginx front (which drains or closes towards the client itself), and gunicorn alone."""
    return appliance if request.param == "nginx" else appliance_factory("--front", "none")


def _says_close(refused: requests.Response) -> None:
    # Both must say so when they will close: gunicorn alone for the unread body, the front for every
    # upload answer (it cannot reuse a connection whose body the app left unread, and closed such
    # connections after answers that said keep-alive: the next request on them got no answer).
    assert refused.headers.get("Connection", "").lower() == "close"


@pytest.mark.parametrize("size", [1_000, 64 * 1024, 3 << 20])
def test_refused_upload_chunk_then_next_request_on_same_session(served: Appliance, repo: str, size: int) -> None:
    appliance = served
    session = requests.Session()
    started = session.post(f"{appliance.url}/v2/{repo}/blobs/uploads/", auth=appliance.admin, timeout=10)
    assert started.status_code == 202
    location = appliance.url + started.headers["Location"]

    refused = session.patch(location, data=os.urandom(size), timeout=30,
                            headers={"Content-Range": f"0-{size - 1}", "Content-Type": "application/octet-stream"})
    assert refused.status_code == 401
    _says_close(refused)

    # The same session (a fresh connection underneath) goes on: the chunk is accepted with credentials.
    accepted = session.patch(location, data=b"x" * size, auth=appliance.admin, timeout=30,
                             headers={"Content-Range": f"0-{size - 1}", "Content-Type": "application/octet-stream"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["Range"] == f"0-{size - 1}"


def test_requests_without_body_keep_the_connection(appliance: Appliance) -> None:
    resp = requests.get(f"{appliance.url}/v2/", timeout=10)
    assert resp.headers.get("Connection", "").lower() != "close"


def test_refused_chunked_upload_then_next_request(served: Appliance, repo: str) -> None:
    appliance = served
    session = requests.Session()
    started = session.post(f"{appliance.url}/v2/{repo}/blobs/uploads/", auth=appliance.admin, timeout=10)
    location = appliance.url + started.headers["Location"]

    def body() -> Iterator[bytes]:  # a generator body goes out with Transfer-Encoding: chunked
        for _ in range(8):
            yield os.urandom(32 * 1024)

    refused = session.patch(location, data=body(), timeout=30, headers={"Content-Type": "application/octet-stream"})
    assert refused.status_code == 401
    _says_close(refused)
    accepted = session.patch(location, data=body(), auth=appliance.admin, timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["Range"] == f"0-{8 * 32 * 1024 - 1}"
