"""Prometheus metrics over HTTP: the request metrics, and ``GET /metrics`` with its access rule.

Every request is counted from the request log's measure of it
(web/requestlog.py measures each request once, for its log line and for
these): the route template Flask matched (``unmatched`` when none did), the
method (``other`` for a method no endpoint has), the status, the time until
the answer had left the app, the bytes it read from the request body, and
the bytes of the response body, including a blob the nginx front sends
itself (``X-Accel-Redirect``, web/front.py: the size of that file or of the
requested range). No label ever holds a path, digest, tag or user.

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
from collections.abc import Iterator

import prometheus_client
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from bundles.metrics import BundlesCollector
from registry.access import Access, TooManyAttempts
from registry.auth import parse_basic
from registry.errors import RegistryError
from registry.metrics import PREFIX, RegistryCollector
from web import requestlog
from web.config import Config
from web.requestlog import Answered

_log = logging.getLogger(__name__)
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(f"{PREFIX}http_requests_total", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram(f"{PREFIX}http_request_duration_seconds",
                          "Time from a request reaching the app until its answer had left the app, by route "
                          "template and method (a blob body the front sends is not included)", ["route", "method"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
HTTP_RECEIVED = Counter(f"{PREFIX}http_received_bytes_total", "Request body bytes the app read, by route template",
                        ["route"])
HTTP_SENT = Counter(f"{PREFIX}http_sent_bytes_total", "Response body bytes sent (blob bodies the front sends "
                    "included), by route template", ["route"])
# "livesum": the requests in flight in the workers alive now; a dead worker's go with it (web/metrics_dir.py).
IN_FLIGHT = Gauge(f"{PREFIX}http_requests_in_flight", "Requests the app is answering now",
                  multiprocess_mode="livesum")


def _record(answered: Answered) -> None:
    """Count one answered request (a request-log observer: measured once, web/requestlog.py)."""
    IN_FLIGHT.dec()
    route = answered.route or UNMATCHED
    method = answered.method.upper() if answered.method.upper() in _METHODS else "other"
    HTTP_REQUESTS.labels(route, method, str(answered.status)).inc()
    HTTP_DURATION.labels(route, method).observe(answered.duration)
    if answered.bytes_in:
        HTTP_RECEIVED.labels(route).inc(answered.bytes_in)
    if answered.bytes_out and method != "HEAD":
        HTTP_SENT.labels(route).inc(answered.bytes_out)


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


def install(app: Flask, config: Config, access: Access) -> None:
    """Count every request of `app` and serve ``GET /metrics``."""
    registry = _collectors(config)
    token = config.metrics_token.strip()
    # The request log measures every request once (route template, status, bytes, duration); count its measure.
    requestlog.add_observer(app, IN_FLIGHT.inc, _record)

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
