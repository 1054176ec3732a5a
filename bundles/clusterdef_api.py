"""HTTP face of cluster definitions, readiness checks and mirror configuration.

Route table (JSON unless said otherwise; who may call what is `bundles.api_access`'s
rule: POST and DELETE need a system administrator, GETs any signed-in principal
that may pull from the default project; credentials are Basic or Bearer):

    POST    /api/cargohold/v1/cluster-definitions                  upload a .tgz (multipart `file` or `uploadFile`)
    GET     /api/cargohold/v1/cluster-definitions                  list (summaries)
    GET     /api/cargohold/v1/cluster-definitions/<name>           one definition in full
    DELETE  /api/cargohold/v1/cluster-definitions/<name>           remove it and its check history
    POST    /api/cargohold/v1/cluster-definitions/<name>/checks    run a readiness check and keep it
    GET     /api/cargohold/v1/cluster-definitions/<name>/checks    past checks, newest first
    GET     /api/cargohold/v1/cluster-definitions/<name>/checks/<id>
    POST    /api/cargohold/v1/mirror-config                        edge-host files: ?format=tar (default) or json
    GET     /ui/cluster-definitions/<name>                         HTML readiness page (live check)

Errors answer ``{"errors": [{"code", "message"}]}`` with the status the
problem calls for; a refused upload leaves the store as it was. Uploads,
deletes and recorded checks land in the audit log (``cluster-definition``
``<name>:<version>``, ``check`` ``<name>/checks/<id>``).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request

from bundles.api_access import ApiAccess, ApiDenied
from bundles.check import PRESENT, run_check
from bundles.clusterdef import (
    MAX_ARCHIVE_BYTES,
    ClusterDefinitions,
    DefinitionError,
    DefinitionNotFound,
    import_archive,
)
from bundles.mirror import for_registry, write_tar_gz
from registry.model import Registry
from registry.names import MappingRule

PREFIX = "/api/cargohold/v1"


@dataclass(frozen=True)
class ClusterDefApiConfig:
    """What the endpoints need besides the stores."""

    project: str
    rules: tuple[MappingRule, ...] = ()


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    return resp


def create_blueprint(definitions: ClusterDefinitions, registry: Registry, guard: ApiAccess,
                     config: ClusterDefApiConfig) -> Blueprint:
    """The cluster definition endpoints over one data directory."""
    bp = Blueprint("clusterdefs", __name__)

    @bp.errorhandler(DefinitionError)
    def _invalid(exc: DefinitionError) -> Response:
        return _error(400, "DEFINITION_INVALID", str(exc))

    @bp.errorhandler(ApiDenied)
    def _denied(exc: ApiDenied) -> Response:
        return guard.denied(exc)

    @bp.errorhandler(DefinitionNotFound)
    def _not_found(exc: DefinitionNotFound) -> Response:
        return _error(404, "NOT_FOUND", str(exc))

    @bp.before_request
    def _authenticate() -> None:
        guard.authenticate()

    @bp.post(f"{PREFIX}/cluster-definitions")
    def upload() -> Response:
        guard.require_admin("upload cluster definitions")
        if request.content_length is None:
            # The form parser would spool a body of any length to disk; a definition is small, so ask for its size.
            return _error(411, "LENGTH_REQUIRED", "send the upload with a Content-Length header")
        if request.content_length > MAX_ARCHIVE_BYTES + (1 << 20):
            return _error(413, "PAYLOAD_TOO_LARGE",
                          f"a cluster definition may be at most {MAX_ARCHIVE_BYTES} bytes")
        upload = request.files.get("file") or request.files.get("uploadFile")
        if upload is None:
            return _error(400, "DEFINITION_INVALID",
                          "expected a multipart form with the .tgz in the field 'file' (or 'uploadFile')")
        definition = import_archive(definitions, upload.stream, f"upload:{upload.filename or 'unnamed'}")
        guard.record("create", "cluster-definition", f"{definition.name}:{definition.version}")
        resp = jsonify(definition.summary())
        resp.status_code = 201
        resp.headers["Location"] = f"{PREFIX}/cluster-definitions/{definition.name}"
        return resp

    @bp.get(f"{PREFIX}/cluster-definitions")
    def list_definitions() -> Response:
        guard.require_reader()
        return jsonify({"definitions": [d.summary() for d in definitions.all()]})

    @bp.get(f"{PREFIX}/cluster-definitions/<name>")
    def get_definition(name: str) -> Response:
        guard.require_reader()
        return jsonify(definitions.get(name).to_json())

    @bp.delete(f"{PREFIX}/cluster-definitions/<name>")
    def delete_definition(name: str) -> Response:
        guard.require_admin("delete cluster definitions")
        definitions.delete(name)
        guard.record("delete", "cluster-definition", name)
        return Response(status=204)

    @bp.post(f"{PREFIX}/cluster-definitions/<name>/checks")
    def check(name: str) -> Response:
        guard.require_admin("record readiness checks")
        result = run_check(definitions, registry, name, config.project, config.rules)
        guard.record("create", "check", f"{name}/checks/{result['id']}")
        resp = jsonify(result)
        resp.status_code = 201
        return resp

    @bp.get(f"{PREFIX}/cluster-definitions/<name>/checks")
    def checks(name: str) -> Response:
        guard.require_reader()
        definitions.get(name)
        return jsonify({"definition": name, "checks": definitions.checks(name)})

    @bp.get(f"{PREFIX}/cluster-definitions/<name>/checks/<int:check_id>")
    def one_check(name: str, check_id: int) -> Response:
        guard.require_reader()
        return jsonify(definitions.check(name, check_id))

    @bp.post(f"{PREFIX}/mirror-config")
    def mirror_config() -> Response:
        guard.require_admin("generate mirror configuration")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("address"), str):
            return _error(400, "INVALID", 'expected a JSON body {"address": "host:port", "username"?, "password"?, '
                                          '"scheme"?: "http"|"https"}')
        fmt = request.args.get("format", "tar")
        if fmt not in ("tar", "json"):
            return _error(400, "INVALID", f"format must be tar or json, not {fmt!r}")
        try:
            files = for_registry(registry, config.project, body["address"], body.get("scheme"),
                                 body.get("username"), body.get("password"))
        except (ValueError, TypeError) as exc:
            return _error(400, "INVALID", str(exc))
        if fmt == "json":
            return jsonify({"files": {k: v.decode() for k, v in files.items()}})
        return Response(write_tar_gz(files), mimetype="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="mirror-config.tar.gz"'})

    @bp.get("/ui/cluster-definitions/<name>")
    def readiness_page(name: str) -> Response:
        guard.require_reader()
        result = run_check(definitions, registry, name, config.project, config.rules, record=False)
        return Response(render_readiness(result, definitions.checks(name, limit=20)), mimetype="text/html")

    return bp


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render_readiness(result: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """A self-contained HTML page (no external assets) for one check result."""
    e = html.escape
    verdict = "READY" if result["ready"] else "NOT READY"
    colour = "#1a7f37" if result["ready"] else "#b42318"
    counts = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in result["counts"].items())
    rows = "".join(
        f"<tr class='{e(f['finding'])}'><td><code>{e(f['reference'])}</code></td><td>{e(f['finding'])}</td>"
        f"<td>{e(f['detail'])}</td><td>{e(_fmt_bytes(f['bytes']))}</td></tr>" for f in result["findings"])
    variables = "".join(f"<li><code>{e(v['name'])}</code> (profile {e(v['profile'])}"
                        f"{', format ' + e(v['format']) if v.get('format') else ''})</li>"
                        for v in result["requiredVariables"]) or "<li>none</li>"
    warnings = "".join(f"<li>{e(w)}</li>" for w in result["warnings"]) or "<li>none</li>"
    past = "".join(f"<tr><td>{e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(c['checkedAt'])))}</td>"
                   f"<td>{'ready' if c['ready'] else 'not ready'}</td>"
                   f"<td>{c['counts'].get(PRESENT, 0)} / {sum(c['counts'].values())}</td></tr>"
                   for c in history) or "<tr><td colspan='3'>no checks recorded yet</td></tr>"
    b = result["bytes"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(result['definition'])}: {verdict}</title>
<style>
body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}} .verdict{{color:{colour};font-size:1.6em}}
tr.present td:nth-child(2){{color:#1a7f37}} tr:not(.present) td:nth-child(2){{color:#b42318;font-weight:bold}}
</style></head><body>
<h1>{e(result['definition'])} {e(result.get('definitionVersion') or '')}</h1>
<p class="verdict" id="verdict">{verdict}</p>
<p>{result['images']} images for {e(', '.join(result['architectures']))};
required {e(_fmt_bytes(b['required']))}, missing {e(_fmt_bytes(b['missing']))}
{f"({b['imagesOfUnknownSize']} images of unknown size)" if b['imagesOfUnknownSize'] else ""}.</p>
<table id="counts"><tr><th>finding</th><th>images</th></tr>{counts}</table>
<h2>Images</h2>
<table id="findings"><tr><th>image</th><th>finding</th><th>detail</th><th>size</th></tr>{rows}</table>
<h2>Required variables without a default</h2><ul id="variables">{variables}</ul>
<h2>Warnings</h2><ul id="warnings">{warnings}</ul>
<h2>Past checks</h2>
<table id="history"><tr><th>checked</th><th>verdict</th><th>present</th></tr>{past}</table>
</body></html>
"""

