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
    # gthread: a blob download or a slow upload holds a thread, not a whole
    # process, and threads share one SQLite page cache. Chosen by measurement
    # (docs/performance.md).
    worker_class: str = "gthread"
    workers: int = 2
    threads: int = 16
    project: str = DEFAULT_PROJECT
    max_manifest_bytes: int = 4 << 20
    upload_expiry_seconds: int = 24 * 3600
    admin_password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    external_url: str | None = None

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
