"""Harbor's tag retention endpoints (/api/v2.0/retentions*), over `bundles.retention`.

Route table (Harbor's shapes; system administrators only; errors in Harbor's shape):

    GET     /api/v2.0/retentions/metadatas                          the rule templates and selectors served
    POST    /api/v2.0/retentions                                    create a project's policy (201, Location)
    GET PUT DELETE /api/v2.0/retentions/{id}                        one policy
    POST    /api/v2.0/retentions/{id}/executions                    {"dry_run": bool}: run it now (201, Location)
    GET     /api/v2.0/retentions/{id}/executions                    its executions, newest first (paged)
    GET     /api/v2.0/retentions/{id}/executions/{eid}/tasks        one task per repository (paged)
    GET     /api/v2.0/retentions/{id}/executions/{eid}/tasks/{tid}  the task's log, text/plain

Writes and executions that remove tags are audited (resource type ``retention``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from bundles.api_access import ApiAccess
from bundles.api_json import error_response, guarded_blueprint, harbor_listed, harbor_paging, json_body
from bundles.retention import Retention, RetentionError

PREFIX = "/api/v2.0"

METADATA = {
    "templates": [
        {"rule_template": "latestPushedK", "display_text": "the most recently pushed # artifacts", "action": "retain",
         "params": [{"type": "int", "unit": "COUNT", "required": True}]},
        {"rule_template": "always", "display_text": "always", "action": "retain", "params": []},
    ],
    "scope_selectors": [{"display_text": "Repositories", "kind": "doublestar",
                         "decorations": ["repoMatches", "repoExcludes"]}],
    "tag_selectors": [{"display_text": "Tags", "kind": "doublestar", "decorations": ["matches", "excludes"]}],
}


def _id(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < len(text) < 12) or int(text) < 1:
        raise RetentionError(f"{what} {text[:40]!r} not found", 404, "NOT_FOUND")
    return int(text)




def create_blueprint(retention: Retention, guard: ApiAccess) -> Blueprint:
    """The /api/v2.0/retentions* endpoints."""
    bp = guarded_blueprint("harbor_retention", guard)

    @bp.errorhandler(RetentionError)
    def _retention_error(exc: RetentionError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    def policy(policy_id: str) -> dict[str, Any]:
        found = retention.policy_json(_id(policy_id, "retention policy"))
        if found is None:
            raise RetentionError(f"retention policy {policy_id} not found", 404, "NOT_FOUND")
        return found

    def execution(policy_id: str, execution_id: str) -> tuple[int, int]:
        pid, eid = int(policy(policy_id)["id"]), _id(execution_id, "retention execution")
        if not retention.execution_exists(pid, eid):
            raise RetentionError(f"retention execution {eid} not found in policy {pid}", 404, "NOT_FOUND")
        return pid, eid

    @bp.get(f"{PREFIX}/retentions/metadatas")
    def metadatas() -> Response:
        guard.require_admin("read retention metadata")
        return jsonify(METADATA)

    @bp.post(f"{PREFIX}/retentions")
    def create() -> Response:
        guard.require_admin("create retention policies")
        policy_id = retention.create(json_body())
        guard.record("create", "retention", f"policy {policy_id}")
        resp = Response(status=201)
        resp.headers["Location"] = f"{PREFIX}/retentions/{policy_id}"
        return resp

    @bp.get(f"{PREFIX}/retentions/<policy_id>")
    def get(policy_id: str) -> Response:
        guard.require_admin("read retention policies")
        return jsonify(policy(policy_id))

    @bp.put(f"{PREFIX}/retentions/<policy_id>")
    def update(policy_id: str) -> Response:
        guard.require_admin("change retention policies")
        pid = int(policy(policy_id)["id"])
        retention.update(pid, json_body())
        guard.record("update", "retention", f"policy {pid}")
        return Response(status=200)

    @bp.delete(f"{PREFIX}/retentions/<policy_id>")
    def delete(policy_id: str) -> Response:
        guard.require_admin("delete retention policies")
        pid = int(policy(policy_id)["id"])
        retention.delete(pid)
        guard.record("delete", "retention", f"policy {pid}")
        return Response(status=200)

    @bp.post(f"{PREFIX}/retentions/<policy_id>/executions")
    def execute(policy_id: str) -> Response:
        principal = guard.require_admin("run retention policies")
        pid = int(policy(policy_id)["id"])
        body = json_body()
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise RetentionError("dry_run must be true or false")
        eid = retention.execute(pid, dry_run, principal.username)
        if not dry_run:
            guard.record("delete", "retention", f"policy {pid} execution {eid}")
        resp = Response(status=201)
        resp.headers["Location"] = f"{PREFIX}/retentions/{pid}/executions/{eid}"
        return resp

    @bp.get(f"{PREFIX}/retentions/<policy_id>/executions")
    def executions(policy_id: str) -> Response:
        guard.require_admin("read retention executions")
        pid = int(policy(policy_id)["id"])
        page, size = harbor_paging(RetentionError)
        items, total = retention.executions(pid, (page - 1) * size, size)
        return harbor_listed(items, total, page, size)

    @bp.get(f"{PREFIX}/retentions/<policy_id>/executions/<execution_id>/tasks")
    def tasks(policy_id: str, execution_id: str) -> Response:
        guard.require_admin("read retention executions")
        _, eid = execution(policy_id, execution_id)
        page, size = harbor_paging(RetentionError)
        items, total = retention.tasks(eid, (page - 1) * size, size)
        return harbor_listed(items, total, page, size)

    @bp.get(f"{PREFIX}/retentions/<policy_id>/executions/<execution_id>/tasks/<task_id>")
    def task_log(policy_id: str, execution_id: str, task_id: str) -> Response:
        guard.require_admin("read retention executions")
        _, eid = execution(policy_id, execution_id)
        log = retention.task_log(eid, _id(task_id, "retention task"))
        if log is None:
            raise RetentionError(f"retention task {task_id} not found", 404, "NOT_FOUND")
        return Response(log, mimetype="text/plain")

    return bp
