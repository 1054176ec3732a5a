"""In-use protection: reading what a cluster runs through the real kubernetes client.

No Kubernetes API server can run on these test machines: tests.bundles.fakekube
serves ``GET /api/v1/pods`` on loopback in the real API's JSON shape (a v1
PodList, paged with limit/continue), and the kubernetes client reads it
through a kubeconfig, exactly as it would read a real cluster.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bundles.inuse import ClusterUnreachable, in_use_digests, read_cluster
from registry.digest import Digest
from registry.manifests import OCI_MANIFEST
from registry.model import Registry
from registry.paths import DataPaths
from tests.bundles.fakekube import fake_kube, pod, write_kubeconfig

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_every_pod_of_every_namespace_is_read_page_by_page(tmp_path: Path) -> None:
    pods = [pod("web", "default", ["nginx:1.25", "sidecar:2"], [f"docker.io/library/nginx@{D1}"],
                init_images=("busybox:1.36",)),
            pod("dns", "kube-system", ["registry.k8s.io/coredns/coredns:v1.11.1"],
                [f"docker-pullable://registry.k8s.io/coredns/coredns@{D2}"])]
    pods[1]["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "debug-tools:1"}]
    with fake_kube(pods) as kube:
        kube.page_size = 1
        found = read_cluster(write_kubeconfig(tmp_path / "kubeconfig", kube.url))
        assert [r.split("?")[0] for r in kube.requests] == ["/api/v1/pods", "/api/v1/pods"]  # two pages
        assert "continue=1" in kube.requests[1]
    assert found.pods == 2
    assert found.images == {"nginx:1.25", "sidecar:2", "busybox:1.36", "registry.k8s.io/coredns/coredns:v1.11.1",
                            "debug-tools:1"}
    assert found.image_ids == {f"docker.io/library/nginx@{D1}", f"docker-pullable://registry.k8s.io/coredns/coredns@{D2}"}


def test_an_unreachable_cluster_or_a_broken_kubeconfig_is_named(tmp_path: Path) -> None:
    with fake_kube([]) as kube:
        url = kube.url
    with pytest.raises(ClusterUnreachable, match=f"cannot list pods at {url}"):
        read_cluster(write_kubeconfig(tmp_path / "kubeconfig", url), timeout=3)
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: [")
    with pytest.raises(ClusterUnreachable, match=f"cannot load kubeconfig {broken}"):
        read_cluster(broken)
    with pytest.raises(ClusterUnreachable, match="cannot load kubeconfig"):
        read_cluster(tmp_path / "absent")


def test_images_map_to_the_digests_this_appliance_serves(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    paths.ensure()
    reg = Registry(paths)
    served = {}
    for repo in ("spectro-images/docker.io/library/nginx", "spectro-images/docker.io/library/redis"):
        config = reg.store.ingest(io.BytesIO(json.dumps({"repo": repo}).encode()))
        reg.link_blob(repo, config)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": str(config.digest), "size": config.size}, "layers": []}).encode()
        reg.put_manifest(repo, "7", body, OCI_MANIFEST)
        served[repo] = str(Digest.of_bytes(body))
    with fake_kube([pod("a", "default", ["nginx:7", "127.0.0.1:5000/spectro-images/docker.io/library/redis:7",
                                         "quay.io/elsewhere/app:1"], [f"docker://sha256:{'3' * 64}"])]) as kube:
        found = read_cluster(write_kubeconfig(tmp_path / "kubeconfig", kube.url))
    digests, notes = in_use_digests(found, reg, "spectro-images")
    assert digests == set(served.values())
    assert notes == ["quay.io/elsewhere/app:1: not served by this appliance"]
