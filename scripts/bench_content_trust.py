#!/usr/bin/env python3
"""Benchmark (not a test): what the cosign content-trust check costs a manifest GET.

Builds a throwaway data directory through the registry's own metadata path
(`Registry.publish_manifest`, `set_tag`; blob files written straight to their
digest paths), with N images in one project, each signed in cosign's tag
scheme by one ECDSA P-256 key that is trusted. Then it times, per image,
`ImageTrust.pull_refusal` (what `GET /v2/<name>/manifests/<ref>` adds):

- in a project without the policy (one metadata lookup);
- with the policy on, first call (signature found, read and verified);
- with the policy on, again (the verification cache answers).

Figures are printed per call (median and p95). Exit status 1 if a signed
image is refused, or if the cached check takes 1 ms or more at the median.

    python scripts/bench_content_trust.py [--images 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry import cosign
from registry.access import Projects
from registry.blobstore import BlobInfo
from registry.db import migrate, write_transaction
from registry.dbengine import Database
from registry.digest import Digest
from registry.image_trust import CONTENT_TRUST_COSIGN, ImageTrust
from registry.manifests import OCI_MANIFEST, parse_manifest
from registry.model import ManifestRecord, Registry
from registry.paths import DataPaths


def _store(registry: Registry, data: bytes) -> BlobInfo:
    digest = Digest.of_bytes(data)
    path = registry.paths.blob(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return BlobInfo(digest, len(data))


def _desc(info: BlobInfo, media_type: str, annotations: dict[str, str] | None = None) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": media_type, "digest": str(info.digest), "size": info.size}
    if annotations:
        out["annotations"] = annotations
    return out


def _publish(registry: Registry, db: Database, repo_id: int, name: str, doc: dict[str, object], tag: str) -> Digest:
    body = json.dumps(doc).encode()
    info = _store(registry, body)
    registry.publish_manifest(db, repo_id, name, parse_manifest(body, OCI_MANIFEST, info.digest), info)
    registry.set_tag(db, repo_id, tag, info.digest)
    return info.digest


def build(paths: DataPaths, images: int, key: ec.EllipticCurvePrivateKey) -> tuple[Registry, list[ManifestRecord]]:
    migrate(paths)
    registry = Registry(paths)
    config = _store(registry, b'{"architecture":"amd64","os":"linux"}')
    records = []
    with write_transaction(registry.db) as db:
        for n in range(images):
            name = f"signed/app-{n}"
            repo_id = registry.ensure_repository(db, name)
            layer = _store(registry, f"layer {n}".encode() * 64)
            for info in (config, layer):
                registry.link(db, repo_id, info)
            digest = _publish(registry, db, repo_id, name, {
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": _desc(config, "application/vnd.oci.image.config.v1+json"),
                "layers": [_desc(layer, "application/vnd.oci.image.layer.v1.tar+gzip")]}, "1")
            payload = cosign.payload(f"bench/{name}", digest)
            pinfo = _store(registry, payload)
            registry.link(db, repo_id, pinfo)
            _publish(registry, db, repo_id, name, {
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": _desc(config, "application/vnd.oci.image.config.v1+json"),
                "layers": [_desc(pinfo, cosign.SIMPLE_SIGNING_TYPE,
                                 {cosign.SIGNATURE_ANNOTATION: cosign.sign(key, payload)})]},
                cosign.cosign_tag(digest))
            records.append(registry.resolve(name, "1"))
    return registry, records


def _time(fn: object, records: list[ManifestRecord]) -> list[float]:
    out = []
    for record in records:
        start = time.perf_counter()
        refusal = fn(record, "1")  # type: ignore[operator]
        out.append(time.perf_counter() - start)
        if refusal is not None:
            raise SystemExit(f"a signed image was refused: {refusal}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--keep", type=Path, default=None, help="build the data directory here and keep it")
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    with tempfile.TemporaryDirectory() as tmp:
        paths = DataPaths(args.keep or Path(tmp))
        registry, records = build(paths, args.images, key)
        project = Projects(registry).ensure("signed", public=True)
        trust = ImageTrust(registry)
        trust.add_key(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
        off = _time(trust.pull_refusal, records)
        trust.set_metadata(project.id, {CONTENT_TRUST_COSIGN: "true"})
        cold = _time(trust.pull_refusal, records)
        warm = _time(trust.pull_refusal, records)
    ok = True
    for label, figures in (("policy off", off), ("policy on, first check", cold), ("policy on, cached", warm)):
        ms = sorted(f * 1000 for f in figures)
        print(f"{label:<24} median {statistics.median(ms):7.3f} ms   p95 {ms[int(len(ms) * 0.95) - 1]:7.3f} ms"
              f"   ({len(ms)} images)")
    if statistics.median(warm) >= 0.001:
        print("cached check is 1 ms or more at the median", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
