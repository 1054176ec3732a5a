"""Image discovery: every workload kind, every container list, values files, charts, normalisation."""

from __future__ import annotations

import json

import pytest
import yaml

from bundles.discovery import DiscoveryError, chart_reference, manifest_images, normalise, values_images
from registry.names import ImageReference, MappingRule, map_reference, mirror_repository, parse_mapping_rules

DIGEST = "sha256:" + "d" * 64


def pod_spec(tag: str) -> dict[str, object]:
    """A pod spec with one image in each of the three container lists."""
    return {
        "containers": [{"name": "main", "image": f"example.com/{tag}/main:1"}],
        "initContainers": [{"name": "init", "image": f"example.com/{tag}/init:1"}],
        "ephemeralContainers": [{"name": "debug", "image": f"example.com/{tag}/debug:1"}],
    }


def workload(kind: str) -> dict[str, object]:
    tag = kind.lower()
    template = {"metadata": {"labels": {"app": tag}}, "spec": pod_spec(tag)}
    meta = {"name": f"my-{tag}"}
    api = {"Pod": "v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    if kind == "Pod":
        return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": pod_spec(tag)}
    if kind == "CronJob":
        return {"apiVersion": api, "kind": kind, "metadata": meta,
                "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}}
    spec: dict[str, object] = {"template": template}
    if kind != "Job":
        spec["selector"] = {"matchLabels": {"app": tag}}
    if kind == "StatefulSet":
        spec["serviceName"] = tag
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


KINDS = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_workload_kind_yields_all_three_container_lists(kind: str) -> None:
    found = manifest_images(yaml.safe_dump(workload(kind)), "m.yaml")
    tag = kind.lower()
    assert sorted(f.reference for f in found) == sorted(
        f"example.com/{tag}/{c}:1" for c in ("main", "init", "debug"))
    assert {f.where for f in found} == {f"m.yaml#1 {kind}/my-{tag} {field}/{name}" for field, name in
                                        [("containers", "main"), ("init_containers", "init"),
                                         ("ephemeral_containers", "debug")]}


def test_multi_document_file_with_other_kinds_and_a_list() -> None:
    docs = [workload(k) for k in KINDS]
    docs.insert(2, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                    "spec": {"ports": [{"port": 80}]}})
    docs.append({"apiVersion": "v1", "kind": "List", "items": [
        {**workload("Deployment"), "metadata": {"name": "listed"}}]})
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                 "data": {"image": "not-an-image-field:1"}})
    text = yaml.safe_dump_all(docs) + "---\n"  # a trailing empty document is allowed
    found = manifest_images(text, "all.yaml")
    assert len(found) == 3 * len(KINDS) + 3
    assert "docker.io/library/not-an-image-field:1" not in {f.reference for f in found}
    assert sum(1 for f in found if "items[0] Deployment/listed" in f.where) == 3


def test_json_manifest_is_read_too() -> None:
    found = manifest_images(json.dumps(workload("Deployment")), "d.json")
    assert len(found) == 3


def test_manifest_errors_name_the_document() -> None:
    with pytest.raises(DiscoveryError, match=r"m.yaml: document 2 is not a mapping"):
        manifest_images("kind: Pod\n---\n- a list\n", "m.yaml")
    bad = workload("Pod")
    bad["spec"]["containers"][0]["image"] = "UPPER/Case:1"  # type: ignore[index]
    with pytest.raises(DiscoveryError, match=r"m.yaml#1 Pod/my-pod containers/main: invalid image reference"):
        manifest_images(yaml.safe_dump(bad), "m.yaml")
    missing = workload("Pod")
    del missing["spec"]["containers"][0]["image"]  # type: ignore[index]
    with pytest.raises(DiscoveryError, match="containers entry 'main' has no image"):
        manifest_images(yaml.safe_dump(missing), "m.yaml")


def test_values_convention_nested_anywhere() -> None:
    text = f"""
image:
  repository: nginx
  tag: "1.25"
controller:
  image:
    registry: registry.k8s.io
    repository: ingress-nginx/controller
    tag: 1.10
    digest: {DIGEST}
  admissionWebhooks:
    patch:
      image: {{registry: registry.k8s.io, repository: ingress-nginx/kube-webhook-certgen, digest: {DIGEST}}}
sidecars:
  - name: a
    configReloaderImage: {{repository: quay.io/prometheus-operator/prometheus-config-reloader, tag: v0.70.0}}
nodeSelector: {{image: not-a-block}}
untagged:
  image: {{repository: ghcr.io/org/untagged}}
"""
    found, warnings = values_images(text, "values.yaml")
    assert {f.reference for f in found} == {
        "docker.io/library/nginx:1.25",
        f"registry.k8s.io/ingress-nginx/controller:1.10@{DIGEST}",  # 1.10 as written, not the float 1.1
        f"registry.k8s.io/ingress-nginx/kube-webhook-certgen@{DIGEST}",
        "quay.io/prometheus-operator/prometheus-config-reloader:v0.70.0",
    }
    assert [f.where for f in found if "certgen" in f.reference] == [
        "values.yaml at controller.admissionWebhooks.patch.image"]
    assert len(warnings) == 1 and "untagged.image" in warnings[0] and "no tag or digest" in warnings[0]


def test_chart_references() -> None:
    oci = chart_reference("cilium", "1.15.0+build1", "oci://Quay.io/cilium/charts/", "pack cni")
    assert oci is not None and (oci.reference, oci.kind) == ("quay.io/cilium/charts/cilium:1.15.0_build1", "chart")
    assert chart_reference("x", "1", "https://charts.example.com", "p") is None
    whole = chart_reference("", "", "oci://ghcr.io/org/chart:2.0.0", "p")
    assert whole is not None and whole.reference == "ghcr.io/org/chart:2.0.0"


@pytest.mark.parametrize(("text", "expected"), [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.25", "docker.io/library/nginx:1.25"),
    ("library/nginx:1.25", "docker.io/library/nginx:1.25"),
    ("docker.io/nginx:1.25", "docker.io/library/nginx:1.25"),
    ("index.docker.io/library/nginx:1.25", "docker.io/library/nginx:1.25"),
    ("registry-1.docker.io/bitnami/redis:7", "docker.io/bitnami/redis:7"),
    ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
    ("quay.io/org/app", "quay.io/org/app:latest"),
    (f"quay.io/org/app@{DIGEST}", f"quay.io/org/app@{DIGEST}"),
    (f"quay.io/org/app:v1@{DIGEST}", f"quay.io/org/app:v1@{DIGEST}"),
    ("localhost/app:1", "localhost/app:1"),
    ("  gcr.io/a/b/c:v1 ", "gcr.io/a/b/c:v1"),
])
def test_normalisation(text: str, expected: str) -> None:
    assert normalise(text, "here") == expected


@pytest.mark.parametrize("text", ["", "UPPER:1", "nginx:bad tag", "nginx@sha256:short", "a//b"])
def test_normalisation_refuses_bad_references(text: str) -> None:
    with pytest.raises(DiscoveryError, match=r"^here: "):
        normalise(text, "here")


def test_mapping_rules() -> None:
    rules = parse_mapping_rules("gcr.io/spectro-images-public=docker.io/spectro, quay.io=registry.site.local/quay")
    assert rules == (MappingRule("gcr.io/spectro-images-public", "docker.io/spectro"),
                     MappingRule("quay.io", "registry.site.local/quay"))
    ref = ImageReference.parse("gcr.io/spectro-images-public/kube-vip:v0.6")
    assert map_reference(ref, rules, "spectro-images") == "spectro-images/docker.io/spectro/kube-vip"
    assert map_reference(ImageReference.parse("quay.io/a/b:1"), rules, "p") == "p/registry.site.local/quay/a/b"
    # whole path components only
    assert map_reference(ImageReference.parse("gcr.io/spectro-images-publicity/x:1"), rules, "p") == \
        "p/gcr.io/spectro-images-publicity/x"
    assert map_reference(ImageReference.parse("nginx"), (), "p") == "p/docker.io/library/nginx"
    with pytest.raises(ValueError, match="invalid mapping rule 'nonsense'"):
        parse_mapping_rules("nonsense")


def test_mirror_repository_keeps_an_already_nested_name() -> None:
    # containerd adds ?ns= even when override_path or a k3s rewrite already put the project in the path
    assert mirror_repository("p", "docker.io", "p/docker.io/library/nginx") == "p/docker.io/library/nginx"
    assert mirror_repository("p", "docker.io", "nginx") == "p/docker.io/library/nginx"
    assert mirror_repository("p", "quay.io", "p/other/x") == "p/quay.io/p/other/x"
