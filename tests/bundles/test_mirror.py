"""Edge-host mirror configuration: the generated files, and a real containerd pulling through them."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from bundles import keys
from bundles.mirror import MirrorSettings, for_registry, mirror_files, write_directory
from registry.db import write_transaction
from registry.model import Registry
from registry.paths import DataPaths
from tests.appliance import Appliance, free_port
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.bundles.test_check import PROJECT, check, skopeo_copy, upload
from tests.containerd import Containerd  # the `containerd` session fixture comes from tests/conftest.py
from tests.images import OciLayout
from tests.logs import request_lines
from tests.pgengine import env_for

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_files_for_every_upstream_in_both_modes(tmp_path: Path) -> None:
    registry = Registry(DataPaths(tmp_path / "data"))
    with write_transaction(registry.db) as db:
        for name in ("p/docker.io/library/nginx", "p/quay.io/org/app", "p/quay.io/org/other",
                     "p/registry.k8s.io/pause", "p/test/not-a-domain", "q/ghcr.io/elsewhere/x"):
            registry.ensure_repository(db, name)
    files = for_registry(registry, "p", "10.0.0.5:5000")
    hosts = sorted(k for k in files if k.endswith("hosts.toml"))
    assert hosts == sorted(f"containerd/{mode}/{h}/hosts.toml" for mode in ("mirror", "override")
                           for h in ("docker.io", "quay.io", "registry.k8s.io", "10.0.0.5:5000"))
    ns = tomllib.loads(files["containerd/mirror/docker.io/hosts.toml"].decode())
    assert ns == {"server": "https://registry-1.docker.io",
                  "host": {"http://10.0.0.5:5000": {"capabilities": ["pull", "resolve"]}}}
    override = tomllib.loads(files["containerd/override/quay.io/hosts.toml"].decode())
    assert override == {"server": "https://quay.io", "host": {"http://10.0.0.5:5000/v2/p/quay.io": {
        "capabilities": ["pull", "resolve"], "override_path": True}}}
    k3s = yaml.safe_load(files["k3s/registries.yaml"])
    assert k3s == {"mirrors": {
        "docker.io": {"endpoint": ["http://10.0.0.5:5000"], "rewrite": {"^(.*)$": "p/docker.io/$1"}},
        "quay.io": {"endpoint": ["http://10.0.0.5:5000"], "rewrite": {"^(.*)$": "p/quay.io/$1"}},
        "registry.k8s.io": {"endpoint": ["http://10.0.0.5:5000"], "rewrite": {"^(.*)$": "p/registry.k8s.io/$1"}},
        "10.0.0.5:5000": {"endpoint": ["http://10.0.0.5:5000"]}}}
    assert "ca.crt" not in files  # plain HTTP: no CA


def test_upstreams_with_a_port_are_named_as_containerd_and_k3s_name_them(tmp_path: Path) -> None:
    """Stored ``p/myreg.local_5000/...`` is the upstream ``myreg.local:5000``: hosts dirs and mirrors use that."""
    registry = Registry(DataPaths(tmp_path / "data"))
    with write_transaction(registry.db) as db:
        for name in ("p/myreg.local_5000/team/app", "p/10.0.0.5_8443/x", "p/localhost_5000/y", "p/localhost/z",
                     "p/myreg.local/team/app", "p/my_team/app", "p/team/app"):
            registry.ensure_repository(db, name)
    files = for_registry(registry, "p", "10.0.0.10:5000")
    hosts = {k.split("/")[2] for k in files if k.startswith("containerd/mirror/") and k.endswith("hosts.toml")}
    assert hosts == {"myreg.local:5000", "10.0.0.5:8443", "localhost:5000", "localhost", "myreg.local",
                     "10.0.0.10:5000"}
    ns = tomllib.loads(files["containerd/mirror/myreg.local:5000/hosts.toml"].decode())
    assert ns == {"server": "https://myreg.local:5000",
                  "host": {"http://10.0.0.10:5000": {"capabilities": ["pull", "resolve"]}}}
    override = tomllib.loads(files["containerd/override/10.0.0.5:8443/hosts.toml"].decode())
    assert override == {"server": "https://10.0.0.5:8443", "host": {"http://10.0.0.10:5000/v2/p/10.0.0.5_8443": {
        "capabilities": ["pull", "resolve"], "override_path": True}}}
    mirrors = yaml.safe_load(files["k3s/registries.yaml"])["mirrors"]
    assert mirrors["myreg.local:5000"] == {"endpoint": ["http://10.0.0.10:5000"],
                                           "rewrite": {"^(.*)$": "p/myreg.local_5000/$1"}}
    assert mirrors["myreg.local"]["rewrite"] == {"^(.*)$": "p/myreg.local/$1"}
    assert mirrors["localhost:5000"]["rewrite"] == {"^(.*)$": "p/localhost_5000/$1"}
    written = write_directory(files, tmp_path / "out")
    assert tmp_path / "out" / "containerd" / "mirror" / "myreg.local:5000" / "hosts.toml" in written


def test_https_with_ca_and_credentials(tmp_path: Path) -> None:
    settings = MirrorSettings("registry.site:443", "spectro-images", "https", CA, "robot$site", 'pa"ss')
    files = mirror_files(settings, ["gcr.io"])
    host = tomllib.loads(files["containerd/mirror/gcr.io/hosts.toml"].decode())["host"]["https://registry.site:443"]
    assert host["ca"] == "ca.crt"
    assert files["containerd/mirror/gcr.io/ca.crt"] == CA and files["ca.crt"] == CA
    import base64

    assert base64.b64decode(host["header"]["Authorization"].split()[1]) == b'robot$site:pa"ss'
    k3s = yaml.safe_load(files["k3s/registries.yaml"])
    assert k3s["configs"] == {"registry.site:443": {"tls": {"ca_file": "/etc/rancher/k3s/cargohold-ca.crt"},
                                                    "auth": {"username": "robot$site", "password": 'pa"ss'}}}
    written = write_directory(files, tmp_path / "out")
    assert all(p.stat().st_mode & 0o077 == 0 for p in written if p.suffix in (".toml", ".yaml"))
    with pytest.raises(ValueError, match="both a username and a password"):
        MirrorSettings("h:1", "p", "http", None, "user", None)
    with pytest.raises(ValueError, match="must be host or host:port"):
        MirrorSettings("http://h:1", "p")


def test_mirror_config_over_http(appliance: Appliance) -> None:
    url = f"{appliance.url}/api/cargohold/v1/mirror-config"
    # This appliance serves plain HTTP (no local CA): the scheme must be chosen, never defaulted to http.
    unchosen = requests.post(url, json={"address": "edge.example:5000"}, auth=appliance.admin, timeout=10)
    assert unchosen.status_code == 400 and '"scheme": "http"' in unchosen.json()["errors"][0]["message"]
    r = requests.post(url, json={"address": "edge.example:5000", "scheme": "http"}, auth=appliance.admin, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert "mirror-config/k3s/registries.yaml" in names
    assert "mirror-config/containerd/mirror/edge.example:5000/hosts.toml" in names
    as_json = requests.post(url + "?format=json", json={"address": "edge.example:5000", "scheme": "http"},
                            auth=appliance.admin, timeout=10).json()
    assert set(as_json["files"]) == {n.removeprefix("mirror-config/") for n in names}
    assert requests.post(url, json={"address": "x:1"}, timeout=10).status_code == 401
    bad = requests.post(url, json={"address": "a b", "scheme": "http"}, auth=appliance.admin, timeout=10)
    assert bad.status_code == 400 and "host:port" in bad.json()["errors"][0]["message"]


def mirror_config_cli(app: Appliance, out: Path) -> Path:
    """`cargohold mirror-config --out OUT` for the appliance's data directory, address and scheme; returns OUT."""
    proc = subprocess.run([sys.executable, "-m", "web.cli", "mirror-config", "--data-dir", str(app.data_dir),
                           "--out", str(out), "--address", app.host, "--scheme", app.scheme],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, **env_for(["--data-dir", app.data_dir])})
    assert proc.returncode == 0, proc.stderr
    return out


def test_containerd_pulls_a_ready_definition_by_original_names(trusted: Appliance, containerd: Containerd,
                                                                tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """The generated ns-mode hosts.toml makes a real containerd pull every image through the appliance.

    The images' upstream is 127.0.0.2 (loopback): nothing listens on its
    port 443, so a pull can only succeed through the appliance. Docker Hub
    names are pulled too, with no network to reach Docker Hub.
    """
    appliance = trusted  # it trusts ec_key, which signs the definition
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.2", 443)) != 0, "something listens on 127.0.0.2:443"
    tag = uuid.uuid4().hex[:8]
    layout = OciLayout(tmp_path / "layout")
    base = uuid.uuid4().int % 10_000_000
    images = {
        f"127.0.0.2/edge/agent:{tag}": layout.add_image([2_000, 500], seed=base, ref="agent"),
        f"127.0.0.2/edge/multi:{tag}": layout.add_multiarch([1_000], ref="multi", seed=base + 1),
        f"docker.io/library/ctrtest{tag}:1": layout.add_image([700], seed=base + 2, ref="hub"),
    }
    for (ref, _), layout_ref in zip(images.items(), ["agent", "multi", "hub"], strict=True):
        skopeo_copy(appliance, layout.root, layout_ref, f"{PROJECT}/{ref}", tmp_path)
    name = f"ctr-{tag}"
    manifest = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: agent}\nspec:\n"
                "  selector: {matchLabels: {a: b}}\n  template:\n    spec:\n"
                f"      containers: [{{name: agent, image: '127.0.0.2/edge/agent:{tag}'}}]\n"
                f"      initContainers: [{{name: init, image: 'ctrtest{tag}:1'}}]\n")
    # amd64: what the single-platform agent and hub images are built for (and what containerd pulls below).
    definition = simple_definition(name, [f"127.0.0.2/edge/multi:{tag}"], architectures=("amd64",))
    definition["profiles"][0]["packs"][0]["manifests"] = ["agent.yaml"]
    assert upload(appliance, build_archive(tmp_path / "d.tgz", definition, {"agent.yaml": manifest}),
                  ec_key).status_code == 201
    result = check(appliance, name)
    assert result["ready"] is True, result["findings"]
    assert {f["reference"] for f in result["findings"]} == set(images)

    out = mirror_config_cli(appliance, tmp_path / "mirror")
    hosts_dir = out / "containerd" / "mirror"
    assert (hosts_dir / "127.0.0.2" / "hosts.toml").exists() and (hosts_dir / "docker.io" / "hosts.toml").exists()
    assert tomllib.loads((hosts_dir / "127.0.0.2" / "hosts.toml").read_text())["server"] == "https://127.0.0.2"

    # Control: without the mirror configuration the upstream is unreachable.
    direct = containerd.ctr("images", "pull", f"127.0.0.2/edge/agent:{tag}", check=False, timeout=60)
    assert direct.returncode != 0

    for ref, blob in images.items():
        containerd.ctr("images", "pull", "--all-platforms" if "multi" in ref else "--platform=linux/amd64", ref,
                       hosts_dir=hosts_dir)
        assert containerd.image_digest(ref) == blob.digest
        containerd.ctr("images", "rm", ref)

    # override_path mode reaches the same repositories (the path already names the project).
    agent = f"127.0.0.2/edge/agent:{tag}"
    containerd.ctr("images", "pull", agent, hosts_dir=out / "containerd" / "override")
    assert containerd.image_digest(agent) == images[agent].digest
    containerd.ctr("images", "rm", agent)


def test_containerd_trusts_the_generated_ca_beside_hosts_toml(appliance_factory: Callable[..., Appliance],
                                                              containerd: Containerd,
                                                              tmp_path: Path) -> None:
    """Over HTTPS the files carry the appliance's CA (``ca = "ca.crt"`` beside hosts.toml) and containerd verifies."""
    app = appliance_factory("--tls", scheme="https")
    tag = uuid.uuid4().hex[:8]
    layout = OciLayout(tmp_path / "layout")
    ref = f"127.0.0.2/tls/app:{tag}"
    blob = layout.add_image([1_000], seed=uuid.uuid4().int % 10_000_000, ref="app")
    skopeo_copy(app, layout.root, "app", f"{PROJECT}/{ref}", tmp_path)
    out = mirror_config_cli(app, tmp_path / "mirror")
    hosts = out / "containerd" / "mirror"
    config = tomllib.loads((hosts / "127.0.0.2" / "hosts.toml").read_text())
    assert config["host"] == {f"https://{app.host}": {"capabilities": ["pull", "resolve"], "ca": "ca.crt"}}
    assert (hosts / "127.0.0.2" / "ca.crt").read_bytes() == (app.data_dir / "tls" / "ca.crt").read_bytes()
    assert yaml.safe_load((out / "k3s" / "registries.yaml").read_text())["configs"][app.host]["tls"] == {
        "ca_file": "/etc/rancher/k3s/cargohold-ca.crt"}
    containerd.ctr("images", "pull", ref, hosts_dir=hosts)
    assert containerd.image_digest(ref) == blob.digest
    containerd.ctr("images", "rm", ref)
    # The same configuration without its `ca` line is refused: the CA is what containerd trusted.
    toml = hosts / "127.0.0.2" / "hosts.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines() if not line.strip().startswith("ca =")))
    refused = containerd.ctr("images", "pull", ref, hosts_dir=hosts, check=False, timeout=60)
    assert refused.returncode != 0 and "certificate" in (refused.stdout + refused.stderr).lower()


def test_containerd_pulls_an_image_of_a_registry_with_a_port(appliance: Appliance, containerd: Containerd,
                                                               tmp_path: Path) -> None:
    """``127.0.0.1:<closed port>/app:1`` pulls through the generated ``127.0.0.1:<port>/hosts.toml``.

    The image is stored as ``spectro-images/127.0.0.1_<port>/...``; containerd
    asks with ``?ns=127.0.0.1:<port>``. Nothing listens on that port, so only
    the appliance can serve it.
    """
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    tag = uuid.uuid4().hex[:8]
    layout = OciLayout(tmp_path / "layout")
    blob = layout.add_image([1_500, 300], seed=uuid.uuid4().int % 10_000_000, ref="app")
    ref = f"127.0.0.1:{port}/edge/app-{tag}:1"
    skopeo_copy(appliance, layout.root, "app", f"{PROJECT}/127.0.0.1_{port}/edge/app-{tag}:1", tmp_path)
    out = mirror_config_cli(appliance, tmp_path / "mirror")
    hosts_dir = out / "containerd" / "mirror"
    config = tomllib.loads((hosts_dir / f"127.0.0.1:{port}" / "hosts.toml").read_text())
    assert config["server"] == f"https://127.0.0.1:{port}"

    direct = containerd.ctr("images", "pull", "--plain-http", ref, check=False, timeout=60)
    assert direct.returncode != 0  # control: the upstream itself is unreachable

    containerd.ctr("images", "pull", ref, hosts_dir=hosts_dir)
    assert containerd.image_digest(ref) == blob.digest
    # containerd asked by the original name, with the upstream host:port (URL-encoded) in ns.
    assert any((r["path"], r["query"]) == (f"/v2/edge/app-{tag}/manifests/1", f"ns=127.0.0.1:{port}")
               for r in request_lines(appliance.log()))
    containerd.ctr("images", "rm", ref)

    # override_path mode: the host path names the nested repository itself.
    containerd.ctr("images", "pull", ref, hosts_dir=out / "containerd" / "override")
    assert containerd.image_digest(ref) == blob.digest
    containerd.ctr("images", "rm", ref)
