"""The operator UI's release pages: list with disk use, status and check, diff, promote, roll back, discard.

Route table (HTML; signed-in admin; POSTs carry the CSRF token and are confirmed in a dialog first):

    GET   /ui/releases                     every release (state, size), the volume's free space
    GET   /ui/releases/<id>                one release: images (pending tags), definitions, readiness check,
                                           the diff from the promoted release, promote / roll back
    GET   /ui/releases/<id>/definitions/<name>  the release's OWN version of a cluster definition and every
                                           finding of its readiness check (not the stored, maybe older, one)
    GET   /ui/releases/diff?from=&to=      what changes between two releases
    POST  /ui/releases/<id>/promote        reason= (typed in the dialog) is required to promote a release
                                           that is not ready; it is recorded in the audit log
    POST  /ui/releases/rollback            back to the release promoted before the current one
    POST  /ui/releases/<id>/discard        reason=: discard a release that will not be promoted

The work is `bundles.releases.Releases`, the same core the JSON API
(`bundles.releases_api`) and ``cargohold release`` use; refusals are shown
in the UI's own words (`web.ui.messages`), not the CLI's.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from bundles.releases import ReleaseError, Releases
from web.ui import messages
from web.ui.session import page_principal


def create_blueprint(releases: Releases) -> Blueprint:
    bp = Blueprint("ui_releases", __name__, url_prefix="/ui/releases")

    @bp.before_request
    def _guard() -> None:
        page_principal()

    @bp.app_template_filter("finding_text")
    def _finding_text(finding: Any) -> str:
        return messages.finding_text(finding)

    @bp.app_template_filter("plain")
    def _plain(text: Any) -> str:
        return messages.plain(str(text or ""))

    @bp.app_template_filter("variable_text")
    def _variable_text(variable: Any) -> str:
        return messages.variable_text(variable)

    def _error(exc: ReleaseError) -> Response:
        return Response(render_template("ui/error.html", status=exc.status, title="Release not available",
                                        message=messages.release_refusal(exc.code, exc.message)),
                        status=exc.status if exc.status >= 400 else 400)

    @bp.get("/")
    def releases_page() -> str:
        return render_template("ui/releases.html", releases=list(reversed(releases.all())), disk=releases.disk(),
                               promoted=releases.promoted())

    @bp.get("/<int:release_id>")
    def release(release_id: int) -> Any:
        try:
            shown = releases.show(release_id)
            check = releases.check(release_id)
        except ReleaseError as exc:
            return _error(exc)
        promoted = releases.promoted()
        diff = releases.diff(promoted.id, release_id) if promoted is not None and promoted.id != release_id else None
        return render_template("ui/release.html", r=shown, check=check, promoted=promoted, diff=diff)

    @bp.get("/<int:release_id>/definitions/<name>")
    def release_definition(release_id: int, name: str) -> Any:
        try:
            shown = releases.show(release_id)
            check = releases.check(release_id)
        except ReleaseError as exc:
            return _error(exc)
        result = next((d for d in check["definitions"] if d["definition"] == name), None)
        if result is None:
            return Response(render_template("ui/error.html", status=404, title="Cluster definition not found",
                                            message=f"Release #{release_id} carries no cluster definition {name}."),
                            status=404)
        return render_template("ui/release_definition.html", r=shown, result=result)

    @bp.get("/diff")
    def diff_page() -> Any:
        try:
            diff = releases.diff(request.args.get("from", "promoted"), request.args.get("to", "latest"))
        except ReleaseError as exc:
            return _error(exc)
        return render_template("ui/release_diff.html", diff=diff, all=releases.all())

    @bp.post("/<int:release_id>/promote")
    def promote(release_id: int) -> Any:
        principal = page_principal()
        reason = request.form.get("reason", "").strip()[:500] or None
        back = redirect(url_for("ui_releases.release", release_id=release_id))
        try:
            # The form of a NOT READY release asks for a reason; a reason typed means "promote anyway".
            force = request.form.get("force") == "1" or reason is not None
            if force and reason is None:
                raise ReleaseError("reason required", 400, "REASON_REQUIRED")
            outcome = releases.promote(release_id, principal.username, request.remote_addr or "", force, reason)
        except ReleaseError as exc:
            flash(f"Promotion refused. {messages.release_refusal(exc.code, exc.message)}", "error")
            return back
        rel = outcome["release"]
        flash(f"Release {rel['id']} ({rel['name']} {rel['version']}) promoted: {outcome['tagsMoved']} tag(s) moved.",
              "ok")
        return back

    @bp.post("/<int:release_id>/discard")
    def discard(release_id: int) -> Any:
        principal = page_principal()
        reason = request.form.get("reason", "").strip() or None
        try:
            outcome = releases.discard(release_id, principal.username, request.remote_addr or "", reason)
        except ReleaseError as exc:
            flash(f"Discard refused. {messages.release_refusal(exc.code, exc.message)}", "error")
            return redirect(url_for("ui_releases.release", release_id=release_id))
        rel = outcome["release"]
        flash(f"Release {rel['id']} ({rel['name']} {rel['version']}) discarded: garbage collection no longer keeps "
              "its content for it.", "ok")
        return redirect(url_for("ui_releases.release", release_id=release_id))

    @bp.post("/rollback")
    def rollback() -> Any:
        principal = page_principal()
        try:
            outcome = releases.rollback(principal.username, request.remote_addr or "")
        except ReleaseError as exc:
            flash(f"Rollback refused. {messages.release_refusal(exc.code, exc.message)}", "error")
            return redirect(url_for("ui_releases.releases_page"))
        back = outcome["release"]
        flash(f"Rolled back to release {back['id']} ({back['name']} {back['version']}).", "ok")
        return redirect(url_for("ui_releases.release", release_id=back["id"]))

    return bp
