"""Build real OCI image layouts on disk for tests, with no network.

Layers are genuine gzip-compressed tars holding files of pseudo-random bytes,
configs are genuine image configs, so skopeo, podman, containerd, umoci and
oras accept what these produce. `index.json` entries carry
``org.opencontainers.image.ref.name`` as bundles require.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    """A blob written to a layout: its descriptor fields."""

    media_type: str
    digest: str
    size: int

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def _ref_name(entry: dict[str, object]) -> object:
    annotations = entry.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def layer_bytes(size: int, seed: int) -> bytes:
    """A gzip tar layer with one file of `size` pseudo-random bytes (incompressible)."""
    rnd = random.Random(seed)
    payload = rnd.randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/file-{seed}.bin")
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


@dataclass
class OciLayout:
    """An OCI image layout directory being written."""

    root: Path
    index_entries: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self._write_index()

    def add_blob(self, data: bytes, media_type: str) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / "sha256" / digest
        if not path.exists():
            path.write_bytes(data)
        return Blob(media_type, f"sha256:{digest}", len(data))

    def add_image(self, layer_sizes: list[int], seed: int = 0, architecture: str = "amd64",
                  os_name: str = "linux", ref: str | None = None,
                  annotations: dict[str, str] | None = None) -> Blob:
        """Write an image (config + layers + manifest); tag it in index.json if `ref` is given."""
        layers = [self.add_blob(layer_bytes(size, seed * 1000 + i), OCI_LAYER) for i, size in enumerate(layer_sizes)]
        diff_ids = [f"sha256:{hashlib.sha256(gzip.decompress(self.read(b))).hexdigest()}" for b in layers]
        config = {
            "architecture": architecture, "os": os_name, "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/true"], "Labels": {"seed": str(seed)}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
        }
        config_blob = self.add_blob(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
        manifest: dict[str, object] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_blob.descriptor(),
            "layers": [b.descriptor() for b in layers],
        }
        if annotations:
            manifest["annotations"] = annotations
        blob = self.add_blob(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
        if ref is not None:
            self.tag(blob, ref, {"architecture": architecture, "os": os_name})
        return blob

    def add_index(self, images: list[tuple[Blob, str, str]], ref: str | None = None) -> Blob:
        """Write an index over (manifest, architecture, os) entries; tag it if `ref` is given."""
        index = {
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [b.descriptor(platform={"architecture": arch, "os": os_name}) for b, arch, os_name in images],
        }
        blob = self.add_blob(json.dumps(index, sort_keys=True).encode(), OCI_INDEX)
        if ref is not None:
            self.tag(blob, ref)
        return blob

    def add_multiarch(self, layer_sizes: list[int], ref: str, seed: int = 0,
                      platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64")) -> Blob:
        """An index with one image per platform ("os/arch"), tagged `ref`."""
        images = []
        for i, platform in enumerate(platforms):
            os_name, arch = platform.split("/")[:2]
            images.append((self.add_image(layer_sizes, seed=seed * 100 + i, architecture=arch, os_name=os_name),
                           arch, os_name))
        return self.add_index(images, ref=ref)

    def tag(self, blob: Blob, ref: str, platform: dict[str, str] | None = None) -> None:
        extra: dict[str, object] = {"annotations": {REF_NAME: ref}}
        if platform and blob.media_type == OCI_MANIFEST:
            extra["platform"] = platform
        self.index_entries = [e for e in self.index_entries if _ref_name(e) != ref]
        self.index_entries.append(blob.descriptor(**extra))
        self._write_index()

    def read(self, blob: Blob) -> bytes:
        return (self.root / "blobs" / "sha256" / blob.digest.split(":", 1)[1]).read_bytes()

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.index_entries}
        tmp = self.root / "index.json.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.root / "index.json")
