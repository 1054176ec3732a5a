"""UI form posts are size-capped before they are parsed.

The CSRF check reads the form, which makes werkzeug spool every file part
to disk, and it runs before anyone is signed in: without a cap, any
anonymous client could fill the disk through the sign-in form.
"""

from __future__ import annotations

import re

import requests

from tests.appliance import Appliance
from web.ui.session import MAX_FORM_BYTES


def test_an_anonymous_oversized_multipart_post_is_refused_before_it_is_read(appliance: Appliance) -> None:
    big = b"\0" * (MAX_FORM_BYTES + 4096)
    for path in ("/ui/login", "/ui/keys", "/ui/robots"):
        r = requests.post(f"{appliance.url}{path}", files={"pem_file": ("k.pem", big)},
                          data={"username": "admin", "password": "x"}, allow_redirects=False, timeout=60)
        assert r.status_code == 413, (path, r.status_code, r.text[:200])


def test_an_ordinary_sign_in_still_works(appliance: Appliance) -> None:
    s = requests.Session()
    form = s.get(f"{appliance.url}/ui/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token is not None
    r = s.post(f"{appliance.url}/ui/login", data={"csrf_token": token.group(1), "username": appliance.admin[0],
                                                  "password": appliance.admin[1]}, allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/")
