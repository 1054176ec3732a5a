"""Running the app under gunicorn, behind the nginx front: `cargohold serve` builds this.

Process tree: the gunicorn master (`cargohold serve` itself) binds the app's
unix socket, starts the nginx front (web/front.py) on the public address,
and forks the workers. The master never opens the database or a data file:
`serve` does its set-up in a short-lived child first, and each worker builds
its own app after the fork (no preload), so no SQLite connection or lock
crosses a fork. Workers and nginx get a parent-death signal, so when the
master is killed they go at once and a restart finds the port and socket
free. SIGTERM drains: nginx stops accepting and finishes what is in flight
(the app keeps answering it), then the workers stop.

With ``front = "none"`` gunicorn listens on the public address itself and
blob downloads go out through its file wrapper (sendfile on plain HTTP).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from werkzeug.middleware.proxy_fix import ProxyFix

from web.config import Config
from web.front import ACCEL_PREFIX, Front, FrontLayout, find_nginx, set_parent_death_signal
from web.logs import GunicornLogger, LogSettings, configure
from web.metrics_dir import worker_exited

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


class BindError(ValueError):
    """The listening address cannot work; the message names it and why."""


def check_bind(bind: str) -> None:
    """Check `bind` (``host:port``) before serve sets anything up; raises BindError naming the problem.

    Catches what would otherwise surface late or as a traceback: no port, a
    port outside 1-65535 (Python's bind raised OverflowError), a host name
    that does not resolve, an address this host does not have, a port the
    user may not open. An address in use is left to the server, which
    reports it (nginx also retries for a moment while an old appliance lets go).
    """
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit():
        raise BindError(f"--bind {bind!r} is not host:port (e.g. 0.0.0.0:5000 or [::]:5000)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise BindError(f"--bind {bind!r}: port {port} is not between 1 and 65535")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise BindError(f"--bind {bind!r}: cannot resolve {host!r} ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return
            raise BindError(f"--bind {bind!r}: cannot listen there: {exc.strerror}") from None


class ApplianceServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from a `Config` instead of its own command line, with the nginx front."""

    def __init__(self, config: Config, extra: dict[str, Any] | None = None) -> None:
        self.config = config
        self.extra = extra or {}
        # The CLI has done it already; done again here (idempotent) so a server built without the CLI logs
        # the same way, and its forked workers inherit it. Raises ValueError for a bad log setting.
        configure(LogSettings.of(config))
        self.front: Front | None = None
        self.flask_app: Any = None
        if config.front == "nginx":
            layout = FrontLayout.create(config)
            self.front = Front(config, layout, find_nginx(config.nginx))
            self.front.write_config()
        super().__init__()

    def load_config(self) -> None:
        _limit_malloc_arenas()
        c = self.config
        options: dict[str, Any] = {
            "bind": [f"unix:{self.front.layout.app_socket}" if self.front else c.bind],
            "workers": c.workers,
            "worker_class": c.worker_class,
            "threads": c.threads,
            # Large uploads run long; the timeout is for a hung worker's
            # heartbeat, not a request's duration, under gthread.
            "timeout": 120,
            "graceful_timeout": c.graceful_timeout,
            # Behind the front, connections come from nginx's keep-alive pool,
            # which drops them after 30 s idle: gunicorn must keep them longer,
            # or nginx could send a request on a connection being closed.
            "keepalive": 60 if self.front else c.keepalive_timeout,
            # gunicorn's lines go through the appliance's log handler (web/logs.py): same format, same level.
            "logger_class": GunicornLogger,
            "loglevel": c.log_level.lower(),
            # The request log (web/requestlog.py) writes one line per request; gunicorn's own stays off.
            "accesslog": None,
            "proc_name": "cargohold",
            "limit_request_line": 8190,
            # gunicorn's control socket lives in $HOME by default; several
            # appliances (tests, benchmarks) on one host would fight over it.
            "control_socket_disable": True,
            "post_fork": _post_fork,
            # A worker that exited no longer has requests in flight (its live gauges go; web/metrics_dir.py).
            "child_exit": lambda server, worker: worker_exited(worker.pid),
            # Each booted worker offers to run the seed directory's start-up scan; the first to claim it in the
            # database does (web/seed.py), and runs the maintenance scheduler, which claims each due run once
            # across workers (web/maintenance.py). Not in the master: it holds no database handle.
            "post_worker_init": self._post_worker_init,
        }
        if not self.front and c.tls:
            options["certfile"] = str(c.tls_cert)
            options["keyfile"] = str(c.tls_key)
        options.update(self.extra)
        for key, value in options.items():
            self.cfg.set(key, value)

    def _post_worker_init(self, worker: Any) -> None:
        _start_up_thread(self.config)
        if self.flask_app is not None:
            # Imported in the worker, like web.seed (below): it brings the maintenance core, which records metrics.
            from web.maintenance import start_scheduler

            start_scheduler(self.flask_app.extensions["cargohold.scheduler"])

    def load(self) -> Any:
        from web.app import create_app

        app = create_app(self.config, accel_prefix=ACCEL_PREFIX if self.front else None)
        self.flask_app = app  # this worker's: its scheduler starts once the worker has booted
        wrapped: Any = CloseOnUnreadBody(app, drain_limit=FRONT_DRAIN_LIMIT if self.front else 0)
        if self.front:
            # Only nginx can reach the app's socket (a 0700 directory), and it sets
            # X-Forwarded-For to the client's address and -Proto to its scheme.
            wrapped = ProxyFix(wrapped, x_for=1, x_proto=1)
        return wrapped

    def run(self) -> None:
        try:
            _FrontedArbiter(self).run()
        finally:
            if self.front:
                self.front.layout.remove()


def _start_up_thread(config: Config) -> None:
    # Imported in the worker: the master must not import what records metrics before the metrics directory is
    # set (web/metrics_dir.py), and web.seed brings the whole import core.
    from web.seed import start_up_thread

    start_up_thread(config)


def _post_fork(server: Arbiter, worker: Any) -> None:
    # A worker outliving a killed master would keep serving on a database
    # nobody supervises and hold the socket: go with the master, at once.
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != server.pid:
        os._exit(1)


class _FrontedArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, which also starts, watches and stops the nginx front."""

    def __init__(self, app: ApplianceServer) -> None:
        super().__init__(app)
        self.front = app.front

    def start(self) -> None:
        super().start()
        if self.front:
            try:
                self.front.start()
            except Exception as exc:
                raise HaltServer(str(exc), 1) from None
            self.log.info("front: nginx (pid %s) listening on %s, the app on %s",
                          self.front.process.pid if self.front.process else "-", self.front.config.bind,
                          self.cfg.bind[0])

    def manage_workers(self) -> None:
        if self.front and not self.front.running():
            raise HaltServer("the nginx front exited; stopping (see its messages above)", 1)
        super().manage_workers()

    def stop(self, graceful: bool = True) -> None:
        if self.front:
            # First the front: it stops accepting and drains its requests while the workers still answer
            # them. The workers then get what is left of the one grace period, not a second one.
            started = time.monotonic()
            self.front.stop(graceful)
            left = self.cfg.graceful_timeout - (time.monotonic() - started)
            self.cfg.set("graceful_timeout", max(1, int(left)))
        super().stop(graceful)


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

    Behind the nginx front the app's peer is nginx, which may still be
    writing the body when the answer comes: closing with unread bytes resets
    the connection, and nginx could answer 502 instead of the app's 401 or
    413. So with `drain_limit` set, once the answer has gone out, up to that
    many unread bytes are read and dropped for at most `DRAIN_SECONDS` before
    the connection closes: at local speed a body nginx buffered is drained
    whole; a streamed upload from a client without credentials holds the
    thread no longer than that (measured: 48 anonymous trickling uploads had
    held every upload slot when the drain came before the answer).
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], drain_limit: int = 0) -> None:
        self.app = app
        self.drain_limit = drain_limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length_text = environ.get("CONTENT_LENGTH") or ""
        length = int(length_text) if length_text.isdigit() else 0
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and length == 0:
            return self.app(environ, start_response)
        body = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = body
        unread_at_answer = False

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal unread_at_answer
            unread_at_answer = not body.eof if chunked else body.consumed < length
            force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
            if unread_at_answer and force_close is not None:
                force_close()  # gunicorn's Response: sends Connection: close and closes after this response
            return start_response(status, headers, exc_info)

        result = self.app(environ, start)
        if not self.drain_limit:
            return result

        def drain() -> None:
            if unread_at_answer:
                _drain(body, None if chunked else length, self.drain_limit, environ.get("gunicorn.socket"))

        return _ThenDrain(result, drain)


class _ThenDrain:
    """The app's answer, and after it has gone out (WSGI `close`), the drain of the unread body."""

    def __init__(self, result: Iterable[bytes], drain: Callable[[], None]) -> None:
        self.result = result
        self.drain = drain

    def __iter__(self) -> Any:
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.drain()


def _drain(body: _CountingInput, length: int | None, limit: int, sock: Any) -> None:
    """Read and drop up to `limit` unread bytes of a body for at most DRAIN_SECONDS (the connection closes next)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    budget = limit
    try:
        while budget > 0 and not body.eof and (length is None or body.consumed < length):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if sock is not None:
                sock.settimeout(left)  # this connection closes after the drain: its timeout matters no more
            budget -= len(body.read(min(_DRAIN_BLOCK, budget)))
    except OSError:  # timed out, or the client went away
        return


_DRAIN_BLOCK = 1 << 20
DRAIN_SECONDS = 2.0
# Behind the front: the largest unread rest of a body drained after an early answer. The CLI sends
# 64 MiB chunks; a refused one (a 401 before the client authenticates) is drained, not reset.
FRONT_DRAIN_LIMIT = 65 << 20
