"""The token service at /service/token, and who an HTTP request acts as.

Route table:

    GET   /service/token?service=harbor-registry&scope=repository:<name>:pull,push
          Basic credentials or none; answers {token, access_token, expires_in, issued_at}
          with a signed JWT granting the part of each scope the caller holds
    POST  /service/token   405 (Harbor's token service takes no OAuth2 POST)

`request_principal` turns a request's Authorization header (Basic for users
and robots, Bearer for tokens this service issued) into a `Principal`. A
token is refused the moment the account it was issued to may no longer act:
deleted or replaced by a new account of the same name, its password or secret
changed, a robot disabled or expired (`token_holder`); and it never grants
more than that account may do at the time of the request, so a permission cut
or a removed membership takes effect at once too. With
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

from registry import logcontext
from registry.access import Access, TooManyAttempts
from registry.auth import Principal, parse_basic
from registry.errors import RegistryError
from registry.tokens import SERVICE, Claims, Holder, TokenError, TokenSigner, parse_scopes

SESSION_USER = "user"
SESSION_ID = "sid"
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
    session_id = session.get(SESSION_ID)
    if user is None or not hmac.compare_digest(str(session.get(SESSION_BINDING, "")), session_binding(user[1])) \
            or not isinstance(session_id, str) or not access.sessions.active(session_id, user[0]):
        session.clear()  # the user is gone, their password changed, or the session was signed out: it is over
        return None
    if request.method not in SAFE_METHODS and not csrf_checked:
        expected = str(session.get(SESSION_CSRF) or "")
        sent = request.headers.get(CSRF_HEADER, "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise RegistryError("DENIED", f"missing or wrong CSRF token: a signed-in browser session must send "
                                f"its token in the {CSRF_HEADER} header for {request.method}")
    logcontext.note_principal(username)
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
        holder = token_holder(access, signer, claims)
        logcontext.note_principal(claims.subject)
        grants: set[tuple[str, str]] = set()
        for scope in claims.access:
            name = scope.name if scope.type == "repository" else f"registry:{scope.name}"
            grants |= {(name, action) for action in scope.actions}
        return Principal(claims.subject, False, "token", None, frozenset(grants), holder)
    raise RegistryError("UNAUTHORIZED", f"unsupported authorization scheme {scheme!r}")


def holder_claim(access: Access, signer: TokenSigner, principal: Principal | None) -> Holder | None:
    """What a token issued to `principal` records of its account (None for an anonymous caller)."""
    if principal is None or principal.id is None:
        return None
    if principal.kind == "robot":
        robot = access.robots.stored_by_id(principal.id)
        stored = robot[1] if robot else ""
    else:
        user = access.users.stored_by_id(principal.id)
        stored = user[1] if user else ""
    # A row gone since sign-in gets a fingerprint no account matches: the token is refused on first use.
    return Holder(principal.kind, principal.id, signer.credential(principal.kind, principal.id, stored))


def token_holder(access: Access, signer: TokenSigner, claims: Claims) -> Principal | None:
    """The account a verified token was issued to, as it stands now; None for an anonymous caller's token.

    Raises UNAUTHORIZED when that account may no longer act: deleted (also when
    a new account took its name, or its row id), its password or secret changed
    since the token was issued, a robot disabled or expired. Tokens live for
    minutes; an operator who refreshes a leaked secret means it now. One row
    read by primary key and one HMAC: cheap enough for every request. What the
    account may do now bounds what the token grants (`Access.allowed`).
    """
    held = claims.holder
    if held is None:
        if claims.subject:
            raise RegistryError("UNAUTHORIZED", "invalid bearer token: it does not name the account it was issued "
                                "to (issued before an upgrade?); ask the token service for a new one")
        return None
    subject = claims.subject
    if held.kind == "robot":
        robot = access.robots.stored_by_id(held.id)
        if robot is None or robot[0].name != subject:
            raise RegistryError("UNAUTHORIZED", f"invalid bearer token: robot account {subject} no longer exists")
        if not hmac.compare_digest(signer.credential("robot", held.id, robot[1]), held.credential):
            raise RegistryError("UNAUTHORIZED", f"invalid bearer token: the secret of robot account {subject} "
                                "changed after the token was issued")
        if robot[0].disabled:
            raise RegistryError("UNAUTHORIZED", f"invalid bearer token: robot account {subject} is disabled")
        if robot[0].expired():
            raise RegistryError("UNAUTHORIZED", f"invalid bearer token: robot account {subject} has expired")
        admin, grants = robot[0].grants()
        return Principal(subject, admin, "robot", held.id, grants)
    user = access.users.stored_by_id(held.id)
    if user is None or user[0] != subject:
        raise RegistryError("UNAUTHORIZED", f"invalid bearer token: user {subject} no longer exists")
    if not hmac.compare_digest(signer.credential("user", held.id, user[1]), held.credential):
        raise RegistryError("UNAUTHORIZED", f"invalid bearer token: the password of user {subject} changed after "
                            "the token was issued")
    return Principal(subject, user[2], "user", held.id)


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
        jwt, expires_in, issued_at = signer.issue(subject, granted, holder=holder_claim(access, signer, principal))
        body: dict[str, Any] = {"token": jwt, "access_token": jwt, "expires_in": expires_in,
                                "issued_at": _rfc3339(issued_at)}
        resp = jsonify(body)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp
