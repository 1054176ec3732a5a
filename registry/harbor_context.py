"""What the /api/v2.0 route modules beyond `registry.harbor` share with it: services and request checks.

`registry.harbor.create_blueprint` builds one `RouteContext` from its own
closures (who is asking, which project a path names, the audit record) and
hands it to `registry.harbor_users`, `registry.harbor_projects` and
`registry.harbor_quotas`, so every route answers, authorizes and audits the
same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from registry.access import Access, Project
from registry.artifacts import Artifacts
from registry.audit import AuditLog
from registry.auth import Principal


@dataclass(frozen=True)
class RouteContext:
    """The services and the per-request checks of Harbor's blueprint."""

    access: Access
    artifacts: Artifacts
    audit: AuditLog
    default_project: str
    principal: Callable[[], Principal | None]  # None: anonymous
    require_login: Callable[[], Principal]  # 401 for anonymous
    require_admin: Callable[[], Principal]  # 401, or 403 for anyone but a system administrator
    forbid: Callable[[str], Exception]  # 401 for anonymous, else 403 with the message
    find_project: Callable[[str], Project]  # 404
    readable_project: Callable[[str], Project]  # 404, 401/403 unless the caller may see it
    managed_project: Callable[[str], Project]  # 404, 401/403 unless the caller administers it
    record: Callable[[str, str, str], None]  # (operation, resource type, resource) into the audit log
