"""The OpenAPI description of the Harbor endpoints bundles serves: GC (`bundles.harbor_gc_api`) and retention
(`bundles.harbor_retention_api`).

A `registry.openapi.Section` that web.app hands to the Harbor blueprint
(`registry.harbor.add_openapi_section`), so /api/v2.0/openapi.json lists
these operations while the document builder in `registry` never imports
upward. Schema and parameter names are Harbor's swagger's (GCHistory,
Schedule, ScheduleObj, RetentionPolicy, RetentionRule, RetentionSelector,
RetentionExecution, RetentionExecutionTask, RetentionMetadata...; path
parameters gc_id, id, eid, tid). Fields the appliance does not know (a
schedule never set, an execution still running) are left out of answers,
never sent as null.
"""

from __future__ import annotations

from typing import Any

from registry.openapi import _BOOL, _INT, _PAGING, _STR, _TIME, Section, _errors, _ok, _op, _path, _ref

_OBJ: dict[str, Any] = {"type": "object"}
_TEXT = {"description": "The log, plain text", "content": {"text/plain": {"schema": _STR}}}


def _list(schema: str) -> dict[str, Any]:
    return {**_ok({"type": "array", "items": _ref(schema)}, listed=True), **_errors(400, 401, 403, 404)}


def _schemas() -> dict[str, Any]:
    selector = {"type": "object", "properties": {
        "kind": {"type": "string", "enum": ["doublestar"]}, "decoration": _STR,
        "pattern": {"type": "string", "description": "doublestar subset: **, *, ?, {a,b}"}, "extras": _STR}}
    return {
        "ScheduleObj": {"type": "object", "properties": {
            "type": {"type": "string", "enum": ["Hourly", "Daily", "Weekly", "Custom", "Manual", "None", "Schedule"]},
            "cron": {"type": "string", "description": "Six fields, seconds first (Custom)."},
            "next_scheduled_time": _TIME}},
        "Schedule": {"type": "object", "properties": {
            "id": _INT, "status": _STR, "creation_time": _TIME, "update_time": _TIME, "schedule": _ref("ScheduleObj"),
            "parameters": {"type": "object", "description": "dry_run, delete_untagged, workers"}}},
        "GCHistory": {"type": "object", "properties": {
            "id": _INT, "job_name": _STR, "job_kind": _STR,
            "job_parameters": {"type": "string", "description": "The run's parameters, as a JSON text."},
            "schedule": _ref("ScheduleObj"), "job_status": _STR, "deleted": _BOOL, "creation_time": _TIME,
            "update_time": _TIME}},
        "RetentionSelector": selector,
        "RetentionRule": {"type": "object", "properties": {
            "id": _INT, "priority": _INT, "disabled": _BOOL, "action": {"type": "string", "enum": ["retain"]},
            "template": {"type": "string", "enum": ["latestPushedK", "always"]},
            "params": {"type": "object", "description": "latestPushedK: {\"latestPushedK\": N}"},
            "tag_selectors": {"type": "array", "items": _ref("RetentionSelector")},
            "scope_selectors": {"type": "object", "additionalProperties": {
                "type": "array", "items": _ref("RetentionSelector")}}}},
        "RetentionRuleTrigger": {"type": "object", "properties": {"kind": _STR, "settings": _OBJ,
                                                                  "references": _OBJ}},
        "RetentionPolicyScope": {"type": "object", "properties": {"level": {"type": "string", "enum": ["project"]},
                                                                  "ref": _INT}},
        "RetentionPolicy": {"type": "object", "properties": {
            "id": _INT, "algorithm": {"type": "string", "enum": ["or"]},
            "rules": {"type": "array", "items": _ref("RetentionRule")},
            "trigger": _ref("RetentionRuleTrigger"), "scope": _ref("RetentionPolicyScope")}},
        "RetentionExecution": {"type": "object", "properties": {
            "id": _INT, "policy_id": _INT, "start_time": _STR, "end_time": _STR, "status": _STR, "trigger": _STR,
            "dry_run": _BOOL}},
        "RetentionExecutionTask": {"type": "object", "properties": {
            "id": _INT, "execution_id": _INT, "repository": _STR, "job_id": _STR, "status": _STR,
            "status_code": _INT, "status_revision": _INT, "start_time": _STR, "end_time": _STR, "total": _INT,
            "retained": _INT}},
        "RetentionRuleParamMetadata": {"type": "object", "properties": {"type": _STR, "unit": _STR,
                                                                        "required": _BOOL}},
        "RetentionRuleMetadata": {"type": "object", "properties": {
            "rule_template": _STR, "display_text": _STR, "action": _STR,
            "params": {"type": "array", "items": _ref("RetentionRuleParamMetadata")}}},
        "RetentionSelectorMetadata": {"type": "object", "properties": {
            "display_text": _STR, "kind": _STR, "decorations": {"type": "array", "items": _STR}}},
        "RetentionMetadata": {"type": "object", "properties": {
            "templates": {"type": "array", "items": _ref("RetentionRuleMetadata")},
            "scope_selectors": {"type": "array", "items": _ref("RetentionSelectorMetadata")},
            "tag_selectors": {"type": "array", "items": _ref("RetentionSelectorMetadata")}}},
    }


def _paths() -> dict[str, Any]:
    gc_id = _path("gc_id", "A garbage collection run (its job number).", {"type": "integer", "format": "int64"})
    policy = _path("id", "A retention policy id.", {"type": "integer", "format": "int64"})
    eid = _path("eid", "An execution of the policy.", {"type": "integer", "format": "int64"})
    tid = _path("tid", "A task (one repository) of the execution.", {"type": "integer", "format": "int64"})
    paging = _PAGING[:2]
    run = {"type": "object", "properties": {"dry_run": _BOOL}}
    return {
        "/system/gc": {"get": _op("Garbage collection history, newest first (admin)", _list("GCHistory"), paging,
                                  tag="gc")},
        "/system/gc/{gc_id}": {"get": _op("One garbage collection run (admin)",
                                          {**_ok(_ref("GCHistory")), **_errors(401, 403, 404)}, [gc_id], tag="gc")},
        "/system/gc/{gc_id}/log": {"get": _op("A garbage collection run's log (admin)",
                                              {"200": _TEXT, **_errors(401, 403, 404)}, [gc_id], tag="gc")},
        "/system/gc/schedule": {
            "get": _op("The garbage collection schedule (admin)", {**_ok(_ref("Schedule")), **_errors(401, 403)},
                       tag="gc"),
            "post": _op("Type Manual: run a collection now (201, Location of the run); another type: set the "
                        "schedule (admin)", {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 409)},
                        body=_ref("Schedule"), tag="gc"),
            "put": _op("Set the schedule; type Manual runs a collection now (admin)",
                       {**_ok(None), **_errors(400, 401, 403, 409)}, body=_ref("Schedule"), tag="gc"),
        },
        "/retentions/metadatas": {"get": _op("The rule templates and selectors served (admin)",
                                             {**_ok(_ref("RetentionMetadata")), **_errors(401, 403)},
                                             tag="retention")},
        "/retentions": {"post": _op("Create a project's retention policy (admin; one per project)",
                                    {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 409)},
                                    body=_ref("RetentionPolicy"), tag="retention")},
        "/retentions/{id}": {
            "get": _op("A retention policy (admin)", {**_ok(_ref("RetentionPolicy")), **_errors(401, 403, 404)},
                       [policy], tag="retention"),
            "put": _op("Replace a policy's rules (admin; its project stays)",
                       {**_ok(None), **_errors(400, 401, 403, 404)}, [policy], _ref("RetentionPolicy"),
                       tag="retention"),
            "delete": _op("Delete a policy and its executions (admin)", {**_ok(None), **_errors(401, 403, 404)},
                          [policy], tag="retention"),
        },
        "/retentions/{id}/executions": {
            "get": _op("A policy's executions, newest first (admin)", _list("RetentionExecution"),
                       [policy, *paging], tag="retention"),
            "post": _op("Run the policy now; a dry run changes nothing (admin)",
                        {**_ok(None, "Created", "201"), **_errors(400, 401, 403, 404)}, [policy], run,
                        tag="retention"),
        },
        "/retentions/{id}/executions/{eid}/tasks": {
            "get": _op("An execution's tasks, one per repository (admin)", _list("RetentionExecutionTask"),
                       [policy, eid, *paging], tag="retention")},
        "/retentions/{id}/executions/{eid}/tasks/{tid}": {
            "get": _op("A task's log (admin)", {"200": _TEXT, **_errors(401, 403, 404)}, [policy, eid, tid],
                       tag="retention")},
    }


def section() -> Section:
    """The GC and retention operations, for /api/v2.0/openapi.json."""
    return Section(_paths(), _schemas())
