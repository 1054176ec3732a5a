"""In-use protection: the images a live cluster runs, so garbage collection never takes them.

With a kubeconfig (or in-cluster credentials: a pod's service account),
the pods of every namespace are listed through the official kubernetes
client (imported lazily: the appliance runs without it unless asked), page
by page. From each pod it takes the images of ``spec.containers``,
``spec.initContainers`` and ``spec.ephemeralContainers`` and the
``imageID`` of every entry in ``status.containerStatuses``,
``initContainerStatuses`` and ``ephemeralContainerStatuses``.

They become manifest digests: an ``imageID`` or an image pinned by digest
carries it (``docker.io/library/nginx@sha256:...``, also with a
``docker-pullable://`` prefix); an image named by tag is resolved through
the registry, both under its original name (mirror mapping) and as a local
path (``<appliance>/<project>/...``). The garbage collector keeps those
digests in whichever repository holds them.

When the cluster cannot be reached, `ClusterUnreachable` says why; the
callers (CLI and API) refuse to collect unless told to go on without the
cluster, because collecting blind could remove what a node needs for its
next restart.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.digest import Digest
from registry.errors import RegistryError
from registry.model import Registry
from registry.names import ImageReference, MappingRule, map_reference

PAGE = 500
TIMEOUT_SECONDS = 15.0


class ClusterUnreachable(RuntimeError):
    """The cluster's API could not be asked; the message says where and why."""


@dataclass(frozen=True)
class ClusterImages:
    """What a cluster runs: the images its pods name and the image ids its runtimes report."""

    source: str
    pods: int
    images: frozenset[str]
    image_ids: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "pods": self.pods, "images": sorted(self.images),
                "imageIDs": sorted(self.image_ids)}


def in_cluster_available() -> bool:
    """Is this process running in a pod with a service account (in-cluster credentials)?"""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and \
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token").is_file()


def read_cluster(kubeconfig: Path | None = None, context: str | None = None,
                 timeout: float = TIMEOUT_SECONDS) -> ClusterImages:
    """List every pod of the cluster and collect its images; raises ClusterUnreachable."""
    try:
        from kubernetes import client, config  # lazy: only GC with a cluster needs it
    except ImportError as exc:  # pragma: no cover - a dependency in pyproject.toml
        raise ClusterUnreachable(f"the kubernetes Python client is not installed: {exc}") from None
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), context=context,  # type: ignore[no-untyped-call]
                                    client_configuration=configuration)
            source = f"kubeconfig {kubeconfig}"
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            source = "in-cluster service account"
    except Exception as exc:  # the client raises ConfigException, FileNotFoundError, yaml errors...
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster credentials"
        raise ClusterUnreachable(f"cannot load {where}: {exc}") from None
    configuration.retries = 0
    api = client.CoreV1Api(client.ApiClient(configuration))
    images: set[str] = set()
    image_ids: set[str] = set()
    pods = 0
    token: str | None = None
    while True:
        try:
            kwargs: dict[str, Any] = {"limit": PAGE, "_preload_content": False, "_request_timeout": timeout}
            if token:
                kwargs["_continue"] = token
            resp = api.list_pod_for_all_namespaces(**kwargs)  # raw urllib3 response: _preload_content=False
            body = json.loads(resp.data)  # type: ignore[attr-defined]
        except Exception as exc:  # urllib3 errors, ApiException (401/403), bad JSON
            status = getattr(exc, "status", None)
            what = f"HTTP {status}: {getattr(exc, 'reason', '')}" if status else f"{type(exc).__name__}: {exc}"
            raise ClusterUnreachable(f"cannot list pods at {configuration.host} ({source}): {what}") from None
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ClusterUnreachable(f"{configuration.host} answered the pod list with something that is not a "
                                     "PodList")
        for pod in body["items"]:
            pods += 1
            _collect(pod, images, image_ids)
        token = (body.get("metadata") or {}).get("continue") or None
        if not token:
            break
    return ClusterImages(f"{source} ({configuration.host})", pods, frozenset(images), frozenset(image_ids))


def _collect(pod: Any, images: set[str], image_ids: set[str]) -> None:
    if not isinstance(pod, dict):
        return
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict) and isinstance(c.get("image"), str) and c["image"]:
                images.add(c["image"])
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for c in status.get(key) or []:
            if not isinstance(c, dict):
                continue
            if isinstance(c.get("imageID"), str) and c["imageID"]:
                image_ids.add(c["imageID"])
            if isinstance(c.get("image"), str) and c["image"]:
                images.add(c["image"])


def _strip_scheme(text: str) -> str:
    for prefix in ("docker-pullable://", "docker://", "containerd://", "cri-o://"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def in_use_digests(found: ClusterImages, registry: Registry, project: str,
                   rules: tuple[MappingRule, ...] = ()) -> tuple[frozenset[str], list[str]]:
    """The manifest digests the cluster's images resolve to here, and notes on those that resolve to nothing."""
    digests: set[str] = set()
    notes: list[str] = []
    for text in sorted(found.image_ids | found.images):
        raw = _strip_scheme(text.strip())
        if "@" in raw:
            try:
                digests.add(str(Digest.parse(raw.rsplit("@", 1)[1])))
            except RegistryError:
                notes.append(f"{text}: not a digest reference")
            continue
        if raw.startswith("sha256:"):  # some runtimes report the config digest alone: nothing to resolve
            continue
        try:
            ref = ImageReference.parse(raw)
        except RegistryError as exc:
            notes.append(f"{text}: {exc.message}")
            continue
        candidates = [ref.path] if ref.path.startswith(f"{project}/") else []
        with contextlib.suppress(RegistryError):
            candidates.append(map_reference(ref, rules, project))
        resolved = False
        for repository in candidates:
            try:
                digests.add(str(registry.resolve(repository, ref.tag or "latest").digest))
                resolved = True
            except RegistryError:
                continue
        if not resolved:
            notes.append(f"{text}: not served by this appliance")
    return frozenset(digests), notes
