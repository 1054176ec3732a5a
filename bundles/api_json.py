"""The conventions shared by the /api/cargohold/v1 endpoints: errors, small JSON bodies, flags, guarded blueprints.

Every such endpoint answers errors in the registry's shape
(``{"errors": [{"code", "message", "detail"?}]}``), reads a request body as a
small JSON object with a cap (never whole whatever its size), and sits
behind `ApiAccess`: authenticated before the view runs, refused in Harbor's
shape. `guarded_blueprint` sets that up once, so a new API module cannot
forget a handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from bundles.api_access import ApiAccess, ApiDenied
from bundles.releases import ReleaseError

PREFIX = "/api/cargohold/v1"
MAX_BODY_BYTES = 64 << 10


def error_response(status: int, code: str, message: str, detail: Any = None) -> Response:
    """An error in the registry's JSON shape."""
    entry: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    resp = jsonify({"errors": [entry]})
    resp.status_code = status
    return resp


def json_body() -> dict[str, Any]:
    """The request's small JSON object body ({} when empty); read with a cap, never whole whatever its size."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ReleaseError(f"the request body may be at most {MAX_BODY_BYTES} bytes", 413, "PAYLOAD_TOO_LARGE")
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ReleaseError(f"the request body may be at most {MAX_BODY_BYTES} bytes", 413, "PAYLOAD_TOO_LARGE")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is bad input too
        body = None
    if not isinstance(body, dict):
        raise ReleaseError("the request body must be a JSON object", 400, "BAD_REQUEST")
    return body


def flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """A boolean field of a JSON body; anything but true or false is a 400."""
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ReleaseError(f"{name} must be true or false", 400, "BAD_REQUEST")
    return value


def guarded_blueprint(name: str, guard: ApiAccess) -> Blueprint:
    """A blueprint whose every request is authenticated by `guard`, with refusals and ReleaseErrors answered."""
    bp = Blueprint(name, __name__)

    @bp.errorhandler(ApiDenied)
    def _denied(exc: ApiDenied) -> Response:
        return guard.denied(exc)

    @bp.errorhandler(ReleaseError)  # also what `json_body` and `flag` raise for bad input
    def _release_error(exc: ReleaseError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.detail)

    @bp.before_request
    def _authenticate() -> None:
        guard.authenticate()

    return bp


MAX_PAGE = 1_000_000
MAX_PAGE_SIZE = 100  # Harbor's own cap on page_size


def harbor_paging(bad: Callable[[str], Exception]) -> tuple[int, int]:
    """Harbor's (page, page_size) from the query; raises ``bad(message)`` for a value out of range or not a number."""
    try:
        page = int(request.args.get("page") or 1)
        size = int(request.args.get("page_size") or 10)
    except ValueError:
        raise bad("page and page_size must be whole numbers") from None
    if not 1 <= page <= MAX_PAGE or not 1 <= size <= MAX_PAGE_SIZE:
        raise bad(f"page must be between 1 and {MAX_PAGE} and page_size between 1 and {MAX_PAGE_SIZE}")
    return page, size


def harbor_listed(items: list[dict[str, Any]], total: int, page: int, size: int) -> Response:
    """A page of a Harbor list: the items, with X-Total-Count and Link (prev/next) as Harbor sends them."""
    resp = jsonify(items)
    resp.headers["X-Total-Count"] = str(total)
    links = []
    if page > 1:
        links.append(f'<{request.path}?page={page - 1}&page_size={size}>; rel="prev"')
    if page * size < total:
        links.append(f'<{request.path}?page={page + 1}&page_size={size}>; rel="next"')
    if links:
        resp.headers["Link"] = ", ".join(links)
    return resp
