"""Running the app under gunicorn: `cargohold serve` builds this.

Each worker builds its own app after the fork (no preload), so no SQLite
connection or file handle crosses a fork. Blob downloads go out through
gunicorn's file wrapper, which uses sendfile(2) on plain HTTP.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from web.config import Config


class ApplianceServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from a `Config` instead of its own command line."""

    def __init__(self, config: Config, extra: dict[str, Any] | None = None) -> None:
        self.config = config
        self.extra = extra or {}
        super().__init__()

    def load_config(self) -> None:
        c = self.config
        options: dict[str, Any] = {
            "bind": [c.bind],
            "workers": c.workers,
            "worker_class": c.worker_class,
            "threads": c.threads,
            # Large uploads and downloads run long; the timeout is for a hung
            # worker's heartbeat, not a request's duration, under gthread.
            "timeout": 120,
            "graceful_timeout": 30,
            "keepalive": 15,
            "accesslog": "-",
            # No header in the access log format: Authorization never lands in a log.
            "access_log_format": '%(h)s "%(r)s" %(s)s %(B)s %(M)sms',
            "errorlog": "-",
            "proc_name": "cargohold",
            "limit_request_line": 8190,
            # gunicorn's control socket lives in $HOME by default; several
            # appliances (tests, benchmarks) on one host would fight over it.
            "control_socket_disable": True,
        }
        if c.tls:
            options["certfile"] = str(c.tls_cert)
            options["keyfile"] = str(c.tls_key)
        options.update(self.extra)
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from web.app import create_app

        return create_app(self.config)
