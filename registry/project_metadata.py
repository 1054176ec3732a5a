"""Harbor's project metadata: the keys a project carries, their values as Harbor stores them, and where they live.

Values are strings, as in Harbor: ``"true"``/``"false"`` for the flags,
a severity name for ``severity``. ``public`` is the project's real
visibility (the ``projects.public`` column, what anonymous pulls are decided
on); every other key is a row of ``project_metadata``, the table
`registry.image_trust` reads ``enable_content_trust_cosign`` from, so
setting that key here switches the cosign pull policy as the project API
does. Keys this appliance stores without acting on them (scanning,
vulnerability prevention, Notary) are kept and echoed, so automation that
sets them round-trips; docs/api.md says which.
"""

from __future__ import annotations

from typing import Any

from registry.access import AccessError, Project, Projects
from registry.db import write_transaction
from registry.image_trust import CONTENT_TRUST_COSIGN, ImageTrust

PUBLIC = "public"
FLAGS = (PUBLIC, "auto_scan", "enable_content_trust", CONTENT_TRUST_COSIGN, "prevent_vul", "reuse_sys_cve_allowlist",
         "auto_sbom_generation")
SEVERITIES = ("none", "unknown", "negligible", "low", "medium", "high", "critical")
KEYS = (*FLAGS, "severity")
RETENTION_ID = "retention_id"  # set and removed with the project's retention policy (bundles.retention), read here


def validate(name: str, value: Any) -> str:
    """`value` as Harbor stores it for key `name`; AccessError BAD_REQUEST naming the key otherwise."""
    if name == RETENTION_ID:
        raise AccessError("BAD_REQUEST", "metadata retention_id is set by the retention API: it names the policy "
                                         "POST /api/v2.0/retentions created for the project, and goes with it")
    if name not in KEYS:
        raise AccessError("BAD_REQUEST", f"unknown project metadata {name[:80]!r}; supported: {', '.join(KEYS)}")
    if name == "severity":
        if not isinstance(value, str) or value.lower() not in SEVERITIES:
            raise AccessError("BAD_REQUEST", f"metadata severity must be one of {', '.join(SEVERITIES)}, "
                              f"not {str(value)[:80]!r}")
        return value.lower()
    if value is True or value == "true":  # not `in (..., True)`: 1 == True in Python
        return "true"
    if value is False or value == "false":
        return "false"
    raise AccessError("BAD_REQUEST", f'metadata {name} must be "true" or "false", not {str(value)[:80]!r}')


def validate_all(metadata: Any) -> dict[str, str]:
    """Every key of a metadata object, validated (None values are skipped, as clients send unset fields)."""
    if not isinstance(metadata, dict):
        raise AccessError("BAD_REQUEST", "metadata must be an object of key: \"value\" strings")
    return {str(k): validate(str(k), v) for k, v in metadata.items() if v is not None}


class ProjectMetadata:
    """Read and change the metadata of projects."""

    def __init__(self, projects: Projects) -> None:
        self.projects = projects
        self.trust = ImageTrust(projects.registry)

    def get(self, project: Project) -> dict[str, str]:
        """Every key the project has, ``public`` included."""
        return {**self.trust.metadata(project.id), PUBLIC: "true" if project.public else "false"}

    def set(self, project: Project, values: dict[str, str]) -> None:
        """Store validated values (`validate_all`); ``public`` changes the project's visibility."""
        if PUBLIC in values:
            self.projects.update(project, values[PUBLIC] == "true", None)
        rest = {k: v for k, v in values.items() if k != PUBLIC}
        if rest:
            self.trust.set_metadata(project.id, rest)

    def delete(self, project: Project, name: str) -> bool:
        """Remove one key; False if the project did not have it. Removing ``public`` makes the project private."""
        if name == PUBLIC:
            self.projects.update(project, False, None)
            return True
        with write_transaction(self.projects.registry.db) as db:
            return db.execute("DELETE FROM project_metadata WHERE project_id = ? AND name = ?",
                              [project.id, name]).rowcount > 0
