"""Appliance configuration: defaults, environment variables, command line.

Every setting has an embedded default so `cargohold serve` runs with no
configuration at all (SQLite and ./cargohold-data). An optional TOML file
(``--config FILE`` or ``CARGOHOLD_CONFIG``, keys are the field names)
overrides the defaults, environment variables ``CARGOHOLD_<FIELD>`` override
the file, and command-line options override everything. Every field is a
setting, read and checked by web/settings.py from its annotation and
metadata (``Bytes``, ``setting(choices=..., minimum=...)``); an unknown
``CARGOHOLD_*`` variable or file key is refused. Secrets are excluded from
`repr` so they never reach a log line.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from bundles.schedule import Schedule, parse_schedule
from registry.names import parse_mapping_rules
from registry.paths import DataPaths
from registry.s3store import StorageURL
from web import settings
from web.settings import Bytes, Spec, setting

DEFAULT_PROJECT = "spectro-images"
REGISTRY_HOSTNAME = "spectro.registry.local"
FRONTS = ("nginx", "none")
METRICS_ACCESS = ("loopback", "token", "open")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # any case
LOG_FORMATS = ("text", "json")


def _log_level(text: str) -> None:
    if text.strip().upper() not in LOG_LEVELS:
        raise ValueError("not one of " + ", ".join(LOG_LEVELS))


def _log_format(text: str) -> None:
    if text.strip().lower() not in LOG_FORMATS:
        raise ValueError("not one of " + ", ".join(LOG_FORMATS))
CONFIG_ENV = settings.CONFIG_ENV
# CARGOHOLD_* variables that are not settings (no Config field), with who reads them: anything else
# named CARGOHOLD_* is refused at start as a likely typo. tests/web/test_config.py checks this list
# against every CARGOHOLD_* name in the repository.
OTHER_VARIABLES = (
    CONFIG_ENV,                    # the config file (web/settings.py)
    "CARGOHOLD_NEW_PASSWORD",      # `admin add-user` / `set-password` input (web/cli.py)
    "CARGOHOLD_KUBECONFIG",        # the edge cluster garbage collection protects (bundles/gc_policy.py)
    "CARGOHOLD_KEY_PASSPHRASE",    # a signing key's passphrase on the build side (web/cli_build.py)
    "CARGOHOLD_REGISTRY_CREDS",    # `bundle build --from-registry` credentials (web/cli_build.py)
    "CARGOHOLD_MIRROR_PASSWORD",   # `mirror-config --username`'s password (web/cli_clusterdef.py)
    "CARGOHOLD_FOLLOW_SECRET",     # `follow`'s robot secret (web/cli_follow.py)
    # Knobs of the test suite and scripts/ (the tests hand their whole environment to the appliance).
    "CARGOHOLD_DOC_SCREENSHOTS", "CARGOHOLD_KILL_SEED", "CARGOHOLD_FUZZ_EXAMPLES",
    "CARGOHOLD_SCHEMATHESIS_EXAMPLES",
)


def _storage_url(text: str) -> None:
    if text.strip():
        StorageURL.parse(text)  # raises StorageConfigError (a ValueError) naming what is wrong


def _database_url(text: str) -> None:
    if text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("not a postgresql:// URL (leave it empty for SQLite in the data directory)")


def _mapping_rules(text: str) -> None:
    parse_mapping_rules(text)  # raises ValueError naming the malformed rule


@dataclass(frozen=True)
class Config:
    """The appliance's settings."""

    data_dir: Path = Path("cargohold-data")
    # The metadata database (docs/operations.md, "PostgreSQL metadata"): empty (default) for SQLite in the
    # data directory; a ``postgresql://user:password@host:port/dbname`` URL (libpq's form, with its
    # ``?sslmode=...`` options) keeps the metadata in PostgreSQL >= 15 instead. Never logged (may hold a password).
    database_url: str = setting("", validate=_database_url, secret=True)
    bind: str = "127.0.0.1:5000"
    # The serving architecture (web/front.py, docs/performance.md): "nginx" puts
    # Debian's nginx in front of gunicorn (slow and idle clients, blob bodies,
    # TLS); "none" runs gunicorn alone on `bind`, for development only: slow
    # or idle clients can hold every one of its threads.
    front: str = setting("nginx", choices=FRONTS)
    # The nginx binary (default: found on PATH or in /usr/sbin).
    nginx: str = ""
    # nginx worker processes (0: one per core).
    front_workers: int = 0
    # Where the front's nginx.conf, pid file and the app's unix socket live
    # (a fresh private directory below this one; default: $RUNTIME_DIRECTORY or /tmp).
    runtime_dir: Path | None = None
    # Timeouts in seconds for clients of the front: the whole request header,
    # between two reads of a request body, between two writes of a response,
    # and an idle keep-alive connection. An upload or download that keeps
    # moving is never cut, however long it runs.
    client_header_timeout: int = setting(10, minimum=1)
    client_body_timeout: int = setting(60, minimum=1)
    send_timeout: int = setting(60, minimum=1)
    keepalive_timeout: int = 15
    # How long the front waits for the app to answer one request.
    app_timeout: int = setting(300, minimum=1)
    # Requests in flight from one client address (0: no limit); more get 429.
    max_requests_per_address: int = 128
    # SIGTERM: requests in flight get this long to finish.
    graceful_timeout: int = 30
    # gunicorn behind the front. gthread: a request holds a thread only while
    # the app works on it (the front buffers slow clients and sends blob
    # bodies itself); an upload body streams through a thread, and the front
    # lets at most three quarters of the threads take uploads. Two workers
    # suit 2 cores (docs/performance.md).
    worker_class: str = "gthread"
    workers: int = setting(2, minimum=1)
    threads: int = setting(32, minimum=1)
    project: str = DEFAULT_PROJECT
    max_manifest_bytes: Bytes = setting(4 << 20, minimum=1)
    upload_expiry_seconds: int = 24 * 3600
    admin_password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Extra names for the generated server certificate, comma-separated DNS
    # names or IP addresses (the cluster's virtual IP, a site DNS name).
    tls_san: str = ""
    external_url: str | None = None
    # Bundle import (docs/bundle-import.md). Unsigned bundles are refused
    # unless this is turned on: a site must not run content nobody vouched for.
    allow_unsigned_bundles: bool = False
    # Cluster definitions uploaded on their own (docs/cluster-definition-format.md) likewise need a
    # trusted key's signature unless this is turned on; those inside a bundle are covered by its signature.
    allow_unsigned_definitions: bool = False
    # Largest bundle file (or upload) accepted, compressed.
    bundle_max_bytes: Bytes = setting(512 << 30, minimum=1)
    # Largest total a bundle may decompress to, and the largest ratio of
    # decompressed to compressed bytes (a zstd bomb is refused long before it
    # fills the disk). Real bundles carry gzip layers and stay near 1:1.
    bundle_max_unpacked_bytes: Bytes = setting(1 << 40, minimum=1)
    bundle_max_ratio: int = setting(100, minimum=1)
    # Free space an import must leave on the data volume.
    import_reserve_bytes: Bytes = 256 << 20
    # Zero-touch first start (docs/bundle-import.md, "Seed directory"): bundles and signed definitions in
    # this directory (default <data>/seed) are imported once, under the policy above; scanned at start
    # unless seed_scan is off, and on demand. A file counts once unchanged for seed_settle_seconds (a copy
    # still being written is left for the next round).
    seed_dir: Path | None = None
    seed_scan: bool = True
    seed_settle_seconds: int = 2
    # Image name mapping rules, ``prefix=replacement,...``: a matched reference prefix is replaced (the
    # rest of the path kept) before nesting under the project (registry.names.MappingRule).
    mapping_rules: str = setting("", validate=_mapping_rules)
    # Access control (docs/api.md, Access control). Registry bearer tokens live this long; this many
    # distinct wrong passwords for one user, or from one source address, within the lockout window
    # lock the user or address out for the window (429). 0 turns a limit off.
    token_expiry_seconds: int = setting(1800, minimum=1)
    login_failures_per_user: int = 10
    login_failures_per_address: int = 30
    login_lockout_seconds: int = 300
    # Monitoring (docs/operations.md, "Monitoring"). Who may read /metrics: "loopback" (default): clients on
    # this host without credentials, anyone else with `metrics_token` as a bearer token or a system
    # administrator's Basic credentials; "token": everyone needs those; "open": anyone. /livez and /readyz
    # are always open.
    metrics_access: str = setting("loopback", choices=METRICS_ACCESS)
    # The bearer token for /metrics (empty: none; then only an administrator's Basic credentials).
    metrics_token: str = field(default="", repr=False)
    # Scheduled maintenance (docs/operations.md, "Scheduled maintenance"): when garbage collection, scrub and
    # the expiry of stale uploads and import staging run by themselves, in the appliance's local time:
    # "off", "hourly", "daily[@HH:MM]", "weekly[@DAY HH:MM]" or "every N[s|m|h|d]" (bundles/schedule.py).
    # Defaults: GC daily at 03:00, scrub on Sundays at 04:00, expiry hourly.
    gc_schedule: str = setting("daily@03:00", validate=parse_schedule)
    scrub_schedule: str = setting("weekly@sun 04:00", validate=parse_schedule)
    expire_schedule: str = setting("hourly", validate=parse_schedule)
    # Bytes per second a scrub reads at most (0: no limit), so pulls keep their speed while it runs (64 MiB/s).
    scrub_rate_bytes: Bytes = setting(64 << 20)
    # The log (web/logs.py, docs/operations.md "Logs"), on standard error: the level (DEBUG, INFO, WARNING,
    # ERROR or CRITICAL; default INFO) and the format, "text" (default) or "json" (one object per line).
    log_level: str = setting("INFO", validate=_log_level)
    log_format: str = setting("text", validate=_log_format)
    # Blob storage (docs/operations.md, "Object storage"). Empty (default): blobs are files under <data>/blobs.
    # ``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1``: blobs are objects in that bucket of an
    # S3-compatible engine (path-style addressing), under ``<prefix>/blobs/sha256/<2 hex>/<hex>``. The database,
    # keys and upload and import staging stay on the data volume.
    storage_url: str = setting("", validate=_storage_url)
    # The object store's keys: an AWS-style credentials file ([default] aws_access_key_id, aws_secret_access_key;
    # refused if group or others may read it). Default: the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables.
    storage_credentials_file: Path | None = None
    # With an object store: blob GETs answer 307 to a presigned URL valid storage_redirect_seconds (default
    # 300), so clients fetch the bytes from the store itself. Off by default: edge hosts often cannot reach it.
    storage_redirect: bool = False
    storage_redirect_seconds: int = setting(300, minimum=1, maximum=7 * 86400)

    @property
    def paths(self) -> DataPaths:
        return DataPaths(self.data_dir.resolve(), self.database_url or None)

    @property
    def seed_directory(self) -> Path:
        """The seed directory: `seed_dir` as configured, else <data>/seed."""
        return self.seed_dir.resolve() if self.seed_dir is not None else self.paths.seed

    @property
    def schedules(self) -> dict[str, Schedule]:
        """The maintenance schedules by job kind; raises ValueError naming the setting that is not one."""
        found: dict[str, Schedule] = {}
        for kind in ("gc", "scrub", "expire"):
            name = f"{kind}_schedule"
            try:
                found[kind] = parse_schedule(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"CARGOHOLD_{name.upper()}: {exc}") from None
        return found

    @property
    def own_hosts(self) -> frozenset[str]:
        """Names edge hosts may use for the appliance itself (never mirrored)."""
        host = self.bind.rsplit(":", 1)[0].strip("[]")
        names = {REGISTRY_HOSTNAME, "localhost", "127.0.0.1", "::1", host, socket.gethostname()}
        port = self.bind.rsplit(":", 1)[-1]
        own = {n.lower() for n in names} | {f"{n.lower()}:{port}" for n in names}
        if self.external_url:
            # The site's address in front of the replicas (a load balancer: docs/operations.md "Scaling out").
            parsed = urllib.parse.urlsplit(self.external_url)
            own |= {n.lower() for n in (parsed.hostname, parsed.netloc) if n}
        return frozenset(own)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, config_file: Path | None = None,
                 **overrides: Any) -> Config:
        """Defaults, then the config file, then CARGOHOLD_* variables, then non-None `overrides`.

        The file is `config_file`, else $CARGOHOLD_CONFIG, else none. Raises
        settings.ConfigError (a ValueError) naming the setting and where it came from.
        """
        environ = dict(os.environ if environ is None else environ)
        values = settings.resolve(config_specs(), environ, OTHER_VARIABLES,
                                  settings.config_file(config_file, environ), overrides)
        return replace(cls(), **values)


@cache
def config_specs() -> dict[str, Spec]:
    """Every Config field as a setting (its type and checks)."""
    return settings.specs(Config)
