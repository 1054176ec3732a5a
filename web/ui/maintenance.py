"""The operator UI's no-shell maintenance pages: disk use and leftovers, edge-host configuration, inventory.

Route table (HTML; every page needs a signed-in admin, every POST its CSRF token):

    GET   /ui/maintenance                   disk use of every area of the data directory; leftover
                                            uploads and staging with sizes and ages
    POST  /ui/maintenance/leftovers/clear   remove the leftovers named by ``key`` fields (re-checked first)
    GET   /ui/edge-config                   form: the address edge hosts reach the appliance at, the scheme,
                                            optional robot credentials
    POST  /ui/edge-config                   the edge-host files (bundles.mirror) as ``edge-config.zip``
    GET   /ui/inventory.json                the site inventory for delta bundles (bundles.inventory), as
                                            ``cargohold inventory export`` writes it
    POST  /ui/maintenance/jobs              start a background job (bundles.maintenance_jobs): ``action`` is
                                            gc-dry-run, scrub, expire, or gc (with ``after``: a finished dry
                                            run's id). The page also shows each job's schedule: in force, next
                                            and last run (bundles.maintenance_schedule)
    GET   /ui/maintenance/jobs/<id>         one job: progress while it runs (the page reloads itself,
                                            web/static/maintenance.js), then its result
"""

from __future__ import annotations

import io
import time
import zipfile

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, url_for

from bundles.inventory import write_inventory
from bundles.maintenance_jobs import EXPIRE, GC, SCRUB, JobBusy, MaintenanceJobs
from bundles.maintenance_schedule import MaintenanceScheduler
from bundles.mirror import ca_certificate, for_registry
from registry.diskuse import disk_areas
from registry.paths import DataPaths
from web.app_services import services_of
from web.leftovers import clear_leftover, find_leftovers
from web.ui import UiServices
from web.ui.pages import human_bytes, registry_host
from web.ui.session import page_principal

MAX_KEYS = 1000  # leftovers one form may clear


def _ui() -> UiServices:
    return current_app.extensions["cargohold.ui"]  # type: ignore[no-any-return]


def _jobs() -> MaintenanceJobs:
    return current_app.extensions["cargohold.maintenance"]  # type: ignore[no-any-return]


def _scheduler() -> MaintenanceScheduler:
    return current_app.extensions["cargohold.scheduler"]  # type: ignore[no-any-return]


def _paths() -> DataPaths:
    return services_of().config.paths


def age(seconds: float) -> str:
    """A plain age: "5 minutes", "3 hours", "2 days"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return "less than a minute"


def edge_zip(files: dict[str, bytes]) -> bytes:
    """The edge-host files as a .zip under ``edge-config/`` (a few KiB: built in memory)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for rel, content in sorted(files.items()):
            info = zipfile.ZipInfo(f"edge-config/{rel}", date_time=time.gmtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            # hosts.toml and registries.yaml may carry credentials: readable by their owner only once unpacked
            mode = 0o600 if rel.endswith((".toml", ".yaml")) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            z.writestr(info, content)
    return buf.getvalue()


def _plain_note(warning: str) -> str:
    """A GC report warning in a technician's words (the report's own name command-line options)."""
    if warning.startswith("no cluster is configured"):
        return ("No cluster is connected to this appliance, so what edge clusters run now is not looked up: "
                "only tags and the kept releases protect content.")
    if "cluster cannot be reached" in warning:
        return "The cluster could not be reached: what it runs now was not protected."
    return warning


def create_blueprint() -> Blueprint:
    bp = Blueprint("ui_maint", __name__, url_prefix="/ui")

    @bp.before_request
    def _guard() -> None:
        page_principal()

    # -- disk use and leftovers

    @bp.get("/maintenance")
    def maintenance() -> str:
        paths = _paths()
        ui = _ui()
        now = time.time()
        leftovers = find_leftovers(paths, ui.uploads, ui.imports.jobs, now)
        areas = disk_areas(paths)
        jobs = _jobs()
        return render_template("ui/maintenance.html", areas=areas, total=sum(a.size for a in areas),
                               # Run GC is offered after a dry run this user saw (not the CLI's or the schedule's).
                               jobs=jobs.list(10),
                               dry_run=jobs.latest(GC, dry_run=True, requested_by=page_principal().username),
                               schedules=_scheduler().states(),
                               leftovers=leftovers, leftover_bytes=sum(f.size for f in leftovers),
                               ages={f.key: age(now - f.modified) for f in leftovers})

    @bp.post("/maintenance/leftovers/clear")
    def clear_leftovers() -> Response:
        ui = _ui()
        keys = request.form.getlist("key")[:MAX_KEYS]
        if not keys:
            flash("Nothing was chosen, so nothing was removed.", "error")
            return redirect(url_for("ui_maint.maintenance"))  # type: ignore[return-value]
        freed, cleared, kept = 0, 0, 0
        for key in keys:
            size = clear_leftover(_paths(), ui.uploads, ui.imports.jobs, key)
            if size is not None:
                freed += size
                cleared += 1
            else:
                kept += 1
        message = f"Removed {cleared} leftover{'' if cleared == 1 else 's'}, freeing {human_bytes(freed)}."
        if kept:
            message += (f" {kept} {'was' if kept == 1 else 'were'} left alone: already gone, or an upload or "
                        "import is using it again.")
        flash(message, "ok")
        return redirect(url_for("ui_maint.maintenance"))  # type: ignore[return-value]

    # -- garbage collection and scrub, in the background

    @bp.post("/maintenance/jobs")
    def start_job() -> Response:
        principal = page_principal()
        action = request.form.get("action", "")
        jobs = _jobs()
        if action == "gc":
            # Collection removes content for good: only after a finished dry run has shown what goes.
            after = jobs.get(request.form.get("after", ""))
            if after is None or after.kind != GC or not after.dry_run or after.state != "done":
                flash("Run a garbage collection dry run first, to see what would be removed. Nothing was removed.",
                      "error")
                return redirect(url_for("ui_maint.maintenance"))  # type: ignore[return-value]
        elif action not in ("gc-dry-run", "scrub", "expire"):
            flash("Unknown maintenance action; nothing was started.", "error")
            return redirect(url_for("ui_maint.maintenance"))  # type: ignore[return-value]
        kind = {"scrub": SCRUB, "expire": EXPIRE}.get(action, GC)
        try:
            job = jobs.start(kind, action == "gc-dry-run", principal.username, request.remote_addr or "")
        except JobBusy as exc:
            flash(f"A {exc.job.title.lower()} is already running; wait for it to finish. Nothing new was started.",
                  "error")
            return redirect(url_for("ui_maint.job_page", job_id=exc.job.id))  # type: ignore[return-value]
        return redirect(url_for("ui_maint.job_page", job_id=job.id))  # type: ignore[return-value]

    @bp.get("/maintenance/jobs/<job_id>")
    def job_page(job_id: str) -> Response:
        job = _jobs().get(job_id)
        if job is None:
            return Response(render_template("ui/error.html", status=404, title="No such job",
                                            message="This maintenance job does not exist (any more)."), status=404)
        notes = [_plain_note(w) for w in (job.result or {}).get("warnings", [])]
        return Response(render_template("ui/maintenance_job.html", job=job, r=job.result or {}, notes=notes))

    # -- edge-host configuration

    def _edge_form(status: int = 200, error: str | None = None) -> Response:
        has_ca = ca_certificate(_paths()) is not None
        form = request.form if request.method == "POST" else {}
        return Response(render_template("ui/edge_config.html", has_ca=has_ca, error=error, form=form,
                                        default_address=registry_host(),
                                        scheme=form.get("scheme") or ("https" if has_ca else "")),
                        status=status)

    @bp.get("/edge-config")
    def edge_config() -> Response:
        return _edge_form()

    @bp.post("/edge-config")
    def edge_config_download() -> Response:
        form = request.form
        address = form.get("address", "").strip()
        scheme = form.get("scheme", "")
        username = form.get("username", "").strip() or None
        password = form.get("password", "") or None
        if not address:
            return _edge_form(400, "Type the address edge hosts use to reach this appliance, like "
                                   "registry.site.example or 10.0.0.5:443. Nothing was downloaded.")
        if scheme not in ("http", "https"):
            return _edge_form(400, "Choose how edge hosts connect: HTTPS, or plain HTTP. Nothing was downloaded.")
        if scheme == "http" and form.get("confirm_http") != "yes":
            # As the API and the command line: edge hosts are never pointed at plain http without a choice.
            return _edge_form(400, "Plain HTTP sends images and any credentials unencrypted. Tick the box to "
                                   "confirm that edge hosts should pull in plain text, or choose HTTPS. "
                                   "Nothing was downloaded.")
        if (username is None) != (password is None):
            return _edge_form(400, "Give both the robot account's name and its secret, or neither. "
                                   "Nothing was downloaded.")
        try:
            files = for_registry(services_of().registry, services_of().config.project, address, scheme,
                                 username, password)
        except ValueError:
            return _edge_form(400, f"{address!r} is not an address edge hosts can use: give a host name or IP "
                                   "address, optionally with :port (no http:// and no path). Nothing was downloaded.")
        return Response(edge_zip(files), mimetype="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="edge-config.zip"',
                                 "Cache-Control": "no-store"})

    # -- inventory for the build site

    @bp.get("/inventory.json")
    def inventory() -> Response:
        paths = _paths()

        out = io.StringIO()
        write_inventory(paths, out)  # a few MiB at most (one line per blob): built before the answer starts
        return Response(out.getvalue(), mimetype="application/json",
                        headers={"Content-Disposition": 'attachment; filename="inventory.json"',
                                 "Cache-Control": "no-store"})

    return bp
