"""UI form posts are size-capped before they are parsed.

The CSRF check reads the form, which makes werkzeug spool every file part
to disk, and it runs before anyone is signed in: without a cap, any
anonymous client could fill the disk through the sign-in form.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any

import requests

from bundles import keys
from bundles.clusterdef_trust import detached_signature
from tests.appliance import Appliance
from tests.bundles.buildutil import cargohold
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.web.uiutil import signed_in
from web.ui.session import MAX_FORM_BYTES


def test_an_anonymous_oversized_multipart_post_is_refused_before_it_is_read(appliance: Appliance) -> None:
    big = b"\0" * (MAX_FORM_BYTES + 4096)
    for path in ("/ui/login", "/ui/keys", "/ui/robots", "/ui/definitions"):
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


def test_a_signed_in_admin_uploads_a_definition_larger_than_the_form_cap(appliance: Appliance,
                                                                        tmp_path: Path) -> None:
    """The definition form takes a real definition's size (up to its own 64 MiB cap) from an admin only."""
    key = keys.generate("ecdsa-p256")
    (tmp_path / "k.pub.pem").write_bytes(keys.public_pem(key))
    cargohold("keys", "add", tmp_path / "k.pub.pem", "--data-dir", appliance.data_dir)
    # Incompressible text in a values file: the archive itself is over the 1 MiB form cap.
    blob = base64.b64encode(os.urandom(1_200_000)).decode()
    definition = simple_definition("big-form-def", ["docker.io/library/busybox:1"])
    definition["profiles"][0]["packs"][0]["values"] = "values.yaml"
    archive = build_archive(tmp_path / "big.tgz", definition, files={"values.yaml": f"blob: {blob}\n"})
    assert archive.stat().st_size > MAX_FORM_BYTES
    form: dict[str, Any] = {"definition": ("big.tgz", archive.read_bytes(), "application/gzip"),
                            "signature": ("big.tgz.sig", detached_signature(archive, key))}

    anonymous = requests.post(f"{appliance.url}/ui/definitions", files=form, allow_redirects=False, timeout=60)
    assert anonymous.status_code == 413
    session, token = signed_in(appliance)
    r = session.post(f"{appliance.url}/ui/definitions", files=form, data={"csrf_token": token},
                     allow_redirects=False, timeout=60)
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/definitions/big-form-def"), r.text[:300]
    stored = requests.get(f"{appliance.url}/api/cargohold/v1/cluster-definitions/big-form-def",
                          auth=appliance.admin, timeout=10)
    assert stored.status_code == 200 and stored.json()["signedBy"] == keys.key_id(key)
    # Signed in, but without the form's CSRF token: refused before the form is acted on.
    r = session.post(f"{appliance.url}/ui/definitions", files={**form, "definition": ("b.tgz", b"x")},
                     allow_redirects=False, timeout=60)
    assert r.status_code == 400 and "CSRF" in r.text
