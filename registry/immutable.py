"""Harbor's immutable tag rules: per-project rules that make matching tags unmovable and undeletable.

A rule has one repository selector and one tag selector, each a doublestar
pattern with a decoration: the repository selector ``repoMatches`` or
``repoExcludes`` (the pattern is matched against the repository name
*relative to the project*: ``docker.io/library/nginx`` in
``spectro-images/docker.io/library/nginx``), the tag selector ``matches`` or
``excludes``. A tag of a repository is immutable when any enabled rule of
its project selects both. Harbor's JSON shape (``ImmutableRule``) is kept:
``action`` is always ``immutable``, ``template`` ``immutable_template``,
selector ``kind`` ``doublestar``.

The doublestar subset supported (anything else is refused with 400 when the
rule is written, never silently misread):

    **      any characters, ``/`` included
    *       any characters except ``/``
    ?       one character except ``/``
    {a,b}   one of the comma-separated alternatives (not nested; each may use the above)

Every other character matches itself. What the rules protect, and how that
is enforced on push and delete, is `registry.protection`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from registry.db import write_transaction
from registry.dbengine import Database, insert_id

if TYPE_CHECKING:  # registry.model imports this module (through registry.protection)
    from registry.access import Project
    from registry.model import Registry

ACTION = "immutable"
TEMPLATE = "immutable_template"
KIND = "doublestar"
REPO_DECORATIONS = ("repoMatches", "repoExcludes")
TAG_DECORATIONS = ("matches", "excludes")
MAX_RULES_PER_PROJECT = 15  # Harbor's limit
MAX_PATTERN = 256


class RuleError(Exception):
    """A rule request that cannot be done, with Harbor's error code (BAD_REQUEST 400, CONFLICT 409)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = {"BAD_REQUEST": 400, "CONFLICT": 409}[code]


def _translate(pattern: str, alternatives: bool = True) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{":
            if not alternatives:
                raise ValueError("braces may not be nested")
            end = pattern.find("}", i)
            if end < 0:
                raise ValueError("a '{' has no closing '}'")
            options = pattern[i + 1:end].split(",")
            out.append("(?:" + "|".join(_translate(o, alternatives=False) for o in options) + ")")
            i = end + 1
            continue
        elif c == "}":
            raise ValueError("a '}' has no opening '{'")
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a doublestar pattern (the subset in the module docstring); ValueError if invalid."""
    return re.compile(_translate(pattern) + r"\Z")


def validate_pattern(pattern: Any, what: str) -> str:
    """`pattern` if it is a usable doublestar pattern; raises RuleError(BAD_REQUEST) naming what is wrong."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise RuleError("BAD_REQUEST", f"{what} pattern must be a non-empty string of at most {MAX_PATTERN} "
                          "characters")
    if any(ord(c) < 0x20 for c in pattern):
        raise RuleError("BAD_REQUEST", f"{what} pattern {pattern!r} contains control characters")
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        raise RuleError("BAD_REQUEST", f"{what} pattern {pattern!r} is not a supported doublestar pattern: "
                          f"{exc} (supported: **, *, ?, {{a,b}})") from None
    return pattern


@dataclass(frozen=True)
class ImmutableRule:
    """One immutable tag rule of a project."""

    id: int
    project_id: int
    priority: int
    disabled: bool
    repo_decoration: str
    repo_pattern: str
    tag_decoration: str
    tag_pattern: str

    def selects(self, repository: str, tag: str) -> bool:
        """Does this rule (ignoring `disabled`) select `tag` of `repository` (relative to the project)?"""
        repo_hit = compile_pattern(self.repo_pattern).match(repository) is not None
        tag_hit = compile_pattern(self.tag_pattern).match(tag) is not None
        return (repo_hit == (self.repo_decoration == "repoMatches")) and \
            (tag_hit == (self.tag_decoration == "matches"))

    def describe(self) -> str:
        return (f"immutable tag rule {self.id} (repositories {self.repo_decoration} {self.repo_pattern!r}, "
                f"tags {self.tag_decoration} {self.tag_pattern!r})")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "project_id": self.project_id, "priority": self.priority, "disabled": self.disabled,
                "action": ACTION, "template": TEMPLATE, "params": {},
                "tag_selectors": [{"kind": KIND, "decoration": self.tag_decoration, "pattern": self.tag_pattern}],
                "scope_selectors": {"repository": [{"kind": KIND, "decoration": self.repo_decoration,
                                                    "pattern": self.repo_pattern}]}}


_COLUMNS = "id, project_id, priority, disabled, repo_decoration, repo_pattern, tag_decoration, tag_pattern"


def _rule(row: Any) -> ImmutableRule:
    return ImmutableRule(int(row[0]), int(row[1]), int(row[2] or 0), bool(row[3]), row[4], row[5], row[6], row[7])


def _selector(value: Any, what: str, decorations: tuple[str, ...]) -> tuple[str, str]:
    """(decoration, pattern) of a one-element selector list in Harbor's shape; RuleError if malformed."""
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise RuleError("BAD_REQUEST", f"{what} must be a list of exactly one selector "
                          f"{{\"kind\": \"doublestar\", \"decoration\": ..., \"pattern\": ...}}")
    selector = value[0]
    if selector.get("kind", KIND) != KIND:
        raise RuleError("BAD_REQUEST", f"{what} kind must be \"doublestar\", not {selector.get('kind')!r}")
    decoration = selector.get("decoration")
    if decoration not in decorations:
        raise RuleError("BAD_REQUEST", f"{what} decoration must be one of {', '.join(decorations)}, not "
                          f"{decoration!r}")
    return decoration, validate_pattern(selector.get("pattern"), what)


@dataclass(frozen=True)
class RuleInput:
    """A rule as a request body describes it, validated."""

    repo_decoration: str
    repo_pattern: str
    tag_decoration: str
    tag_pattern: str
    disabled: bool
    priority: int

    @classmethod
    def parse(cls, body: dict[str, Any], current: ImmutableRule | None = None) -> RuleInput:
        """Validate a create (no `current`) or update body; raises RuleError(BAD_REQUEST) naming the field.

        On update, fields left out keep their current value (so ``{"disabled": true}`` only disables).
        """
        for key, expected in (("action", ACTION), ("template", TEMPLATE)):
            if body.get(key) not in (None, expected):
                raise RuleError("BAD_REQUEST", f"{key} must be {expected!r}, not {body.get(key)!r}")
        disabled = body.get("disabled", current.disabled if current else False)
        if not isinstance(disabled, bool):
            raise RuleError("BAD_REQUEST", "disabled must be true or false")
        priority = body.get("priority", current.priority if current else 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 1_000_000:
            raise RuleError("BAD_REQUEST", "priority must be an integer from 0 to 1000000")
        if "tag_selectors" in body or current is None:
            tag_decoration, tag_pattern = _selector(body.get("tag_selectors"), "tag_selectors", TAG_DECORATIONS)
        else:
            tag_decoration, tag_pattern = current.tag_decoration, current.tag_pattern
        if "scope_selectors" in body or current is None:
            scopes = body.get("scope_selectors")
            if not isinstance(scopes, dict) or set(scopes) != {"repository"}:
                raise RuleError("BAD_REQUEST", "scope_selectors must be {\"repository\": [one selector]}")
            repo_decoration, repo_pattern = _selector(scopes["repository"], "scope_selectors.repository",
                                                      REPO_DECORATIONS)
        else:
            repo_decoration, repo_pattern = current.repo_decoration, current.repo_pattern
        return cls(repo_decoration, repo_pattern, tag_decoration, tag_pattern, disabled, priority)


class ImmutableRules:
    """The immutable tag rules of every project."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def list(self, project: Project) -> list[ImmutableRule]:
        return [_rule(r) for r in self.registry.db.execute(
            f"SELECT {_COLUMNS} FROM immutable_rules WHERE project_id = ? ORDER BY priority, id", [project.id])]

    def get(self, project: Project, rule_id: int) -> ImmutableRule | None:
        row = self.registry.db.execute(f"SELECT {_COLUMNS} FROM immutable_rules WHERE project_id = ? AND id = ?",
                                       [project.id, rule_id]).fetchone()
        return _rule(row) if row else None

    def create(self, project: Project, rule: RuleInput) -> ImmutableRule:
        """Add a rule; CONFLICT when the project has the same selectors already or reached the limit."""
        with write_transaction(self.registry.db) as db:
            existing = [_rule(r) for r in db.execute(
                f"SELECT {_COLUMNS} FROM immutable_rules WHERE project_id = ?", [project.id])]
            if len(existing) >= MAX_RULES_PER_PROJECT:
                raise RuleError("CONFLICT", f"project {project.name} has {MAX_RULES_PER_PROJECT} immutable tag "
                                  "rules already, the most it may have")
            self._refuse_duplicate(existing, rule, None)
            now = time.time()
            rule_id = insert_id(
                db, "INSERT INTO immutable_rules (project_id, priority, disabled, repo_decoration, repo_pattern, "
                "tag_decoration, tag_pattern, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [project.id, rule.priority, int(rule.disabled), rule.repo_decoration, rule.repo_pattern,
                 rule.tag_decoration, rule.tag_pattern, now, now])
        found = self.get(project, rule_id)
        assert found is not None
        return found

    def update(self, project: Project, current: ImmutableRule, rule: RuleInput) -> ImmutableRule:
        with write_transaction(self.registry.db) as db:
            existing = [_rule(r) for r in db.execute(
                f"SELECT {_COLUMNS} FROM immutable_rules WHERE project_id = ?", [project.id])]
            self._refuse_duplicate(existing, rule, current.id)
            db.execute("UPDATE immutable_rules SET priority = ?, disabled = ?, repo_decoration = ?, repo_pattern = ?, "
                       "tag_decoration = ?, tag_pattern = ?, updated_at = ? WHERE id = ?",
                       [rule.priority, int(rule.disabled), rule.repo_decoration, rule.repo_pattern,
                        rule.tag_decoration, rule.tag_pattern, time.time(), current.id])
        found = self.get(project, current.id)
        assert found is not None
        return found

    def delete(self, rule: ImmutableRule) -> None:
        with write_transaction(self.registry.db) as db:
            db.execute("DELETE FROM immutable_rules WHERE id = ?", [rule.id])

    @staticmethod
    def _refuse_duplicate(existing: Sequence[ImmutableRule], rule: RuleInput, own_id: int | None) -> None:
        key = (rule.repo_decoration, rule.repo_pattern, rule.tag_decoration, rule.tag_pattern)
        for other in existing:
            if other.id != own_id and (other.repo_decoration, other.repo_pattern, other.tag_decoration,
                                       other.tag_pattern) == key:
                raise RuleError("CONFLICT", f"{other.describe()} has the same selectors already")


def matching_rules(db: Database, repository: str, tags: list[str]) -> dict[str, str]:
    """tag -> description of the first enabled rule that makes it immutable, for `tags` of `repository`."""
    project, _, relative = repository.partition("/")
    rules = [_rule(r) for r in db.execute(
        f"SELECT {', '.join('ir.' + c.strip() for c in _COLUMNS.split(','))} FROM immutable_rules ir "
        "JOIN projects p ON p.id = ir.project_id WHERE p.name = ? AND ir.disabled = 0 ORDER BY ir.priority, ir.id",
        [project])]
    out: dict[str, str] = {}
    for tag in tags:
        rule = next((r for r in rules if r.selects(relative, tag)), None)
        if rule is not None:
            out[tag] = f"{rule.describe()} of project {project}"
    return out
