"""Tag retention: Harbor's retention policies (the rules the appliance does well), run as executions.

A policy belongs to one project (``scope: {"level": "project", "ref": <project id>}``)
and holds up to 15 rules, combined with Harbor's ``or`` algorithm: a tag is kept
when any enabled rule keeps it. A rule picks repositories of the project by
``scope_selectors.repository`` (``repoMatches`` / ``repoExcludes`` a doublestar
pattern over the name inside the project) and tags by ``tag_selectors``
(``matches`` / ``excludes``), with the pattern subset of `registry.immutable`,
and keeps, of the tags it picked:

- ``always``: all of them;
- ``latestPushedK`` (``params: {"latestPushedK": N}``): the N most recently
  pushed (the time the tag was last set, newest first; ties by name).

Other templates are refused naming these two. A policy with no enabled rule
removes nothing.

An execution evaluates every repository of the project (one task each, with
how many tags it had and kept, and a log) and, unless it is a dry run,
deletes the tags no rule keeps through `Registry.delete_tag`, so the
registry's protections apply: a promoted release's tags and tags under an
immutable tag rule are never removed (the log says which protected them). A
dry run reports the same without changing anything. Removing tags frees no
space by itself: the manifests they pointed at become untagged, and the next
garbage collection (`bundles.maintenance_jobs`, scheduled daily by default)
reclaims what no release or running cluster keeps, after its grace.

Creating a policy sets the project's metadata ``retention_id`` to its id
(in the same transaction), and deleting it removes that key, as Harbor does,
so clients find a project's policy from the project.

Tables (bundles.schema m009): ``retention_policies``, ``retention_executions``,
``retention_tasks``. Executions run in the request (metadata work only).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from registry.access import Projects
from registry.db import write_transaction
from registry.dbengine import insert_id
from registry.errors import RegistryError
from registry.immutable import RuleError, compile_pattern, validate_pattern
from registry.model import Registry
from registry.protection import TagProtected

TEMPLATES = ("latestPushedK", "always")
# The project metadata key naming a project's policy, as Harbor sets it (harborapi's get_project_retention_id).
RETENTION_ID = "retention_id"
MAX_RULES = 15
KIND = "doublestar"


class RetentionError(Exception):
    """Bad input or a conflict, in Harbor's terms: `code`, `message`, `status`."""

    def __init__(self, message: str, status: int = 400, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


@dataclass(frozen=True)
class Selector:
    decoration: str  # matches, excludes, repoMatches, repoExcludes
    pattern: str

    def keeps(self, name: str) -> bool:
        hit = compile_pattern(self.pattern).match(name) is not None
        return hit if self.decoration in ("matches", "repoMatches") else not hit


@dataclass(frozen=True)
class Rule:
    template: str
    count: int | None  # latestPushedK's N
    tags: tuple[Selector, ...]
    repositories: tuple[Selector, ...]
    disabled: bool

    def describe(self) -> str:
        what = f"the {self.count} most recently pushed" if self.template == "latestPushedK" else "all"
        tags = " and ".join(f"{s.decoration} {s.pattern!r}" for s in self.tags) or "any"
        repos = " and ".join(f"{s.decoration} {s.pattern!r}" for s in self.repositories) or "any"
        return f"retain {what} of the tags that {tags}, in repositories that {repos}"


def _selectors(value: Any, what: str, decorations: tuple[str, ...]) -> tuple[Selector, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RetentionError(f"{what} must be a list of selectors")
    found = []
    for item in value:
        if not isinstance(item, dict):
            raise RetentionError(f"{what}: each selector must be an object {{kind, decoration, pattern}}")
        if item.get("kind", KIND) != KIND:
            raise RetentionError(f"{what}: selector kind must be {KIND!r}, not {item.get('kind')!r}")
        if item.get("decoration") not in decorations:
            raise RetentionError(f"{what}: decoration must be one of {', '.join(decorations)}, "
                                 f"not {item.get('decoration')!r}")
        try:
            pattern = validate_pattern(item.get("pattern"), what)
        except RuleError as exc:
            raise RetentionError(exc.message) from None
        found.append(Selector(item["decoration"], pattern))
    return tuple(found)


def parse_rules(doc: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The normalised rules of a RetentionPolicy body (its algorithm, rules JSON); raises RetentionError."""
    algorithm = doc.get("algorithm") or "or"
    if algorithm != "or":
        raise RetentionError(f"algorithm must be 'or' (a tag is kept when any rule keeps it), not {algorithm!r}")
    rules = doc.get("rules") or []
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise RetentionError(f"rules must be a list of at most {MAX_RULES} rules")
    out = []
    for i, rule in enumerate(rules, 1):
        if not isinstance(rule, dict):
            raise RetentionError(f"rule {i} must be an object")
        template = rule.get("template")
        if template not in TEMPLATES:
            raise RetentionError(f"rule {i}: template {template!r} is not supported; supported: "
                                 f"{', '.join(TEMPLATES)}")
        if rule.get("action", "retain") != "retain":
            raise RetentionError(f"rule {i}: action must be 'retain'")
        params = rule.get("params") or {}
        if not isinstance(params, dict):
            raise RetentionError(f"rule {i}: params must be an object")
        if template == "latestPushedK":
            count = params.get("latestPushedK")
            if isinstance(count, str) and count.isdigit():
                count = int(count)
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 10000:
                raise RetentionError(f"rule {i}: latestPushedK needs params {{\"latestPushedK\": N}}, N from 1 "
                                     "to 10000")
            params = {"latestPushedK": count}
        else:
            params = {}
        disabled = rule.get("disabled", False)
        if not isinstance(disabled, bool):
            raise RetentionError(f"rule {i}: disabled must be true or false")
        scope = rule.get("scope_selectors") or {}
        if not isinstance(scope, dict) or set(scope) - {"repository"}:
            raise RetentionError(f"rule {i}: scope_selectors may only hold 'repository'")
        tags = _selectors(rule.get("tag_selectors"), f"rule {i} tag selector", ("matches", "excludes"))
        repos = _selectors(scope.get("repository"), f"rule {i} repository selector", ("repoMatches", "repoExcludes"))
        priority = rule.get("priority") or 0
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 1000:
            raise RetentionError(f"rule {i}: priority must be a whole number from 0 to 1000")
        out.append({"id": i, "priority": priority, "disabled": disabled, "action": "retain",
                    "template": template, "params": params,
                    "tag_selectors": [{"kind": KIND, "decoration": s.decoration, "pattern": s.pattern, "extras": ""}
                                      for s in tags],
                    "scope_selectors": {"repository": [{"kind": KIND, "decoration": s.decoration,
                                                        "pattern": s.pattern} for s in repos]}})
    trigger = doc.get("trigger") or {}
    settings = trigger.get("settings") if isinstance(trigger, dict) else None
    if not isinstance(trigger, dict) or not isinstance(settings or {}, dict):
        raise RetentionError("trigger must be {\"kind\": \"Schedule\", \"settings\": {\"cron\": \"\"}}")
    cron = (settings or {}).get("cron") or ""
    if cron:
        raise RetentionError("scheduled retention is not supported: leave trigger.settings.cron empty and start "
                             "executions (POST /retentions/{id}/executions), e.g. after each GC")
    return algorithm, out


def _rule(doc: dict[str, Any]) -> Rule:
    return Rule(doc["template"], doc["params"].get("latestPushedK"),
                tuple(Selector(s["decoration"], s["pattern"]) for s in doc["tag_selectors"]),
                tuple(Selector(s["decoration"], s["pattern"]) for s in doc["scope_selectors"]["repository"]),
                doc["disabled"])


def kept_tags(rules: list[Rule], repository: str, tags: list[tuple[str, float]]) -> set[str]:
    """The tags of `repository` (name inside the project) that some enabled rule keeps; `tags`: (name, pushed)."""
    kept: set[str] = set()
    for rule in rules:
        if rule.disabled or not all(s.keeps(repository) for s in rule.repositories):
            continue
        picked = sorted((t for t in tags if all(s.keeps(t[0]) for s in rule.tags)), key=lambda t: (-t[1], t[0]))
        if rule.template == "latestPushedK":
            picked = picked[:rule.count or 0]
        kept.update(name for name, _ in picked)
    return kept


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _present(item: dict[str, Any]) -> dict[str, Any]:
    """`item` without its unknown (None) fields: an execution still running has no end_time, not a null one."""
    return {k: v for k, v in item.items() if v is not None}


# The policies in force: a policy belongs to its project only if it is not older than the project. Deleting a
# project leaves its policy behind (the registry package knows nothing of retention), and SQLite gives a
# deleted project's id to the next project: the old policy must not apply to that one.
_LIVE = "retention_policies rp JOIN projects p ON p.id = rp.project_id AND p.created_at <= rp.created_at"


def _remove(db: Any, policy_id: int) -> None:
    """Delete a policy with its executions, tasks and the project's retention_id naming it (in `db`'s transaction)."""
    execs = [r[0] for r in db.execute("SELECT id FROM retention_executions WHERE policy_id = ?", [policy_id])]
    db.executemany("DELETE FROM retention_tasks WHERE execution_id = ?", [(e,) for e in execs])
    db.execute("DELETE FROM retention_executions WHERE policy_id = ?", [policy_id])
    row = db.execute("SELECT project_id FROM retention_policies WHERE id = ?", [policy_id]).fetchone()
    db.execute("DELETE FROM retention_policies WHERE id = ?", [policy_id])
    if row is not None:
        db.execute("DELETE FROM project_metadata WHERE project_id = ? AND name = ? AND value = ?",
                   [row[0], RETENTION_ID, str(policy_id)])


class Retention:
    """The retention policies and executions of one registry."""

    def __init__(self, registry: Registry, projects: Projects) -> None:
        self.registry = registry
        self.projects = projects

    @property
    def db(self) -> Any:
        return self.registry.db

    # -- policies

    def _scope(self, doc: dict[str, Any]) -> int:
        scope = doc.get("scope")
        if not isinstance(scope, dict) or scope.get("level") != "project":
            raise RetentionError("scope must be {\"level\": \"project\", \"ref\": <project id>}")
        ref = scope.get("ref")
        if not isinstance(ref, int) or isinstance(ref, bool) or not 0 < ref < 1 << 62 or \
                self.projects.get_by_id(ref) is None:
            raise RetentionError(f"scope.ref {ref!r} is not the id of a project")
        return ref

    def policy_json(self, policy_id: int) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT rp.id, rp.project_id, rp.policy FROM {_LIVE} WHERE rp.id = ?",
                              [policy_id]).fetchone()
        if row is None:
            return None
        doc = json.loads(row[2])
        return {"id": int(row[0]), "algorithm": doc["algorithm"], "rules": doc["rules"],
                "trigger": {"kind": "Schedule", "settings": {"cron": ""}, "references": {}},
                "scope": {"level": "project", "ref": int(row[1])}}

    def policy_of_project(self, project_id: int) -> int | None:
        row = self.db.execute(f"SELECT rp.id FROM {_LIVE} WHERE rp.project_id = ?", [project_id]).fetchone()
        return int(row[0]) if row else None

    def create(self, doc: dict[str, Any]) -> int:
        """Store a new policy; its id. Raises RetentionError (400 bad, 409 the project has one)."""
        project_id = self._scope(doc)
        algorithm, rules = parse_rules(doc)
        now = time.time()
        with write_transaction(self.db) as db:
            # A policy older than the project belonged to a deleted project whose id SQLite gave out again.
            for (stale,) in db.execute("SELECT rp.id FROM retention_policies rp JOIN projects p ON p.id = "
                                       "rp.project_id WHERE rp.project_id = ? AND rp.created_at < p.created_at",
                                       [project_id]).fetchall():
                _remove(db, int(stale))
            if db.execute("SELECT 1 FROM retention_policies WHERE project_id = ?", [project_id]).fetchone():
                raise RetentionError(f"project {project_id} already has a retention policy; change it with PUT",
                                     409, "CONFLICT")
            policy_id = insert_id(db, "INSERT INTO retention_policies (project_id, policy, created_at, updated_at) "
                                  "VALUES (?, ?, ?, ?)",
                                  [project_id, json.dumps({"algorithm": algorithm, "rules": rules}), now, now])
            db.execute("INSERT INTO project_metadata (project_id, name, value) VALUES (?, ?, ?) "
                       "ON CONFLICT (project_id, name) DO UPDATE SET value = excluded.value",
                       [project_id, RETENTION_ID, str(policy_id)])
            return policy_id

    def update(self, policy_id: int, doc: dict[str, Any]) -> None:
        """Replace a policy's rules (its project stays); raises RetentionError."""
        current = self.policy_json(policy_id)
        if current is None:
            raise RetentionError(f"retention policy {policy_id} not found", 404, "NOT_FOUND")
        if "scope" in doc and self._scope(doc) != current["scope"]["ref"]:
            raise RetentionError("a policy's scope (its project) cannot change; delete it and create another")
        algorithm, rules = parse_rules(doc)
        with write_transaction(self.db) as db:
            db.execute("UPDATE retention_policies SET policy = ?, updated_at = ? WHERE id = ?",
                       [json.dumps({"algorithm": algorithm, "rules": rules}), time.time(), policy_id])

    def delete(self, policy_id: int) -> None:
        if self.policy_json(policy_id) is None:
            raise RetentionError(f"retention policy {policy_id} not found", 404, "NOT_FOUND")
        with write_transaction(self.db) as db:
            _remove(db, policy_id)

    # -- executions

    def execute(self, policy_id: int, dry_run: bool, requested_by: str, trigger: str = "MANUAL") -> int:
        """Run the policy now (removing tags unless `dry_run`); the execution's id. Raises RetentionError 404."""
        policy = self.policy_json(policy_id)
        if policy is None:
            raise RetentionError(f"retention policy {policy_id} not found", 404, "NOT_FOUND")
        project = self.projects.get_by_id(policy["scope"]["ref"])
        rules = [_rule(r) for r in policy["rules"]]
        started = time.time()
        with write_transaction(self.db) as db:
            execution_id = insert_id(
                db, "INSERT INTO retention_executions (policy_id, dry_run, status, trigger, requested_by, start_time) "
                "VALUES (?, ?, 'Running', ?, ?, ?)", [policy_id, int(dry_run), trigger, requested_by, started])
        failed = False
        prefix = f"{project.name}/" if project else "\0"
        repositories = [(int(i), n) for i, n in self.db.execute(
            "SELECT id, name FROM repositories WHERE name LIKE ? ESCAPE '\\' ORDER BY name",
            [prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"])]
        for repo_id, name in repositories:
            failed |= self._task(execution_id, rules, repo_id, name, name[len(prefix):], dry_run)
        with write_transaction(self.db) as db:
            db.execute("UPDATE retention_executions SET status = ?, end_time = ? WHERE id = ?",
                       ["Error" if failed else "Success", time.time(), execution_id])
        return execution_id

    def _task(self, execution_id: int, rules: list[Rule], repo_id: int, name: str, inner: str,
              dry_run: bool) -> bool:
        """Evaluate (and apply) the rules to one repository, recording its task; whether something failed."""
        started = time.time()
        tags = [(t, float(u or 0)) for t, u in self.db.execute(
            "SELECT name, updated_at FROM tags WHERE repository_id = ? ORDER BY name", [repo_id])]
        kept = kept_tags(rules, inner, tags) if any(not r.disabled for r in rules) else {t for t, _ in tags}
        protected = self.registry.protection.protectors(self.db, name, [t for t, _ in tags if t not in kept])
        verb = "would remove" if dry_run else "removed"
        log = [f"{_iso(started)} [INFO] repository {name}: {len(tags)} tags, {len(kept)} kept by the rules"
               + (" (dry run)" if dry_run else "")]
        failed = False
        retained = len(kept)
        for tag, _ in tags:
            if tag in kept:
                continue
            if tag in protected:
                retained += 1
                log.append(f"{_iso(time.time())} [INFO] kept {name}:{tag}: protected by {', '.join(protected[tag])}")
                continue
            if not dry_run:
                try:
                    self.registry.delete_tag(name, tag)
                except TagProtected as exc:
                    retained += 1
                    log.append(f"{_iso(time.time())} [INFO] kept {name}:{tag}: {exc.message}")
                    continue
                except RegistryError as exc:
                    if exc.code != "MANIFEST_UNKNOWN":  # gone meanwhile: nothing to remove
                        failed = True
                        log.append(f"{_iso(time.time())} [ERROR] {name}:{tag}: {exc.message}")
                    continue
            log.append(f"{_iso(time.time())} [INFO] {verb} tag {name}:{tag}")
        log.append(f"{_iso(time.time())} [INFO] {'failed' if failed else 'success'}: {retained} of {len(tags)} "
                   "tags retained")
        with write_transaction(self.db) as db:
            db.execute("INSERT INTO retention_tasks (execution_id, repository, status, total, retained, log, "
                       "start_time, end_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [execution_id, name, "Error" if failed else "Success", len(tags), retained,
                        "\n".join(log) + "\n", started, time.time()])
        return failed

    def executions(self, policy_id: int, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        rows = self.db.execute("SELECT id, policy_id, start_time, end_time, status, trigger, dry_run FROM "
                               "retention_executions WHERE policy_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                               [policy_id, limit, offset]).fetchall()
        total = self.db.execute("SELECT COUNT(*) FROM retention_executions WHERE policy_id = ?",
                                [policy_id]).fetchone()[0]
        return [_present({"id": r[0], "policy_id": r[1], "start_time": _iso(r[2]), "end_time": _iso(r[3]),
                          "status": r[4], "trigger": r[5], "dry_run": bool(r[6])}) for r in rows], int(total)

    def execution_exists(self, policy_id: int, execution_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM retention_executions WHERE id = ? AND policy_id = ?",
                               [execution_id, policy_id]).fetchone() is not None

    def tasks(self, execution_id: int, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        rows = self.db.execute("SELECT id, execution_id, repository, status, total, retained, start_time, end_time "
                               "FROM retention_tasks WHERE execution_id = ? ORDER BY id LIMIT ? OFFSET ?",
                               [execution_id, limit, offset]).fetchall()
        total = self.db.execute("SELECT COUNT(*) FROM retention_tasks WHERE execution_id = ?",
                                [execution_id]).fetchone()[0]
        return [_present({"id": r[0], "execution_id": r[1], "repository": r[2], "job_id": f"retention-{r[1]}-{r[0]}",
                          "status": r[3], "status_code": 3 if r[3] == "Success" else 4, "status_revision": 0,
                          "start_time": _iso(r[6]), "end_time": _iso(r[7]), "total": r[4], "retained": r[5]})
                for r in rows], int(total)

    def task_log(self, execution_id: int, task_id: int) -> str | None:
        row = self.db.execute("SELECT log FROM retention_tasks WHERE id = ? AND execution_id = ?",
                              [task_id, execution_id]).fetchone()
        return str(row[0]) if row else None
