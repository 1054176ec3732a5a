"""Sign-in and sign-out for the operator UI, CSRF tokens, and the guard every page goes through.

Route table:

    GET   /ui/login     the sign-in form
    POST  /ui/login     username, password, csrf_token: starts a session (admins only)
    POST  /ui/logout    csrf_token: ends it

The session is Flask's signed cookie (`web.ui.init_app` sets its flags). It
holds the user name, a binding to the user's current password hash (so a
changed password ends every session), a session id recorded server-side
(`registry.sessions`: sign-out deletes the record, so a copy of the cookie
replayed afterwards is refused), and the CSRF token. Every form posts
the token as ``csrf_token``; every state-changing fetch sends it in
``X-CSRF-Token`` (checked by `registry.token_api.session_principal`, the one
place a session turns into a Principal). Failed sign-ins count against the
same per-user and per-address limits as registry logins (`registry.access`).
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, session, url_for

from bundles.clusterdef import MAX_ARCHIVE_BYTES
from registry.access import Access, TooManyAttempts
from registry.auth import Principal
from registry.errors import RegistryError
from registry.token_api import (
    SESSION_BINDING,
    SESSION_CSRF,
    SESSION_ID,
    SESSION_USER,
    session_binding,
    session_principal,
)

# Largest UI form post: the biggest field is a pasted or uploaded public key (64 KiB).
MAX_FORM_BYTES = 1 << 20
# The cluster definition upload form (a signed-in admin only): an archive and its signature.
DEFINITION_FORM_PATH = "/ui/definitions"
MAX_DEFINITION_FORM_BYTES = MAX_ARCHIVE_BYTES + MAX_FORM_BYTES


def access() -> Access:
    return current_app.extensions["cargohold"].access  # type: ignore[no-any-return]


def csrf_token() -> str:
    """This session's CSRF token, created on first use (also before sign-in: the login form needs one)."""
    token = session.get(SESSION_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_CSRF] = token
    return token


def check_form_csrf() -> None:
    """Abort 400 unless the posted form (or the X-CSRF-Token header) carries this session's token."""
    expected = session.get(SESSION_CSRF)
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(sent, expected):
        abort(Response(render_template("ui/error.html", status=400, title="Form refused",
                                       message="The form was missing its security (CSRF) token or the token "
                                       "was stale. Reload the page and try again."), status=400))


def _signed_in_admin() -> bool:
    """Does the session cookie name a current admin? (No CSRF check: nothing is done on its word alone.)"""
    try:
        principal = session_principal(access(), csrf_checked=True)
    except RegistryError:
        return False
    return principal is not None and principal.admin


def page_principal() -> Principal:
    """The signed-in admin for a page; redirects to sign-in or answers 403 otherwise."""
    if request.method == "POST":
        check_form_csrf()
    try:
        principal = session_principal(access(), csrf_checked=True)
    except RegistryError:
        principal = None
    if principal is None:
        target = request.full_path if request.method == "GET" else url_for("ui.dashboard")
        abort(redirect(url_for("ui_session.login", next=target.rstrip("?"))))
    if not principal.admin:
        abort(Response(render_template("ui/error.html", status=403, title="Not allowed",
                                       message=f"{principal.username} is not an administrator."), status=403))
    return principal


_SAFE_NEXT = re.compile(r"/ui/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*\Z")  # printable ASCII URL characters, no "\\"


def _safe_next(target: str | None) -> str:
    """Only a same-site path under /ui/ (never another site: no open redirect); the dashboard otherwise.

    Refused: control characters (a CR/LF would split the Location header),
    backslashes, ``//`` in the path (browsers read ``/\\host`` and ``//host``
    as another site), a scheme or host, and non-ASCII text.
    """
    if target and _SAFE_NEXT.match(target) and "//" not in urlsplit(target).path and not urlsplit(target).netloc:
        return target
    return url_for("ui.dashboard")


def create_blueprint() -> Blueprint:
    bp = Blueprint("ui_session", __name__, url_prefix="/ui")

    @bp.before_app_request
    def _cap_ui_forms() -> None:
        # Reading request.form spools file parts to disk, and the CSRF check (and the sign-in form) reads it
        # before anyone is signed in: cap every UI body first (413), so an anonymous POST cannot fill the disk.
        if request.path.startswith("/ui/"):
            request.max_content_length = MAX_FORM_BYTES
            if request.path == DEFINITION_FORM_PATH and request.method == "POST" and _signed_in_admin():
                # Only the session cookie is looked at here (the body is not read); the page still checks
                # the form's CSRF token before it acts.
                request.max_content_length = MAX_DEFINITION_FORM_BYTES

    @bp.app_context_processor
    def _globals() -> dict[str, Any]:
        return {"csrf_token": csrf_token, "signed_in_user": session.get(SESSION_USER),
                "ui_has_releases": "ui_releases.releases_page" in current_app.view_functions}

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        next_url = request.values.get("next")
        if request.method == "GET":
            return render_template("ui/login.html", next_url=next_url, error=None)
        check_form_csrf()
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        error, status = None, 200
        try:
            if not username or not password:
                raise RegistryError("UNAUTHORIZED", "enter a username and a password")
            principal = access().authenticate(username, password, request.remote_addr or "", sign_in=True)
            if principal.kind != "user":
                error, status = "Robot accounts cannot sign in to the UI; sign in as a user.", 403
            elif not principal.admin:
                error, status = f"{username} is not an administrator; the operator UI is for administrators.", 403
        except TooManyAttempts as exc:
            error, status = f"Too many failed sign-ins. Try again in {exc.retry_after} seconds.", 429
        except RegistryError as exc:
            error = "Invalid username or password." if exc.code == "UNAUTHORIZED" else exc.message
            status = 401
        if error:
            resp = Response(render_template("ui/login.html", next_url=next_url, error=error), status=status)
            return resp
        stored = access().users.stored(username)
        assert stored is not None
        session.clear()  # a fresh session (and CSRF token) at every sign-in: no session fixation
        session[SESSION_USER] = username
        session[SESSION_BINDING] = session_binding(stored[1])
        session[SESSION_ID] = access().sessions.start(stored[0], current_app.permanent_session_lifetime.total_seconds())
        session[SESSION_CSRF] = secrets.token_urlsafe(32)
        session.permanent = True
        return redirect(_safe_next(next_url))

    @bp.post("/logout")
    def logout() -> Any:
        check_form_csrf()
        session_id = session.get(SESSION_ID)
        if isinstance(session_id, str):
            access().sessions.end(session_id)  # the cookie alone would stay valid: end the session here
        session.clear()
        return redirect(url_for("ui_session.login"))

    return bp
