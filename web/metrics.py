"""Prometheus metrics over HTTP: the request metrics, and ``GET /metrics`` with its access rule.

Every request is counted by a thin WSGI layer around the Flask app
(`RequestMetrics`): the route template Flask matched (``unmatched`` when none
did), the method (``other`` for a method no endpoint has), the status, the
time the app took to answer, the bytes it read from the request body, and
the bytes of the response body: its Content-Length, or for a blob the nginx
front sends itself (``X-Accel-Redirect``, web/front.py) the size of that file
(or of the requested range). No label ever holds a path, digest, tag or user.

``/metrics`` answers the Prometheus text format, summing every process's
values when the appliance serves (web/metrics_dir.py), with the states read
at scrape time (registry.metrics, bundles.metrics). Who may read it is
``CARGOHOLD_METRICS_ACCESS``: ``loopback`` (the default) lets clients on this
host in without credentials and asks anyone else for the metrics token
(``Authorization: Bearer``) or a system administrator's Basic credentials;
``token`` asks everyone; ``open`` asks no one. The client address is the one
the front forwards (its own peer address, never a client's X-Forwarded-For),
as for the login limits.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import prometheus_client
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from werkzeug.http import parse_range_header

from bundles.metrics import BundlesCollector
from registry.access import Access, TooManyAttempts
from registry.auth import parse_basic
from registry.errors import RegistryError
from registry.metrics import PREFIX, RegistryCollector
from web.config import Config

_log = logging.getLogger(__name__)
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ROUTE_KEY = "cargohold.metrics.route"

HTTP_REQUESTS = Counter(f"{PREFIX}http_requests_total", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram(f"{PREFIX}http_request_duration_seconds",
                          "Time the app took to answer, by route template and method (a blob body the front "
                          "sends is not included)", ["route", "method"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
HTTP_RECEIVED = Counter(f"{PREFIX}http_received_bytes_total", "Request body bytes the app read, by route template",
                        ["route"])
HTTP_SENT = Counter(f"{PREFIX}http_sent_bytes_total", "Response body bytes sent (blob bodies the front sends "
                    "included), by route template", ["route"])
# "livesum": the requests in flight in the workers alive now; a dead worker's go with it (web/metrics_dir.py).
IN_FLIGHT = Gauge(f"{PREFIX}http_requests_in_flight", "Requests the app is answering now",
                  multiprocess_mode="livesum")


class _CountingInput:
    """wsgi.input that counts the bytes read from it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.readline(size)
        self.count += len(data)
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(hint)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class RequestMetrics:
    """WSGI middleware: counts and times every request (see the module docstring). Cheap: no I/O but one stat
    for a blob the front sends."""

    def __init__(self, app: Callable[..., Iterable[bytes]], blobs: Path, accel_prefix: str | None) -> None:
        self.app = app
        self.blobs = blobs
        self.accel_prefix = accel_prefix

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        body = _CountingInput(environ.get("wsgi.input"))
        environ["wsgi.input"] = body
        answer: list[Any] = ["500", []]

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer[0], answer[1] = status, headers
            return start_response(status, headers, exc_info)

        IN_FLIGHT.inc()
        try:
            return self.app(environ, start)
        finally:
            IN_FLIGHT.dec()
            try:
                self._record(environ, answer[0], answer[1], body.count, time.perf_counter() - started)
            except Exception:  # counting must never cost a client its answer
                _log.exception("could not record the metrics of a request")

    def _record(self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]], received: int,
                duration: float) -> None:
        route = environ.get(_ROUTE_KEY, UNMATCHED)
        method = str(environ.get("REQUEST_METHOD", "")).upper()
        method = method if method in _METHODS else "other"
        code = status[:3]
        HTTP_REQUESTS.labels(route, method, code).inc()
        HTTP_DURATION.labels(route, method).observe(duration)
        if received:
            HTTP_RECEIVED.labels(route).inc(received)
        sent = 0 if method == "HEAD" else self._body_bytes(environ, code, headers)
        if sent:
            HTTP_SENT.labels(route).inc(sent)

    def _body_bytes(self, environ: dict[str, Any], code: str, headers: list[tuple[str, str]]) -> int:
        length, accel = None, None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                length = value
            elif lower == "x-accel-redirect":
                accel = value
        if accel is not None and self.accel_prefix and accel.startswith(self.accel_prefix) and code == "200":
            try:
                size = os.stat(self.blobs / accel[len(self.accel_prefix):]).st_size
            except OSError:
                return 0
            wanted = parse_range_header(environ.get("HTTP_RANGE"))
            span = wanted.range_for_length(size) if wanted is not None else None
            return span[1] - span[0] if span is not None else size
        return int(length) if length is not None and length.isdigit() else 0


class _DefaultRegistry(Collector):
    """prometheus_client's default registry, when not in multiprocess mode (an app built in a test process)."""

    def collect(self) -> Iterator[Metric]:
        yield from prometheus_client.REGISTRY.collect()


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _collectors(config: Config) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if getattr(prometheus_client.values.ValueClass, "_multiprocess", False):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # every process's files under PROMETHEUS_MULTIPROC_DIR
    else:
        registry.register(_DefaultRegistry())
    registry.register(RegistryCollector(config.paths, config.import_reserve_bytes))
    registry.register(BundlesCollector(config.paths))
    return registry


def _refused(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Basic realm="cargohold metrics", charset="UTF-8"'
    return resp


def install(app: Flask, config: Config, access: Access, accel_prefix: str | None) -> None:
    """Count every request of `app` and serve ``GET /metrics``."""
    registry = _collectors(config)
    token = config.metrics_token.strip()
    app.wsgi_app = RequestMetrics(app.wsgi_app, config.paths.blobs, accel_prefix)  # type: ignore[method-assign]

    @app.after_request
    def _route(resp: Response) -> Response:
        # The template, never the path: "/v2/<path:name>/manifests/<reference>".
        if request.url_rule is not None:
            request.environ[_ROUTE_KEY] = request.url_rule.rule
        return resp

    def refusal() -> Response | None:
        if config.metrics_access == "open":
            return None
        if config.metrics_access == "loopback" and _is_loopback(request.remote_addr):
            return None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            if token and hmac.compare_digest(value.strip().encode(), token.encode()):
                return None
            return _refused(401, "UNAUTHORIZED", "the bearer token is not the metrics token "
                                                 "(CARGOHOLD_METRICS_TOKEN)")
        if scheme.lower() == "basic":
            creds = parse_basic(value)
            if creds is None:
                return _refused(401, "UNAUTHORIZED", "malformed Basic credentials")
            try:
                principal = access.authenticate(creds[0], creds[1], request.remote_addr or "")
            except TooManyAttempts as exc:
                resp = _refused(429, "TOOMANYREQUESTS", exc.message)
                resp.headers["Retry-After"] = str(exc.retry_after)
                return resp
            except RegistryError as exc:
                return _refused(401, "UNAUTHORIZED", exc.message)
            if principal.kind == "user" and principal.admin:
                return None
            return _refused(403, "DENIED", f"{principal.username} is not a system administrator; only "
                                           "administrators (or the metrics token) may read the metrics")
        where = "" if config.metrics_access == "token" else " from another host"
        return _refused(401, "UNAUTHORIZED", f"reading the metrics{where} needs the metrics token "
                                             "(Authorization: Bearer) or a system administrator's Basic credentials")

    @app.get("/metrics")
    def metrics() -> Response:
        refused = refusal()
        if refused is not None:
            return refused
        return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST,
                        headers={"Cache-Control": "no-store"})
