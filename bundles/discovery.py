"""Image discovery: every image and chart a cluster definition's packs need.

Four sources, all normalised through `registry.names.ImageReference`
(docker.io and ``library/`` defaults, tags, digests):

- a pack's explicit list, ``pack.content.images[].image``;
- Kubernetes manifests: every workload kind (Pod, Deployment, StatefulSet,
  DaemonSet, ReplicaSet, Job, CronJob, and List of those), their
  containers, initContainers and ephemeralContainers. Documents are turned
  into the kubernetes client's models, so field names and nesting are the
  API's own rather than a guess;
- chart references: an OCI chart (``oci://host/path`` plus name and
  version) is an artifact the registry must hold;
- values files, where a chart declares an image with the usual convention
  ``image: {registry?, repository, tag | digest}`` under any key named
  ``image`` or ending in ``Image``, nested anywhere.

The kubernetes package is imported on first use only: it is heavy, and the
server loads this module's callers on every request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from registry.errors import RegistryError
from registry.names import ImageReference

# kind -> (model class, attribute path from the object to its PodSpec)
WORKLOAD_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Pod": ("V1Pod", ("spec",)),
    "Deployment": ("V1Deployment", ("spec", "template", "spec")),
    "StatefulSet": ("V1StatefulSet", ("spec", "template", "spec")),
    "DaemonSet": ("V1DaemonSet", ("spec", "template", "spec")),
    "ReplicaSet": ("V1ReplicaSet", ("spec", "template", "spec")),
    "Job": ("V1Job", ("spec", "template", "spec")),
    "CronJob": ("V1CronJob", ("spec", "job_template", "spec", "template", "spec")),
}
CONTAINER_FIELDS = ("containers", "init_containers", "ephemeral_containers")


class DiscoveryError(ValueError):
    """A manifest or values file that cannot be read; the message names the file and the place."""


@dataclass(frozen=True)
class Found:
    """An image reference found at `where` (file and location)."""

    reference: str
    where: str
    kind: str = "image"  # "image" or "chart"


_api_lock = threading.Lock()
_api: Any = None


def _api_client() -> Any:
    global _api
    with _api_lock:
        if _api is None:
            from kubernetes.client import ApiClient, Configuration

            config = Configuration()
            # Discovery reads images; a manifest a cluster would refuse for another reason is not ours to judge.
            config.client_side_validation = False
            _api = ApiClient(configuration=config)
        return _api


def _to_model(doc: dict[str, Any], model_name: str) -> Any:
    """A decoded document as a kubernetes client model (camelCase keys become the models' attributes)."""
    api = _api_client()
    # The public `deserialize` changed its signature across client releases (a response object, then
    # text plus content type); the dict-to-model step beneath it has stayed the same.
    return api._ApiClient__deserialize(json.loads(json.dumps(doc, default=str)), model_name)


def normalise(text: str, where: str) -> str:
    """The canonical form of an image reference; raises DiscoveryError naming `where`."""
    if not isinstance(text, str) or not text.strip():
        raise DiscoveryError(f"{where}: image reference must be a non-empty string, got {text!r}")
    try:
        return str(ImageReference.parse(text))
    except RegistryError as exc:
        raise DiscoveryError(f"{where}: {exc.message}") from None


def manifest_images(text: str, where: str) -> list[Found]:
    """Images of every workload in a (multi-document) YAML or JSON manifest file."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{where}: not valid YAML: {exc}") from None
    found: list[Found] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise DiscoveryError(f"{where}: document {i + 1} is not a mapping")
        found += _object_images(doc, f"{where}#{i + 1}")
    return found


def _object_images(doc: dict[str, Any], where: str) -> list[Found]:
    kind = doc.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list)):
        out: list[Found] = []
        for j, item in enumerate(doc.get("items") or []):
            if isinstance(item, dict):
                out += _object_images(item, f"{where}.items[{j}]")
        return out
    if kind not in WORKLOAD_KINDS:
        return []
    model_name, spec_path = WORKLOAD_KINDS[kind]
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    label = f"{where} {kind}/{name}"
    try:
        obj = _to_model(doc, model_name)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DiscoveryError(f"{label}: not a valid {kind}: {exc}") from None
    spec = obj
    for attr in spec_path:
        spec = getattr(spec, attr, None) if spec is not None else None
    if spec is None:
        return []
    found = []
    for field in CONTAINER_FIELDS:
        for c in getattr(spec, field, None) or []:
            if c.image is None:
                raise DiscoveryError(f"{label}: {field} entry {c.name!r} has no image")
            found.append(Found(normalise(c.image, f"{label} {field}/{c.name}"), f"{label} {field}/{c.name}"))
    return found


def values_images(text: str, where: str) -> tuple[list[Found], list[str]]:
    """Images a values file declares by the image.repository convention, and warnings.

    A declaration with a repository but neither tag nor digest is a
    warning, not an image: the chart's default (usually its appVersion) is
    not known here.
    """
    try:
        doc = load_yaml(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{where}: not valid YAML: {exc}") from None
    found: list[Found] = []
    warnings: list[str] = []
    for path, block in _image_blocks(doc, ""):
        loc = f"{where} at {path}"
        repository = block.get("repository")
        if not isinstance(repository, str) or not repository.strip():
            continue
        tag, digest = block.get("tag"), block.get("digest")
        registry = block.get("registry")
        ref = repository.strip()
        if isinstance(registry, str) and registry.strip():
            ref = f"{registry.strip().rstrip('/')}/{ref}"
        if tag not in (None, ""):
            ref += f":{_scalar(tag)}"
        if isinstance(digest, str) and digest.strip():
            ref += f"@{digest.strip()}"
        elif tag in (None, ""):
            warnings.append(f"{loc}: image {ref} has no tag or digest (the chart's default is not known here); "
                            "not checked")
            continue
        found.append(Found(normalise(ref, loc), loc))
    return found, warnings


class _TextScalarLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that keeps numbers as written: ``tag: 1.10`` is the tag "1.10", not the float 1.1."""


def _as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_TextScalarLoader.add_constructor("tag:yaml.org,2002:float", _as_text)
_TextScalarLoader.add_constructor("tag:yaml.org,2002:int", _as_text)


def load_yaml(text: str) -> Any:
    """One YAML document, numbers kept as the text written; raises yaml.YAMLError."""
    return yaml.load(text, Loader=_TextScalarLoader)


def _scalar(value: Any) -> str:
    return str(value).strip()


def _image_blocks(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(value, dict) and isinstance(key, str) and (
                    key == "image" or key.lower().endswith("image")) and "repository" in value:
                yield here, value
            else:
                yield from _image_blocks(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _image_blocks(item, f"{path}[{i}]")


def chart_reference(name: str, version: str, repository: str, where: str) -> Found | None:
    """The OCI artifact an ``oci://`` chart reference names; None for a classic HTTP chart repository."""
    repository = repository.strip()
    if not repository.startswith("oci://"):
        return None
    base = repository[len("oci://"):].rstrip("/")
    version = version.replace("+", "_")  # OCI tags cannot hold '+'; helm push stores 1.0+x as 1.0_x
    ref = f"{base}/{name}:{version}" if name else (f"{base}:{version}" if version else base)
    return Found(normalise(ref, where), where, "chart")
