"""Appliance configuration: defaults, environment variables, command line.

Every setting has an embedded default so `cargohold serve` runs with no
configuration at all (SQLite and ./cargohold-data). Environment variables
``CARGOHOLD_<FIELD>`` override the defaults; command-line options override
both. Secrets are excluded from `repr` so they never reach a log line.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from registry.paths import DataPaths

DEFAULT_PROJECT = "spectro-images"
REGISTRY_HOSTNAME = "spectro.registry.local"


@dataclass(frozen=True)
class Config:
    """The appliance's settings."""

    data_dir: Path = Path("cargohold-data")
    bind: str = "127.0.0.1:5000"
    # Chosen by measurement (scripts/bench_registry.py, docs/performance.md).
    # gthread: a blob download or a slow upload holds a thread, not a whole
    # process; sync workers stopped answering manifests once as many slow
    # downloads as workers were in flight, and cannot keep connections alive. Two
    # workers suit 2 cores (4 were no faster). 32 threads each because every
    # download in flight holds one: with 16, thirty slow layer downloads (ten
    # hosts pulling 3 layers at a time) could fill a worker and stall its
    # manifest requests; 32 kept serving, at ~3 MB more RSS per worker and
    # the same request rates.
    worker_class: str = "gthread"
    workers: int = 2
    threads: int = 32
    project: str = DEFAULT_PROJECT
    max_manifest_bytes: int = 4 << 20
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
    # Largest bundle file (or upload) accepted, compressed.
    bundle_max_bytes: int = 512 << 30
    # Largest total a bundle may decompress to, and the largest ratio of
    # decompressed to compressed bytes (a zstd bomb is refused long before it
    # fills the disk). Real bundles carry gzip layers and stay near 1:1.
    bundle_max_unpacked_bytes: int = 1 << 40
    bundle_max_ratio: int = 100
    # Free space an import must leave on the data volume.
    import_reserve_bytes: int = 256 << 20
    # Image name mapping rules, ``prefix=replacement,...``: a matched reference prefix is replaced (the
    # rest of the path kept) before nesting under the project (registry.names.MappingRule).
    mapping_rules: str = ""
    # Access control (docs/api.md, Access control). Registry bearer tokens live this long; this many
    # distinct wrong passwords for one user, or from one source address, within the lockout window
    # lock the user or address out for the window (429). 0 turns a limit off.
    token_expiry_seconds: int = 1800
    login_failures_per_user: int = 10
    login_failures_per_address: int = 30
    login_lockout_seconds: int = 300

    @property
    def paths(self) -> DataPaths:
        return DataPaths(self.data_dir.resolve())

    @property
    def own_hosts(self) -> frozenset[str]:
        """Names edge hosts may use for the appliance itself (never mirrored)."""
        host = self.bind.rsplit(":", 1)[0].strip("[]")
        names = {REGISTRY_HOSTNAME, "localhost", "127.0.0.1", "::1", host, socket.gethostname()}
        port = self.bind.rsplit(":", 1)[-1]
        return frozenset({n.lower() for n in names} | {f"{n.lower()}:{port}" for n in names})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, then CARGOHOLD_* variables, then non-None `overrides`."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"CARGOHOLD_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _convert(name: str, type_name: Any, raw: str) -> Any:
    text = str(type_name)
    try:
        if text.startswith("int"):
            return int(raw)
        if text.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if "Path" in text:
            return Path(raw)
    except ValueError:
        raise ValueError(f"CARGOHOLD_{name.upper()}={raw!r} is not a valid {text}") from None
    return raw
