"""The application factory: composes the packages' blueprints into one app.

Nothing is bound to an app at import time; `create_app(config)` builds the
services over the data directory and registers every blueprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify, redirect, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue

from bundles import api as bundles_api
from bundles import (
    clusterdef_api,
    files_api,
    harbor_gc_api,
    harbor_openapi,
    harbor_retention_api,
    maintenance_api,
    protection_api,
    releases_api,
    seed_api,
)
from bundles.api_access import ApiAccess
from bundles.clusterdef import ClusterDefinitions
from bundles.files import SiteFiles
from bundles.release_protection import promoted_release_tags
from bundles.releases import Releases
from bundles.retention import Retention
from registry import harbor, leases, token_api
from registry.access import Access, LoginLimiter
from registry.artifacts import Artifacts
from registry.audit import AuditLog
from registry.auth import Users
from registry.db import migrate
from registry.distribution import DistributionConfig, create_blueprint, register_error_handlers
from registry.model import Registry
from registry.names import parse_mapping_rules
from registry.system_api import SystemSettings
from registry.tokens import TokenSigner
from registry.uploads import Uploads
from web import hardening, health, initial_password, metrics, requestlog, tls_api, ui
from web.bundle_import import import_services
from web.config import Config
from web.maintenance import maintenance_jobs
from web.maintenance import scheduler as maintenance_scheduler
from web.seed import scan_in_background, seed_scanner
from web.storage import blob_serving, blob_store
from web.tls import generated_ca


@dataclass(frozen=True)
class Services:
    """The core objects one app serves, for blueprints and the CLI alike."""

    config: Config
    registry: Registry
    uploads: Uploads
    users: Users
    access: Access
    audit: AuditLog


def build_services(config: Config) -> Services:
    """Open the data directory (migrating it) and build the core services."""
    paths = config.paths
    import bundles.schema  # noqa: F401  (registers the bundles package's tables, so migrate applies them too)

    migrate(paths)
    registry = Registry(paths, blob_store(config), max_manifest_bytes=config.max_manifest_bytes)
    # A promoted release's tags move only by promote or rollback (registry.protection).
    registry.protection.add_owner(promoted_release_tags, "Released tags move only by promoting or rolling back a "
                                  "release (cargohold release promote / rollback).")
    users = Users(registry)
    # Whichever way a password changes (CLI, UI, Harbor's user API), the first start's generated one is void.
    users.on_password_set.append(lambda username: initial_password.changed(config.paths, username))
    access = Access(registry, users, LoginLimiter(
        registry, config.login_failures_per_user, config.login_failures_per_address,
        window=config.login_lockout_seconds, lockout=config.login_lockout_seconds))
    # The default project exists from the first start and is public: edge hosts pull anonymously.
    access.projects.ensure(config.project, public=True)
    uploads = Uploads(registry, config.upload_expiry_seconds, config.import_reserve_bytes)
    return Services(config, registry, uploads, users, access, AuditLog(registry))


class _JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with too-deep nesting reported as invalid JSON.

    `json.loads` raises RecursionError on a body like ``[[[[…``, which
    `request.get_json(silent=True)` does not catch; as a ValueError every
    endpoint treats it as the malformed input it is, instead of a 500.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON is nested too deeply") from None


def create_app(config: Config | None = None, accel_prefix: str | None = None) -> Flask:
    """A Flask app serving the appliance for `config` (defaults from the environment).

    `accel_prefix`: set when the nginx front serves blob bodies (web/front.py).
    """
    config = config or Config.from_env()
    services = build_services(config)
    app = Flask(__name__)
    requestlog.install(app)  # one line per request, and the request id on every log line (docs/operations.md)
    hardening.install(app)  # before any blueprint: its routes must get the bounded int converter
    app.json = _JSONProvider(app)
    app.extensions["cargohold"] = services
    realm = "cargohold"
    register_error_handlers(app, realm)
    signer = TokenSigner.load_or_create(config.paths, config.token_expiry_seconds)
    leases.keep_alive(config.paths)  # this replica's machine lease (shared PostgreSQL metadata only)
    app.register_blueprint(create_blueprint(
        services.registry, services.uploads, services.users,
        DistributionConfig(project=config.project, own_hosts=config.own_hosts, realm=realm,
                           external_url=config.external_url, serving=blob_serving(config, accel_prefix)),
        services.access, signer))
    app.register_blueprint(token_api.create_blueprint(services.access, signer, config.external_url))
    app.register_blueprint(harbor.create_blueprint(
        services.access, Artifacts(services.registry, services.access.projects), services.audit, config.project,
        config.external_url, lambda: generated_ca(config) is not None, config.import_reserve_bytes,
        SystemSettings(config.token_expiry_seconds, lambda: generated_ca(config))))
    harbor.register_audit(app, services.audit)
    app.register_blueprint(tls_api.create_blueprint(config))
    # The bundle and cluster-definition APIs authenticate, limit, refuse and audit as the Harbor API does.
    guard = ApiAccess(services.access, signer, services.audit, config.project, config.external_url)
    app.register_blueprint(clusterdef_api.create_blueprint(
        ClusterDefinitions(config.paths), services.registry, guard,
        clusterdef_api.ClusterDefApiConfig(config.project, parse_mapping_rules(config.mapping_rules),
                                           config.allow_unsigned_definitions)))
    releases = Releases(services.registry, config.project, parse_mapping_rules(config.mapping_rules), services.audit)
    # GC, scrub and expiry as background jobs, one at a time, on a schedule (web.maintenance); the UI's
    # maintenance page starts and follows the same ones. Serving workers run the scheduler (web/server.py).
    maintenance = maintenance_jobs(config, releases, services.uploads, services.audit)
    app.extensions["cargohold.maintenance"] = maintenance
    app.extensions["cargohold.scheduler"] = maintenance_scheduler(config, maintenance)
    # The older synchronous POST /gc and /scrub take the same slot.
    app.register_blueprint(releases_api.create_blueprint(releases, guard, services.uploads, maintenance))
    app.register_blueprint(maintenance_api.create_blueprint(maintenance, guard,
                                                            app.extensions["cargohold.scheduler"]))
    # Harbor's /api/v2.0/system/gc* over the same jobs and schedule.
    app.register_blueprint(harbor_gc_api.create_blueprint(maintenance, app.extensions["cargohold.scheduler"], guard))
    # Harbor's /api/v2.0/retentions: tag retention through the registry's tag protections; GC then reclaims.
    app.register_blueprint(harbor_retention_api.create_blueprint(
        Retention(services.registry, services.access.projects), guard))
    harbor.add_openapi_section(app, harbor_openapi.section())  # describe both in /api/v2.0/openapi.json
    app.register_blueprint(protection_api.create_blueprint(services.registry, guard))
    app.register_blueprint(files_api.create_blueprint(SiteFiles(services.registry, config.project), guard,
                                                      blob_serving(config, accel_prefix)))
    imports = import_services(config, services.registry)
    app.register_blueprint(bundles_api.create_blueprint(
        imports.importer, imports.jobs, guard, config.paths,
        bundles_api.BundleApiConfig(config.bundle_max_bytes, config.import_reserve_bytes)))
    scanner = seed_scanner(config, imports)
    app.extensions["cargohold.seed"] = scanner  # the UI's seed page uses the same scanner
    app.register_blueprint(seed_api.create_blueprint(
        scanner, guard, seed_api.SeedApiConfig(config.seed_scan, scan_in_background)))
    # Monitoring: /livez and /readyz (open), /metrics and the request metrics (web/metrics.py).
    app.register_blueprint(health.create_blueprint(config, services.registry.store))
    metrics.install(app, config, services.access)
    # The operator UI (web.ui): sign-in, resumable upload (tus), pages.
    ui.init_app(app, imports, ClusterDefinitions(config.paths), signer)

    @app.get("/")
    def index() -> ResponseReturnValue:
        # A browser navigating here names text/html ahead of its `*/*` fallback: it gets the operator UI.
        # Everything else (application/json, curl's bare `*/*`, no Accept at all) gets the JSON pointer:
        # on a tie JSON wins, as it is listed first.
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
            return redirect("/ui/")
        return jsonify({"service": "cargohold", "registry": "/v2/", "ui": "/ui/"})

    return app
