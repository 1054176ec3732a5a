"""The operator UI's Files page: every file artifact on the appliance, with its digest and a download link.

    GET  /ui/files     name, version, size, sha256, repository; download over HTTP and the oras command

Downloads go to the files API (`bundles.files_api`), which a signed-in UI
session may call: the browser gets the bytes from nginx, with Range, as any
other client does. The listing is `bundles.files.SiteFiles`, the API's own.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from bundles.files import SiteFiles
from web.ui.pages import registry_host
from web.ui.session import page_principal


def create_blueprint(files: SiteFiles) -> Blueprint:
    bp = Blueprint("ui_files", __name__, url_prefix="/ui/files")

    @bp.before_request
    def _guard() -> None:
        page_principal()

    @bp.get("/")
    def files_page() -> str:
        rows = []
        prefix = f"{files.project}/files/"
        for f in files.all():
            # The default project's files download by name and version; others (pushed with oras) by digest.
            spec = f"{f.name}:{f.version}" if f.repository.startswith(prefix) else str(f.digest)
            rows.append((f, f"/api/cargohold/v1/files/{spec}"))
        return render_template("ui/files.html", rows=rows, host=registry_host())

    return bp
