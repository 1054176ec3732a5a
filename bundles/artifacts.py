"""Files and Helm charts as OCI artifacts: how a bundle (format 2) packs them and how the site names them.

A **file** (an installer ISO, a raw disk image, a binary, user-data) becomes
the artifact `oras push` makes of one file: an image manifest with
``artifactType`` `FILE_ARTIFACT_TYPE`, the empty config
(``application/vnd.oci.empty.v1+json``, the two bytes ``{}``) and one layer,
the file's bytes, whose ``org.opencontainers.image.title`` annotation is the
file name, so ``oras pull`` writes the file back under its name. On the site
it is published as ``<project>/files/<repository name>:<tag>``.

A **`.tgz` chart** becomes the artifact `helm push` makes: config
``application/vnd.cncf.helm.config.v1+json`` holding Chart.yaml as JSON,
one layer ``application/vnd.cncf.helm.chart.content.v1.tar+gzip`` holding
the archive's exact bytes, published as ``<project>/<chart name>:<version>``
(``+`` in a version becomes ``_``, as helm does), so
``helm pull oci://<appliance>/<project>/<chart> --version V`` works.

Both are ordinary manifests and blobs in the bundle's OCI layout, so the
importer verifies and publishes them with the images (all or nothing), and
releases, diff, garbage collection and scrub treat them as they treat images.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bundles.format import ArtifactEntry

from registry.digest import Digest
from registry.manifests import OCI_EMPTY, OCI_MANIFEST, ParsedManifest

FILE_ARTIFACT_TYPE = "application/vnd.cargohold.file.v1"
FILE_MEDIA_TYPE = "application/octet-stream"
HELM_CONFIG_TYPE = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
TITLE_ANNOTATION = "org.opencontainers.image.title"
VERSION_ANNOTATION = "org.opencontainers.image.version"
CREATED_ANNOTATION = "org.opencontainers.image.created"
DESCRIPTION_ANNOTATION = "org.opencontainers.image.description"
EMPTY_CONFIG = b"{}"
FILES_PREFIX = "files/"
DEFAULT_FILE_VERSION = "latest"
MAX_CHART_YAML = 1 << 20

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_TITLE = re.compile(r"^[A-Za-z0-9._+-]{1,255}$")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")


class ArtifactError(ValueError):
    """A file or chart that cannot become an artifact; the message names it and why."""


@dataclass(frozen=True)
class PackedArtifact:
    """An artifact's manifest and config, ready for the layout; the payload stays where it is."""

    manifest: bytes
    config: bytes
    config_media_type: str

    @property
    def manifest_digest(self) -> Digest:
        return Digest.of_bytes(self.manifest)


def file_title(name: str) -> str:
    """A file's download name as given; ArtifactError unless it is a plain file name."""
    if not _TITLE.match(name) or name in (".", ".."):
        raise ArtifactError(f"file name {name!r} must be 1-255 letters, digits and . _ + - (no paths)")
    return name


def file_repository(name: str) -> str:
    """The repository (under the project) a file is published in: ``files/`` + its name in lower case."""
    component = re.sub(r"[^a-z0-9._-]", "-", name.lower())
    component = re.sub(r"[._-]{2,}", "-", component).strip("._-")  # Installer+v2.ISO -> installer-v2.iso
    if not _COMPONENT.match(component):
        raise ArtifactError(f"file name {name!r} gives no usable repository name; give a name with letters "
                            "or digits (--file PATH=NAME)")
    return FILES_PREFIX + component


def oci_tag(version: str, what: str) -> str:
    """An OCI tag for a version: ``+`` becomes ``_`` (as helm push does); ArtifactError if still not a tag."""
    tag = version.replace("+", "_")
    if not _TAG.match(tag):
        raise ArtifactError(f"{what}: version {version!r} cannot be an OCI tag (letters, digits, . _ - and +; "
                            "at most 128, not starting with . or -)")
    return tag


def check_media_type(media_type: str, what: str) -> str:
    if not _MEDIA_TYPE.match(media_type):
        raise ArtifactError(f"{what}: {media_type!r} is not a media type (type/subtype)")
    return media_type


def _manifest(config: dict[str, Any], layer: dict[str, Any], annotations: dict[str, str],
              artifact_type: str | None) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc.update({"config": config, "layers": [layer]})
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc, indent=1, sort_keys=False).encode()


def pack_file(title: str, version: str, digest: Digest, size: int, media_type: str, created: str) -> PackedArtifact:
    """The manifest of a one-file artifact as `oras push` lays it out (empty config, one titled layer)."""
    config = {"mediaType": OCI_EMPTY, "digest": str(Digest.of_bytes(EMPTY_CONFIG)), "size": len(EMPTY_CONFIG),
              "data": "e30="}
    layer = {"mediaType": media_type, "digest": str(digest), "size": size,
             "annotations": {TITLE_ANNOTATION: title}}
    annotations = {CREATED_ANNOTATION: created, TITLE_ANNOTATION: title, VERSION_ANNOTATION: version}
    return PackedArtifact(_manifest(config, layer, annotations, FILE_ARTIFACT_TYPE), EMPTY_CONFIG, OCI_EMPTY)


def chart_yaml(path: Path) -> dict[str, Any]:
    """The top-level Chart.yaml of a chart archive as a mapping; ArtifactError if it is not a chart."""
    import yaml

    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                parts = info.name.strip("/").split("/")
                if len(parts) == 2 and parts[1] == "Chart.yaml" and info.isfile():
                    if info.size > MAX_CHART_YAML:
                        raise ArtifactError(f"chart {path}: Chart.yaml is larger than {MAX_CHART_YAML} bytes")
                    f = tar.extractfile(info)
                    doc = yaml.safe_load(f.read()) if f else None
                    if isinstance(doc, dict) and isinstance(doc.get("name"), str) and doc["name"]:
                        return doc
                    break
    except FileNotFoundError:
        raise ArtifactError(f"chart {path} does not exist") from None
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArtifactError(f"chart {path} is not a gzip tar archive: {exc}") from None
    except yaml.YAMLError as exc:
        raise ArtifactError(f"chart {path}: Chart.yaml is not valid YAML: {exc}") from None
    raise ArtifactError(f"{path} is not a Helm chart archive (no <chart>/Chart.yaml with a name)")


def chart_repository(name: str) -> str:
    """The repository (under the project) a chart is published in: its name, as `helm push` names it."""
    if not _COMPONENT.match(name):
        raise ArtifactError(f"chart name {name!r} cannot be a repository name (lower-case letters, digits, "
                            ". _ -)")
    return name


def pack_chart(metadata: dict[str, Any], digest: Digest, size: int, created: str) -> PackedArtifact:
    """The manifest and config of a chart as `helm push` lays it out (Chart.yaml as the JSON config)."""
    # helm's config is its chart.Metadata marshalled to JSON, whose keys are Chart.yaml's own keys.
    config = json.dumps(metadata, sort_keys=True, separators=(",", ":"), default=str).encode()
    layer = {"mediaType": HELM_CHART_LAYER, "digest": str(digest), "size": size}
    annotations = {CREATED_ANNOTATION: created, TITLE_ANNOTATION: str(metadata["name"])}
    if metadata.get("version") is not None:
        annotations[VERSION_ANNOTATION] = str(metadata["version"])
    if isinstance(metadata.get("description"), str) and metadata["description"]:
        annotations[DESCRIPTION_ANNOTATION] = metadata["description"]
    descriptor = {"mediaType": HELM_CONFIG_TYPE, "digest": str(Digest.of_bytes(config)), "size": len(config)}
    return PackedArtifact(_manifest(descriptor, layer, annotations, None), config, HELM_CONFIG_TYPE)


def file_layer(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The one titled layer of a file artifact's manifest document, or None if it is not one."""
    if manifest.get("artifactType") != FILE_ARTIFACT_TYPE:
        return None
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        return None
    title = (layers[0].get("annotations") or {}).get(TITLE_ANNOTATION)
    return layers[0] if isinstance(title, str) and _TITLE.match(title) else None


def mismatch(parsed: ParsedManifest, entry: ArtifactEntry) -> str | None:
    """Why an artifact's manifest is not the file or chart the bundle manifest describes; None if it is."""
    if parsed.is_index or len(parsed.layers) != 1 or parsed.config is None:
        return "its manifest is not a one-layer artifact"
    layer = parsed.layers[0]
    if layer.digest != entry.digest or layer.size != entry.size or layer.media_type != entry.media_type:
        return (f"its layer is {layer.digest} ({layer.size} bytes, {layer.media_type}), the bundle manifest says "
                f"{entry.digest} ({entry.size} bytes, {entry.media_type})")
    if entry.media_type == HELM_CHART_LAYER:
        return None if parsed.config.media_type == HELM_CONFIG_TYPE else "its config is not a Helm chart config"
    if parsed.artifact_type != FILE_ARTIFACT_TYPE:
        return f"its artifactType is {parsed.artifact_type!r}, not {FILE_ARTIFACT_TYPE}"
    if (layer.annotations or {}).get(TITLE_ANNOTATION) != entry.name:
        return f"its layer's {TITLE_ANNOTATION} is not {entry.name}"
    return None
