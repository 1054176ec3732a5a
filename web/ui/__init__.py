"""The operator web UI: sign-in, resumable bundle upload, and the pages an operator works from.

`init_app` wires it into the application: the session secret (generated
once under ``keys/``, 0600), the session cookie's flags, and the blueprints:

- `web.ui.session`  sign-in, sign-out, CSRF tokens, the admin guard for pages
- `web.ui.password` the "Change password" page; the first sign-in's detour to it
- `web.ui.tus_api`  the tus 1.0 upload endpoint (``/api/v1/uploads``) and the
                    JSON the upload and import pages poll
- `web.ui.pages`    the server-rendered pages under ``/ui/``
- `web.ui.releases` the release pages: status, diff, promote, roll back
- `web.ui.maintenance` disk use and leftovers, GC and scrub jobs, edge-host configuration, inventory
- `web.ui.image_keys` image-signing keys (cosign, content trust)

Templates live in ``web/templates/ui``, the CSS and JavaScript in
``web/static`` (hand-written, but for tus-js-client vendored under
``web/static/vendor``; all served by the appliance, nothing from a CDN).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flask import Flask

from bundles.clusterdef import ClusterDefinitions
from bundles.files import SiteFiles
from bundles.releases import Releases
from registry.names import parse_mapping_rules
from registry.tokens import TokenSigner, load_or_create_secret
from registry.version import VERSION
from web.bundle_import import ImportServices
from web.tus import TusUploads

SESSION_HOURS = 12


@dataclass(frozen=True)
class UiServices:
    """What the UI's views need besides `web.app.Services`."""

    imports: ImportServices
    definitions: ClusterDefinitions
    uploads: TusUploads
    signer: TokenSigner


def init_app(app: Flask, imports: ImportServices, definitions: ClusterDefinitions, signer: TokenSigner) -> None:
    """Register the UI on `app` (which must carry ``extensions["cargohold"]``, the Services)."""
    from web.ui.files import create_blueprint as files_blueprint
    from web.ui.image_keys import create_blueprint as image_keys_blueprint
    from web.ui.import_api import create_blueprint as import_api_blueprint
    from web.ui.maintenance import create_blueprint as maintenance_blueprint
    from web.ui.pages import create_blueprint as pages_blueprint
    from web.ui.password import create_blueprint as password_blueprint
    from web.ui.releases import create_blueprint as releases_blueprint
    from web.ui.session import create_blueprint as session_blueprint
    from web.ui.tus_api import create_blueprint as tus_blueprint

    services = app.extensions["cargohold"]
    config = services.config
    app.secret_key = load_or_create_secret(config.paths, "ui-session.key", 32)
    app.config.update(
        SESSION_COOKIE_NAME="cargohold_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(config.tls),  # a cookie for an HTTPS appliance never travels in clear text
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    ui = UiServices(imports, definitions, TusUploads(config.paths, config.upload_expiry_seconds,
                                                      config.bundle_max_bytes, services.registry.store), signer)
    app.extensions["cargohold.ui"] = ui
    app.jinja_env.globals["cargohold_version"] = VERSION  # the footer of every page (base.html)
    app.register_blueprint(session_blueprint())
    app.register_blueprint(password_blueprint())
    app.register_blueprint(tus_blueprint())
    app.register_blueprint(import_api_blueprint())
    app.register_blueprint(pages_blueprint())
    app.register_blueprint(maintenance_blueprint())
    app.register_blueprint(image_keys_blueprint())
    app.register_blueprint(files_blueprint(SiteFiles(services.registry, config.project)))
    app.register_blueprint(releases_blueprint(Releases(services.registry, config.project,
                                                       parse_mapping_rules(config.mapping_rules), services.audit)))
