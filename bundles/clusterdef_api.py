"""HTTP face of cluster definitions, readiness checks and mirror configuration.

Route table (JSON unless said otherwise; who may call what is `bundles.api_access`'s
rule: POST and DELETE need a system administrator, GETs any signed-in principal
that may pull from the default project; credentials are Basic or Bearer):

    POST    /api/cargohold/v1/cluster-definitions                  upload a .tgz (multipart `file` or `uploadFile`,
                                                                   optional detached `signature`)
    GET     /api/cargohold/v1/cluster-definitions                  list (summaries)
    GET     /api/cargohold/v1/cluster-definitions/<name>           one definition in full
    DELETE  /api/cargohold/v1/cluster-definitions/<name>           remove it and its check history
    POST    /api/cargohold/v1/cluster-definitions/<name>/checks    run a readiness check and keep it
    GET     /api/cargohold/v1/cluster-definitions/<name>/checks    past checks, newest first
    GET     /api/cargohold/v1/cluster-definitions/<name>/checks/<id>
    POST    /api/cargohold/v1/mirror-config                        edge-host files: ?format=tar (default) or json
    GET     /ui/cluster-definitions/<name>                         302 to the UI's page /ui/definitions/<name>

Errors answer ``{"errors": [{"code", "message"}]}`` with the status the
problem calls for; a refused upload leaves the store as it was. An upload
no trusted key signs is refused (`bundles.clusterdef_trust`: codes
``DEFINITION_UNSIGNED``, ``DEFINITION_KEY_UNTRUSTED``,
``DEFINITION_SIGNATURE_INVALID``) unless the policy allows unsigned
definitions. Uploads,
deletes and recorded checks land in the audit log (``cluster-definition``
``<name>:<version>``, ``check`` ``<name>/checks/<id>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, redirect, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response as BaseResponse

from bundles.api_access import ApiAccess, ApiDenied
from bundles.check import run_check
from bundles.clusterdef import (
    MAX_ARCHIVE_BYTES,
    ClusterDefinitions,
    DefinitionError,
    DefinitionNotFound,
)
from bundles.clusterdef_trust import MAX_SIGNATURE_BYTES, SignaturePolicy, import_archive
from bundles.mirror import ca_certificate, for_registry, write_tar_gz
from bundles.trust import TrustStore
from registry.model import Registry
from registry.names import MappingRule

PREFIX = "/api/cargohold/v1"


@dataclass(frozen=True)
class ClusterDefApiConfig:
    """What the endpoints need besides the stores."""

    project: str
    rules: tuple[MappingRule, ...] = ()
    allow_unsigned: bool = False  # allow_unsigned_definitions: store definitions no trusted key signs


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify({"errors": [{"code": code, "message": message}]})
    resp.status_code = status
    return resp


def create_blueprint(definitions: ClusterDefinitions, registry: Registry, guard: ApiAccess,
                     config: ClusterDefApiConfig) -> Blueprint:
    """The cluster definition endpoints over one data directory; uploads are checked against its trusted keys."""
    bp = Blueprint("clusterdefs", __name__)
    policy = SignaturePolicy(TrustStore(definitions.paths), config.allow_unsigned)  # the keys that vouch for bundles

    @bp.errorhandler(DefinitionError)
    def _invalid(exc: DefinitionError) -> Response:
        # A signature refusal names its own code; any other refusal is an invalid archive.
        return _error(400, getattr(exc, "code", "DEFINITION_INVALID"), str(exc))

    @bp.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        # werkzeug's limit on a form's text fields (a signature pasted as text is at most a few KiB).
        return _error(413, "PAYLOAD_TOO_LARGE", "a form field of the upload is too large: send the definition "
                                                "and its signature as file parts")

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
        signature: bytes | None = None
        sig_file = request.files.get("signature")
        if sig_file is not None and sig_file.filename:
            signature = sig_file.stream.read(MAX_SIGNATURE_BYTES + 1)
        elif request.form.get("signature"):
            signature = request.form["signature"].encode()  # base64 or hex text in a plain form field
        definition = import_archive(definitions, upload.stream, f"upload:{upload.filename or 'unnamed'}", policy,
                                    signature)
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
        scheme = body.get("scheme")
        if scheme is None and ca_certificate(registry.paths) is None:
            # As the CLI: edge hosts are never pointed at plain http:// without someone choosing it.
            return _error(400, "INVALID", 'no "scheme" given and the appliance has no local CA to choose https '
                                          'by: pass "scheme": "https" if it serves HTTPS with your own '
                                          'certificate, or "scheme": "http" to have edge hosts pull in plain text')
        try:
            files = for_registry(registry, config.project, body["address"], scheme,
                                 body.get("username"), body.get("password"))
        except (ValueError, TypeError) as exc:
            return _error(400, "INVALID", str(exc))
        if fmt == "json":
            return jsonify({"files": {k: v.decode() for k, v in files.items()}})
        return Response(write_tar_gz(files), mimetype="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="mirror-config.tar.gz"'})

    @bp.get("/ui/cluster-definitions/<name>")
    def readiness_page(name: str) -> BaseResponse:
        # The old minimal page: the operator UI's page shows the same check (and needs its sign-in).
        return redirect(f"/ui/definitions/{quote(name, safe='')}", code=302)

    return bp

