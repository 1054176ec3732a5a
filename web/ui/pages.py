"""The operator UI's pages, server-rendered from the same core the JSON APIs use.

Route table (HTML; every page needs a signed-in admin, every POST its CSRF token):

    GET        /ui/                                dashboard: health, disk, counts, latest imports, readiness
    GET        /ui/upload                          bundle upload form (tus, resumable; web/static/upload.js)
    GET        /ui/imports                         import jobs, newest first
    GET        /ui/imports/<id>                    one import: live progress, then its report or error
    GET        /ui/seed                            the seed directory: latest scan's report, every file set
    POST       /ui/seed/scan                       start a scan (retry_refused=1 tries refused files again)
    GET        /ui/repositories                    repositories (?q= filter)
    GET        /ui/repositories/<name>             a repository's artifacts and tags
    GET        /ui/artifact?repository=&reference= an artifact: platforms, size, layers, referrers, pull command
    GET, POST  /ui/definitions                     cluster definitions with their latest verdict; upload one
                                                   (.tgz and optional detached signature; must be signed)
    GET        /ui/definitions/<name>              one definition's readiness check report
    POST       /ui/definitions/<name>/check        run and record a check
    GET, POST  /ui/keys                            trusted keys; add one (PEM)
    POST       /ui/keys/remove                     stop trusting a key
    GET, POST  /ui/robots                          robot accounts; create one (its secret is shown once)
    POST       /ui/robots/<id>/disable|enable|delete
    GET        /ui/audit                           the audit log (?username=, ?operation=, ?page=)
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for

from bundles.check import run_check
from bundles.clusterdef import DefinitionError, DefinitionNotFound
from bundles.clusterdef_trust import MAX_SIGNATURE_BYTES, SignaturePolicy, import_archive
from bundles.releases import Releases
from bundles.seed import SeedScanner
from bundles.trust import TrustError
from registry import hashstate
from registry.access import AccessError
from registry.artifacts import Artifacts
from registry.digest import Digest
from registry.errors import RegistryError
from registry.names import parse_mapping_rules
from registry.numbers import NumberInvalid, parse_number
from web.app_services import services_of
from web.seed import scan_in_background
from web.ui import UiServices, messages
from web.ui.import_report import import_context
from web.ui.session import page_principal
from web.ui.warnings import dashboard_warnings

PAGE_SIZE = 50
MAX_PAGE = 1_000_000  # keeps (page - 1) * PAGE_SIZE well inside SQLite's INTEGER


def _ui() -> UiServices:
    return current_app.extensions["cargohold.ui"]  # type: ignore[no-any-return]


def _seed() -> SeedScanner:
    return current_app.extensions["cargohold.seed"]  # type: ignore[no-any-return]


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"


def registry_host() -> str:
    """The appliance's address as a registry client names it (the configured external URL wins)."""
    config = services_of().config
    if config.external_url:
        return urlsplit(config.external_url).netloc or config.external_url
    return request.host


def _error_page(status: int, title: str, message: str) -> Response:
    return Response(render_template("ui/error.html", status=status, title=title, message=message), status=status)


def _page_arg() -> int:
    """The ``page`` query parameter (1 to MAX_PAGE, default 1); a 400 page naming it otherwise."""
    text = request.args.get("page", "")
    if not text:
        return 1
    try:
        return parse_number(text, "page", 1, MAX_PAGE)
    except NumberInvalid as exc:
        abort(_error_page(400, "Bad page number", f"The address asks for an impossible page: {exc.message}."))


def create_blueprint() -> Blueprint:
    bp = Blueprint("ui", __name__, url_prefix="/ui")

    @bp.before_request
    def _guard() -> None:
        page_principal()

    @bp.app_template_filter("bytes")
    def _bytes_filter(n: Any) -> str:
        return human_bytes(n)

    @bp.app_template_filter("when")
    def _when_filter(t: Any) -> str:
        return when(t)

    @bp.app_template_filter("short")
    def _short(digest: Any) -> str:
        text = str(digest or "")
        return text[:19] if text.startswith("sha256:") else text

    # -- dashboard

    @bp.get("/")
    def dashboard() -> str:
        services = services_of()
        ui = _ui()
        db = services.registry.db
        disk = shutil.disk_usage(services.config.paths.root)

        def count(sql: str) -> int:
            return int(db.execute(sql).fetchone()[0])

        counts = {
            "repositories": count("SELECT COUNT(*) FROM repositories"),
            "artifacts": count("SELECT COUNT(*) FROM manifests"),
            "tags": count("SELECT COUNT(*) FROM tags"),
            "blobs": count("SELECT COUNT(*) FROM blobs"),
            "cluster definitions": len(ui.definitions.names()),
            "trusted keys": len(ui.imports.trust.list()),
            "robot accounts": count("SELECT COUNT(*) FROM robots"),
        }
        stored = count("SELECT COALESCE(SUM(size), 0) FROM blobs")
        readiness = []
        for name in ui.definitions.names():
            latest = ui.definitions.checks(name, limit=1)
            readiness.append({"name": name, "check": latest[0] if latest else None})
        health = [
            ("database", True, "SQLite answers"),
            ("resumable hashing", hashstate.available(), "libcrypto SHA-256 state can be saved"
             if hashstate.available() else "uploads re-hash on completion instead"),
            ("free space", disk.free > services.config.import_reserve_bytes,
             f"{human_bytes(disk.free)} free, {human_bytes(services.config.import_reserve_bytes)} kept in reserve"),
            _seed_health(counts["trusted keys"]),
        ]
        return render_template("ui/dashboard.html", counts=counts, disk=disk, stored=stored, health=health,
                               imports=ui.imports.jobs.list(5), readiness=readiness,
                               warnings=dashboard_warnings(ui, services))

    # -- upload and imports

    @bp.get("/upload")
    def upload() -> str:
        return render_template("ui/upload.html", max_size=_ui().uploads.max_size)

    @bp.get("/imports")
    def imports() -> str:
        scanner = _seed()
        return render_template("ui/imports.html", jobs=_ui().imports.jobs.list(100), seed_dir=scanner.seed_dir,
                               seed_scan=scanner.latest_scan())

    # -- the seed directory

    @bp.get("/seed")
    def seed() -> str:
        scanner = _seed()
        return render_template("ui/seed.html", seed_dir=scanner.seed_dir, scan=scanner.latest_scan(),
                               files=scanner.files(), trusted_keys=len(scanner.trust.list()),
                               scan_at_start=services_of().config.seed_scan)

    @bp.post("/seed/scan")
    def seed_scan() -> Any:
        scanner = _seed()
        who = page_principal().username
        claimed = scanner.claim_scan("ui", who)
        assert claimed is not None  # only a start-up scan is ever turned away
        if claimed[1]:
            scan_in_background(scanner, claimed[0], who, request.form.get("retry_refused") == "1")
            flash(f"Scanning {scanner.seed_dir} (scan {claimed[0]}); reload to follow its report.", "ok")
        else:
            flash(f"Scan {claimed[0]} is already running; its report is below.", "ok")
        return redirect(url_for("ui.seed"))

    @bp.get("/imports/<job_id>")
    def import_detail(job_id: str) -> Any:
        job = _ui().imports.jobs.get(job_id)
        if job is None:
            return _error_page(404, "Import not found", f"There is no import job {job_id}.")
        config = services_of().config
        view = import_context(job, Releases(services_of().registry, config.project,
                                            parse_mapping_rules(config.mapping_rules)))
        return render_template("ui/import.html", job=job, report=job.report,
                               report_json=json.dumps(job.report, indent=2) if job.report else "", **view)

    # -- repositories, tags, artifacts

    def artifacts() -> Artifacts:
        services = services_of()
        return Artifacts(services.registry, services.access.projects)

    @bp.get("/repositories")
    def repositories() -> str:
        q = request.args.get("q", "").strip()
        page = _page_arg()
        total, repos = artifacts().list_repositories(None, ("fuzzy", q) if q else None, (page - 1) * PAGE_SIZE,
                                                     PAGE_SIZE)
        return render_template("ui/repositories.html", repos=repos, total=total, q=q, page=page,
                               pages=max(1, -(-total // PAGE_SIZE)))

    @bp.get("/repositories/<path:name>")
    def repository(name: str) -> Any:
        try:
            repo = artifacts().repository(name)
        except RegistryError:
            return _error_page(404, "Repository not found", f"There is no repository {name}.")
        _, items = artifacts().list_artifacts(repo, {}, 0, 200, with_tag=True, with_accessory=False)
        return render_template("ui/repository.html", repo=repo, items=items, host=registry_host())

    @bp.get("/artifact")
    def artifact() -> Any:
        name = request.args.get("repository", "")
        reference = request.args.get("reference", "")
        services = services_of()
        try:
            repo = artifacts().repository(name)
            doc = artifacts().artifact(repo, reference, with_tag=True, with_accessory=True)
            record = services.registry.resolve(name, doc["digest"])
            manifest = json.loads(services.registry.manifest_bytes(record))
        except (RegistryError, AccessError, ValueError):
            return _error_page(404, "Artifact not found", f"There is no artifact {reference!r} in {name!r}.")
        layers = manifest.get("layers") or []
        config = manifest.get("config")
        total = doc["size"]  # Harbor's sum: manifest, config and layers (an index: with its platforms')
        referrers = services.registry.referrers(name, Digest.parse(doc["digest"]))
        tags = [t["name"] for t in (doc.get("tags") or [])]
        host = registry_host()
        pull_ref = f"{host}/{name}:{tags[0]}" if tags else f"{host}/{name}@{doc['digest']}"
        return render_template("ui/artifact.html", repo=repo, doc=doc, manifest=manifest, layers=layers,
                               config=config, total=total, referrers=referrers, tags=tags, pull_ref=pull_ref,
                               tls=services.config.tls)

    # -- cluster definitions

    @bp.route("/definitions", methods=["GET", "POST"])
    def definitions() -> Any:
        ui = _ui()
        status = 200
        if request.method == "POST":
            upload = request.files.get("definition")
            sig_file = request.files.get("signature")
            signature = sig_file.stream.read(MAX_SIGNATURE_BYTES + 1) if sig_file and sig_file.filename else None
            config = services_of().config
            try:
                if upload is None or not upload.filename:
                    raise DefinitionError("choose a cluster definition (.tgz) to upload")
                stored = import_archive(ui.definitions, upload.stream, f"upload:{upload.filename}",
                                        SignaturePolicy(ui.imports.trust, config.allow_unsigned_definitions),
                                        signature)
                _audit("create", "cluster-definition", f"{stored.name}:{stored.version}")
                flash(f"Imported {stored.name} {stored.version}: {len(stored.images)} images, "
                      + (f"signed by {stored.signed_by}." if stored.signed_by else "UNSIGNED (allowed by policy)."),
                      "ok")
                return redirect(url_for("ui.definition", name=stored.name))
            except DefinitionError as exc:
                code = getattr(exc, "code", "DEFINITION_INVALID")
                flash(messages.definition_refusal(code, str(exc)), "error")
                status = 400
        rows = []
        for definition in ui.definitions.all():
            latest = ui.definitions.checks(definition.name, limit=1)
            rows.append({"summary": definition.summary(), "check": latest[0] if latest else None})
        return Response(render_template("ui/definitions.html", rows=rows), status=status)

    @bp.get("/definitions/<name>")
    def definition(name: str) -> Any:
        ui = _ui()
        config = services_of().config
        try:
            result = run_check(ui.definitions, services_of().registry, name, config.project,
                               parse_mapping_rules(config.mapping_rules), record=False)
        except DefinitionNotFound:
            return _error_page(404, "Cluster definition not found", f"There is no cluster definition {name}.")
        return render_template("ui/definition.html", name=name, result=result,
                               history=ui.definitions.checks(name, limit=20))

    @bp.post("/definitions/<name>/check")
    def run_definition_check(name: str) -> Any:
        config = services_of().config
        try:
            result = run_check(_ui().definitions, services_of().registry, name, config.project,
                               parse_mapping_rules(config.mapping_rules), record=True)
        except DefinitionNotFound:
            return _error_page(404, "Cluster definition not found", f"There is no cluster definition {name}.")
        flash(f"Check recorded: {'ready' if result['ready'] else 'not ready'}.", "ok" if result["ready"] else "error")
        return redirect(url_for("ui.definition", name=name))

    # -- trusted keys

    @bp.route("/keys", methods=["GET", "POST"])
    def keys() -> Any:
        trust = _ui().imports.trust
        status = 200
        if request.method == "POST":
            pem = request.form.get("pem", "").encode()
            upload = request.files.get("pem_file")
            if upload is not None and upload.filename:
                pem = upload.stream.read(64 << 10)
            description = request.form.get("description", "").strip()[:200]
            try:
                if not pem.strip():
                    raise TrustError("paste a PEM public key or choose a .pem file")
                added = trust.add(pem, description)
                _audit("create", "trusted_key", added.id)
                flash(f"Now trusting key {added.id}.", "ok")
                return redirect(url_for("ui.keys"))
            except TrustError as exc:
                flash(str(exc), "error")
                status = 400
        return Response(render_template("ui/keys.html", keys=trust.list()), status=status)

    @bp.post("/keys/remove")
    def remove_key() -> Any:
        try:
            removed = _ui().imports.trust.remove(request.form.get("key_id", ""))
            _audit("delete", "trusted_key", removed.id)
            flash(f"No longer trusting key {removed.id}.", "ok")
        except TrustError as exc:
            flash(str(exc), "error")
        return redirect(url_for("ui.keys"))

    # -- robot accounts

    @bp.route("/robots", methods=["GET", "POST"])
    def robots() -> Any:
        services = services_of()
        robots_store = services.access.robots
        created: dict[str, str] | None = None
        status = 200
        if request.method == "POST":
            actions = ["pull"] + (["push"] if request.form.get("push") else [])
            duration_text = request.form.get("duration", "-1").strip() or "-1"
            try:
                duration = -1 if duration_text == "-1" else parse_number(duration_text, "duration")
            except NumberInvalid:
                duration = 0  # refused by validate with the message naming the field
            body = {"name": request.form.get("name", "").strip(), "description": request.form.get("description", ""),
                    "level": "system", "duration": duration,
                    "permissions": [{"kind": "project", "namespace": services.config.project,
                                     "access": [{"resource": "repository", "action": a} for a in actions]}]}
            try:
                robot, secret = robots_store.create(body, page_principal().username)
                _audit("create", "robot", robot.name)
                created = {"name": robot.name, "secret": secret}
            except AccessError as exc:
                flash(exc.message, "error")
                status = 400
        _, items = robots_store.list([], [], 0, 500)
        resp = Response(render_template("ui/robots.html", robots=items, created=created,
                                        project=services.config.project), status=status)
        resp.headers["Cache-Control"] = "no-store"  # a new robot's secret is on this page once
        return resp

    @bp.post("/robots/<int:robot_id>/<action>")
    def robot_action(robot_id: int, action: str) -> Any:
        robots_store = services_of().access.robots
        robot = robots_store.get(robot_id)
        if robot is None:
            return _error_page(404, "Robot not found", f"There is no robot account {robot_id}.")
        if action in ("disable", "enable"):
            robots_store.update(robot, {"disable": action == "disable"})
            _audit("update", "robot", robot.name)
            flash(f"{robot.name} {'disabled' if action == 'disable' else 'enabled'}.", "ok")
        elif action == "delete":
            robots_store.delete(robot)
            _audit("delete", "robot", robot.name)
            flash(f"{robot.name} deleted.", "ok")
        else:
            abort(404)
        return redirect(url_for("ui.robots"))

    # -- audit log

    @bp.get("/audit")
    def audit() -> str:
        filters = {k: ("fuzzy", v.strip()) for k in ("username", "operation", "resource")
                   if (v := request.args.get(k, "")).strip()}
        page = _page_arg()
        total, entries = services_of().audit.list(filters, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        return render_template("ui/audit.html", entries=entries, total=total, page=page,
                               pages=max(1, -(-total // PAGE_SIZE)), filters={k: v[1] for k, v in filters.items()})

    return bp


def _seed_health(trusted_keys: int) -> tuple[str, bool, str]:
    """The dashboard's seed-directory line: what the latest scan did, and why seed files were refused."""
    scan = _seed().latest_scan()
    if scan is None or scan.report is None:
        return "seed directory", True, "not scanned yet"
    if scan.state in ("failed", "interrupted"):
        return "seed directory", False, (f"scan {scan.id} {scan.state}: "
                                         f"{scan.report.get('error') or 'see the appliance log'}")
    counts = scan.report.get("counts") or {}
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "nothing to import"
    refused = [f for f in scan.report.get("files") or [] if f.get("outcome") == "refused"]
    if not refused:
        return "seed directory", True, f"scan {scan.id} ({scan.state}): {summary}"
    codes = ", ".join(sorted({str(f.get("errorCode")) for f in refused}))
    why = (" — no key is trusted: add the signing key on the Trusted keys page, then scan again "
           "retrying refused" if trusted_keys == 0 else "")
    return "seed directory", False, f"scan {scan.id}: {summary}; refused: {codes}{why}"


def _audit(operation: str, resource_type: str, resource: str) -> None:
    """Record a UI change in the audit log (who, from where)."""
    principal = page_principal()
    services_of().audit.record(principal.username, operation, resource_type, resource, request.remote_addr or "")
