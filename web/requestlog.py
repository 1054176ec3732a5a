"""The request log: one line per request the app answers, and the request id every other line carries.

`install(app)` wraps the app's WSGI callable. For each request it

- takes the request id from ``X-Request-Id`` when that is nginx's
  ``$request_id`` (32 lowercase hex digits: the front overwrites whatever a
  client sent, web/front.py), and otherwise makes one in the same form, so
  a client choosing its own id (``--front none``) cannot write anything else
  into the log; answers with it in ``X-Request-Id``; and binds it in
  `registry.logcontext` for every log line made while the request runs (and
  by the jobs it starts);
- counts the body bytes the app reads and writes;
- once the answer has gone out (WSGI ``close``), logs at INFO (ERROR for a
  5xx) on ``cargohold.request``: client address, principal (user or robot
  name, else ``anonymous``), method, route template, path, query,
  repository (/v2/ and Harbor repository routes), status, bytes in and
  out, duration in milliseconds. The query keeps the values of known,
  harmless parameters only (`LOGGED_QUERY_VALUES`: ``ns``, ``mount``,
  ``scope``...); any other parameter's value is replaced by ``…``, since a
  client may put anything there.

The client address is the WSGI ``REMOTE_ADDR`` as the login limiter sees it
(`request.remote_addr`): behind the front, ProxyFix has set it from the
``X-Forwarded-For`` nginx writes (its ``$remote_addr``, replacing any the
client sent); with ``--front none`` it is the socket's peer and the header is
ignored. Blob bodies nginx sends itself (``X-Accel-Redirect``) are logged
here with ``sent_by=front`` and the length of the file (or range) the app
handed over; nginx adds a line of its own only when it could not send the
whole answer
(web/front.py, docs/operations.md "Logs").
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, g, request
from werkzeug.datastructures import Range

from registry import logcontext
from registry.blobserve import ACCEL_OBJECT_PREFIX, FRONT_BODY_SIZE
from web.front import ACCEL_PREFIX

HEADER = "X-Request-Id"
# Query parameters whose values are logged (the OCI, Harbor and token-service ones, none of them secret);
# any other parameter is logged by name only, its value replaced by "…": a client may put anything there.
LOGGED_QUERY_VALUES = frozenset({
    "ns", "n", "last", "mount", "from", "digest", "service", "scope", "account", "artifactType", "page",
    "page_size", "q", "sort", "with_tag", "with_label", "with_signature", "with_immutable_status", "with_accessory",
    "dryRun",
})
_VALID_ID = re.compile(r"^[0-9a-f]{32}$")
_ENTRY = "cargohold.request_log"
_log = logging.getLogger("cargohold.request")


def install(app: Flask) -> None:
    """Log every request `app` answers (see the module docstring)."""
    def blobs() -> Path | None:
        services = app.extensions.get("cargohold")
        return services.config.paths.blobs if services is not None else None

    middleware = RequestLog(app.wsgi_app, blobs)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.extensions[_ENTRY] = middleware
    app.teardown_request(_note_route)


@dataclass(frozen=True)
class Answered:
    """What one request came to, measured once for every consumer (the log line, the metrics)."""

    method: str
    route: str | None  # the template Flask matched; None when none did
    status: int
    bytes_in: int
    bytes_out: int  # body bytes sent, by the app, the server's sendfile or the front (X-Accel-Redirect)
    duration: float  # seconds from the request reaching the app until its answer had gone out


def add_observer(app: Flask, started: Callable[[], None], answered: Callable[[Answered], None]) -> None:
    """Also call `started` when a request reaches `app` and `answered` once it has been answered.

    The request log measures each request once; other consumers (web/metrics.py) read its measure instead of
    wrapping the app again. Raises KeyError if `install` has not run on `app`.
    """
    middleware: RequestLog = app.extensions[_ENTRY]
    middleware.observers.append((started, answered))


def request_id_of(header: str | None) -> str:
    """The request's id: nginx's from `header` if it has that form, else a new one."""
    if header and _VALID_ID.match(header):
        return header
    return uuid.uuid4().hex


class _Entry:
    """What one request's line will say, filled in as the request is handled."""

    def __init__(self, environ: dict[str, Any], info: logcontext.RequestInfo) -> None:
        self.started = time.monotonic()
        self.info = info
        self.environ = environ
        self.status = 0
        self.declared: int | None = None  # Content-Length of the answer
        self.front_body: str | None = None  # X-Accel-Redirect: nginx sends this file as the body
        self.range: Range | None = None
        self.bytes_out = 0
        self.body_iterated = False
        self.route: str | None = None
        self.repository: str | None = None
        self.principal: str | None = None
        self.logged = False


class _CountingInput:
    """wsgi.input that counts what the app reads."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class RequestLog:
    """WSGI middleware: the request id, and one log line per request once its answer has gone out."""

    def __init__(self, app: Callable[..., Iterable[bytes]], blobs: Callable[[], Path | None]) -> None:
        self.app = app
        self.blobs = blobs
        self.observers: list[tuple[Callable[[], None], Callable[[Answered], None]]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        for started, _ in self.observers:
            _safely(started)
        info = logcontext.RequestInfo(request_id_of(environ.get("HTTP_X_REQUEST_ID")))
        environ["HTTP_X_REQUEST_ID"] = info.request_id
        token = logcontext.bind(info)
        entry = _Entry(environ, info)
        environ[_ENTRY] = entry
        body = _CountingInput(environ["wsgi.input"]) if environ.get("wsgi.input") is not None else None
        if body is not None:
            environ["wsgi.input"] = body

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            entry.status = int(status[:3]) if status[:3].isdigit() else 0
            kept = [(k, v) for k, v in headers if k.lower() != HEADER.lower()]
            for key, value in kept:
                lowered = key.lower()
                if lowered == "content-length" and value.isdigit():
                    entry.declared = int(value)
                elif lowered == "x-accel-redirect":
                    entry.front_body = value
            kept.append((HEADER, info.request_id))
            write = start_response(status, kept, exc_info)

            def counted_write(data: bytes) -> Any:
                entry.bytes_out += len(data)
                return write(data)
            return counted_write

        def finish() -> None:
            if entry.logged:  # closed twice
                return
            entry.logged = True
            try:
                answered = _answered(entry, body.count if body is not None else 0, self.blobs)
                try:
                    _write_line(entry, answered)
                finally:
                    for _, observer in self.observers:
                        _safely(observer, answered)
            finally:
                try:
                    logcontext.reset(token)
                except ValueError:  # closed from another context than the one the request ran in
                    logcontext.bind(None)

        try:
            result = self.app(environ, start)
        except BaseException:
            entry.status = entry.status or 500
            finish()
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            # The server sends it with sendfile(2) only if it gets its own wrapper back: keep it, hook its close.
            original = getattr(result, "close", None)

            def close() -> None:
                try:
                    if original is not None:
                        original()
                finally:
                    finish()
            result.close = close  # type: ignore[attr-defined]
            return result
        return _Logged(result, entry, finish)


class _Logged:
    """The app's answer, counted as it goes out; the line is written when the server closes it."""

    def __init__(self, result: Iterable[bytes], entry: _Entry, finish: Callable[[], None]) -> None:
        self.result = result
        self.entry = entry
        self.finish = finish

    def __iter__(self) -> Iterator[bytes]:
        self.entry.body_iterated = True
        for chunk in self.result:
            self.entry.bytes_out += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.finish()


def _note_route(exc: BaseException | None = None) -> None:
    """At the end of the request's handling, while Flask still knows it: route, repository, principal."""
    entry: _Entry | None = request.environ.get(_ENTRY)
    if entry is None:
        return
    rule = request.url_rule
    entry.route = rule.rule if rule is not None else None
    args = request.view_args or {}
    if request.blueprint == "distribution" and isinstance(args.get("name"), str):
        entry.repository = args["name"]  # as resolved (a mirror request's ?ns= applied)
    elif isinstance(args.get("ref"), str) and isinstance(args.get("repo"), str):
        entry.repository = f"{args['ref']}/{urllib.parse.unquote(args['repo'])}"  # Harbor: project/repository
    entry.range = request.range if "Range" in request.headers else None
    principal = g.get("principal")
    name = getattr(principal, "username", None)
    if isinstance(name, str) and name:
        entry.principal = name


def _path(environ: dict[str, Any]) -> str:
    raw = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
    try:
        return raw.encode("latin-1").decode("utf-8", "replace")  # WSGI carries the path's bytes as latin-1
    except UnicodeEncodeError:
        return raw


def _query(raw: str) -> str | None:
    """The query string with only `LOGGED_QUERY_VALUES`' values kept (None if there is none)."""
    if not raw:
        return None
    kept = []
    for name, value in urllib.parse.parse_qsl(raw.encode("latin-1", "replace").decode("utf-8", "replace"),
                                              keep_blank_values=True):
        kept.append(f"{name}={value}" if name in LOGGED_QUERY_VALUES else f"{name}=…")
    return "&".join(kept) or None


def _front_body_length(entry: _Entry, blobs: Path | None) -> int:
    """How many bytes nginx sends for an X-Accel-Redirect answer: the file, or the asked range of it."""
    target = entry.front_body or ""
    if target.startswith(ACCEL_OBJECT_PREFIX):
        # An object the front fetches from the object store: its size as the app knew it (registry/blobserve.py).
        size = int(entry.environ.get(FRONT_BODY_SIZE) or 0)
    elif blobs is None or not target.startswith(ACCEL_PREFIX):
        return 0
    else:
        try:
            size = (blobs / target[len(ACCEL_PREFIX):]).stat().st_size
        except OSError:
            return 0
    wanted = entry.range.range_for_length(size) if entry.range is not None else None
    return wanted[1] - wanted[0] if wanted is not None else size


def _answered(entry: _Entry, bytes_in: int, blobs: Callable[[], Path | None]) -> Answered:
    method = str(entry.environ.get("REQUEST_METHOD", ""))
    bytes_out = entry.bytes_out
    if entry.front_body is not None:
        bytes_out = _front_body_length(entry, blobs())
    elif not entry.body_iterated and entry.declared is not None and method != "HEAD":
        bytes_out = entry.declared  # sent by the server's sendfile(2)
    return Answered(method, entry.route, entry.status, bytes_in, bytes_out, time.monotonic() - entry.started)


def _safely(call: Callable[..., None], *args: Any) -> None:
    try:
        call(*args)
    except Exception:  # an observer (the metrics) must never cost a client its answer
        _log.exception("a request observer failed")


def _write_line(entry: _Entry, answered: Answered) -> None:
    environ = entry.environ
    method = answered.method
    path = _path(environ)
    fields: dict[str, Any] = {
        "client": environ.get("REMOTE_ADDR") or "-",
        "principal": entry.info.principal or entry.principal or "anonymous",
        "method": method,
        "route": entry.route,
        "path": path,
        "query": _query(str(environ.get("QUERY_STRING") or "")),
        "repository": entry.repository,
        "status": entry.status,
        "bytes_in": answered.bytes_in,
        "bytes_out": answered.bytes_out,
        "duration_ms": round(answered.duration * 1000, 1),
    }
    if entry.front_body:
        fields["sent_by"] = "front"
    level = logging.ERROR if entry.status >= 500 else logging.INFO
    _log.log(level, "%s %s %s", method, path, entry.status, extra=fields)
