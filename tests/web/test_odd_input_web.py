"""Odd input to the UI and the tus endpoint never makes a 500 (issue 11, item 8), on the real appliance.

tus ``Upload-Length``/``Upload-Offset`` take ASCII digits only (400 naming
the header); the UI's ``page`` is bounded (a huge one overflowed SQLite);
an ``<int:...>`` path segment past 2**63 - 1 is a 404; the sign-in form's
``next=`` only ever redirects to a same-site /ui/ path, and one with CR/LF
(which used to split the Location header: a 500) lands on the dashboard.
"""

from __future__ import annotations

import base64

import pytest
import requests

from tests.appliance import Appliance
from tests.web.uiutil import form_token, signed_in

TUS = {"Tus-Resumable": "1.0.0"}
HUGE = "9" * 25


def _basic(app: Appliance) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{app.admin[0]}:{app.admin[1]}".encode()).decode()}


def _wire(text: str) -> str:
    """`text` as a header value: as it is if Latin-1 holds it ("²" arrives as "²", which str.isdigit() takes),
    else its UTF-8 bytes (what a client sending UTF-8 puts on the wire)."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode().decode("latin-1")
    return text


@pytest.mark.parametrize("odd", ["\u00b2", "\u0663", "+5", "5_0", "-5", "5.0", HUGE])
def test_upload_length_is_ascii_digits_or_a_400_naming_it(ui_app: Appliance, odd: str) -> None:
    base = f"{ui_app.url}/api/v1/uploads"
    r = requests.post(base, headers={**TUS, **_basic(ui_app), "Upload-Length": _wire(odd)}, timeout=10)
    assert r.status_code == 400, r.text
    assert "Upload-Length" in r.text and r.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize("odd", ["\u00b2", "\u0663", "+0", "-0", "0x0", HUGE])
def test_upload_offset_is_ascii_digits_or_a_400_naming_it_and_nothing_is_lost(ui_app: Appliance, odd: str) -> None:
    base = f"{ui_app.url}/api/v1/uploads"
    auth = {**TUS, **_basic(ui_app)}
    created = requests.post(base, headers={**auth, "Upload-Length": "6"}, timeout=10)
    assert created.status_code == 201, created.text
    url = ui_app.url + created.headers["Location"]
    chunk = {**auth, "Content-Type": "application/offset+octet-stream"}
    assert requests.patch(url, data=b"abc", headers={**chunk, "Upload-Offset": "0"}, timeout=10).status_code == 204
    r = requests.patch(url, data=b"def", headers={**chunk, "Upload-Offset": _wire(odd)}, timeout=10)
    assert r.status_code == 400, r.text
    assert "Upload-Offset" in r.text
    assert requests.head(url, headers=auth, timeout=10).headers["Upload-Offset"] == "3"  # the upload is as it was
    done = requests.patch(url, data=b"def", headers={**chunk, "Upload-Offset": "3"}, timeout=10)
    assert done.status_code == 204 and done.headers["Upload-Offset"] == "6"


@pytest.mark.parametrize("page", ["\u00b2", HUGE, "0", "1000001", "+2"])
def test_ui_page_numbers_are_bounded_ascii_digits(ui_app: Appliance, page: str) -> None:
    session, _ = signed_in(ui_app)
    for path in ("/ui/repositories", "/ui/audit"):
        r = session.get(f"{ui_app.url}{path}", params={"page": page}, timeout=10)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert "page" in r.text
    assert session.get(f"{ui_app.url}/ui/audit", params={"page": "2"}, timeout=10).status_code == 200


def test_int_path_segments_past_sqlite_integers_are_not_found(ui_app: Appliance) -> None:
    session, token = signed_in(ui_app)
    assert session.get(f"{ui_app.url}/ui/releases/{HUGE}", timeout=10).status_code == 404
    r = session.post(f"{ui_app.url}/ui/robots/{HUGE}/disable", data={"csrf_token": token}, timeout=10)
    assert r.status_code == 404, r.text[:300]


def _sign_in_with_next(app: Appliance, target: str) -> requests.Response:
    s = requests.Session()
    token = form_token(s.get(f"{app.url}/ui/login", params={"next": target}, timeout=10).text)
    return s.post(f"{app.url}/ui/login", timeout=10, allow_redirects=False,
                  data={"username": app.admin[0], "password": app.admin[1], "csrf_token": token, "next": target})


@pytest.mark.parametrize("target", ["/ui/\r\nSet-Cookie: evil=1", "/ui/\nx", "/ui/\r", "//evil.example/ui/",
                                    "/ui//evil.example", "/ui/\\evil.example", "/\\evil.example",
                                    "https://evil.example/ui/", "javascript:alert(1)", "/ui/\u00e9", "/v2/",
                                    "ui/imports", ""])
def test_sign_in_with_an_unsafe_next_lands_on_the_dashboard(ui_app: Appliance, target: str) -> None:
    r = _sign_in_with_next(ui_app, target)
    assert r.status_code == 302, r.text[:300]
    assert r.headers["Location"] in ("/ui/", f"{ui_app.url}/ui/")
    assert "evil" not in r.headers.get("Set-Cookie", "")


@pytest.mark.parametrize("target", ["/ui/imports", "/ui/audit?username=admin&page=2",
                                    "/ui/artifact?repository=spectro-images/a/b&reference=sha256:00"])
def test_sign_in_with_a_same_site_next_goes_there(ui_app: Appliance, target: str) -> None:
    r = _sign_in_with_next(ui_app, target)
    assert r.status_code == 302 and r.headers["Location"] in (target, ui_app.url + target)
