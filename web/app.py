"""The application factory: composes the packages' blueprints into one app.

Nothing is bound to an app at import time; `create_app(config)` builds the
services over the data directory and registers every blueprint.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, Response, jsonify

from registry.auth import Users
from registry.db import migrate
from registry.distribution import DistributionConfig, create_blueprint, register_error_handlers
from registry.model import Registry
from registry.uploads import Uploads
from web.config import Config


@dataclass(frozen=True)
class Services:
    """The core objects one app serves, for blueprints and the CLI alike."""

    config: Config
    registry: Registry
    uploads: Uploads
    users: Users


def build_services(config: Config) -> Services:
    """Open the data directory (migrating it) and build the core services."""
    paths = config.paths
    migrate(paths)
    registry = Registry(paths, max_manifest_bytes=config.max_manifest_bytes)
    return Services(config, registry, Uploads(registry, config.upload_expiry_seconds), Users(registry))


def create_app(config: Config | None = None) -> Flask:
    """A Flask app serving the appliance for `config` (defaults from the environment)."""
    config = config or Config.from_env()
    services = build_services(config)
    app = Flask(__name__)
    app.extensions["cargohold"] = services
    realm = "cargohold"
    register_error_handlers(app, realm)
    app.register_blueprint(create_blueprint(
        services.registry, services.uploads, services.users,
        DistributionConfig(project=config.project, own_hosts=config.own_hosts, realm=realm)))

    @app.get("/")
    def index() -> Response:
        return jsonify({"service": "cargohold", "registry": "/v2/"})

    return app
