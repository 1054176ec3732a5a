"""Health endpoints for supervisors and load balancers: ``/livez`` and ``/readyz``, open to anyone.

- ``GET /livez``: the process answers (200 ``ok``); it touches nothing, so a
  busy or broken database never gets a working process restarted.
- ``GET /readyz``: the checks of `registry.health` (the database takes a
  write, the blob store can be read, free space above the reserve). 200 when
  all pass, 503 naming the failing ones. JSON
  (``{"status": "ready"|"unready", "checks": [{"name", "ok", "error"?}]}``),
  or plain text when the client asks for ``text/plain`` (one ``[+]``/``[-]``
  line per check, as Kubernetes' own endpoints answer).

Harbor's ``/api/v2.0/health`` (registry/harbor.py) reports the same checks.

On a follower appliance (`bundles.follow`) both answers also say how far it
is behind its primary (JSON ``follower``: lastSync, lagSeconds,
eventsBehind, ok (its last round ended in sync), stale; text: one
``follower`` line), with no address or error text, as the checks say
nothing an attacker could use: those are in ``GET /api/cargohold/v1/follower``.
A stale follower still serves what it holds, so this never makes /readyz fail.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from bundles.follow import status as follow_status
from registry.blobstore import BlobStore
from registry.dbengine import Error as DatabaseError
from registry.health import readiness
from web.config import Config


def create_blueprint(config: Config, store: BlobStore) -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/livez")
    def livez() -> Response:
        return Response("ok\n", mimetype="text/plain", headers={"Cache-Control": "no-store"})

    @bp.get("/readyz")
    def readyz() -> Response:
        ready = readiness(config.paths, config.import_reserve_bytes, store)
        status = 200 if ready.ok else 503
        following = _follower(config)
        if request.accept_mimetypes.best_match(["application/json", "text/plain"]) == "text/plain":
            lines = [f"[+]{c.name} ok" if c.ok else f"[-]{c.name} failed: {c.error}" for c in ready.checks]
            if following is not None:
                lines.append(f"[{'+' if following['ok'] and not following['stale'] else '-'}]follower: last sync "
                             f"{following['lagSeconds']} s ago, {following['eventsBehind']} event(s) behind"
                             + ("" if following["ok"] else ", last round failed or diverged"))
            lines.append("ready" if ready.ok else f"not ready: {', '.join(ready.failing)}")
            resp = Response("\n".join(lines) + "\n", status=status, mimetype="text/plain")
        else:
            checks = [{"name": c.name, "ok": c.ok, **({"error": c.error} if c.error else {})} for c in ready.checks]
            resp = jsonify({"status": "ready" if ready.ok else "unready", "checks": checks,
                            **({} if ready.ok else {"failing": ready.failing}),
                            **({"follower": following} if following is not None else {})})
            resp.status_code = status
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp


def _follower(config: Config) -> dict[str, Any] | None:
    """The follow state, None on a primary (or when the database cannot say: the checks above report that)."""
    try:
        found = follow_status(config.paths)
    except DatabaseError:
        return None
    if found is None:
        return None
    full = found.to_json()
    return {"lastSync": full["lastSync"], "lagSeconds": full["lagSeconds"], "eventsBehind": full["eventsBehind"],
            "ok": full["lastError"] is None, "stale": full["stale"]}
