"""What every response and route of the app gets: security headers, and URL numbers SQLite can hold.

Headers (docs/ui.md, "Security headers"), on every response the app sends:

- ``X-Content-Type-Options: nosniff``: a browser never runs a blob or a JSON
  body as script or HTML because it looked like one.
- ``Referrer-Policy: same-origin``: addresses inside the appliance (robot
  names, repository names, upload ids) are not sent to another site.
- ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: no page of
  the appliance can be framed (click-jacking of promote, delete, keys).
- ``Content-Security-Policy``: for HTML, `UI_POLICY`: scripts, styles,
  images, fetches and form posts from the appliance itself only, no inline
  script or style, no plugins, no <base>; for anything else `OTHER_POLICY`,
  which lets nothing load at all.
- ``Strict-Transport-Security`` only when the request came over TLS
  (``request.is_secure``: gunicorn's own TLS, or the nginx front's, which
  says so in X-Forwarded-Proto through ProxyFix, web/server.py): over plain
  HTTP it would mean nothing, and it must never pin a plain-HTTP appliance.

A header a view already set is kept. The ``int`` URL converter is replaced by
one that takes ASCII digits up to 2**63 - 1 only: a larger number in a path
(``/ui/releases/99999999999999999999``) is a 404, not an overflow in SQLite.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request
from werkzeug.routing import BaseConverter, Map, ValidationError

from registry.numbers import is_ascii_number

UI_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
             "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=31536000"
_COMMON = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}


class Int64Converter(BaseConverter):
    """``<int:x>``: 1 to 19 ASCII digits, at most 2**63 - 1 (werkzeug's own takes any size, and other scripts'
    digits); anything else does not match the route (404)."""

    regex = r"[0-9]{1,19}"
    weight = 50

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:  # werkzeug's min/max/signed would be silently ignored here: refuse them at start-up
            raise TypeError("the bounded <int:...> converter takes no arguments")
        super().__init__(url_map)

    def to_python(self, value: str) -> int:
        if not is_ascii_number(value):
            raise ValidationError()
        return int(value)

    def to_url(self, value: Any) -> str:
        return str(int(value))


def security_headers(resp: Response) -> Response:
    """Set the headers of this module's docstring on `resp` (keeping any a view set)."""
    for key, value in _COMMON.items():
        resp.headers.setdefault(key, value)
    policy = UI_POLICY if resp.mimetype == "text/html" else OTHER_POLICY
    resp.headers.setdefault("Content-Security-Policy", policy)
    if request.is_secure:
        resp.headers.setdefault("Strict-Transport-Security", HSTS)
    return resp


def install(app: Flask) -> None:
    """Use the bounded ``int`` converter in routes registered from now on, and add the headers to every answer."""
    app.url_map.converters["int"] = Int64Converter
    app.after_request(security_headers)
