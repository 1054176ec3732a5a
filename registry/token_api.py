"""The token service at /service/token, and who an HTTP request acts as.

Route table:

    GET   /service/token?service=harbor-registry&scope=repository:<name>:pull,push
          Basic credentials or none; answers {token, access_token, expires_in, issued_at}
          with a signed JWT granting the part of each scope the caller holds
    POST  /service/token   405 (Harbor's token service takes no OAuth2 POST)

`request_principal` turns a request's Authorization header (Basic for users
and robots, Bearer for tokens this service issued, refused once their subject
is deleted, disabled or expired) into a `Principal`; with
no header, a signed-in operator UI session (web.ui) counts, and an unsafe
method from a session must carry its CSRF token in ``X-CSRF-Token``;
`bearer_challenge` is the WWW-Authenticate value every /v2/ 401 carries.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, session

from registry.access import Access, TooManyAttempts
from registry.auth import ROBOT_PREFIX, Principal, parse_basic
from registry.errors import RegistryError
from registry.tokens import SERVICE, TokenError, TokenSigner, parse_scopes

SESSION_USER = "user"
SESSION_BINDING = "binding"
SESSION_CSRF = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_binding(stored_hash: str) -> str:
    """Ties a session to the user's current password hash: changing the password ends every session."""
    key = current_app.secret_key
    raw = key.encode() if isinstance(key, str) else bytes(key or b"")
    return hmac.new(raw, stored_hash.encode(), hashlib.sha256).hexdigest()[:32]


def session_principal(access: Access, csrf_checked: bool = False) -> Principal | None:
    """The user of a signed-in UI session, or None.

    Raises DENIED for an unsafe method without its CSRF token in the header,
    unless the caller has already checked it (an HTML form carries it as a field).
    """
    username = session.get(SESSION_USER)
    if not isinstance(username, str):
        return None
    user = access.users.stored(username)
    if user is None or not hmac.compare_digest(str(session.get(SESSION_BINDING, "")), session_binding(user[1])):
        session.clear()  # the user is gone or their password changed: the session is over
        return None
    if request.method not in SAFE_METHODS and not csrf_checked:
        expected = str(session.get(SESSION_CSRF) or "")
        sent = request.headers.get(CSRF_HEADER, "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise RegistryError("DENIED", f"missing or wrong CSRF token: a signed-in browser session must send "
                                f"its token in the {CSRF_HEADER} header for {request.method}")
    return Principal(username, user[2], "user", user[0])


def request_principal(access: Access, signer: TokenSigner | None) -> Principal | None:
    """Who the request acts as; None for anonymous. Raises UNAUTHORIZED, DENIED (CSRF) or TooManyAttempts."""
    header = request.headers.get("Authorization")
    if not header:
        return session_principal(access)
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        creds = parse_basic(value)
        if creds is None:
            return None
        return access.authenticate(creds[0], creds[1], request.remote_addr or "")
    if scheme.lower() == "bearer" and signer is not None:
        try:
            claims = signer.verify(value.strip())
        except TokenError as exc:
            raise RegistryError("UNAUTHORIZED", f"invalid bearer token: {exc}") from None
        revoked = _subject_revoked(access, claims.subject)
        if revoked:
            raise RegistryError("UNAUTHORIZED", f"invalid bearer token: {revoked}")
        grants: set[tuple[str, str]] = set()
        for scope in claims.access:
            name = scope.name if scope.type == "repository" else f"registry:{scope.name}"
            grants |= {(name, action) for action in scope.actions}
        return Principal(claims.subject, False, "token", None, frozenset(grants))
    raise RegistryError("UNAUTHORIZED", f"unsupported authorization scheme {scheme!r}")


def _subject_revoked(access: Access, subject: str) -> str | None:
    """Why a token's subject may no longer act (deleted, disabled, expired), or None.

    Tokens live for minutes; an operator disabling a robot (say, its secret
    leaked) means it now, not when its last token runs out.
    """
    if not subject:
        return None  # an anonymous token: grants public pulls only
    if subject.startswith(ROBOT_PREFIX):
        found = access.robots.stored(subject)
        if found is None:
            return f"robot account {subject} no longer exists"
        robot = found[0]
        if robot.disabled:
            return f"robot account {subject} is disabled"
        if robot.expired():
            return f"robot account {subject} has expired"
        return None
    if access.users.stored(subject) is None:
        return f"user {subject} no longer exists"
    return None


def realm_base(external_url: str | None) -> str:
    """The appliance's base URL as clients reach it (the configured external URL wins)."""
    return (external_url or request.host_url).rstrip("/")


def bearer_challenge(external_url: str | None = None, scope: str | None = None) -> str:
    """``Bearer realm="<base>/service/token",service="harbor-registry"[,scope="..."]``."""
    value = f'Bearer realm="{realm_base(external_url)}/service/token",service="{SERVICE}"'
    if scope:
        value += f',scope="{scope}"'
    return value


def _error(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def create_blueprint(access: Access, signer: TokenSigner, external_url: str | None = None) -> Blueprint:
    """The /service/token blueprint."""
    bp = Blueprint("token", __name__)

    @bp.route("/service/token", methods=["GET", "POST"])
    def token() -> Response:
        if request.method == "POST":
            return _error("METHOD_NOT_ALLOWED", "the token service answers GET only", 405, {"Allow": "GET, HEAD"})
        service = request.args.get("service")
        if service is not None and service != SERVICE:
            return _error("BAD_REQUEST", f"unknown service {service!r}: this token service issues for {SERVICE}",
                          400)
        try:
            scopes = parse_scopes(request.args.getlist("scope"))
        except ValueError as exc:
            return _error("BAD_REQUEST", str(exc), 400)
        try:
            principal = request_principal(access, None)
        except TooManyAttempts as exc:
            return _error("TOO_MANY_REQUESTS", exc.message, 429, {"Retry-After": str(exc.retry_after)})
        except RegistryError as exc:
            return _error("UNAUTHORIZED", exc.message, 401)
        g.principal = principal
        granted = access.grant(principal, scopes)
        subject = principal.username if principal else ""
        jwt, expires_in, issued_at = signer.issue(subject, granted)
        body: dict[str, Any] = {"token": jwt, "access_token": jwt, "expires_in": expires_in,
                                "issued_at": _rfc3339(issued_at)}
        resp = jsonify(body)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp
