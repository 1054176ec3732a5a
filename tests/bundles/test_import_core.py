"""The import core's placement and side content: mapping rules, referrers, charts, cluster definitions,
concurrent imports of one bundle, and memory use.

In-process over a real data directory, except the memory test, which runs
the real CLI and reads its peak RSS from the kernel.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml

from bundles import format as fmt
from bundles import keys
from bundles.clusterdef import ClusterDefinitions
from bundles.importer import BundleRefused, _Staging
from bundles.mirror import for_registry
from registry.digest import Digest
from registry.names import MappingRule
from tests.bundles import craft
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.bundles.conftest import REPO_ROOT, big_layout, cli, make_site, snapshot, unique_layout
from tests.images import OCI_MANIFEST, OciLayout


def test_mapping_rules_place_images_elsewhere(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1)
    site = make_site(tmp_path / "data", ec_key)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    rules = (MappingRule("docker.io/cargotest", "registry.example.com/mirror"),)
    report = site.importer(mapping_rules=rules, project="edge").run(bundle)
    placed = {i["reference"]: i["repository"] for i in report["images"]}
    app_ref, multi_ref = refs
    assert placed[app_ref] == "edge/registry.example.com/mirror/" + app_ref.split("/", 2)[2].rsplit(":", 1)[0]
    assert placed[multi_ref] == "edge/" + multi_ref.rsplit(":", 1)[0]  # no rule matched: nested as it is
    for ref, repository in placed.items():
        tag = ref.rsplit(":", 1)[1]
        assert str(site.registry.resolve(repository, tag).digest) == next(
            i["digest"] for i in report["images"] if i["reference"] == ref)


def test_untagged_referrer_is_published_with_its_subject(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    index = json.loads((layout.root / "index.json").read_text())
    subject = index["manifests"][0]
    empty = layout.add_blob(b"{}", "application/vnd.oci.empty.v1+json")
    sbom = layout.add_blob(b'{"sbom": true}', "application/spdx+json")
    referrer = layout.add_blob(json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
        "config": empty.descriptor(), "layers": [sbom.descriptor()],
        "subject": {"mediaType": subject["mediaType"], "digest": subject["digest"], "size": subject["size"]},
    }).encode(), OCI_MANIFEST)
    index["manifests"].append(referrer.descriptor())  # untagged, as oras/cosign leave them
    (layout.root / "index.json").write_text(json.dumps(index))
    site = make_site(tmp_path / "data", ec_key)
    site.importer().run(craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key)))
    repository = "spectro-images/" + refs[0].rsplit(":", 1)[0]
    found = site.registry.referrers(repository, Digest.parse(subject["digest"]))
    assert [str(d.digest) for d in found] == [referrer.digest]
    assert site.registry.tags(repository).items == [refs[0].rsplit(":", 1)[1]]


def _with_files(layout_root: Path, key: keys.PrivateKey, chart: Path, definition: Path) -> list[craft.Entry]:
    files = [(f"charts/{chart.name}", chart), (f"cluster-definitions/{definition.name}", definition)]
    return craft.standard_entries(
        layout_root, key, extra=files,
        charts=[fmt.FileEntry("edge-app", "0.3.1", files[0][0])],
        definitions=[fmt.FileEntry("edge-prod", "1.0.0", files[1][0])])


def test_charts_and_cluster_definitions_are_imported(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    chart = tmp_path / "edge-app-0.3.1.tgz"
    chart.write_bytes(b"\x1f\x8b not really a chart, but bytes the bundle vouches for")
    name = f"edge-prod-{uuid.uuid4().hex[:6]}"
    definition = build_archive(tmp_path / "edge-prod.tgz", simple_definition(name, refs))
    site = make_site(tmp_path / "data", ec_key)
    report = site.importer().run(craft.write_bundle(tmp_path / "b.tar.zst",
                                                    _with_files(layout.root, ec_key, chart, definition)))
    assert report["clusterDefinitions"] == [name]
    assert ClusterDefinitions(site.paths).get(name).name == name
    [imported_chart] = report["charts"]
    assert imported_chart["name"] == "edge-app" and imported_chart["version"] == "0.3.1"
    stored = site.registry.store.open(Digest.parse(imported_chart["digest"]))
    with stored:
        assert stored.read() == chart.read_bytes()


def test_an_invalid_cluster_definition_refuses_the_whole_bundle(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    chart = tmp_path / "c.tgz"
    chart.write_bytes(b"chart")
    broken = simple_definition("broken", refs)
    broken["profiles"].append(dict(broken["profiles"][0], name="infra2"))  # two infrastructure profiles
    definition = build_archive(tmp_path / "broken.tgz", broken)
    site = make_site(tmp_path / "data", ec_key)
    before = snapshot(site.paths.root)
    with pytest.raises(BundleRefused) as info:
        site.importer().run(craft.write_bundle(tmp_path / "b.tar.zst",
                                               _with_files(layout.root, ec_key, chart, definition)))
    assert info.value.code == "FORMAT" and "cluster-definitions/broken.tgz" in info.value.message
    assert snapshot(site.paths.root) == before
    assert ClusterDefinitions(site.paths).names() == []


def test_the_same_bundle_twice_at_once_is_refused_busy(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, _ = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    entries = craft.standard_entries(layout.root, ec_key)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", entries)
    site = make_site(tmp_path / "data", ec_key)
    manifest_digest = Digest.of_bytes(entries[0].data)  # type: ignore[arg-type]
    holder = _Staging(site.paths.imports / "staging" / manifest_digest.encoded)  # another import's lock
    try:
        with pytest.raises(BundleRefused) as info:
            site.importer().run(bundle)
        assert info.value.code == "BUSY"
    finally:
        holder.remove()
    assert site.importer().run(bundle)["blobs"]["new"] > 0
    with (tmp_path / "probe").open("w") as f:  # and the lock was released
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_memory_stays_flat_for_a_bundle_larger_than_the_limit(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """The CLI importing a 192 MiB bundle peaks far below its size (the process alone is ~60 MiB)."""
    layout, _ = big_layout(tmp_path / "layout", layers=12, layer_size=16 << 20)
    bundle = craft.write_bundle(tmp_path / "big.tar.zst", craft.standard_entries(layout.root, ec_key), level=1)
    assert bundle.stat().st_size > 190 << 20
    data = tmp_path / "data"
    (tmp_path / "k.pub").write_bytes(keys.public_pem(ec_key))
    cli("keys", "add", str(tmp_path / "k.pub"), "--data-dir", str(data))
    # Measure in a child of a fresh interpreter so RUSAGE_CHILDREN sees only the import.
    probe = (
        "import resource, subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '-m', 'web.cli', 'bundle', 'import', {str(bundle)!r}, '--data-dir', "
        f"{str(data)!r}, '--quiet'], capture_output=True, text=True)\n"
        "assert p.returncode == 0, p.stderr\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    peak_kib = int(out.stdout.strip())
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib // 1024} MiB while importing a 192 MiB bundle"


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_member_names_in_pax_and_gnu_tars(tmp_path: Path, ec_key: keys.PrivateKey, tar_format: int) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    chart = tmp_path / ("edge-app-with-a-rather-long-chart-name-" + "x" * 120 + "-0.3.1.tgz")
    chart.write_bytes(b"chart bytes " * 1000)
    member = f"charts/{chart.name}"
    assert len(member) > 100  # beyond the ustar name field: a pax header or a GNU long-name member carries it
    entries = craft.standard_entries(layout.root, ec_key, extra=[(member, chart)],
                                     charts=[fmt.FileEntry("edge-app", "0.3.1", member)])
    site = make_site(tmp_path / "data", ec_key)
    report = site.importer().run(craft.write_bundle(tmp_path / "b.tar.zst", entries, tar_format=tar_format))
    assert [c["path"] for c in report["charts"]] == [member]
    assert [i["reference"] for i in report["images"]] == refs


def test_images_from_a_registry_with_a_port_nest_as_host_port(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """``localhost:5000/app:1`` lands in ``spectro-images/localhost_5000/app`` (':' cannot be in a name),
    and the mirror configuration names the host ``localhost:5000`` again, as containerd and k3s do."""
    tag = uuid.uuid4().hex[:10]
    seed = uuid.uuid4().int % 1_000_000
    layout = tmp_path / "layout"
    oci = OciLayout(layout)
    refs = {f"localhost:5000/app-{tag}:1": "spectro-images/localhost_5000/app-" + tag,
            f"myreg.local:5000/team/app-{tag}:2": f"spectro-images/myreg.local_5000/team/app-{tag}",
            f"10.0.0.5:8443/x-{tag}:3": f"spectro-images/10.0.0.5_8443/x-{tag}"}
    blobs = {ref: oci.add_image([20_000], seed=seed + i, ref=ref) for i, ref in enumerate(refs)}
    site = make_site(tmp_path / "data", ec_key)
    report = site.importer().run(craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout, ec_key)))
    assert {i["reference"]: i["repository"] for i in report["images"]} == refs
    for ref, repository in refs.items():
        assert site.registry.resolve(repository, ref.rsplit(":", 1)[1]).digest == Digest.parse(blobs[ref].digest)

    files = for_registry(site.registry, "spectro-images", "10.0.0.10:5000")
    for host in ("localhost:5000", "myreg.local:5000", "10.0.0.5:8443"):
        assert f"containerd/mirror/{host}/hosts.toml" in files
        assert f"https://{host}" in files[f"containerd/mirror/{host}/hosts.toml"].decode()
    assert "http://10.0.0.10:5000/v2/spectro-images/myreg.local_5000" in \
        files["containerd/override/myreg.local:5000/hosts.toml"].decode()
    mirrors = yaml.safe_load(files["k3s/registries.yaml"])["mirrors"]
    assert mirrors["localhost:5000"]["rewrite"] == {"^(.*)$": "spectro-images/localhost_5000/$1"}
