"""The cluster definition archive: parsing, the import rules, and refusal of bad archives."""

from __future__ import annotations

import copy
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bundles import keys
from bundles.clusterdef import (
    MAX_MEMBER_BYTES,
    MAX_TOTAL_BYTES,
    ClusterDefinition,
    ClusterDefinitions,
    DefinitionError,
    DefinitionNotFound,
    parse_archive,
)
from bundles.clusterdef_trust import SignaturePolicy, detached_signature, import_archive
from bundles.trust import TrustStore
from registry.paths import DataPaths
from tests.bundles.clusterdefs import build_archive, simple_definition

DIGEST = "sha256:" + "c" * 64


def _store(tmp_path: Path, key: keys.PrivateKey) -> tuple[ClusterDefinitions, SignaturePolicy]:
    """A definition store whose trust store trusts `key` (the default policy: unsigned is refused)."""
    paths = DataPaths(tmp_path / "data")
    trust = TrustStore(paths)
    trust.add(keys.public_pem(key), "test key")
    return ClusterDefinitions(paths), SignaturePolicy(trust)


def _import(store: ClusterDefinitions, policy: SignaturePolicy, archive: Path, key: keys.PrivateKey,
            source: str) -> ClusterDefinition:
    """Import through the verified path, with a detached signature made by `key`."""
    return import_archive(store, archive, source, policy, detached_signature(archive, key))


def full_definition() -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """An infra profile in its own file, an add-on profile inline, values and manifests as files."""
    definition = {
        "apiVersion": "cargohold.io/v1", "kind": "ClusterDefinition", "name": "edge-site", "version": "2.1.0",
        "architectures": ["amd64", "arm64"],
        "profiles": ["profiles/infra.yaml", {
            "name": "monitoring", "version": "1.0.0", "type": "add-on",
            "variables": [{"name": "retention", "default": "7d", "format": "string"}],
            "packs": [{"name": "prometheus", "version": "45.0.0", "type": "helm", "layer": "addon",
                       "values": "packs/prometheus/values.yaml",
                       "charts": [{"name": "kube-prometheus-stack", "version": "45.0.0",
                                   "repository": "oci://ghcr.io/prometheus-community/charts"}]}],
        }],
    }
    profiles = {"profiles/infra.yaml": {
        "name": "infra", "version": "1.29.0", "type": "infra",
        "variables": [{"name": "vip", "required": True, "format": "ipv4"},
                      {"name": "pod_cidr", "required": True, "default": "10.42.0.0/16", "format": "ipv4cidr"}],
        "packs": [
            {"name": "ubuntu", "version": "22.04", "layer": "os",
             "content": {"images": [{"image": "ubuntu:22.04"}]}},
            {"name": "kubernetes", "version": "1.29.0", "layer": "k8s",
             "content": {"images": [{"image": "registry.k8s.io/kube-apiserver:v1.29.0"},
                                    {"image": f"registry.k8s.io/pause:3.9@{DIGEST}"}]}},
            {"name": "cni-calico", "version": "3.27.0", "layer": "cni", "type": "manifest",
             "manifests": ["packs/calico/calico.yaml"]},
        ],
    }}
    files = {
        "packs/prometheus/values.yaml": "prometheus:\n  image:\n    registry: quay.io\n"
                                        "    repository: prometheus/prometheus\n    tag: v2.48.0\n",
        "packs/calico/calico.yaml": "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: calico-node}\n"
                                    "spec:\n  selector: {matchLabels: {k: v}}\n  template:\n    spec:\n"
                                    "      containers: [{name: node, image: 'docker.io/calico/node:v3.27.0'}]\n",
    }
    return definition, profiles, files


def test_full_definition_parses_with_every_source_of_images(tmp_path: Path) -> None:
    definition, profiles, files = full_definition()
    d = parse_archive(build_archive(tmp_path / "d.tgz", definition, files, profiles), "test")
    assert (d.name, d.version, d.architectures) == ("edge-site", "2.1.0", ("amd64", "arm64"))
    assert [(p.name, p.type) for p in d.profiles] == [("infra", "infra"), ("monitoring", "add-on")]
    assert [p.name for p in d.profiles[0].packs] == ["ubuntu", "kubernetes", "cni-calico"]
    assert {i.reference: i.kind for i in d.images} == {
        "docker.io/library/ubuntu:22.04": "image",
        "registry.k8s.io/kube-apiserver:v1.29.0": "image",
        f"registry.k8s.io/pause:3.9@{DIGEST}": "image",
        "docker.io/calico/node:v3.27.0": "image",
        "quay.io/prometheus/prometheus:v2.48.0": "image",
        "ghcr.io/prometheus-community/charts/kube-prometheus-stack:45.0.0": "chart",
    }
    calico = next(i for i in d.images if i.reference.startswith("docker.io/calico"))
    assert calico.sources == ("packs/calico/calico.yaml#1 DaemonSet/calico-node containers/node",)
    # Only the required variable without a default must be supplied.
    assert d.required_variables == [{"profile": "infra", "name": "vip", "format": "ipv4"}]
    assert d.digest.startswith("sha256:") and len(d.digest) == 71


def test_definition_under_a_top_level_directory(tmp_path: Path) -> None:
    definition, profiles, files = full_definition()
    d = parse_archive(build_archive(tmp_path / "d.tgz", definition, files, profiles, top="edge-site/"))
    assert len(d.images) == 6


def test_store_round_trip_replace_and_delete(tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    definition, profiles, files = full_definition()
    store, policy = _store(tmp_path, ec_key)
    first = _import(store, policy, build_archive(tmp_path / "a.tgz", definition, files, profiles), ec_key,
                    "file:a.tgz")
    again = store.get("edge-site")
    assert again.to_json() == first.to_json()
    assert again.signed_by == keys.key_id(ec_key)
    definition["version"] = "2.2.0"
    _import(store, policy, build_archive(tmp_path / "b.tgz", definition, files, profiles), ec_key, "file:b.tgz")
    assert store.names() == ["edge-site"]
    assert store.get("edge-site").version == "2.2.0"
    store.delete("edge-site")
    with pytest.raises(DefinitionNotFound):
        store.get("edge-site")


def _refused(tmp_path: Path, definition: dict[str, Any], files: dict[str, str] | None = None,
             profiles: dict[str, dict[str, Any]] | None = None) -> str:
    key = keys.generate("ecdsa-p256")
    store, policy = _store(tmp_path, key)
    with pytest.raises(DefinitionError) as exc:  # signed by a trusted key: refused for its content alone
        _import(store, policy, build_archive(tmp_path / "bad.tgz", definition, files, profiles), key, "test")
    assert store.names() == []  # nothing stored
    return str(exc.value)


def test_two_infrastructure_profiles_are_refused(tmp_path: Path) -> None:
    d = simple_definition("two-infra", ["nginx:1"])
    second = copy.deepcopy(d["profiles"][0])
    second["name"], second["packs"][0]["name"] = "infra-b", "other"
    d["profiles"].append(second)
    message = _refused(tmp_path, d)
    assert "at most one infrastructure profile" in message and "infra, infra-b" in message


def test_a_pack_in_two_profiles_is_refused(tmp_path: Path) -> None:
    d = simple_definition("dup-pack", ["nginx:1"])
    d["profiles"].append({"name": "addon", "type": "add-on", "packs": [{"name": "base", "version": "2"}]})
    assert "pack 'base' is in two profiles: 'infra' and 'addon'" in _refused(tmp_path, d)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["profiles"][0].update(type="cluster"), "profile type 'cluster' must be one of"),
    (lambda d: d["profiles"][0]["packs"][0].pop("version"), "packs[0] (base): field 'version' is required"),
    (lambda d: d["profiles"][0]["packs"][0].update(manifests=["missing.yaml"]),
     "manifests[0]: file 'missing.yaml' is not in the archive"),
    (lambda d: d["profiles"][0]["packs"][0].update(manifests=["../etc/passwd"]), "must be relative and stay inside"),
    (lambda d: d["profiles"][0]["packs"][0]["content"]["images"].append({"image": "Bad Name!"}),
     "content.images[1]: invalid image reference"),
    (lambda d: d["profiles"][0]["variables"].append({"name": "x", "required": "yes"}),
     "variables[0]: field 'required' must be true or false"),
    (lambda d: d.update(profiles=[]), "field 'profiles' must list at least one profile"),
    (lambda d: d.update(name="Upper"), "name 'Upper' must be lowercase"),
    (lambda d: d.update(profiles=["nowhere.yaml"]), "profiles[0]: file 'nowhere.yaml' is not in the archive"),
])
def test_bad_documents_name_the_file_and_field(tmp_path: Path, mutate: Any, expected: str) -> None:
    d = simple_definition("bad", ["nginx:1"])
    mutate(d)
    message = _refused(tmp_path, d)
    assert expected in message
    assert "definition.yaml" in message or "archive" in message or "content.images" in message


def test_invalid_manifest_yaml_names_the_file(tmp_path: Path) -> None:
    d = simple_definition("bad-yaml", ["nginx:1"])
    d["profiles"][0]["packs"][0]["manifests"] = ["m.yaml"]
    assert "m.yaml: not valid YAML" in _refused(tmp_path, d, {"m.yaml": "kind: Pod\n  spec: [\n"})


def _raw_tgz(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(("entry", "expected"), [
    (_file("/abs/definition.yaml", b"x"), "absolute or malformed path"),
    (_file("a/../../definition.yaml", b"x"), "leaves the archive"),
    (_special("definition.yaml", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
    (_special("definition.yaml", tarfile.LNKTYPE, "x"), "is a hard link"),
    (_special("dev", tarfile.CHRTYPE), "device or special file"),
    (_special("fifo", tarfile.FIFOTYPE), "device or special file"),
])
def test_hostile_archives_are_refused(tmp_path: Path, entry: Any, expected: str) -> None:
    info, data = entry if isinstance(entry, tuple) else (entry, None)
    path = _raw_tgz(tmp_path / "bad.tgz", [(info, data)])
    with pytest.raises(DefinitionError, match=expected):
        parse_archive(path)


def test_oversized_member_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # A sparse-looking header claiming a huge size: refused from the header alone.
    info = tarfile.TarInfo("definition.yaml")
    info.size = MAX_MEMBER_BYTES + 1
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(DefinitionError, match=f"the limit is {MAX_MEMBER_BYTES}"):
        parse_archive(io.BytesIO(raw.getvalue()))


@pytest.mark.parametrize(("data", "expected"), [
    (b"this is not a tar", "not a readable gzip-compressed tar"),
    (b"", "not a readable gzip-compressed tar"),
])
def test_not_an_archive(data: bytes, expected: str) -> None:
    with pytest.raises(DefinitionError, match=expected):
        parse_archive(io.BytesIO(data))


def test_archive_without_definition_document(tmp_path: Path) -> None:
    path = _raw_tgz(tmp_path / "x.tgz", [_file("profile.yaml", b"name: x\n")])
    with pytest.raises(DefinitionError, match=r"has no definition\.yaml"):
        parse_archive(path)


def test_total_unpacked_size_is_capped(tmp_path: Path) -> None:
    chunk = MAX_MEMBER_BYTES - 1
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        for i in range(MAX_TOTAL_BYTES // chunk + 1):
            info = tarfile.TarInfo(f"filler-{i}.bin")
            info.size = chunk
            tar.addfile(info, io.BytesIO(bytes(chunk)))
    with pytest.raises(DefinitionError, match=f"unpacks to more than {MAX_TOTAL_BYTES} bytes"):
        parse_archive(io.BytesIO(raw.getvalue()))
