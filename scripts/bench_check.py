#!/usr/bin/env python3
"""Benchmark (not a test): check a 1,000-image cluster definition against a 5,000-repository registry.

Builds a throwaway data directory through the registry's own metadata
path (`Registry.publish_manifest`, `set_tag`; blob files written straight to
their digest paths without fsync), not through HTTP pushes: this measures
the check, not pushing. Half the repositories hold a two-platform index
(amd64 + arm64), half a single amd64 image; every image has a config and two
layers, all real files whose names are their sha256. The
definition names 1,000 of the repositories; the check runs five times and
the figures are printed. The single images' configs are read (their
platform), so for ``amd64,arm64`` those are ``platform_missing`` and the
indexes ``present``; for ``amd64`` all are present. Exit status 1 if the
median is 1 s or more, or the findings are not those.

    python scripts/bench_check.py [--repositories 5000] [--images 1000] [--architectures amd64,arm64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bundles.check import check_definition
from bundles.clusterdef import ClusterDefinitions, parse_archive
from registry.blobstore import BlobInfo
from registry.db import write_transaction
from registry.dbengine import Database
from registry.digest import Digest
from registry.inventory import Inventory
from registry.manifests import OCI_INDEX, OCI_MANIFEST, parse_manifest
from registry.model import Registry
from registry.paths import DataPaths

PROJECT = "spectro-images"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _store(registry: Registry, data: bytes) -> BlobInfo:
    """Write a blob file at its digest path: no fsync, since the directory is thrown away (speed, not safety)."""
    digest = Digest.of_bytes(data)
    path = registry.paths.blob(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return BlobInfo(digest, len(data))


def _blob(registry: Registry, data: bytes, media_type: str) -> dict[str, object]:
    info = _store(registry, data)
    return {"mediaType": media_type, "digest": str(info.digest), "size": info.size}


def _publish(registry: Registry, db: Database, repo_id: int, name: str, doc: dict[str, object], media_type: str,
             tag: str | None) -> dict[str, object]:
    body = json.dumps(doc, sort_keys=True).encode()
    info = _store(registry, body)
    parsed = parse_manifest(body, media_type, info.digest)
    registry.publish_manifest(db, repo_id, name, parsed, info)
    if tag:
        registry.set_tag(db, repo_id, tag, info.digest)
    return {"mediaType": media_type, "digest": str(info.digest), "size": info.size}


def _image(registry: Registry, db: Database, repo_id: int, name: str, seed: str, arch: str) -> dict[str, object]:
    layers = [_blob(registry, f"layer {seed} {arch} {i}".encode() * 8, OCI_LAYER_GZIP) for i in range(2)]
    config = _blob(registry, json.dumps({"architecture": arch, "os": "linux", "seed": seed}).encode(), OCI_CONFIG)
    for d in (*layers, config):
        registry.link(db, repo_id, BlobInfo(Digest.parse(str(d["digest"])), int(str(d["size"]))))
    return _publish(registry, db, repo_id, name, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                                                  "layers": layers}, OCI_MANIFEST, None)


def build_registry(paths: DataPaths, repositories: int) -> list[str]:
    """Fill a registry; returns the original image references it holds."""
    registry = Registry(paths)
    refs = []
    with write_transaction(registry.db) as db:
        for n in range(repositories):
            domain = ("docker.io", "quay.io", "registry.k8s.io", "ghcr.io", "gcr.io")[n % 5]
            original = f"{domain}/bench/app-{n}"
            name = f"{PROJECT}/{original}"
            repo_id = registry.ensure_repository(db, name)
            if n % 2:
                children = [{**_image(registry, db, repo_id, name, str(n), arch),
                             "platform": {"architecture": arch, "os": "linux"}} for arch in ("amd64", "arm64")]
                _publish(registry, db, repo_id, name, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                       "manifests": children}, OCI_INDEX, "1.0")
            else:
                top = _image(registry, db, repo_id, name, str(n), "amd64")
                registry.set_tag(db, repo_id, "1.0", Digest.parse(str(top["digest"])))
            refs.append(f"{original}:1.0")
    return refs


def write_definition(path: Path, refs: list[str], architectures: list[str]) -> None:
    import io
    import tarfile

    import yaml

    doc = {"apiVersion": "cargohold.io/v1", "kind": "ClusterDefinition", "name": "bench", "version": "1",
           "architectures": architectures,
           "profiles": [{"name": "infra", "type": "infra", "packs": [
               {"name": f"pack-{i}", "version": "1", "content": {"images": [{"image": r} for r in refs[i::10]]}}
               for i in range(10)]}]}
    data = yaml.safe_dump(doc).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("definition.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=5000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--architectures", default="amd64,arm64", help="the definition's architectures")
    parser.add_argument("--keep", type=Path, default=None, help="build the data directory here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-check-"))
    paths = DataPaths(root / "data")

    t0 = time.perf_counter()
    refs = build_registry(paths, args.repositories)
    build = time.perf_counter() - t0
    # Every fifth repository, so the definition spreads across the whole catalog and both kinds.
    chosen = refs[:: max(1, args.repositories // args.images)][: args.images]
    archive = root / "bench.tgz"
    write_definition(archive, chosen, args.architectures.split(","))
    store = ClusterDefinitions(paths)
    t0 = time.perf_counter()
    # Straight into the store: this measures the check, not signature checks (a throwaway data directory).
    definition = store.put(parse_archive(archive, "bench"))
    imported = time.perf_counter() - t0
    arches = set(args.architectures.split(","))
    singles = sum(1 for r in chosen if int(r.split("app-")[1].split(":")[0]) % 2 == 0)
    expected = {"present": (len(chosen) if arches <= {"amd64"} else len(chosen) - singles
                            if arches <= {"amd64", "arm64"} else 0)}
    expected["platform_missing"] = len(chosen) - expected["present"]

    registry = Registry(paths)
    times = []
    result: dict[str, object] = {}
    for _ in range(5):
        t0 = time.perf_counter()
        result = check_definition(definition, Inventory(registry.db), registry.store, PROJECT)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"registry: {args.repositories} repositories built in {build:.1f} s")
    print(f"definition: {len(definition.images)} images, imported in {imported:.2f} s")
    print(f"check: ready={result['ready']} counts={result['counts']}")
    print(f"check time over 5 runs: min {min(times) * 1000:.0f} ms, median {median * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms")
    counts = result["counts"]
    assert isinstance(counts, dict)
    right = all(counts[k] == v for k, v in expected.items())
    ok = median < 1.0 and right
    print(f"{'PASS' if ok else 'FAIL'}: median check time {'<' if median < 1.0 else '>='} 1 s"
          + ("" if right else f" (and the findings were not the expected {expected})"))
    if args.keep is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
