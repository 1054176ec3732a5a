"""A stand-in Kubernetes API server for in-use protection tests.

No Kubernetes API server can run on these test machines, so this small
HTTP server (http.server on loopback, in a thread) answers exactly the one
call cargohold makes, ``GET /api/v1/pods`` (all namespaces, paged with
``limit``/``continue``), in the real API's JSON shape (a ``v1`` ``PodList``).
The real kubernetes Python client talks to it through a kubeconfig this
module writes. Everything else answers 404, as the real server would for
an unknown path.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml


def pod(name: str, namespace: str, images: list[str], image_ids: list[str],
        init_images: tuple[str, ...] = ()) -> dict[str, Any]:
    """A running pod as the API returns it (trimmed to real fields, nothing invented)."""
    containers = [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                     "resourceVersion": "1"},
        "spec": {"containers": containers,
                 "initContainers": [{"name": f"init{i}", "image": im} for i, im in enumerate(init_images)]},
        "status": {"phase": "Running",
                   "containerStatuses": [{"name": f"c{i}", "image": images[i] if i < len(images) else "",
                                          "imageID": iid, "ready": True, "restartCount": 0,
                                          "started": True, "state": {"running": {}}}
                                         for i, iid in enumerate(image_ids)]},
    }


@dataclass
class FakeKube:
    """The server's state: the pods it lists, the requests it saw."""

    pods: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 1  # small pages, so the client's paging is exercised
    requests: list[str] = field(default_factory=list)
    url: str = ""


def _handler(state: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # http.server's naming
            url = urllib.parse.urlsplit(self.path)
            state.requests.append(self.path)
            if url.path != "/api/v1/pods":
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "code": 404, "message": "the server could not find the requested resource"})
                return
            query = urllib.parse.parse_qs(url.query)
            start = int(query.get("continue", ["0"])[0] or 0)
            limit = min(int(query.get("limit", [str(state.page_size)])[0]), state.page_size)
            items = state.pods[start:start + limit]
            meta: dict[str, Any] = {"resourceVersion": "12345"}
            if start + limit < len(state.pods):
                meta["continue"] = str(start + limit)
            self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def fake_kube(pods: list[dict[str, Any]]) -> Iterator[FakeKube]:
    """Serve `pods` on a loopback port for the duration of the block."""
    state = FakeKube(list(pods))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig naming `server`, with a bearer token as a real one would carry."""
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "edge",
           "clusters": [{"name": "edge", "cluster": {"server": server}}],
           "users": [{"name": "gc", "user": {"token": "not-a-secret-test-token"}}],
           "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "gc"}}]}
    path.write_text(yaml.safe_dump(doc))
    return path
