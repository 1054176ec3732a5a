"""A small client for the appliance's /api/v2.0 and /service/token, for the access-control tests."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from tests.appliance import Appliance

API = "/api/v2.0"
TIMEOUT = 30


@dataclass(frozen=True)
class RobotAccount:
    id: int
    name: str
    secret: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.secret)

    @property
    def creds(self) -> str:
        return f"{self.name}:{self.secret}"


class Harbor:
    """Calls against one appliance as one identity (None: anonymous)."""

    def __init__(self, appliance: Appliance, auth: tuple[str, str] | None = None) -> None:
        self.appliance = appliance
        self.auth = auth

    def __call__(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("auth", self.auth)
        if not path.startswith(("/v2", "/service", "http", API)):
            path = API + path
        url = path if path.startswith("http") else f"{self.appliance.url}{path}"
        return requests.request(method, url, **kw)

    def as_(self, auth: tuple[str, str] | None) -> Harbor:
        return Harbor(self.appliance, auth)

    def create_project(self, name: str | None = None, public: bool = False) -> str:
        name = name or f"p{uuid.uuid4().hex[:10]}"
        r = self("POST", "/projects", json={"project_name": name, "metadata": {"public": str(public).lower()}})
        assert r.status_code == 201, r.text
        return name

    def create_robot(self, name: str, level: str, permissions: list[dict[str, Any]], **extra: Any) -> RobotAccount:
        r = self("POST", "/robots", json={"name": name, "level": level, "duration": -1, "permissions": permissions,
                                          **extra})
        assert r.status_code == 201, r.text
        body = r.json()
        return RobotAccount(body["id"], body["name"], body["secret"])

    def project_robot(self, project: str, actions: tuple[str, ...], name: str | None = None) -> RobotAccount:
        access = [{"resource": "repository" if a in ("pull", "push") else "artifact", "action": a} for a in actions]
        return self.create_robot(name or f"r{uuid.uuid4().hex[:8]}", "project",
                                 [{"kind": "project", "namespace": project, "access": access}])


def errors(r: requests.Response) -> list[str]:
    return [e["code"] for e in r.json()["errors"]]


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, without checking it (the server checks; tests read)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def encode_repo(name: str) -> str:
    """Harbor's double encoding of a repository name inside a project: a/b -> a%252Fb."""
    return name.replace("/", "%252F")
