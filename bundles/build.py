"""Building content bundles on the connected side: gather, then write one streaming pass.

Gather phase (`BundleBuilder.add_*`): resolve every image to its manifests
and blobs, from OCI image layouts on disk or from registries (blobs stream
into a spool directory beside the output, verified as they arrive), filter
multi-arch indexes by platform, and learn the size and sha256 of every
member. Cluster definitions are validated and hashed. Files (`add_file`) and
`.tgz` charts become OCI artifacts in the layout (`bundles.artifacts`): the
payload is hashed by streaming it once and later streamed into the bundle
from where it lies, so a file of many GB costs no memory. Nothing is held
in memory but manifests (capped at 4 MiB each).

Write phase (`BundleBuilder.write`): the bundle manifest is complete before
the first byte is written, so it goes first, then its signature, then the
layout and the files, each member streamed from disk through a tar header
into a zstd compressor and on into the output file (or numbered parts).
Blobs from a layout are named by digest and are verified while they are
copied: a damaged layout fails the build. Output goes to ``*.tmp`` names
and is renamed into place only when complete; a failed build leaves nothing.

Filtering an index by --platform rewrites it, which changes its digest: the
image entry records the new digest and keeps the original reference (the
original digest is kept in the layout entry's annotations).
docs/bundle-format.md describes the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import zstandard

from bundles import artifacts, frames, keys, referrers
from bundles.format import (
    BLOB_PREFIX,
    CHART_PREFIX,
    CLUSTERDEF_PREFIX,
    LAYOUT_LIMITS,
    MANIFEST_LIMITS,
    MANIFEST_MEMBER,
    MAX_MANIFEST_BYTES,
    PART_SUFFIX,
    REF_NAME_ANNOTATION,
    SIGNATURE_MEMBER,
    ArtifactEntry,
    BundleManifest,
    ExternalBlob,
    FileEntry,
    FormatError,
    ImageEntry,
    Member,
    ReferrerEntry,
)
from bundles.inventory import INVENTORY_MEDIA_TYPE
from bundles.referrers import Found
from bundles.registry_client import NotFound, PullError, RegistryClient
from registry import boundedjson
from registry.blobstore import fsync_dir
from registry.digest import Descriptor, Digest
from registry.errors import RegistryError
from registry.manifests import OCI_INDEX, OCI_MANIFEST, ParsedManifest, parse_manifest, referrer_artifact_type
from registry.names import ImageReference, looks_like_host
from registry.platforms import IMAGE_CONFIG_TYPES
from registry.platforms import Platform as ImagePlatform

CHUNK = 1 << 20
# zstd worker job size (at least one window): zstd's default, 4 windows, cost ~60 MB of buffers per thread.
JOB_SIZE = 4 << 20
# zstd's "ultra" levels 20-22 use windows up to 128 MiB, which the site would need in RAM to decompress.
MAX_LEVEL = 19
PULL_WORKERS = 4  # concurrent blob downloads from a registry
MAX_LAYOUT_MANIFEST = 4 << 20
ORIGINAL_DIGEST_ANNOTATION = "io.cargohold.bundle.original-digest"
_FILE_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)


class BuildError(RuntimeError):
    """The build cannot go on; the message names the input at fault."""


class SourceMissing(BuildError):
    """The registry asked does not hold the image (a 404): another source may."""


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]`` as --platform takes it."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise BuildError(f"invalid platform {text!r}: expected os/architecture[/variant], e.g. linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def of(cls, doc: dict[str, object]) -> Platform | None:
        os_name, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            return None
        return cls(os_name, arch, variant if isinstance(variant, str) and variant else None)

    def matches(self, other: Platform) -> bool:
        """True if `other` (an image's platform) is what this filter asks for; no variant means any.

        Variants compare as the readiness check compares them (`registry.platforms`: an arm64 image
        without a variant is arm64/v8, arm is arm/v7, amd64 is amd64/v1), so a bundle built for a
        cluster's platforms holds what its check looks for.
        """
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return self.variant is None or _normalised(self) == _normalised(other)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def _normalised(p: Platform) -> str:
    return ImagePlatform(p.os, p.architecture, p.variant or "").normalised().variant


def parse_size(text: str) -> int:
    """Bytes from ``3900M``, ``3G``, ``512K`` or a plain number (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise BuildError(f"invalid size {text!r}: expected a number with an optional K, M, G or T suffix")
    size = int(m.group(1)) << (10 * " KMGT".index((m.group(2) or " ").upper()))
    if size < 1024:
        raise BuildError(f"size {text!r} is too small: parts must be at least 1K")
    return size


@dataclass
class _Content:
    """A blob the bundle carries, and where its bytes are now."""

    digest: Digest
    size: int
    media_type: str
    manifest: bool  # manifests always travel, even in a delta bundle
    path: Path | None = None  # on disk: a layout's blob or a spooled download
    data: bytes | None = None  # manifests and rewritten indexes
    origin: str = ""


@dataclass(frozen=True)
class _Image:
    reference: str
    descriptor: Descriptor
    original_digest: Digest


@dataclass(frozen=True)
class _File:
    entry: FileEntry
    source: Path
    size: int
    digest: Digest


@dataclass(frozen=True)
class BuildResult:
    """What `write` produced."""

    files: tuple[Path, ...]
    manifest: BundleManifest
    sha256: str  # of the bundle file (the concatenation of the parts)
    compressed_size: int
    key_id: str | None


class _LayoutSource:
    """Manifests and blobs of an OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = f"layout {root}"

    def _path(self, desc: Descriptor) -> Path:
        return self.root / "blobs" / desc.digest.algorithm / desc.digest.encoded

    def manifest(self, desc: Descriptor) -> bytes:
        path = self._path(desc)
        if desc.size > MAX_LAYOUT_MANIFEST:
            raise BuildError(f"{self.label}: manifest {desc.digest} is larger than {MAX_LAYOUT_MANIFEST} bytes")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BuildError(f"{self.label} lacks manifest blob {desc.digest}") from None
        if len(data) != desc.size or Digest.of_bytes(data, desc.digest.algorithm) != desc.digest:
            raise BuildError(f"{self.label}: manifest blob {desc.digest} does not match its digest or size "
                             "(the layout is damaged)")
        return data

    def blob(self, desc: Descriptor) -> Path:
        path = self._path(desc)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BuildError(f"{self.label} lacks blob {desc.digest}") from None
        if size != desc.size:
            raise BuildError(f"{self.label}: blob {desc.digest} has {size} bytes, its descriptor says {desc.size}")
        return path


class _RegistrySource:
    """Manifests and blobs of one repository in a registry; blobs spool to disk."""

    def __init__(self, client: RegistryClient, ref: ImageReference, spool: Path, progress: Progress | None,
                 counters: dict[str, int]) -> None:
        self.client, self.ref, self.spool, self.progress, self.counters = client, ref, spool, progress, counters
        self.label = f"registry {ref.domain}"
        self.cache: dict[Digest, bytes] = {}
        self.pending: list[tuple[Descriptor, Path]] = []
        self.lock = threading.Lock()

    def manifest(self, desc: Descriptor) -> bytes:
        if desc.digest in self.cache:
            return self.cache[desc.digest]
        try:
            body, _ = self.client.manifest(self.ref.domain, self.ref.path, str(desc.digest))
        except PullError as exc:
            raise BuildError(str(exc)) from None
        return body

    def blob(self, desc: Descriptor) -> Path:
        """Where the blob will be; configs are fetched at once, layers when `flush` runs."""
        dest = self.spool / f"{desc.digest.algorithm}-{desc.digest.encoded}"
        if dest.exists() or any(p == dest for _, p in self.pending):
            return dest
        if desc.media_type in IMAGE_CONFIG_TYPES:
            self._fetch(desc, dest)  # read for its platform while the image is gathered
        else:
            self.pending.append((desc, dest))
        return dest

    def _fetch(self, desc: Descriptor, dest: Path) -> None:
        def advance(n: int) -> None:
            with self.lock:
                self.counters["pulled"] += n
                if self.progress:
                    self.progress("pull", self.counters["pulled"], 0)

        try:
            self.client.fetch_blob(self.ref.domain, self.ref.path, desc, dest, advance)
        except PullError as exc:
            raise BuildError(str(exc)) from None

    def flush(self) -> None:
        """Download the pending layers, PULL_WORKERS at a time; the first failure cancels the rest."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        with ThreadPoolExecutor(max_workers=PULL_WORKERS, thread_name_prefix="pull") as pool:
            futures = [pool.submit(self._fetch, desc, dest) for desc, dest in pending]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


class BundleBuilder:
    """Gathers images, charts and cluster definitions, then writes one bundle.

    Use as a context manager: the spool directory (registry downloads) is
    removed on exit. Every `add_*` raises BuildError naming its input.
    """

    def __init__(self, name: str, version: str, *, platforms: Sequence[Platform] = (),
                 client: RegistryClient | None = None, work_dir: Path | None = None,
                 progress: Progress | None = None, created: datetime | None = None,
                 default_registry: str | None = None, referrers: bool = True) -> None:
        if not name.strip() or not version.strip():
            raise BuildError("a bundle needs a non-empty --name and --version")
        self.name, self.version = name, version
        self.platforms = tuple(platforms)
        self.client = client or RegistryClient()
        self.progress = progress
        # SOURCE_DATE_EPOCH-style fixed time makes builds of the same content byte-identical.
        self.created = (created or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        self._work_dir = work_dir
        self._spool: Path | None = None
        self._content: dict[Digest, _Content] = {}
        self._images: dict[str, _Image] = {}
        self._files: dict[str, _File] = {}
        self._artifacts: dict[str, ArtifactEntry] = {}  # ref name (repository:tag) -> file or chart artifact
        self._seen_platforms: set[str] = set()
        self._base: dict[str, str] | None = None
        self._base_blobs: dict[Digest, int] = {}
        self._counters = {"pulled": 0}
        # A layout's short names (`pause:3.9`) are recorded under this host, never guessed as docker.io.
        self.default_registry = default_registry.strip().rstrip("/") if default_registry else None
        self._definitions: list[Any] = []  # parsed ClusterDefinitions, for the readiness check
        self.with_referrers = referrers  # --no-referrers: signatures, SBOMs, attestations stay behind
        self._referrers: dict[str, list[Found]] = {}
        self.skipped_referrers: list[str] = []  # images whose referrers could not travel (rewritten index)

    def __enter__(self) -> BundleBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove spooled downloads (idempotent)."""
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None
        self.client.close()

    @property
    def images(self) -> dict[str, _Image]:
        return dict(self._images)

    @property
    def contents(self) -> dict[Digest, _Content]:
        """Every manifest and blob gathered so far, by digest (what `bundles.buildcheck` checks)."""
        return dict(self._content)

    @property
    def artifact_entries(self) -> dict[str, ArtifactEntry]:
        """Files and .tgz charts added so far, by index.json ref name (what `bundles.buildcheck` checks)."""
        return dict(self._artifacts)

    @property
    def definitions(self) -> list[Any]:
        """The parsed cluster definitions added so far."""
        return list(self._definitions)

    def _spool_dir(self) -> Path:
        if self._spool is None:
            # Beside the output, not in /tmp: /tmp may be memory, and layers are large.
            self._spool = Path(tempfile.mkdtemp(prefix=".cargohold-build-", dir=self._work_dir))
        return self._spool

    # -- sources --------------------------------------------------------------

    def add_layout(self, root: Path, refs: Sequence[str] = ()) -> list[str]:
        """Add images of an OCI image layout: every tagged entry, or those `refs` name.

        A ref may be ``REF=FULL`` to record the layout's entry REF under the
        full original reference FULL (for layouts whose ref names are bare tags).
        Returns the references added.
        """
        tagged = self.layout_entries(root)
        source = _LayoutSource(root)
        selected: list[tuple[str, Descriptor]] = []
        if not refs:
            selected = [(name, desc) for name, desc in tagged]
        for wanted in refs:
            ref, _, full = wanted.partition("=")
            matches = [(name, desc) for name, desc in tagged if name == ref or _same_reference(name, ref)]
            if not matches:
                raise BuildError(f"layout {root} has no image tagged {ref!r}; it has: "
                                 f"{', '.join(sorted(n for n, _ in tagged))}")
            selected.append((full or matches[0][0], matches[0][1]))
        added = []
        accessories: referrers.LayoutAccessories | None = None
        for name, desc in selected:
            if not re.search(r"[/:@]", name):
                # `skopeo copy ... oci:DIR:1.0` names entries by bare tag: no repository to record.
                raise BuildError(f"layout {root}: entry {name!r} is a bare tag, not a full image reference; "
                                 f"name it with --layout {root}:{name}=REGISTRY/REPOSITORY:TAG")
            reference = self._reference(self.qualify(name, f"layout {root}"), f"layout {root}")
            self._add_root(source, reference, desc)
            if self.with_referrers and self._unrewritten(reference, desc):
                if accessories is None:
                    accessories = referrers.LayoutAccessories(self.layout_descriptors(root), source.manifest)
                self._add_referrers(source, reference, accessories.of(desc.digest))
            added.append(reference)
        return added

    def add_image(self, text: str) -> str:
        """Pull an image from its registry: ``REF`` or ``REF=RECORDED`` (pull REF, record it as RECORDED)."""
        source_text, _, recorded = text.strip().partition("=")
        try:
            ref = ImageReference.parse(source_text)
        except RegistryError as exc:
            raise BuildError(f"invalid image reference {source_text!r}: {exc.message}") from None
        reference = self._reference(recorded or source_text, "--image")
        tag_or_digest = str(ref.digest) if ref.digest else str(ref.tag)
        try:
            body, media_type = self.client.manifest(ref.domain, ref.path, tag_or_digest)
        except NotFound as exc:
            raise SourceMissing(str(exc)) from None
        except PullError as exc:
            raise BuildError(str(exc)) from None
        digest = Digest.of_bytes(body, ref.digest.algorithm if ref.digest else "sha256")
        try:
            parsed = parse_manifest(body, media_type or None, digest)
        except RegistryError as exc:
            raise BuildError(f"{ref}: {exc.message}") from None
        source = _RegistrySource(self.client, ref, self._spool_dir(), self.progress, self._counters)
        source.cache[digest] = body
        self._add_root(source, reference, Descriptor(parsed.media_type, digest, len(body)))
        if self.with_referrers and self._unrewritten(reference, Descriptor(parsed.media_type, digest, len(body))):
            try:
                found = referrers.from_registry(self.client, ref.domain, ref.path, digest)
            except referrers.ReferrerError as exc:
                raise BuildError(str(exc)) from None
            self._add_referrers(source, reference, found)
        source.flush()
        return reference

    def _unrewritten(self, reference: str, desc: Descriptor) -> bool:
        """False (and noted) when --platform rewrote the image's index: its referrers name the upstream digest."""
        if self._images[reference].descriptor.digest == desc.digest:
            return True
        self.skipped_referrers.append(reference)
        return False

    def _add_referrers(self, source: _LayoutSource | _RegistrySource, reference: str, found: list[Found]) -> None:
        """Gather each accessory's manifest and blobs (byte for byte) and remember it for index.json."""
        described: list[Found] = []
        for item in found:
            what = f"{reference}: {item.kind} {item.descriptor.digest}"
            if item.body is not None and isinstance(source, _RegistrySource):
                source.cache[item.descriptor.digest] = item.body
            body = source.manifest(item.descriptor)
            try:
                parsed = parse_manifest(body, item.descriptor.media_type, item.descriptor.digest)
            except RegistryError as exc:
                raise BuildError(f"{what}: {exc.message}") from None
            # What the referrers API will report, whatever the source's descriptor said.
            described.append(dataclasses.replace(item, body=None, descriptor=Descriptor(
                parsed.media_type, item.descriptor.digest, item.descriptor.size, referrer_artifact_type(parsed))))
            if parsed.is_index:
                self._collect(source, item.descriptor, what)
            else:
                # Not _collect: a signature's config is an empty image config, no platform of the image's.
                for blob in parsed.required_blobs:
                    if blob.digest not in self._content:
                        self._content[blob.digest] = _Content(blob.digest, blob.size, blob.media_type, False,
                                                              path=source.blob(blob), origin=source.label)
                if item.descriptor.digest not in self._content:
                    self._content[item.descriptor.digest] = _Content(
                        item.descriptor.digest, len(body), parsed.media_type, True, data=body, origin=source.label)
        known = self._referrers.setdefault(reference, [])
        known += [f for f in described if all(f.descriptor.digest != k.descriptor.digest or f.tag != k.tag
                                          for k in known)]

    def add_images_file(self, path: Path) -> list[str]:
        """Pull every reference listed in `path`: one per line, ``#`` comments and blank lines ignored."""
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise BuildError(f"cannot read images file {path}: {exc.strerror}") from None
        added = []
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                added.append(self.add_image(text))
            except BuildError as exc:
                raise BuildError(f"{path}:{number}: {exc}") from None
        return added

    def add_chart(self, spec: str) -> str:
        """A Helm chart: ``oci://REF`` (pulled, carried as an image) or a ``.tgz`` file, packed as the OCI
        chart artifact `helm push` makes and published at ``<project>/<name>:<version>`` (format 2)."""
        if spec.startswith("oci://"):
            return self.add_image(spec[len("oci://"):])
        path = Path(spec)
        try:
            metadata = artifacts.chart_yaml(path)
            name = str(metadata["name"])
            if metadata.get("version") is None:
                raise artifacts.ArtifactError(f"chart {path}: Chart.yaml has no version")
            version = str(metadata["version"])
            repository = artifacts.chart_repository(name)
            tag = artifacts.oci_tag(version, f"chart {path}")
        except artifacts.ArtifactError as exc:
            raise BuildError(str(exc)) from None
        digest, size = _hash_file(path, f"chart {path}")
        packed = artifacts.pack_chart(metadata, digest, size, self._created_text())
        return self._add_artifact(packed, ArtifactEntry(
            name, version, repository, tag, digest, size, artifacts.HELM_CHART_LAYER, packed.manifest_digest,
            len(packed.manifest)), path)

    def add_file(self, spec: str) -> str:
        """A file of any size: ``PATH[=NAME[:VERSION]]``, packed as a one-file OCI artifact (as oras would) and
        published at ``<project>/files/<name>:<version>`` (format 2). NAME defaults to the file's name,
        VERSION to ``latest``. The file is read twice, streaming: hashed now, copied when the bundle is written
        (and checked again then, so a file changed in between fails the build)."""
        source, _, named = spec.partition("=")
        path = Path(source)
        title, _, version = named.partition(":") if named else (path.name, "", "")
        version = version or artifacts.DEFAULT_FILE_VERSION
        try:
            artifacts.file_title(title)
            repository = artifacts.file_repository(title)
            tag = artifacts.oci_tag(version, f"file {path}")
        except artifacts.ArtifactError as exc:
            raise BuildError(f"--file {spec}: {exc}") from None
        if not path.is_file():
            raise BuildError(f"file {path} does not exist or is not a regular file")
        digest, size = _hash_file(path, f"file {path}")
        media_type = artifacts.FILE_MEDIA_TYPE
        packed = artifacts.pack_file(title, version, digest, size, media_type, self._created_text())
        return self._add_artifact(packed, ArtifactEntry(
            title, version, repository, tag, digest, size, media_type, packed.manifest_digest, len(packed.manifest)),
            path)

    def _created_text(self) -> str:
        return self.created.isoformat().replace("+00:00", "Z")

    def _add_artifact(self, packed: artifacts.PackedArtifact, entry: ArtifactEntry, path: Path) -> str:
        previous = self._artifacts.get(entry.ref_name)
        if previous is not None and previous.manifest_digest != entry.manifest_digest:
            raise BuildError(f"{path}: {entry.ref_name} is given twice with different content "
                             f"({previous.digest} and {entry.digest})")
        if entry.digest not in self._content:
            self._content[entry.digest] = _Content(entry.digest, entry.size, entry.media_type, False, path=path,
                                                   origin=str(path))
        config_digest = Digest.of_bytes(packed.config)
        if config_digest not in self._content:
            self._content[config_digest] = _Content(config_digest, len(packed.config), packed.config_media_type,
                                                    False, data=packed.config, origin=str(path))
        self._content[entry.manifest_digest] = _Content(entry.manifest_digest, len(packed.manifest),
                                                        OCI_MANIFEST, True, data=packed.manifest, origin=str(path))
        self._artifacts[entry.ref_name] = entry
        return entry.ref_name

    def add_cluster_definition(self, path: Path) -> str:
        """A cluster definition archive, validated before it is carried under cluster-definitions/."""
        from bundles.clusterdef import DefinitionError, parse_archive

        try:
            definition = parse_archive(path)
        except DefinitionError as exc:
            raise BuildError(f"cluster definition {path}: {exc}") from None
        self._definitions.append(definition)
        return self._add_file(path, CLUSTERDEF_PREFIX, definition.name, definition.version)

    def set_base(self, path: Path) -> dict[str, str]:
        """Make this a delta bundle over an earlier bundle (file or parts) or an inventory export."""
        manifest_or_inventory = _read_base(path)
        if isinstance(manifest_or_inventory, BundleManifest):
            base = manifest_or_inventory
            self._base = {"name": base.name, "version": base.version}
            self._base_blobs = {m.digest: m.size for m in base.members if m.path.startswith(BLOB_PREFIX)}
            self._base_blobs.update({b.digest: b.size for b in base.external_blobs})
        else:
            doc = manifest_or_inventory
            self._base = {"name": str(doc.get("name") or "inventory"), "version": str(doc.get("created") or "")}
            self._base_blobs = {}
            for i, blob in enumerate(doc.get("blobs") or []):
                try:
                    self._base_blobs[Digest.parse(blob["digest"])] = int(blob["size"])
                except (KeyError, TypeError, ValueError, RegistryError):
                    raise BuildError(f"inventory {path}: blobs[{i}] is not a {{digest, size}} object") from None
        return dict(self._base)

    def qualify(self, name: str, where: str) -> str:
        """`name` if it starts with a registry host; else under --default-registry; else BuildError.

        `skopeo copy ... oci:DIR:pause:3.9` names an entry ``pause:3.9``: which
        registry it came from is not written anywhere, so it is never guessed.
        """
        first, sep, _ = name.partition("/")
        if sep and looks_like_host(first):
            return name
        if self.default_registry:
            return f"{self.default_registry}/{name}"
        raise BuildError(f"{where}: {name!r} is a short name (no registry host), so where it comes from is "
                         f"unknown; record it under a full reference with DIR:{name}=REGISTRY/REPOSITORY:TAG, "
                         "or give --default-registry HOST to put every short name under HOST")

    def layout_entries(self, root: Path) -> list[tuple[str, Descriptor]]:
        """(ref name, descriptor) of every tagged entry of an OCI image layout; BuildError if it is not one."""
        tagged = [(name, desc) for desc in self.layout_descriptors(root)
                  if (name := (desc.annotations or {}).get(REF_NAME_ANNOTATION))]
        if not tagged:
            raise BuildError(f"layout {root} has no tagged images (no index.json entry carries {REF_NAME_ANNOTATION})")
        return tagged

    def layout_descriptors(self, root: Path) -> list[Descriptor]:
        """Every index.json entry of an OCI image layout, tagged or not; BuildError if it is not one."""
        if not root.is_dir():
            raise BuildError(f"layout {root} does not exist or is not a directory")
        try:
            layout = json.loads((root / "oci-layout").read_text())
            index = json.loads((root / "index.json").read_text())
        except FileNotFoundError as exc:
            raise BuildError(f"{root} is not an OCI image layout: {Path(exc.filename).name} is missing") from None
        except (OSError, ValueError) as exc:
            raise BuildError(f"layout {root}: cannot read oci-layout/index.json: {exc}") from None
        if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
            raise BuildError(f"layout {root}: oci-layout has no imageLayoutVersion")
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list):
            raise BuildError(f"layout {root}: index.json has no manifests array")
        return [self._descriptor(entry, f"layout {root}: index.json manifests[{i}]")
                for i, entry in enumerate(entries)]

    # -- gathering ----------------------------------------------------------------

    def _descriptor(self, doc: Any, where: str) -> Descriptor:
        from registry.manifests import parse_descriptor

        try:
            return parse_descriptor(doc, where)
        except RegistryError as exc:
            raise BuildError(exc.message) from None

    def _reference(self, text: str, where: str) -> str:
        try:
            return str(ImageReference.parse(text))
        except RegistryError as exc:
            raise BuildError(f"{where}: {text!r} is not a full image reference: {exc.message}") from None

    def _add_root(self, source: _LayoutSource | _RegistrySource, reference: str, desc: Descriptor) -> None:
        kept = self._collect(source, desc, reference, root=True)
        pinned = ImageReference.parse(reference).digest
        if pinned is not None and pinned != desc.digest:
            raise BuildError(f"{reference} is pinned by digest, but the source holds {desc.digest} under that name")
        if pinned is not None and pinned != kept.digest:
            raise BuildError(f"{reference} is pinned by digest, but --platform rewrites its index to {kept.digest}; "
                             "drop the digest from the reference or build without --platform")
        image = _Image(reference, Descriptor(kept.media_type, kept.digest, kept.size, platform=desc.platform),
                       desc.digest)
        previous = self._images.get(reference)
        if previous is not None and previous.descriptor.digest != image.descriptor.digest:
            raise BuildError(f"image {reference} is given twice with different content "
                             f"({previous.descriptor.digest} and {image.descriptor.digest})")
        self._images[reference] = image

    def _collect(self, source: _LayoutSource | _RegistrySource, desc: Descriptor, where: str,
                 root: bool = False) -> Descriptor:
        """Gather a manifest and everything under it; returns its descriptor (rewritten if filtered)."""
        body = source.manifest(desc)
        try:
            parsed = parse_manifest(body, desc.media_type, desc.digest)
        except RegistryError as exc:
            raise BuildError(f"{where}: manifest {desc.digest}: {exc.message}") from None
        if parsed.is_index:
            body, desc = self._collect_index(source, parsed, body, desc, where)
        else:
            for blob in parsed.required_blobs:
                if blob.digest not in self._content:
                    path = source.blob(blob)
                    self._content[blob.digest] = _Content(blob.digest, blob.size, blob.media_type, False,
                                                          path=path, origin=source.label)
            self._note_platform(parsed, desc, root, where)
        if desc.digest not in self._content:
            self._content[desc.digest] = _Content(desc.digest, len(body), desc.media_type, True, data=body,
                                                  origin=source.label)
        return desc

    def _collect_index(self, source: _LayoutSource | _RegistrySource, parsed: ParsedManifest, body: bytes,
                       desc: Descriptor, where: str) -> tuple[bytes, Descriptor]:
        children = list(parsed.manifests)
        kept = self._filter(children, where) if self.platforms else children
        rewritten: dict[Digest, Descriptor] = {}
        for child in kept:
            if child.platform and (p := Platform.of(child.platform)) and not _is_attestation(child):
                self._seen_platforms.add(str(p))
            new = self._collect(source, child, where)
            if new.digest != child.digest:
                rewritten[child.digest] = new
        if len(kept) == len(children) and not rewritten:
            return body, desc
        keep = {c.digest for c in kept}
        doc = json.loads(body)
        entries = []
        for entry in doc["manifests"]:
            digest = Digest.parse(entry["digest"])
            if digest in keep:
                if digest in rewritten:
                    entry = {**entry, "digest": str(rewritten[digest].digest), "size": rewritten[digest].size}
                entries.append(entry)
        doc["manifests"] = entries
        new_body = json.dumps(doc, indent=3).encode()
        return new_body, Descriptor(desc.media_type or OCI_INDEX, Digest.of_bytes(new_body), len(new_body))

    def _filter(self, children: list[Descriptor], where: str) -> list[Descriptor]:
        """The children of an index that match --platform (and attestations of those)."""
        platformed = [(c, Platform.of(c.platform)) for c in children if c.platform and not _is_attestation(c)]
        candidates = [(c, p) for c, p in platformed if p is not None]
        if not candidates:
            return children  # nothing to decide on: keep the index whole
        wanted = {c.digest for c, p in candidates if any(f.matches(p) for f in self.platforms)}
        if not wanted:
            raise BuildError(f"{where}: has no manifest for {', '.join(map(str, self.platforms))}; it has "
                             f"{', '.join(sorted({str(p) for _, p in candidates}))}")
        out = []
        for c in children:
            if c.digest in wanted:
                out.append(c)
            elif _is_attestation(c):
                target = (c.annotations or {}).get("vnd.docker.reference.digest")
                if target and any(str(w) == target for w in wanted):
                    out.append(c)
            elif not c.platform:
                out.append(c)
        return out

    def _note_platform(self, parsed: ParsedManifest, desc: Descriptor, root: bool, where: str) -> None:
        """Record a single image's platform (from its config); at the top level, check it against --platform."""
        platform = Platform.of(desc.platform) if desc.platform else None
        config = parsed.config
        if config is not None and config.media_type in IMAGE_CONFIG_TYPES and config.size <= MAX_LAYOUT_MANIFEST:
            content = self._content.get(config.digest)
            if content is not None and content.path is not None:
                try:
                    doc = json.loads(content.path.read_bytes())
                    platform = Platform.of(doc) if isinstance(doc, dict) else platform
                except (OSError, ValueError):
                    pass
        if platform is None:
            return
        self._seen_platforms.add(str(platform))
        if root and self.platforms and not any(f.matches(platform) for f in self.platforms):
            raise BuildError(f"{where} is a single {platform} image; --platform asks for "
                             f"{', '.join(map(str, self.platforms))}")

    def _add_file(self, path: Path, prefix: str, name: str, version: str | None) -> str:
        if not _FILE_NAME.match(path.name):
            raise BuildError(f"{path}: file name must use only letters, digits and . _ + -")
        member = prefix + path.name
        digest, size = _hash_file(path, str(path))
        previous = self._files.get(member)
        if previous is not None and previous.digest != digest:
            raise BuildError(f"two different files would both be {member}: {previous.source} and {path}")
        self._files[member] = _File(FileEntry(name, version, member), path, size, digest)
        return member

    # -- writing ------------------------------------------------------------------

    def plan(self) -> tuple[list[tuple[Member, _Content | _File | bytes]], list[ExternalBlob]]:
        """Every member after the signature, in write order, and the blobs left to the base."""
        if not self._images and not self._files and not self._artifacts:
            raise BuildError("nothing to bundle: give --layout, --image, --images-file, --chart, --file or "
                             "--cluster-definition")
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        entries = []
        for image in sorted(self._images.values(), key=lambda i: i.reference):
            annotations = {REF_NAME_ANNOTATION: image.reference}
            if image.original_digest != image.descriptor.digest:
                annotations[ORIGINAL_DIGEST_ANNOTATION] = str(image.original_digest)
            entries.append(Descriptor(image.descriptor.media_type, image.descriptor.digest, image.descriptor.size,
                                      annotations=annotations, platform=image.descriptor.platform).to_json())
        entries += self._referrer_entries()
        for ref_name, a in sorted(self._artifacts.items()):
            # Files and charts: named by their place under the project, so `oras pull --oci-layout` finds them.
            entries.append(Descriptor(OCI_MANIFEST, a.manifest_digest, a.manifest_size,
                                      annotations={REF_NAME_ANNOTATION: ref_name}).to_json())
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=1).encode()
        members: list[tuple[Member, _Content | _File | bytes]] = [
            (Member("oci-layout", len(layout), Digest.of_bytes(layout)), layout),
            (Member("index.json", len(index), Digest.of_bytes(index)), index),
        ]
        external: list[ExternalBlob] = []
        for content in self._content.values():
            base_size = self._base_blobs.get(content.digest)
            if base_size is not None and not content.manifest:
                if base_size != content.size:
                    raise BuildError(f"the base lists blob {content.digest} with size {base_size}, "
                                     f"but it has {content.size} bytes")
                external.append(ExternalBlob(content.digest, content.size))
                continue
            path = f"{BLOB_PREFIX}{content.digest.algorithm}/{content.digest.encoded}"
            members.append((Member(path, content.size, content.digest), content))
        for member in sorted(self._files):
            f = self._files[member]
            members.append((Member(member, f.size, f.digest), f))
        return members, external

    def _referrer_entries(self) -> list[dict[str, Any]]:
        """index.json entries of the accessories: cosign tags named in the image's repository, referrers untagged.

        An accessory shared by several references of one repository is listed once per repository.
        """
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for reference, found in sorted(self._referrers.items()):
            ref = ImageReference.parse(reference)
            repository = f"{ref.domain}/{ref.path}"
            for item in found:
                key = (repository if item.tag else "", f"{item.tag}@{item.descriptor.digest}")
                if key in seen:
                    continue
                seen.add(key)
                annotations = {REF_NAME_ANNOTATION: f"{repository}:{item.tag}"} if item.tag else None
                out.append(Descriptor(item.descriptor.media_type, item.descriptor.digest, item.descriptor.size,
                                      item.descriptor.artifact_type, annotations).to_json())
        return out

    def manifest(self, members: Sequence[Member], external: Sequence[ExternalBlob],
                 incomplete: dict[str, Any] | None = None) -> BundleManifest:
        """The bundle manifest for a plan."""
        images = tuple(ImageEntry(i.reference, i.descriptor.digest, i.descriptor.media_type, i.descriptor.size,
                                  tuple(ReferrerEntry(f.descriptor.digest, f.kind, f.descriptor.media_type,
                                                      f.descriptor.size, f.descriptor.artifact_type, f.tag)
                                        for f in self._referrers.get(i.reference, ())))
                       for i in sorted(self._images.values(), key=lambda i: i.reference))
        platforms = tuple(map(str, self.platforms)) or tuple(sorted(self._seen_platforms))
        files = [f.entry for _, f in sorted(self._files.items())]
        return BundleManifest(
            name=self.name, version=self.version,
            created=self.created.isoformat().replace("+00:00", "Z"),
            platforms=platforms, images=images, members=tuple(members),
            charts=tuple(f for f in files if f.path.startswith(CHART_PREFIX)),
            cluster_definitions=tuple(f for f in files if f.path.startswith(CLUSTERDEF_PREFIX)),
            base=self._base, external_blobs=tuple(external), incomplete=incomplete,
            files=tuple(a for _, a in sorted(self._artifacts.items()) if a.media_type != artifacts.HELM_CHART_LAYER),
            chart_artifacts=tuple(a for _, a in sorted(self._artifacts.items())
                                  if a.media_type == artifacts.HELM_CHART_LAYER))

    def write(self, out: Path, sign_key: keys.PrivateKey | None, *, level: int = 3, threads: int = -1,
              split: int | None = None, incomplete: dict[str, Any] | None = None,
              frame_size: int | None = frames.FRAME_TARGET) -> BuildResult:
        """Write the bundle to `out` (or `out`.partNNN); raises BuildError and leaves no output on failure.

        `incomplete` (the findings of a readiness check the operator chose to
        ship anyway) is recorded in the manifest. With `frame_size` (the
        default), the stream is cut into independent zstd frames at member
        boundaries every `frame_size` unpacked bytes and ends with a frame index
        (`bundles.frames`), so a site verifies frames in parallel; None writes
        one frame and no index, as builds before the index did.
        """
        if not 1 <= level <= MAX_LEVEL:
            raise BuildError(f"zstd level {level} is out of range 1..{MAX_LEVEL}")
        planned, external = self.plan()
        manifest = self.manifest([m for m, _ in planned], external, incomplete)
        manifest_bytes = manifest.encode()
        # A site refuses a manifest or index.json over the format's caps (size, nesting, element count) unparsed:
        # refuse here, before anything is written, rather than carry such a bundle to the site.
        layout_index = next(data for m, data in planned if m.path == "index.json" and isinstance(data, bytes))
        for name, data, limits in ((MANIFEST_MEMBER, manifest_bytes, MANIFEST_LIMITS),
                                   ("index.json", layout_index, LAYOUT_LIMITS)):
            try:
                boundedjson.check(data, name, limits)
            except boundedjson.JsonRefused as exc:
                raise BuildError(f"the bundle's {exc.message}; split the content into several bundles") from None
        signature: bytes | None = None
        if sign_key is not None:
            sig = keys.sign(sign_key, manifest_bytes)
            signature = json.dumps(sig.to_json(), indent=1, sort_keys=True).encode()
        total = len(manifest_bytes) + len(signature or b"") + manifest.total_size
        mtime = int(self.created.timestamp())
        sink = _Output(out, split)
        try:
            window = 1 << zstandard.ZstdCompressionParameters.from_level(level).window_log
            params = zstandard.ZstdCompressionParameters.from_level(
                level, threads=threads, write_checksum=True, job_size=max(JOB_SIZE, window) if threads else 0)
            cctx = zstandard.ZstdCompressor(compression_params=params)
            cuts: list[tuple[int, int, int, int]] = []  # (offset, size, unpacked offset, unpacked size)
            with cctx.stream_writer(sink, closefd=False) as compressor:  # type: ignore[arg-type]
                tar = _TarWriter(compressor, mtime)
                done = 0

                def cut() -> None:
                    """End the current zstd frame here, at a member boundary, and record it for the index."""
                    c0, u0 = (cuts[-1][0] + cuts[-1][1], cuts[-1][2] + cuts[-1][3]) if cuts else (0, 0)
                    if frame_size is not None and tar.offset > u0:
                        compressor.flush(zstandard.FLUSH_FRAME)
                        cuts.append((c0, sink.written - c0, u0, tar.offset - u0))

                def advance(n: int) -> None:
                    nonlocal done
                    done += n
                    if self.progress:
                        self.progress("write", done, total)

                tar.add(MANIFEST_MEMBER, len(manifest_bytes), [manifest_bytes], advance)
                if signature is not None:
                    tar.add(SIGNATURE_MEMBER, len(signature), [signature], advance)
                cut()  # frame 0 is the manifest and signature alone: a site checks them before anything else
                for member, source in planned:
                    tar.add(member.path, member.size, self._chunks(member, source), advance)
                    if frame_size is not None and tar.offset - (cuts[-1][2] + cuts[-1][3]) >= frame_size:
                        cut()
                tar.close()
            if frame_size is not None:
                c0, u0 = cuts[-1][0] + cuts[-1][1], cuts[-1][2] + cuts[-1][3]
                if tar.offset > u0:  # the last frame, ended when the writer closed
                    cuts.append((c0, sink.written - c0, u0, tar.offset - u0))
                sink.write(frames.encode(cuts))
            files = sink.commit()
        except BaseException:
            sink.abort()
            raise
        return BuildResult(tuple(files), manifest, sink.hasher.hexdigest(), sink.written,
                           keys.key_id(sign_key) if sign_key is not None else None)

    def _chunks(self, member: Member, source: _Content | _File | bytes) -> Iterator[bytes]:
        """The member's bytes, verified against the manifest's size and digest while they stream."""
        if isinstance(source, bytes):
            yield source
            return
        if isinstance(source, _Content) and source.data is not None:
            yield source.data
            return
        path = source.path if isinstance(source, _Content) else source.source
        assert path is not None
        origin = source.origin if isinstance(source, _Content) else str(path)
        hasher, size = member.digest.hasher(), 0
        try:
            with path.open("rb") as f:
                while size < member.size and (chunk := f.read(min(CHUNK, member.size - size))):
                    hasher.update(chunk)
                    size += len(chunk)
                    yield chunk
        except OSError as exc:
            raise BuildError(f"{origin}: cannot read {path}: {exc.strerror}") from None
        if size != member.size or hasher.hexdigest() != member.digest.encoded:
            raise BuildError(f"{origin}: {member.path} changed or is damaged: its bytes do not match "
                             f"{member.digest} ({member.size} bytes)")


def _hash_file(path: Path, what: str) -> tuple[Digest, int]:
    """sha256 and size of a file, streamed in CHUNK pieces (never read whole)."""
    hasher, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise BuildError(f"{what}: cannot read {path}: {exc.strerror}") from None
    return Digest("sha256", hasher.hexdigest()), size


def _is_attestation(desc: Descriptor) -> bool:
    return (desc.annotations or {}).get("vnd.docker.reference.type") == "attestation-manifest"


def _same_reference(a: str, b: str) -> bool:
    try:
        return str(ImageReference.parse(a)) == str(ImageReference.parse(b))
    except RegistryError:
        return False


def bundle_parts(path: Path) -> list[Path]:
    """The files whose concatenation is the bundle `path` names: itself, or its numbered parts."""
    m = PART_SUFFIX.search(path.name)
    if m and not path.name.endswith(".tmp"):
        stem = path.with_name(path.name[:m.start()])
        if not path.exists() or int(m.group(1)) != 0:
            raise BuildError(f"{path}: give the first part (.part000) of a split bundle")
        path = stem
    elif path.exists():
        return [path]
    parts = sorted(path.parent.glob(path.name + ".part*"), key=lambda p: p.name)
    parts = [p for p in parts if PART_SUFFIX.search(p.name) and p.name[len(path.name):].startswith(".part")]
    numbers = [int(m.group(1)) for p in parts if (m := PART_SUFFIX.search(p.name))]
    if not parts:
        raise BuildError(f"bundle {path} does not exist (nor any {path.name}.partNNN)")
    if numbers != list(range(len(parts))):
        raise BuildError(f"bundle {path}: parts are not numbered 000..{len(parts) - 1:03d} without gaps")
    return parts


class _Concat:
    """A read-only stream over several files, one after the other."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._current: IO[bytes] | None = None

    def read(self, n: int = -1) -> bytes:
        while True:
            if self._current is None:
                if not self._paths:
                    return b""
                self._current = self._paths.pop(0).open("rb")
            data = self._current.read(n)
            if data or n == 0:
                return data
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


def read_bundle_manifest(path: Path) -> BundleManifest:
    """The manifest member of a bundle file (or split parts), reading only the start of the stream."""
    stream = _Concat(bundle_parts(path))
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(stream)  # type: ignore[arg-type]
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_MEMBER or not first.isfile():
                raise BuildError(f"{path} has no {MANIFEST_MEMBER} as its first member: not a cargohold bundle "
                                 "(for a plain bundle, export an inventory from the site and use that as --base)")
            if first.size > MAX_MANIFEST_BYTES:
                raise BuildError(f"{path}: {MANIFEST_MEMBER} is larger than {MAX_MANIFEST_BYTES} bytes")
            f = tar.extractfile(first)
            data = f.read() if f else b""
        return BundleManifest.decode(data)
    except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
        raise BuildError(f"{path} is not a zstd-compressed tar: {exc}") from None
    except FormatError as exc:
        raise BuildError(f"{path}: {exc}") from None
    finally:
        stream.close()


def _read_base(path: Path) -> BundleManifest | dict[str, Any]:
    """A base for a delta: an inventory (JSON) or an earlier bundle's manifest."""
    try:
        with path.open("rb") as f:
            head = f.read(1).lstrip()
    except FileNotFoundError:
        head = b""  # perhaps a split bundle whose parts exist
    except OSError as exc:
        raise BuildError(f"cannot read base {path}: {exc.strerror}") from None
    if head == b"{":
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BuildError(f"base {path} is not a valid inventory JSON file: {exc}") from None
        if not isinstance(doc, dict) or doc.get("mediaType") != INVENTORY_MEDIA_TYPE:
            raise BuildError(f"base {path} is JSON but not a cargohold inventory (mediaType {INVENTORY_MEDIA_TYPE})")
        return doc
    return read_bundle_manifest(path)


class _TarWriter:
    """Writes tar members (ustar/pax headers, 512-byte blocks) to a stream, never seeking."""

    def __init__(self, out: Any, mtime: int) -> None:
        self.out, self.mtime, self.offset = out, mtime, 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    def add(self, name: str, size: int, chunks: Iterable[bytes], advance: Callable[[int], None]) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.type = size, self.mtime, 0o644, tarfile.REGTYPE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        written = 0
        for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise BuildError(f"{name} grew beyond {size} bytes while it was written")
            self._write(chunk)
            advance(len(chunk))
        if written != size:
            raise BuildError(f"{name}: wrote {written} bytes, expected {size}")
        if size % tarfile.BLOCKSIZE:
            self._write(b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))
        if self.offset % tarfile.RECORDSIZE:
            self._write(b"\0" * (tarfile.RECORDSIZE - self.offset % tarfile.RECORDSIZE))


class _Output:
    """The compressed bytes going to OUT.tmp, or to OUT.partNNN.tmp files of at most `split` bytes."""

    def __init__(self, out: Path, split: int | None) -> None:
        self.out, self.split = out, split
        self.hasher = hashlib.sha256()
        self.written = 0
        self._files: list[Path] = []
        self._current: IO[bytes] | None = None
        self._current_size = 0
        if not out.parent.is_dir():
            raise BuildError(f"output directory {out.parent} does not exist")

    def _final(self, index: int) -> Path:
        return self.out if self.split is None else self.out.with_name(f"{self.out.name}.part{index:03d}")

    def _open_next(self) -> None:
        self._close_current()
        tmp = self._final(len(self._files)).with_name(self._final(len(self._files)).name + ".tmp")
        self._files.append(tmp)
        self._current = tmp.open("wb")
        self._current_size = 0

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.flush()
            os.fsync(self._current.fileno())
            self._current.close()
            self._current = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.hasher.update(view)
        self.written += len(view)
        while len(view):
            if self._current is None or (self.split is not None and self._current_size >= self.split):
                self._open_next()
            room = len(view) if self.split is None else self.split - self._current_size
            assert self._current is not None
            self._current.write(view[:room])
            self._current_size += min(room, len(view))
            view = view[room:]
        return len(data)

    def flush(self) -> None:
        if self._current is not None:
            self._current.flush()

    def commit(self) -> list[Path]:
        """Rename the finished files into place; stale parts of an earlier build are removed."""
        if self._current is None and not self._files:
            self._open_next()
        self._close_current()
        finals = [self._final(i) for i in range(len(self._files))]
        for tmp, final in zip(self._files, finals, strict=True):
            os.replace(tmp, final)
        if self.split is not None:
            # A leftover OUT or OUT.partNNN beyond the new count would make the concatenation wrong.
            self.out.unlink(missing_ok=True)
            for stale in self.out.parent.glob(self.out.name + ".part*"):
                m = PART_SUFFIX.search(stale.name)
                if m and stale.name == f"{self.out.name}.part{m.group(1)}" and int(m.group(1)) >= len(finals):
                    stale.unlink()
        fsync_dir(self.out.parent)
        return finals

    def abort(self) -> None:
        """Remove everything written so far (idempotent)."""
        if self._current is not None:
            self._current.close()
            self._current = None
        for tmp in self._files:
            tmp.unlink(missing_ok=True)


__all__ = ["BuildError", "BuildResult", "BundleBuilder", "Platform", "SourceMissing", "bundle_parts", "parse_size",
           "read_bundle_manifest"]
