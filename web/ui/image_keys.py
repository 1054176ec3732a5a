"""The operator UI's image-signing keys page: the keys whose cosign signatures content-trust projects accept.

Route table (HTML; a signed-in admin, every POST its CSRF token):

    GET, POST  /ui/image-keys          image-signing keys (registry.image_trust); trust one (PEM)
    POST       /ui/image-keys/remove   stop trusting one (the page asks for a confirmation first)

These are apart from the keys that vouch for bundles (``/ui/keys``), as in
`registry.image_trust`; the page says so and links there.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from registry.cosign import KeyRefused
from registry.image_trust import ImageTrust
from web.app_services import services_of
from web.ui.pages import _audit
from web.ui.session import page_principal

MAX_PEM_BYTES = 64 << 10


def create_blueprint() -> Blueprint:
    bp = Blueprint("ui_image_keys", __name__, url_prefix="/ui")

    @bp.before_request
    def _guard() -> None:
        page_principal()

    def _trust() -> ImageTrust:
        return ImageTrust(services_of().registry)

    @bp.route("/image-keys", methods=["GET", "POST"])
    def image_keys() -> Any:
        status = 200
        if request.method == "POST":
            pem = request.form.get("pem", "").encode()[:MAX_PEM_BYTES]
            upload = request.files.get("pem_file")
            if upload is not None and upload.filename:
                pem = upload.stream.read(MAX_PEM_BYTES)
            description = request.form.get("description", "").strip()[:200]
            try:
                if not pem.strip():
                    raise KeyRefused("paste a PEM public key (such as cosign.pub) or choose its file")
                added = _trust().add_key(pem, description)
            except (KeyRefused, ValueError) as exc:
                flash(f"Key not added: {exc}. Nothing was changed.", "error")
                status = 400
            else:
                _audit("create", "image_signing_key", added.id)
                flash(f"Now trusting image-signing key {added.id}.", "ok")
                return redirect(url_for("ui_image_keys.image_keys"))
        return Response(render_template("ui/image_keys.html", keys=_trust().list_keys()), status=status)

    @bp.post("/image-keys/remove")
    def remove_image_key() -> Any:
        try:
            removed = _trust().remove_key(request.form.get("key_id", ""))
        except KeyRefused as exc:
            flash(f"{exc}. Nothing was changed.", "error")
        else:
            _audit("delete", "image_signing_key", removed.id)
            flash(f"No longer trusting image-signing key {removed.id}.", "ok")
        return redirect(url_for("ui_image_keys.image_keys"))

    return bp
