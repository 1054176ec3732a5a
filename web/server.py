"""Running the app under gunicorn: `cargohold serve` builds this.

Each worker builds its own app after the fork (no preload), so no SQLite
connection or file handle crosses a fork. Blob downloads go out through
gunicorn's file wrapper, which uses sendfile(2) on plain HTTP.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication

from web.config import Config

_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before gunicorn forks its workers (which inherit the cap).

    glibc gives threads up to 8 arenas per core, and each keeps the 1 MiB
    buffers of finished uploads instead of returning them, so a worker's RSS
    grew with the number of concurrent uploads it had ever seen: 137 MB after
    parallel skopeo pushes, 83 MB with two arenas, with push, pull and
    manifest rates unchanged (docs/performance.md). An explicit
    MALLOC_ARENA_MAX in the environment wins; elsewhere than glibc this does
    nothing.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)


class ApplianceServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from a `Config` instead of its own command line."""

    def __init__(self, config: Config, extra: dict[str, Any] | None = None) -> None:
        self.config = config
        self.extra = extra or {}
        super().__init__()

    def load_config(self) -> None:
        _limit_malloc_arenas()
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

        return CloseOnUnreadBody(create_app(self.config))


class _CountingInput:
    """wsgi.input that remembers how much was read and whether it reached the end."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.consumed = 0
        self.eof = False

    def _seen(self, data: bytes, asked: int | None) -> bytes:
        self.consumed += len(data)
        if not data and asked != 0:
            self.eof = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._seen(self._stream.read(size), size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._seen(self._stream.readline(size), size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(hint)
        self.consumed += sum(len(line) for line in lines)
        self.eof = True
        return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class CloseOnUnreadBody:
    """WSGI middleware: answer with ``Connection: close`` when the app leaves part of a request body unread.

    Error answers (a 401 to a PATCH that carried a 64 MiB chunk, say) go out
    before the body is read. gunicorn then drains at most 64 KiB (for at most
    5 s) and otherwise closes the connection, *after* its response said
    keep-alive, so a client that reuses the connection (requests, hence the
    oras library, retrying with credentials) gets "connection closed without
    response". Telling gunicorn to close up front makes the response say so,
    and every client reconnects instead.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length_text = environ.get("CONTENT_LENGTH") or ""
        length = int(length_text) if length_text.isdigit() else 0
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and length == 0:
            return self.app(environ, start_response)
        body = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = body

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            unread = not body.eof if chunked else body.consumed < length
            force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
            if unread and force_close is not None:
                force_close()  # gunicorn's Response: sends Connection: close and closes after this response
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
