"""HTTP face of protected-tag overrides: a system administrator allows one change of one protected tag.

    POST  /api/cargohold/v1/tag-overrides   {"repository", "tag", "reason", "ttlSeconds" (default 900)}
    GET   /api/cargohold/v1/tag-overrides   the 100 most recent grants, newest first

A grant is one-shot and expires (`registry.protection`): the next push or
delete of that tag that protection would refuse goes through once, and the
grant is used up. Granting and using are audited. Access as for the other
appliance APIs (`bundles.api_access`): both need a system administrator.
Errors answer ``{"errors": [{"code", "message"}]}``: 400 bad input (no
reason, bad ttl), 404 unknown tag, 409 the tag is not protected.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from bundles.api_access import ApiAccess
from bundles.api_json import PREFIX, error_response, guarded_blueprint, json_body
from registry.db import write_transaction
from registry.model import Registry
from registry.protection import DEFAULT_OVERRIDE_TTL, OverrideRefused, TagProtection


def create_blueprint(registry: Registry, guard: ApiAccess) -> Blueprint:
    """The tag-override endpoints over one registry."""
    bp = guarded_blueprint("tag_overrides", guard)

    @bp.errorhandler(OverrideRefused)
    def _refused(exc: OverrideRefused) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @bp.before_request
    def _authenticate() -> None:
        guard.authenticate()

    @bp.post(f"{PREFIX}/tag-overrides")
    def grant() -> Response:
        principal = guard.require_admin("override tag protection")
        body = json_body()
        repository, tag = body.get("repository"), body.get("tag")
        if not isinstance(repository, str) or not isinstance(tag, str) or not repository or not tag:
            raise OverrideRefused("repository and tag are required, e.g. {\"repository\": "
                                  "\"spectro-images/docker.io/library/nginx\", \"tag\": \"1.25\", \"reason\": ...}")
        with write_transaction(registry.db) as db:
            found = registry.protection.grant_override(db, repository, tag, body.get("reason"), principal.username,
                                                       request.remote_addr or "",
                                                       body.get("ttlSeconds", DEFAULT_OVERRIDE_TTL))
        resp = jsonify(found.to_json())
        resp.status_code = 201
        return resp

    @bp.get(f"{PREFIX}/tag-overrides")
    def list_grants() -> Response:
        guard.require_admin("list tag protection overrides")
        return jsonify({"overrides": [o.to_json() for o in TagProtection.overrides(registry.db)]})

    return bp
