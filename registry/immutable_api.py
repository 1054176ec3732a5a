"""Harbor's immutable tag rule endpoints, added to the /api/v2.0 blueprint of `registry.harbor`.

    GET POST            /projects/{p}/immutabletagrules
    PUT DELETE          /projects/{p}/immutabletagrules/{id}

Lists need a principal who can see the project; writes need a project
administrator (or a system administrator). Bodies are Harbor's
``ImmutableRule``; the rules themselves and the doublestar subset are
`registry.immutable`, their enforcement `registry.protection`. Writes are
audited (resource type ``immutable-rule``).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response

from registry.access import Project
from registry.immutable import ImmutableRule, ImmutableRules, RuleError, RuleInput


def add_routes(bp: Blueprint, rules: ImmutableRules, readable_project: Callable[[str], Project],
               managed_project: Callable[[str], Project], record: Callable[[str, str, str], None]) -> None:
    """Register the immutable tag rule routes on Harbor's blueprint `bp`."""
    # registry.harbor imports this module; its request helpers are read once it has loaded.
    from registry.harbor import PREFIX, HarborError, _created, _json_body, _listed, _paging, _parse_id, harbor_error

    @bp.errorhandler(RuleError)
    def _rule_error(exc: RuleError) -> Response:
        return harbor_error(exc.code, exc.message, exc.status)

    def find_rule(project: Project, rule_id: str) -> ImmutableRule:
        rule = rules.get(project, _parse_id(rule_id, "immutable tag rule"))
        if rule is None:
            raise HarborError("NOT_FOUND", f"immutable tag rule {rule_id} not found in project {project.name}", 404)
        return rule

    @bp.get("/projects/<ref>/immutabletagrules")
    def list_immutable_rules(ref: str) -> Response:
        project = readable_project(ref)
        page, size, offset = _paging()
        found = rules.list(project)
        return _listed([r.to_json() for r in found[offset:offset + size]], len(found), page, size)

    @bp.post("/projects/<ref>/immutabletagrules")
    def create_immutable_rule(ref: str) -> Response:
        project = managed_project(ref)
        rule = rules.create(project, RuleInput.parse(_json_body()))
        record("create", "immutable-rule", f"{project.name}: {rule.describe()}")
        return _created(None, f"{PREFIX}/projects/{project.id}/immutabletagrules/{rule.id}")

    @bp.put("/projects/<ref>/immutabletagrules/<rule_id>")
    def update_immutable_rule(ref: str, rule_id: str) -> Response:
        project = managed_project(ref)
        current = find_rule(project, rule_id)
        rule = rules.update(project, current, RuleInput.parse(_json_body(), current))
        state = "disabled" if rule.disabled else "enabled"
        record("update", "immutable-rule", f"{project.name}: {rule.describe()} ({state})")
        return Response(status=200)

    @bp.delete("/projects/<ref>/immutabletagrules/<rule_id>")
    def delete_immutable_rule(ref: str, rule_id: str) -> Response:
        project = managed_project(ref)
        rule = find_rule(project, rule_id)
        rules.delete(rule)
        record("delete", "immutable-rule", f"{project.name}: {rule.describe()}")
        return Response(status=200)
