"""The site's readiness check, run at build time against what the bundle will carry.

`bundles.check.check_definition` asks an `Inventory` (batch lookups) and a
`BlobStore` (stat, open) what the registry holds. Here both are answered
from the builder's gathered content instead of a database: every image the
bundle records becomes a repository (placed exactly as the importer places
it: `registry.names.map_reference` under the project, no mapping rules),
its tag points at the recorded manifest, and every manifest and blob the
builder gathered is "stored". So the findings are the very ones
`clusterdef check` would report on a site that imported this bundle into an
empty registry: same code, same codes and wording.

Nothing is copied: manifests are already in memory, and a config is opened
from where the builder keeps it (a layout's blob or a spooled download) for
its platform, a bounded read. Blobs a delta bundle leaves to its base count
as present (the import refuses a delta whose base is not there).

Findings are kept generic (`BuildFinding`: kind, reference, code, detail),
so new requirement kinds slot in with their own codes. Files and .tgz charts
(format 2) are placed where the importer publishes them, under the project
by their own names.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bundles.artifacts import HELM_CHART_LAYER
from bundles.build import BundleBuilder
from bundles.check import DIGEST_MISMATCH, PLATFORM_MISSING, PRESENT, check_definition
from bundles.files import SiteFile
from registry.blobstore import BlobInfo, ServeHint
from registry.digest import Digest
from registry.errors import RegistryError
from registry.inventory import Inventory, ManifestRow, RefRow
from registry.manifests import parse_manifest
from registry.names import ImageReference, map_reference

DEFAULT_PROJECT = "spectro-images"  # where the check places images; any project gives the same verdicts
# Codes whose reference, pulled again as it is, cannot fix the finding (so --missing-out comments them out).
NOT_REPULLABLE = (DIGEST_MISMATCH, PLATFORM_MISSING)


@dataclass(frozen=True)
class BuildFinding:
    """One thing a definition needs that the bundle does not carry as needed."""

    definition: str  # "name version"
    kind: str  # "image", "chart", ... (whatever the check reports)
    reference: str
    code: str  # the check's finding: repository_missing, tag_missing, digest_mismatch, platform_missing, ...
    detail: str
    platforms: tuple[str, ...] = ()  # what the image is built for, when known
    missing: tuple[str, ...] = ()  # missing architectures or blob digests

    def to_json(self) -> dict[str, Any]:
        return {"definition": self.definition, "kind": self.kind, "reference": self.reference, "code": self.code,
                "detail": self.detail, "platforms": list(self.platforms), "missing": list(self.missing)}


@dataclass(frozen=True)
class BuildCheck:
    """The readiness check of every definition against the bundle's planned content."""

    results: tuple[dict[str, Any], ...]  # one `check_definition` result per definition
    findings: tuple[BuildFinding, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return not self.findings

    def record(self) -> dict[str, Any]:
        """The manifest's ``incomplete`` field for these findings."""
        return {"findings": [f.to_json() for f in self.findings]}

    def to_json(self) -> dict[str, Any]:
        return {"complete": self.complete, "findings": [f.to_json() for f in self.findings],
                "checks": list(self.results)}


class _PlannedInventory(Inventory):
    """`Inventory`'s batch lookups, answered from the builder's images and gathered manifests."""

    def __init__(self, builder: BundleBuilder, project: str) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # no database: every lookup is overridden
        self._contents = builder.contents
        self._ids: dict[str, int] = {}
        self._tags: dict[tuple[int, str], str] = {}
        self._manifests: set[tuple[int, str]] = set()
        self._blobs: set[tuple[int, str]] = set()
        self._refs: dict[str, list[RefRow]] = {}
        for reference, image in sorted(builder.images.items()):
            ref = ImageReference.parse(reference)
            try:
                repository = map_reference(ref, (), project)
            except RegistryError:
                continue  # the builder refuses references it cannot nest; nothing to serve here
            repo_id = self._ids.setdefault(repository, len(self._ids) + 1)
            digest = str(image.descriptor.digest)
            if ref.tag:
                self._tags[(repo_id, ref.tag)] = digest
            self._walk(repo_id, digest)
        # Files and .tgz charts: published under the project by their own names (bundles.artifacts).
        for artifact in builder.artifact_entries.values():
            repo_id = self._ids.setdefault(f"{project}/{artifact.repository}", len(self._ids) + 1)
            self._tags[(repo_id, artifact.tag)] = str(artifact.manifest_digest)
            self._walk(repo_id, str(artifact.manifest_digest))

    def _references(self, digest: str) -> list[RefRow]:
        if digest not in self._refs:
            content = self._contents.get(Digest.parse(digest))
            rows: list[RefRow] = []
            if content is not None and content.data is not None:
                parsed = parse_manifest(content.data, content.media_type, content.digest)
                blobs = ((parsed.config,) if parsed.config else ()) + parsed.layers
                rows = [RefRow(str(d.digest), "blob", d.media_type, d.size, d.platform) for d in blobs]
                rows += [RefRow(str(d.digest), "manifest", d.media_type, d.size, d.platform)
                         for d in parsed.manifests]
            self._refs[digest] = rows
        return self._refs[digest]

    def _walk(self, repo_id: int, digest: str) -> None:
        """Link a manifest, and everything it references that the bundle carries, to a repository."""
        if (repo_id, digest) in self._manifests:
            return
        content = self._contents.get(Digest.parse(digest))
        if content is None or content.data is None:
            return
        self._manifests.add((repo_id, digest))
        for row in self._references(digest):
            if row.kind == "manifest":
                self._walk(repo_id, row.child)
            elif Digest.parse(row.child) in self._contents:
                self._blobs.add((repo_id, row.child))

    def repository_ids(self, names: Iterable[str]) -> dict[str, int]:
        return {n: self._ids[n] for n in names if n in self._ids}

    def tags(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], str]:
        return {k: self._tags[k] for k in keys if k in self._tags}

    def manifests(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], ManifestRow]:
        out = {}
        for repo_id, digest in keys:
            if (repo_id, digest) in self._manifests:
                content = self._contents[Digest.parse(digest)]
                out[(repo_id, digest)] = ManifestRow(repo_id, digest, content.media_type, content.size)
        return out

    def references(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], list[RefRow]]:
        return {(r, d): list(self._references(d)) if (r, d) in self._manifests else [] for r, d in keys}

    def linked_blobs(self, keys: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
        return {k for k in keys if k in self._blobs}

    def repository_names(self, prefix: str) -> list[str]:
        return sorted(n for n in self._ids if n.startswith(prefix))


class _PlannedStore:
    """The part of `BlobStore` the check uses (stat, open), over the builder's gathered content."""

    def __init__(self, builder: BundleBuilder) -> None:
        self._contents = builder.contents

    def stat(self, digest: Digest) -> BlobInfo | None:
        content = self._contents.get(digest)
        return BlobInfo(digest, content.size) if content is not None else None

    def open(self, digest: Digest, offset: int = 0) -> BinaryIO:
        content = self._contents.get(digest)
        if content is None:
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in the bundle")
        if content.data is not None:
            f: BinaryIO = io.BytesIO(content.data)
        else:
            assert content.path is not None
            f = content.path.open("rb")
        f.seek(offset)
        return f

    def serve_hint(self, digest: Digest, expires: int) -> ServeHint:
        return ServeHint(path=self.local_path(digest))

    def check(self) -> str | None:
        return None

    def describe(self) -> str:
        return "the bundle being built"

    def require_space(self, incoming: int, reserve: int, what: str) -> None:
        raise NotImplementedError("the planned content is read-only")

    def quarantine(self, digest: Digest, name: str) -> str | None:
        raise NotImplementedError("the planned content is read-only")

    def local_path(self, digest: Digest) -> Path | None:
        content = self._contents.get(digest)
        return content.path if content is not None else None

    def ingest(self, stream: BinaryIO, expected: Digest | None = None,
               expected_size: int | None = None) -> BlobInfo:
        raise NotImplementedError("the planned content is read-only")

    def ingest_bytes(self, data: bytes, expected: Digest | None = None) -> BlobInfo:
        raise NotImplementedError("the planned content is read-only")

    def adopt(self, path: Path, digest: Digest, size: int) -> BlobInfo:
        raise NotImplementedError("the planned content is read-only")

    def delete(self, digest: Digest) -> bool:
        raise NotImplementedError("the planned content is read-only")

    def walk(self) -> Iterator[BlobInfo]:
        return iter([BlobInfo(d, c.size) for d, c in self._contents.items()])


def check_build(builder: BundleBuilder, project: str = DEFAULT_PROJECT) -> BuildCheck:
    """Run the readiness check of every definition added to `builder` against what it would write.

    Read-only and idempotent; call it after every source has been added and before `write`.
    """
    inventory, store = _PlannedInventory(builder, project), _PlannedStore(builder)
    files = [SiteFile(a.name, a.tag, f"{project}/{a.repository}", a.digest, a.size, a.media_type,
                      a.manifest_digest, 0.0)
             for a in builder.artifact_entries.values() if a.media_type != HELM_CHART_LAYER]
    results, findings = [], []
    for definition in builder.definitions:
        result = check_definition(definition, inventory, store, project, site_files=lambda: files)
        results.append(result)
        label = f"{definition.name} {definition.version}"
        for f in result["findings"]:
            if f["finding"] != PRESENT:
                findings.append(BuildFinding(label, f["kind"], f["reference"], f["finding"], f["detail"],
                                             tuple(f.get("platforms") or ()), tuple(f.get("missing") or ())))
    return BuildCheck(tuple(results), tuple(findings))


def missing_images_text(findings: Sequence[BuildFinding]) -> str:
    """What is missing as an images file (`bundle build --images-file`): one reference per line.

    A reference that pulling again cannot fix as it is (the pinned digest
    differs from what the bundle carries; the image lacks a platform) is
    written as a comment with its finding, for a person to decide.
    """
    lines = ["# missing from the bundle: feed back with `cargohold bundle build --images-file THIS_FILE ...`"]
    seen: set[str] = set()
    for f in findings:
        if f.reference in seen:
            continue
        seen.add(f.reference)
        if f.code in NOT_REPULLABLE:
            lines.append(f"# {f.reference}   # {f.code}: {f.detail}")
        else:
            lines.append(f"{f.reference}   # {f.code} ({f.kind}, {f.definition})")
    return "\n".join(lines) + "\n"


def findings_table(findings: Sequence[BuildFinding]) -> list[str]:
    """The findings as the lines of a table (the columns of `clusterdef check`, with the definition)."""
    header = ("DEFINITION", "KIND", "REFERENCE", "FINDING", "PLATFORMS", "DETAIL")
    rows = [(f.definition, f.kind, f.reference, f.code, ",".join(f.platforms) or "-", f.detail) for f in findings]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)]
