"""A bundle import whose new content would take a project past its storage quota is refused, and nothing changes.

Driven through the import core over a real data directory (real SQLite and
blob store), like test_import_refusals: the refusal is QUOTA_EXCEEDED,
names the project and the numbers, and leaves every row and blob file as it
was; with room in the quota the same bundle imports, and the project's
usage is exactly what it brought.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bundles import keys
from bundles.importer import BundleRefused
from registry.access import Projects
from tests.bundles import craft
from tests.bundles.conftest import make_site, snapshot, unique_layout


def _usage(site: object, project: str) -> int:
    """The project's usage as Harbor counts it: distinct blobs its repositories hold (computed here independently)."""
    db = site.registry.db  # type: ignore[attr-defined]
    return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE digest IN (SELECT rb.digest FROM "
                          "repository_blobs rb JOIN repositories r ON r.id = rb.repository_id WHERE r.name LIKE ?)",
                          [f"{project}/%"]).fetchone()[0])


def test_import_past_the_quota_is_refused_before_anything_is_published(tmp_path: Path,
                                                                       ec_key: keys.PrivateKey) -> None:
    site = make_site(tmp_path / "data", ec_key)
    projects = Projects(site.registry)
    project = projects.create("spectro-images", True, None, 50_000)
    layout, refs = unique_layout(tmp_path / "layout", images=2, layer_sizes=(40_000, 30_000), multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    before = snapshot(site.paths.root)
    with pytest.raises(BundleRefused) as info:
        site.importer().run(bundle)
    assert info.value.code == "QUOTA_EXCEEDED", info.value.message
    assert "project spectro-images" in info.value.message and "50000-byte storage quota" in info.value.message
    assert snapshot(site.paths.root) == before
    for ref in refs:
        assert site.registry.repository_id("spectro-images/" + ref.rsplit(":", 1)[0]) is None
    assert _usage(site, "spectro-images") == 0
    # With room, the same bundle imports; its usage is every distinct blob and manifest it linked.
    projects.update(project, None, 10 << 20)
    report = site.importer().run(bundle)
    assert len(report["images"]) == 2
    linked = site.registry.db.execute(
        "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (SELECT rb.digest FROM repository_blobs rb)"
    ).fetchone()[0]
    assert _usage(site, "spectro-images") == linked > 70_000
    # Importing it again brings nothing new, so even a quota now below the usage lets it through.
    projects.update(projects.get("spectro-images"), None, 1000)  # type: ignore[arg-type]
    site.importer().run(bundle)
