"""The "Change password" page, and the first sign-in's detour to it.

Route table:

    GET   /ui/password   the form: current password, new password (twice)
    POST  /ui/password   csrf_token, current, new, confirm: changes the signed-in user's password

Any signed-in administrator may change their own password here. The new one
must pass the appliance's password policy (`registry.passwords`, through
`registry.auth.Users.set_password`, the same rule as the CLI). A change ends
every other session of the user: the session cookie is bound to the password
hash (`registry.token_api.session_binding`), and the other sessions' records
are deleted too; this browser's session is re-bound and carries on.

While the first start's generated admin password is still in use
(`web.initial_password`), every other UI page redirects the admin here.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, session, url_for

from registry.access import TooManyAttempts
from registry.errors import RegistryError
from registry.token_api import SESSION_BINDING, SESSION_ID, SESSION_USER, session_binding
from web import initial_password
from web.ui.session import access, page_principal

# UI paths reachable while a password change is required: the form itself, signing in and out.
_ALLOWED_WHILE_PENDING = ("/ui/password", "/ui/login", "/ui/logout")


def _paths() -> Any:
    return current_app.extensions["cargohold"].config.paths


def create_blueprint() -> Blueprint:
    bp = Blueprint("ui_password", __name__, url_prefix="/ui")

    @bp.before_app_request
    def _require_change() -> Any:
        # Only the cookie's user name is looked at: the password page itself checks the session properly.
        if not request.path.startswith("/ui/") or request.path in _ALLOWED_WHILE_PENDING:
            return None
        username = session.get(SESSION_USER)
        if isinstance(username, str) and initial_password.pending(_paths(), username):
            return redirect(url_for("ui_password.change_password"))
        return None

    @bp.app_context_processor
    def _first_start() -> dict[str, Any]:
        # The sign-in page says where the generated password is (the file's name only, never its content).
        return {"initial_password_waiting": initial_password.password_file(_paths()).exists()}

    @bp.route("/password", methods=["GET", "POST"])
    def change_password() -> Any:
        principal = page_principal()  # a signed-in admin; a POST's CSRF token is checked here
        forced = initial_password.pending(_paths(), principal.username)
        if request.method == "GET":
            return render_template("ui/password.html", forced=forced, error=None)
        current = request.form.get("current", "")
        new = request.form.get("new", "")
        confirm = request.form.get("confirm", "")
        error, status = None, 400
        try:
            access().authenticate(principal.username, current, request.remote_addr or "")
        except TooManyAttempts as exc:
            error, status = f"Too many wrong passwords. Try again in {exc.retry_after} seconds.", 429
        except RegistryError:
            error = "The current password is wrong. Nothing was changed."
        if error is None:
            if not new:
                error = "Enter a new password. Nothing was changed."
            elif new != confirm:
                error = "The two new passwords differ. Nothing was changed; type the new password twice."
            elif new == current:
                error = "The new password is the same as the current one. Nothing was changed; choose another."
        if error is None:
            try:
                access().users.set_password(principal.username, new)
            except ValueError as exc:  # the password policy's refusal: says which rule, never the password
                error = f"New password refused: {exc}. Nothing was changed."
        if error is not None:
            return Response(render_template("ui/password.html", forced=forced, error=error), status=status)
        stored = access().users.stored(principal.username)
        assert stored is not None
        # This browser carries on under the new password; every other session of the user ends.
        session[SESSION_BINDING] = session_binding(stored[1])
        session_id = session.get(SESSION_ID)
        ended = access().sessions.end_others(stored[0], session_id if isinstance(session_id, str) else "")
        initial_password.changed(_paths(), principal.username)
        current_app.extensions["cargohold"].audit.record(principal.username, "update", "user-password",
                                                         principal.username, request.remote_addr or "")
        others = f" {ended} other sign-in{'s' if ended != 1 else ''} of {principal.username} ended." if ended else ""
        flash(f"Password changed.{others}", "ok")
        return redirect(url_for("ui.dashboard"))

    return bp
