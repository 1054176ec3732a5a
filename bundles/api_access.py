"""Who may call the bundle and cluster-definition APIs, how refusals answer, and their audit entries.

Both APIs sit on the appliance's Harbor access model (`registry.access`):

- One entry point decides who a request acts as: `registry.token_api.request_principal`
  (Basic for users and robots, Bearer for tokens of /service/token, and whatever
  else it learns to accept). Failed logins count toward the same rate limit as
  everywhere else.
- Changes (importing bundles, managing cluster definitions, running and
  recording checks, mirror configuration) are system-administrator actions:
  the admin user, another administrator, or a system robot holding the system
  permission ``{"kind": "system", "namespace": "/", "access": [{"resource": "*",
  "action": "*"}]}``. Registry tokens carry repository scopes only, never this.
- Reads (import jobs, definitions, past checks, the readiness page) need a
  signed-in principal that may pull from the default project: with the default
  (public) project that is anyone signed in; if an operator makes it private,
  its members, robots granted it, tokens granting a pull in it, and administrators.
- Refusals answer in Harbor's shape: ``401 UNAUTHORIZED`` with the appliance's
  Bearer challenge, ``403 FORBIDDEN``, ``429 TOO_MANY_REQUESTS`` with Retry-After.
- Every successful write is recorded in the audit log (`registry.audit`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Response, g, jsonify, request

from registry.access import Access, TooManyAttempts, project_of
from registry.audit import AuditLog
from registry.auth import Principal
from registry.dbengine import Error as DatabaseError
from registry.errors import RegistryError
from registry.token_api import bearer_challenge, request_principal
from registry.tokens import TokenSigner

_log = logging.getLogger(__name__)


class ApiDenied(Exception):
    """A request refused for its credentials: 401, 403 or 429, in Harbor's error shape."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass(frozen=True)
class ApiAccess:
    """The access model, token signer and audit log one app's bundle APIs share."""

    access: Access
    signer: TokenSigner | None
    audit: AuditLog
    project: str
    external_url: str | None = None

    def authenticate(self) -> None:
        """Establish ``g.principal`` for this request (None: anonymous); raises ApiDenied for bad credentials.

        A blueprint's before_request calls this, so wrong credentials are refused
        (and counted) on every route, readable or not, as on /v2/ and /api/v2.0.
        """
        try:
            principal = request_principal(self.access, self.signer)
        except TooManyAttempts as exc:
            raise ApiDenied(429, "TOO_MANY_REQUESTS", exc.message, exc.retry_after) from None
        except RegistryError as exc:
            raise ApiDenied(401, "UNAUTHORIZED", exc.message) from None
        if principal is not None and principal.kind == "token" and not principal.username:
            principal = None  # a token issued to an anonymous caller signs nobody in
        g.principal = principal

    @staticmethod
    def principal() -> Principal | None:
        found: Principal | None = g.get("principal")
        return found

    def require_admin(self, action: str) -> Principal:
        """The principal if it is a system administrator; ApiDenied otherwise. `action` is for the message."""
        p = self.principal()
        if p is None:
            raise ApiDenied(401, "UNAUTHORIZED", f"authentication required: {action} needs a system administrator "
                            "(an admin user or a system robot with the system permission)")
        if not p.admin:
            why = " (a registry token grants repository access only)" if p.kind == "token" else ""
            raise ApiDenied(403, "FORBIDDEN", f"{p.username} may not {action}: it needs a system administrator{why}")
        return p

    def require_reader(self) -> Principal:
        """The principal if it is signed in and may pull from the default project; ApiDenied otherwise."""
        p = self.principal()
        if p is None:
            raise ApiDenied(401, "UNAUTHORIZED", "authentication required")
        if not self.may_read(p):
            raise ApiDenied(403, "FORBIDDEN", f"{p.username} may not read this: it needs pull on project "
                            f"{self.project}")
        return p

    def may_read(self, p: Principal) -> bool:
        if p.admin:
            return True
        found = self.access.projects.get(self.project)
        if found is None:
            return False
        if p.kind == "token":
            # Tokens name repositories, not projects: any pull granted inside the default project will do, while
            # the account the token was issued to may still see the project.
            return found.public or (any(project_of(name) == self.project and action in ("pull", "*")
                                        for name, action in p.grants)
                                    and p.holder is not None and self.access.visible(p.holder, found))
        return self.access.visible(p, found)

    def record(self, operation: str, resource_type: str, resource: str) -> None:
        """Audit one successful write by this request's principal (names only, never credentials)."""
        p = self.principal()
        try:
            self.audit.record(p.username if p else "anonymous", operation, resource_type, resource,
                              request.remote_addr or "")
        except DatabaseError:
            # The write itself succeeded; say so in the log rather than fail the client.
            _log.exception("could not record %s %s %s in the audit log", operation, resource_type, resource)

    def denied(self, exc: ApiDenied) -> Response:
        """The Harbor-shaped answer for a refusal, with the Bearer challenge on 401 and Retry-After on 429."""
        resp = jsonify({"errors": [{"code": exc.code, "message": exc.message}]})
        resp.status_code = exc.status
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = bearer_challenge(self.external_url)
        if exc.retry_after is not None:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
