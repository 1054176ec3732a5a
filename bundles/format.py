"""The bundle format, versions 1 and 2: member names and the bundle manifest.

A bundle is one zstd-compressed tar (possibly split into numbered parts whose
concatenation is the file). Members, in this order:

    cargohold-bundle.json     the bundle manifest (first member, always)
    cargohold-bundle.sig      embedded signature over the manifest's exact bytes
    oci-layout, index.json    the OCI image layout ...
    blobs/sha256/<hex>        ... and its blobs (layers, configs, manifests)
    charts/<file>             Helm charts (.tgz)
    cluster-definitions/<file>  cluster definitions (.tgz)

`zstd -dc bundle.tar.zst | tar -x` therefore gives an OCI image layout that
skopeo, umoci and oras read as it is. The manifest lists every other member
with its size and sha256, so the importer can verify each member as it
streams past, and the signature over the manifest vouches for all of them.
Version 2 adds file artifacts and `.tgz` charts carried as OCI artifacts in
the layout (`files`, and `charts` entries with a site repository instead of a
`charts/` member path); the builder writes version 1 whenever it can
express the bundle (`BundleManifest.format_version`), and a reader takes both.
docs/bundle-format.md is the prose description of this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from registry import boundedjson
from registry.digest import Digest
from registry.errors import RegistryError
from registry.names import ImageReference

MEDIA_TYPE = "application/vnd.cargohold.bundle.v1+json"
FORMAT_VERSION = 1
MEDIA_TYPE_V2 = "application/vnd.cargohold.bundle.v2+json"
FORMAT_VERSION_V2 = 2
MEDIA_TYPES = {FORMAT_VERSION: MEDIA_TYPE, FORMAT_VERSION_V2: MEDIA_TYPE_V2}
MANIFEST_MEMBER = "cargohold-bundle.json"
SIGNATURE_MEMBER = "cargohold-bundle.sig"
LAYOUT_MEMBERS = ("oci-layout", "index.json")
BLOB_PREFIX = "blobs/"
CHART_PREFIX = "charts/"
CLUSTERDEF_PREFIX = "cluster-definitions/"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
MAX_MANIFEST_BYTES = 16 << 20  # ~80,000 members at ~200 bytes each (sha256 digests, indent=1)
# What the manifest may hold, checked on its bytes before it is parsed (registry.boundedjson): it is read before
# its signature is checked, so these caps, not a key, bound what parsing it costs (~70 MB at worst).
# A manifest nests 3 deep (object, list, entry); members take one object and ~3 elements each.
MANIFEST_LIMITS = boundedjson.JsonLimits(max_bytes=MAX_MANIFEST_BYTES, max_depth=16,
                                         max_containers=150_000, max_elements=600_000)
MAX_LAYOUT_FILE_BYTES = 16 << 20  # index.json of a bundle with tens of thousands of images stays far below
# index.json (and oci-layout) are read before a detached signature over a plain bundle has been checked, and
# parsed whatever vouches for them: the same kind of caps as the bundle manifest (an entry nests 3-4 deep).
# The builder checks what it writes against the same caps, so it never writes a bundle a site refuses.
LAYOUT_LIMITS = boundedjson.JsonLimits(max_bytes=MAX_LAYOUT_FILE_BYTES, max_depth=16,
                                       max_containers=150_000, max_elements=600_000)
PART_SUFFIX = re.compile(r"\.part(\d{3,})$")

_MEMBER_PATH = re.compile(r"^(?:oci-layout|index\.json|blobs/sha(?:256|512)/[0-9a-f]+|"
                          r"(?:charts|cluster-definitions)/[A-Za-z0-9._+-]+)$")


class FormatError(ValueError):
    """The bundle manifest or layout does not follow the format; the message says where."""


class ManifestTooLarge(FormatError):
    """The manifest is over a cap of `MANIFEST_LIMITS` (size, nesting, element count); refused unparsed."""


def parse_reference(text: str, where: str) -> ImageReference:
    """An image reference exactly as written; raises FormatError.

    `ImageReference.parse` strips surrounding whitespace (friendly for
    references an operator types); in a bundle the text is also the
    reference a release records, so ``"x:1\\n"`` must not pass as ``x:1``.
    """
    if text != text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise FormatError(f"{where}: reference {text!r} contains whitespace or control characters")
    try:
        return ImageReference.parse(text)
    except RegistryError as exc:
        raise FormatError(f"{where}: {exc.message}") from None


@dataclass(frozen=True)
class Member:
    """A tar member the manifest vouches for."""

    path: str
    size: int
    digest: Digest

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "digest": str(self.digest)}


@dataclass(frozen=True)
class ReferrerEntry:
    """A signature, SBOM or attestation travelling with an image (optional ``images[].referrers``).

    `kind` is ``sig``, ``att`` or ``sbom`` for cosign's tag scheme (then `tag`
    is the ``sha256-<hex>.<kind>`` tag it travels under) or ``referrer`` for
    an OCI 1.1 referrer (a manifest whose subject is the image).
    """

    digest: Digest
    kind: str
    media_type: str
    size: int
    artifact_type: str | None = None
    tag: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": str(self.digest), "kind": self.kind, "mediaType": self.media_type,
                               "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.tag:
            out["tag"] = self.tag
        return out


@dataclass(frozen=True)
class ImageEntry:
    """An image the bundle carries: full original reference and manifest digest."""

    reference: str
    digest: Digest
    media_type: str
    size: int
    referrers: tuple[ReferrerEntry, ...] = ()  # optional: readers that do not know it ignore it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": self.reference, "digest": str(self.digest),
                               "mediaType": self.media_type, "size": self.size}
        if self.referrers:
            out["referrers"] = [r.to_json() for r in self.referrers]
        return out


@dataclass(frozen=True)
class FileEntry:
    """A chart or cluster definition carried as a member file."""

    name: str
    version: str | None
    path: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path}
        if self.version:
            out["version"] = self.version
        return out


@dataclass(frozen=True)
class ArtifactEntry:
    """A file or chart (format 2) carried as an OCI artifact in the layout and published under the project.

    `digest`, `size` and `media_type` describe the payload (the file's own
    bytes, or the chart's .tgz); `manifest_digest` and `manifest_size` the
    artifact manifest that index.json names as ``<repository>:<tag>``.
    """

    name: str
    version: str
    repository: str  # under the site's project, e.g. files/installer.iso or mychart
    tag: str
    digest: Digest
    size: int
    media_type: str
    manifest_digest: Digest
    manifest_size: int

    @property
    def ref_name(self) -> str:
        """The `org.opencontainers.image.ref.name` of its index.json entry."""
        return f"{self.repository}:{self.tag}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "repository": self.repository, "tag": self.tag,
                "digest": str(self.digest), "size": self.size, "mediaType": self.media_type,
                "manifestDigest": str(self.manifest_digest), "manifestSize": self.manifest_size}


@dataclass(frozen=True)
class ExternalBlob:
    """A blob a delta bundle relies on the site already having."""

    digest: Digest
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": str(self.digest), "size": self.size}


@dataclass(frozen=True)
class BundleManifest:
    """The first member of a bundle."""

    name: str
    version: str
    created: str
    platforms: tuple[str, ...]
    images: tuple[ImageEntry, ...]
    members: tuple[Member, ...]
    charts: tuple[FileEntry, ...] = ()
    cluster_definitions: tuple[FileEntry, ...] = ()
    base: dict[str, str] | None = None  # delta bundles: {"name", "version"} of what they build on
    external_blobs: tuple[ExternalBlob, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    # Built with --allow-incomplete: {"findings": [...]} of the build's readiness check (optional in every
    # version; a reader that does not know it ignores it, and it is covered by the signature like the rest).
    incomplete: dict[str, Any] | None = None
    files: tuple[ArtifactEntry, ...] = ()  # format 2
    chart_artifacts: tuple[ArtifactEntry, ...] = ()  # format 2: .tgz charts as OCI chart artifacts

    @property
    def format_version(self) -> int:
        """The lowest version that expresses this manifest: 2 only when it carries files or chart artifacts."""
        return FORMAT_VERSION_V2 if self.files or self.chart_artifacts else FORMAT_VERSION

    @property
    def artifacts(self) -> tuple[ArtifactEntry, ...]:
        return self.files + self.chart_artifacts

    @property
    def total_size(self) -> int:
        """Bytes of every member after the manifest and signature (for the free-space check)."""
        return sum(m.size for m in self.members)

    def to_json(self) -> dict[str, Any]:
        version = self.format_version
        doc: dict[str, Any] = {
            "mediaType": MEDIA_TYPES[version],
            "formatVersion": version,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "platforms": list(self.platforms),
            "images": [i.to_json() for i in self.images],
            "charts": [c.to_json() for c in self.charts] + [c.to_json() for c in self.chart_artifacts],
            "clusterDefinitions": [c.to_json() for c in self.cluster_definitions],
            "members": [m.to_json() for m in self.members],
            "totalSize": self.total_size,
        }
        if self.base is not None:
            doc["base"] = dict(self.base)
            doc["externalBlobs"] = [b.to_json() for b in self.external_blobs]
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.incomplete is not None:
            doc["incomplete"] = self.incomplete
        if version >= FORMAT_VERSION_V2:
            doc["files"] = [f.to_json() for f in self.files]
        return doc

    def encode(self) -> bytes:
        """The manifest member's bytes (what the embedded signature covers)."""
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> BundleManifest:
        """Parse and validate manifest bytes; raises FormatError naming the field (ManifestTooLarge over a cap)."""
        try:
            doc = boundedjson.loads(data, MANIFEST_MEMBER, MANIFEST_LIMITS)
        except boundedjson.JsonRefused as exc:
            raise (ManifestTooLarge if exc.too_large else FormatError)(exc.message) from None
        if not isinstance(doc, dict):
            raise FormatError(f"{MANIFEST_MEMBER} must be a JSON object")
        version = doc.get("formatVersion")
        if not isinstance(version, int) or isinstance(version, bool) or version not in MEDIA_TYPES:
            raise FormatError(f"{MANIFEST_MEMBER}: formatVersion {version!r} is not supported "
                              f"(this appliance reads versions {FORMAT_VERSION} and {FORMAT_VERSION_V2})")
        if doc.get("mediaType") != MEDIA_TYPES[version]:
            raise FormatError(f"{MANIFEST_MEMBER}: mediaType must be {MEDIA_TYPES[version]} "
                              f"for formatVersion {version}")
        name, bundle_version, created = _str(doc, "name"), _str(doc, "version"), _str(doc, "created")
        platforms = tuple(_str_list(doc, "platforms"))
        members = tuple(_member(m, i) for i, m in enumerate(_list(doc, "members")))
        seen: set[str] = set()
        for m in members:
            if m.path in seen:
                raise FormatError(f"members: {m.path} is listed twice")
            seen.add(m.path)
        images = tuple(_image(x, i) for i, x in enumerate(_list(doc, "images")))
        chart_docs = _list(doc, "charts", [])
        files: tuple[ArtifactEntry, ...] = ()
        chart_artifacts: tuple[ArtifactEntry, ...] = ()
        if version >= FORMAT_VERSION_V2:
            # Format 2: a chart either names a charts/ member (as in version 1) or is an artifact in the layout.
            chart_artifacts = tuple(_artifact(x, f"charts[{i}]") for i, x in enumerate(chart_docs)
                                    if isinstance(x, dict) and "path" not in x)
            chart_docs = [x for x in chart_docs if not (isinstance(x, dict) and "path" not in x)]
            files = tuple(_artifact(x, f"files[{i}]") for i, x in enumerate(_list(doc, "files", [])))
            refs: set[str] = set()
            for a in files + chart_artifacts:
                if a.ref_name in refs:
                    raise FormatError(f"files and charts: {a.ref_name} is listed twice")
                refs.add(a.ref_name)
        charts = tuple(_file(x, f"charts[{i}]", CHART_PREFIX, seen) for i, x in enumerate(chart_docs))
        defs = tuple(_file(x, f"clusterDefinitions[{i}]", CLUSTERDEF_PREFIX, seen)
                     for i, x in enumerate(_list(doc, "clusterDefinitions", [])))
        base = doc.get("base")
        if base is not None and not (isinstance(base, dict) and all(isinstance(v, str) for v in base.values())):
            raise FormatError("base must be an object of strings (name, version)")
        external = tuple(_external(x, i) for i, x in enumerate(_list(doc, "externalBlobs", [])))
        if external and base is None:
            raise FormatError("externalBlobs is only allowed in a delta bundle (with base)")
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise FormatError("annotations must be an object")
        return cls(name, bundle_version, created, platforms, images, members, charts, defs, base, external,
                   {str(k): str(v) for k, v in annotations.items()}, incomplete=_incomplete(doc.get("incomplete")),
                   files=files, chart_artifacts=chart_artifacts)


def _incomplete(value: Any) -> dict[str, Any] | None:
    """The optional ``incomplete`` record: ``{"findings": [{kind, reference, code, detail, ...}]}``."""
    if value is None:
        return None
    findings = value.get("findings") if isinstance(value, dict) else None
    if not isinstance(findings, list) or not all(
            isinstance(f, dict) and all(isinstance(f.get(k), str) for k in ("kind", "reference", "code"))
            for f in findings):
        raise FormatError("incomplete must be an object whose findings list objects with kind, reference and code")
    return dict(value)


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise FormatError(f"{key} must be a non-empty string")
    return value


def _list(doc: dict[str, Any], key: str, default: list[Any] | None = None) -> list[Any]:
    value = doc.get(key, default)
    if not isinstance(value, list):
        raise FormatError(f"{key} must be a list")
    return value


def _str_list(doc: dict[str, Any], key: str) -> list[str]:
    values = _list(doc, key, [])
    if not all(isinstance(v, str) for v in values):
        raise FormatError(f"{key} must be a list of strings")
    return values


def _digest(value: Any, where: str) -> Digest:
    try:
        return Digest.parse(value if isinstance(value, str) else "")
    except RegistryError as exc:
        raise FormatError(f"{where}: {exc.message}") from None


def _size(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"{where} must be a non-negative integer")
    return value


def _member(value: Any, i: int) -> Member:
    where = f"members[{i}]"
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be an object")
    path = value.get("path")
    if not isinstance(path, str) or not _MEMBER_PATH.match(path):
        raise FormatError(f"{where}.path {path!r} is not an allowed member path")
    member = Member(path, _size(value.get("size"), f"{where}.size"), _digest(value.get("digest"), f"{where}.digest"))
    if path.startswith(BLOB_PREFIX) and path != f"{BLOB_PREFIX}{member.digest.algorithm}/{member.digest.encoded}":
        raise FormatError(f"{where}: blob path {path} does not match its digest {member.digest}")
    return member


def _image(value: Any, i: int) -> ImageEntry:
    where = f"images[{i}]"
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be an object")
    reference = value.get("reference")
    if not isinstance(reference, str):
        raise FormatError(f"{where}.reference must be a string")
    parse_reference(reference, f"{where}.reference")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str):
        raise FormatError(f"{where}.mediaType must be a string")
    return ImageEntry(reference, _digest(value.get("digest"), f"{where}.digest"), media_type,
                      _size(value.get("size"), f"{where}.size"), _referrers(value.get("referrers"), where))


def _referrers(value: Any, image_where: str) -> tuple[ReferrerEntry, ...]:
    if value is None:
        return ()
    where = f"{image_where}.referrers"
    if not isinstance(value, list):
        raise FormatError(f"{where} must be a list")
    out = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise FormatError(f"{at} must be an object")
        kind, media_type = item.get("kind"), item.get("mediaType")
        artifact_type, tag = item.get("artifactType"), item.get("tag")
        if not isinstance(kind, str) or not isinstance(media_type, str):
            raise FormatError(f"{at} needs string kind and mediaType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise FormatError(f"{at}.artifactType must be a string")
        if tag is not None and not isinstance(tag, str):
            raise FormatError(f"{at}.tag must be a string")
        out.append(ReferrerEntry(_digest(item.get("digest"), f"{at}.digest"), kind, media_type,
                                 _size(item.get("size"), f"{at}.size"), artifact_type, tag))
    return tuple(out)


def _file(value: Any, where: str, prefix: str, members: set[str]) -> FileEntry:
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be an object")
    name, path, version = value.get("name"), value.get("path"), value.get("version")
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}.name must be a non-empty string")
    if not isinstance(path, str) or not path.startswith(prefix) or path not in members:
        raise FormatError(f"{where}.path must name a listed member under {prefix}")
    if version is not None and not isinstance(version, str):
        raise FormatError(f"{where}.version must be a string")
    return FileEntry(name, version, path)


# A repository path under the project (the Distribution spec's grammar, lower case) and an OCI tag.
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
FILE_TITLE = re.compile(r"^[A-Za-z0-9._+-]{1,255}$")  # a download's file name: no paths, no quoting needed


def _artifact(value: Any, where: str) -> ArtifactEntry:
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be an object")
    name, version = value.get("name"), value.get("version")
    repository, tag, media_type = value.get("repository"), value.get("tag"), value.get("mediaType")
    if not isinstance(name, str) or not FILE_TITLE.match(name):
        raise FormatError(f"{where}.name must be a file name of letters, digits and . _ + -")
    if not isinstance(version, str) or not version:
        raise FormatError(f"{where}.version must be a non-empty string")
    if not isinstance(repository, str) or not _REPOSITORY.match(repository) or len(repository) > 200:
        raise FormatError(f"{where}.repository {repository!r} is not a valid repository path")
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise FormatError(f"{where}.tag {tag!r} is not a valid tag")
    if not isinstance(media_type, str) or not media_type:
        raise FormatError(f"{where}.mediaType must be a non-empty string")
    return ArtifactEntry(name, version, repository, tag, _digest(value.get("digest"), f"{where}.digest"),
                         _size(value.get("size"), f"{where}.size"), media_type,
                         _digest(value.get("manifestDigest"), f"{where}.manifestDigest"),
                         _size(value.get("manifestSize"), f"{where}.manifestSize"))


def _external(value: Any, i: int) -> ExternalBlob:
    where = f"externalBlobs[{i}]"
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be an object")
    return ExternalBlob(_digest(value.get("digest"), f"{where}.digest"), _size(value.get("size"), f"{where}.size"))
