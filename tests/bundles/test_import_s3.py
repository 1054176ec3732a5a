"""Bundle import into an object store (a real Ceph RGW, tests/s3engines.py): all or nothing, deltas included.

The import core runs in-process over a registry whose blob store is the
bucket. A publish that fails after the staged blobs went into the store
takes them out again and leaves the database as it was (the failure is
injected into `publish`, the one step that cannot be made to fail from
outside); a delta bundle reads the manifests its base brought from the store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bundles import importer as importer_module
from bundles import keys
from bundles.importer import BundleRefused
from bundles.trust import TrustStore
from registry.errors import RegistryError
from registry.model import Registry
from registry.paths import DataPaths
from registry.s3store import Credentials, S3BlobStore, StorageURL
from tests.bundles import craft
from tests.bundles.conftest import Site, snapshot, source_digest, unique_layout
from tests.s3engines import S3Engine


def s3_site(root: Path, engine: S3Engine, key: keys.PrivateKey) -> tuple[Site, S3BlobStore]:
    paths = DataPaths(root)
    paths.ensure()
    store = S3BlobStore(StorageURL(engine.new_bucket(), "site", engine.endpoint, engine.region),
                        Credentials(engine.access_key, engine.secret_key))
    trust = TrustStore(paths)
    trust.add(keys.public_pem(key), "test key")
    return Site(paths, Registry(paths, store), trust), store


def objects(store: S3BlobStore) -> set[str]:
    return {str(b.digest) for b in store.walk()}


def test_a_failed_publish_takes_its_blobs_out_of_the_bucket(ceph_rgw: S3Engine, tmp_path: Path,
                                                             ec_key: keys.PrivateKey,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    site, store = s3_site(tmp_path / "data", ceph_rgw, ec_key)
    first, _ = unique_layout(tmp_path / "first", images=1, multiarch=False)
    site.importer().run(craft.write_bundle(tmp_path / "first.tar.zst", craft.standard_entries(first.root, ec_key)))
    before_objects, before = objects(store), snapshot(site.paths.root)
    assert before_objects, "the first import put its blobs in the bucket"

    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    seen: list[set[str]] = []

    def failing_publish(*args: object, **kwargs: object) -> None:
        seen.append(objects(store))  # what the import had put in the store when publishing began
        raise RegistryError("UNKNOWN", "injected failure while publishing")

    monkeypatch.setattr(importer_module, "publish", failing_publish)
    with pytest.raises(BundleRefused) as refused:
        site.importer().run(bundle)
    assert refused.value.code == "PUBLISH" and "nothing was published" in refused.value.message
    assert seen and len(seen[0] - before_objects) >= 3, "the staged blobs were in the store before the commit"
    assert objects(store) == before_objects, "every object the failed import put there is gone again"
    assert snapshot(site.paths.root)["tables"] == before["tables"]
    assert site.registry.repository_id("spectro-images/" + refs[0].rsplit(":", 1)[0]) is None

    monkeypatch.undo()
    site.importer().run(bundle)
    record = site.registry.resolve("spectro-images/" + refs[0].rsplit(":", 1)[0], refs[0].rsplit(":", 1)[1])
    assert str(record.digest) == source_digest(layout.root, refs[0])
    assert {f"sha256:{p.name}" for p in (layout.root / "blobs" / "sha256").iterdir()} <= objects(store)


def test_a_delta_bundle_reads_its_base_from_the_bucket(ceph_rgw: S3Engine, tmp_path: Path,
                                                       ec_key: keys.PrivateKey,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site, store = s3_site(tmp_path / "data", ceph_rgw, ec_key)
    layout, base_refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    base = craft.write_bundle(tmp_path / "base.tar.zst", craft.standard_entries(layout.root, ec_key,
                                                                               name="site", version="1"))
    base_blobs = {f"blobs/sha256/{p.name}": p.stat().st_size for p in (layout.root / "blobs" / "sha256").iterdir()}
    new_ref = base_refs[0].replace(":v0", ":v1-next")
    layout.add_image([120_000], seed=int(time.time()) % 100_000 + 7, ref=new_ref)
    delta = craft.write_bundle(tmp_path / "delta.tar.zst", craft.standard_entries(
        layout.root, ec_key, name="site", version="2", omit=frozenset(base_blobs),
        base={"name": "site", "version": "1"},
        external=[(f"sha256:{n.rsplit('/', 1)[1]}", s) for n, s in base_blobs.items()]))
    site.importer().run(base)
    assert not any(site.paths.blobs.rglob("*.*")) and not [p for p in site.paths.blobs.rglob("*") if p.is_file()]
    fetched: list[str] = []
    original = importer_module._Staging.fetched

    def spy(self: importer_module._Staging, digest: object, store: object) -> Path:
        fetched.append(str(digest))
        return original(self, digest, store)  # type: ignore[arg-type]

    monkeypatch.setattr(importer_module._Staging, "fetched", spy)
    report = site.importer().run(delta)
    assert report["blobs"]["reused"] == 0
    assert source_digest(layout.root, base_refs[0]) in fetched, "the base's manifest was read from the bucket"
    for ref in (base_refs[0], new_ref):
        repo, tag = ref.rsplit(":", 1)
        assert str(site.registry.resolve(f"spectro-images/{repo}", tag).digest) == source_digest(layout.root, ref)
    assert {f"sha256:{p.name}" for p in (layout.root / "blobs" / "sha256").iterdir()} <= objects(store)
    assert not list((site.paths.imports / "staging").glob("*/fetched")), "local copies go with the staging"
