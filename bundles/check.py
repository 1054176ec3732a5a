"""The readiness check: is everything a cluster definition needs here, exactly?

Each required image is mapped to its local repository
(`registry.names.map_reference`: mapping rules, then nesting under the
project, a host with a port as ``host_port``) and gets exactly one finding, the first that applies:

    repository_missing  no such repository
    tag_missing         the repository lacks the tag (for ``tag@digest``: and the
                        pinned manifest too, since runtimes pull that by digest)
    digest_mismatch     the pinned digest is not what is served (the tag points
                        elsewhere, or no manifest with that digest is stored)
    platform_missing    the image does not run on one of the cluster's architectures:
                        an index has no entry for it, or a single-platform image's
                        config names another platform
    blob_missing        the manifests are there, but a blob (layer, config, child
                        manifest or the manifest's own bytes) is not
    present             everything needed to pull it for every architecture

Platforms are matched by `registry.platforms` (variants as runtimes
normalise them: ``arm64`` is ``arm64/v8``). An index's entries name their
platforms; a single-platform image's platform is its config's ``os``,
``architecture`` and ``variant``, read from the store (bounded: a config is
small). Charts and other artifacts (a config that is not an image config)
run anywhere. Required files (`bundles.file_check`) get findings of the same
shape, kind ``file``. A definition is ready iff every required image is present.
Lookups go through `registry.inventory` in batches, and layer files are
checked with a stat, never read, so a thousand images cost a few queries,
a few thousand stats and one small read per single-platform image.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bundles.clusterdef import ClusterDefinition, ClusterDefinitions
from bundles.file_check import file_findings
from bundles.files import SiteFile, tagged_files
from registry.blobstore import BlobStore, FilesystemBlobStore
from registry.digest import Digest
from registry.errors import RegistryError
from registry.inventory import Inventory, RefRow
from registry.manifests import IMAGE_TYPES, INDEX_TYPES
from registry.model import Registry
from registry.names import ImageReference, MappingRule, map_reference
from registry.platforms import IMAGE_CONFIG_TYPES, Platform, PlatformError, best_match, read_config_platform, runs_on

PRESENT = "present"
REPOSITORY_MISSING = "repository_missing"
TAG_MISSING = "tag_missing"
DIGEST_MISMATCH = "digest_mismatch"
PLATFORM_MISSING = "platform_missing"
BLOB_MISSING = "blob_missing"
FINDINGS = (PRESENT, REPOSITORY_MISSING, TAG_MISSING, DIGEST_MISMATCH, PLATFORM_MISSING, BLOB_MISSING)


@dataclass(frozen=True)
class ImageFinding:
    """The verdict on one required image."""

    reference: str
    repository: str
    finding: str
    detail: str = ""
    digest: str | None = None  # the manifest that would be pulled
    bytes: int | None = None  # manifests + configs + layers for the cluster's platforms, when known
    missing_bytes: int | None = None
    missing: tuple[str, ...] = ()  # missing platforms or blob digests
    kind: str = "image"
    sources: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()  # what the image is built for (an index: every entry's), when known

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "repository": self.repository, "finding": self.finding,
                "detail": self.detail, "digest": self.digest, "bytes": self.bytes, "missingBytes": self.missing_bytes,
                "missing": list(self.missing), "platforms": list(self.platforms), "kind": self.kind,
                "sources": list(self.sources)}


@dataclass(frozen=True)
class _Wanted:
    reference: str
    repository: str
    tag: str | None
    digest: str | None
    kind: str
    sources: tuple[str, ...]


def check_definition(definition: ClusterDefinition, inventory: Inventory, store: BlobStore, project: str,
                     rules: tuple[MappingRule, ...] = (),
                     overrides: dict[tuple[str, str], str] | None = None,
                     site_files: Callable[[], Iterable[SiteFile]] | None = None) -> dict[str, Any]:
    """Check a definition against the registry; returns the JSON-ready result (not stored).

    `overrides` maps (repository, tag) to the manifest digest the tag will
    serve (a staged release, checked before its promotion moves the tags).
    `site_files` lists the file artifacts there are (default: those the
    registry's database tags). Idempotent and read-only.
    """
    started = time.perf_counter()
    findings: list[ImageFinding] = []
    wanted: list[_Wanted] = []
    for image in definition.images:
        if image.repository:  # published by the appliance itself (a .tgz chart): <project>/<repository>:<tag>
            wanted.append(_Wanted(image.reference, f"{project}/{image.repository}",
                                  image.reference.rpartition(":")[2], None, image.kind, image.sources))
            continue
        ref = ImageReference.parse(image.reference)
        try:
            repository = map_reference(ref, rules, project)
        except RegistryError as exc:
            findings.append(ImageFinding(image.reference, f"{project}/{ref.repository}", REPOSITORY_MISSING,
                                         exc.message, kind=image.kind, sources=image.sources))
            continue
        wanted.append(_Wanted(image.reference, repository, ref.tag, str(ref.digest) if ref.digest else None,
                              image.kind, image.sources))

    repo_ids = inventory.repository_ids(w.repository for w in wanted)
    tags = inventory.tags((repo_ids[w.repository], w.tag) for w in wanted if w.repository in repo_ids and w.tag)
    for (repository, tag), staged in (overrides or {}).items():
        if repository in repo_ids:
            tags[(repo_ids[repository], tag)] = staged

    # Which manifest each image would pull, or its finding if it cannot get that far.
    targets: dict[int, tuple[int, str]] = {}
    early: dict[int, ImageFinding] = {}
    for i, w in enumerate(wanted):
        repo_id = repo_ids.get(w.repository)
        if repo_id is None:
            early[i] = _finding(w, REPOSITORY_MISSING, f"repository {w.repository} is not in the registry")
            continue
        served = tags.get((repo_id, w.tag)) if w.tag else None
        if w.tag and served is None and not w.digest:
            early[i] = _finding(w, TAG_MISSING, f"repository {w.repository} has no tag {w.tag}")
            continue
        # tag@digest with the tag absent: runtimes pull such a reference by its digest alone, so the
        # manifest decides (below); only a tag that serves something else is a mismatch.
        if w.digest and served is not None and served != w.digest:
            early[i] = _finding(w, DIGEST_MISMATCH, f"tag {w.tag} serves {served}, the definition pins {w.digest}",
                                digest=served)
            continue
        targets[i] = (repo_id, w.digest or served or "")
    manifests = inventory.manifests(targets.values())
    for i, key in list(targets.items()):
        if key not in manifests:
            w = wanted[i]
            if w.digest and w.tag and tags.get((key[0], w.tag)) is None:
                early[i] = _finding(w, TAG_MISSING, f"repository {w.repository} has neither tag {w.tag} nor "
                                    f"manifest {w.digest}")
            elif w.digest:
                early[i] = _finding(w, DIGEST_MISMATCH, f"no manifest {w.digest} in {w.repository}")
            else:
                early[i] = _finding(w, BLOB_MISSING, f"tag {w.tag} points at manifest {key[1]}, which is not stored",
                                    missing=(key[1],))
            del targets[i]

    # Indexes: pick the child per architecture; then everything each pulled manifest references.
    refs = inventory.references(targets.values())
    on_disk = _presence(store)
    machines = [(arch, Platform.for_cluster(arch)) for arch in definition.architectures]
    pulled: dict[int, list[tuple[int, str, int]]] = {}  # image -> manifests to pull: (repo_id, digest, size)
    missing_platforms: dict[int, list[str]] = {}
    platforms: dict[int, tuple[str, ...]] = {}  # image -> what it is built for
    unreadable: dict[int, str] = {}  # image -> why its config does not tell its platform
    configs: dict[str, Platform | str] = {}  # config digest -> its platform, or why it has none (memoised)
    for i, key in targets.items():
        top = manifests[key]
        pulled[i] = [(key[0], key[1], top.size)]
        if top.media_type in INDEX_TYPES:
            # Attestation entries (buildx writes them as unknown/unknown) are no platform of the image.
            children = [(p, r) for r in refs[key] if r.kind == "manifest" and (p := Platform.of(r.platform))
                        and (p.os, p.architecture) != ("unknown", "unknown")]
            platforms[i] = tuple(sorted({str(p) for p, _ in children}))
            by_digest = {r.child: r for _, r in children}
            for arch, machine in machines:
                chosen = best_match([(p, r.child) for p, r in children], machine)
                if chosen is None:
                    missing_platforms.setdefault(i, []).append(arch)
                elif all(chosen != d for _, d, _ in pulled[i]):
                    pulled[i].append((key[0], chosen, by_digest[chosen].size))
        elif top.media_type in IMAGE_TYPES and wanted[i].kind == "image":
            config = next((r for r in refs[key] if r.kind == "blob" and r.media_type in IMAGE_CONFIG_TYPES), None)
            if config is None or not on_disk(config.child):
                continue  # an artifact runs anywhere; a config that is not here is blob_missing below
            platform = configs.get(config.child)
            if platform is None:
                platform = configs[config.child] = _config_platform(store, config.child, config.size)
            if isinstance(platform, str):
                unreadable[i] = platform
                missing_platforms[i] = list(definition.architectures)
                continue
            platforms[i] = (str(platform),)
            lacking = [arch for arch, machine in machines if not runs_on(platform, machine)]
            if lacking:
                missing_platforms[i] = lacking
    child_keys = [(r, d) for i in targets for r, d, _ in pulled[i][1:]]
    child_manifests = inventory.manifests(child_keys)
    refs.update(inventory.references(child_keys))

    blob_refs: dict[int, list[RefRow]] = {}
    for i in targets:
        blob_refs[i] = [b for r, d, _ in pulled[i] for b in refs.get((r, d), []) if b.kind == "blob"]
    linked = inventory.linked_blobs((targets[i][0], b.child) for i in targets for b in blob_refs[i])

    sizes: dict[str, int] = {}  # every digest the cluster pulls, counted once however many images share it
    absent: set[str] = set()
    for i, w in enumerate(wanted):
        if i in early:
            findings.append(early[i])
            continue
        repo_id, digest = targets[i]
        total = 0
        missing: list[str] = []
        missing_bytes = 0
        for r, d, size in pulled[i]:
            total += size
            sizes[d] = size
            stored = (r, d) == targets[i] or (r, d) in child_manifests
            if not stored or not on_disk(d):
                missing.append(d)
                missing_bytes += size
                absent.add(d)
        for b in blob_refs[i]:
            total += b.size
            sizes[b.child] = b.size
            if (repo_id, b.child) not in linked or not on_disk(b.child):
                missing.append(b.child)
                missing_bytes += b.size
                absent.add(b.child)
        built_for = platforms.get(i, ())
        if i in missing_platforms:
            needed = ", ".join(str(Platform.for_cluster(a)) for a in missing_platforms[i])
            if i in unreadable:
                detail = f"image {digest}: {unreadable[i]}, so it cannot be shown to run on {needed}"
            elif manifests[targets[i]].media_type in INDEX_TYPES:
                detail = (f"index {digest} has no image for {needed}; it has "
                          f"{', '.join(built_for) if built_for else 'no platform entries'}")
            else:
                detail = f"image {digest} is a single-platform {built_for[0]} image; the cluster needs {needed}"
            findings.append(_finding(w, PLATFORM_MISSING, detail, digest=digest,
                                     missing=tuple(missing_platforms[i]), total=total, platforms=built_for))
        elif missing:
            findings.append(_finding(w, BLOB_MISSING, f"{len(missing)} of the blobs of {digest} are missing",
                                     digest=digest, missing=tuple(missing), total=total, missing_bytes=missing_bytes,
                                     platforms=built_for))
        else:
            findings.append(_finding(w, PRESENT, "", digest=digest, total=total, missing_bytes=0,
                                     platforms=built_for))

    findings += file_findings(definition.files, site_files or (lambda: tagged_files(inventory.db, store)), project,
                              on_disk, _finding_for_file)
    counts = Counter(f.finding for f in findings)
    required = sum(sizes.values())
    missing_total = sum(sizes[d] for d in absent)
    unknown = sum(1 for f in findings if f.bytes is None)
    ready = all(f.finding == PRESENT for f in findings)
    return {
        "definition": definition.name,
        "definitionVersion": definition.version,
        "definitionDigest": definition.digest,
        "checkedAt": time.time(),
        "durationSeconds": round(time.perf_counter() - started, 4),
        "project": project,
        "architectures": list(definition.architectures),
        "ready": ready,
        "images": len(findings),
        "counts": {name: counts.get(name, 0) for name in FINDINGS},
        "bytes": {"required": required, "present": required - missing_total, "missing": missing_total,
                  "imagesOfUnknownSize": unknown},
        "requiredVariables": definition.required_variables,
        "warnings": list(definition.warnings),
        "findings": [f.to_json() for f in sorted(findings, key=lambda f: (f.finding == PRESENT, f.reference))],
    }


def _presence(store: BlobStore) -> Callable[[str], bool]:
    """digest text -> is the blob in the store (a stat, never a read), memoised for one check."""
    seen: dict[str, bool] = {}
    # For the filesystem store, build each path as a string under the directory DataPaths gives for its
    # two-hex prefix: a pathlib join per blob costs more than the stat itself over thousands of blobs.
    paths = store.paths if isinstance(store, FilesystemBlobStore) else None
    dirs: dict[tuple[str, str], str] = {}

    def present(text: str) -> bool:
        hit = seen.get(text)
        if hit is not None:
            return hit
        algorithm, _, encoded = text.partition(":")
        if not encoded.isalnum() or not algorithm.isalnum():
            seen[text] = False  # digests in the database were validated on the way in; never build a path from junk
            return False
        digest = Digest(algorithm, encoded)
        if paths is not None:
            key = (digest.algorithm, digest.encoded[:2])
            folder = dirs.get(key)
            if folder is None:
                folder = dirs[key] = str(paths.blob(digest).parent)
            seen[text] = os.path.isfile(f"{folder}/{digest.encoded}")
        else:
            seen[text] = store.stat(digest) is not None
        return seen[text]

    return present


def _finding(w: _Wanted, finding: str, detail: str, digest: str | None = None, missing: tuple[str, ...] = (),
             total: int | None = None, missing_bytes: int | None = None,
             platforms: tuple[str, ...] = ()) -> ImageFinding:
    return ImageFinding(w.reference, w.repository, finding, detail, digest, total, missing_bytes, missing, w.kind,
                        w.sources, platforms)


def _finding_for_file(reference: str, repository: str, finding: str, detail: str, digest: str | None,
                      size: int | None, sources: tuple[str, ...]) -> ImageFinding:
    return ImageFinding(reference, repository, finding, detail, digest, size, 0 if finding == PRESENT else size,
                        (digest,) if finding == BLOB_MISSING and digest else (), "file", sources)


def _config_platform(store: BlobStore, digest_text: str, size: int) -> Platform | str:
    """The platform an image config names, or why it cannot be known (a bounded read of a stored blob)."""
    try:
        digest = Digest.parse(digest_text)
        with store.open(digest) as stream:
            return read_config_platform(stream, size)
    except PlatformError as exc:
        return str(exc)
    except (RegistryError, OSError):
        return f"its config {digest_text} cannot be read"


def run_check(definitions: ClusterDefinitions, registry: Registry, name: str, project: str,
              rules: tuple[MappingRule, ...] = (), record: bool = True) -> dict[str, Any]:
    """Check the stored definition `name`; keep the result in its history when `record`.

    Raises DefinitionNotFound. The returned result carries its history id
    as ``id`` when recorded.
    """
    result = check_definition(definitions.get(name), Inventory(registry.db), registry.store, project, rules)
    if record:
        result = {"id": definitions.record_check(result), **result}
    return result
