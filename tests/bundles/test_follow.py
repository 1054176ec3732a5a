"""A follower appliance (`cargohold follow`, bundles.follow) against a real primary, both on loopback.

Two real appliances (gunicorn behind nginx, each with its own data
directory): bundles are imported and promoted on the primary with the CLI
and its API; the follower runs ``cargohold follow`` (mostly ``--once``) as a
robot account of the primary; skopeo pulls from the follower and compares
the bytes with the bundle's; containerd pulls through the follower with the
primary stopped. The compromised primary of the refusal test is the real
primary behind a small HTTP proxy in this file that alters or withholds one
blob (a stand-in: no real appliance can be made to serve bytes that do not
match their digest, which is exactly what is tested).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning

from bundles import format as fmt
from bundles import keys
from tests.appliance import Appliance, free_port
from tests.bundles import craft
from tests.bundles.clusterdefs import build_archive, simple_definition
from tests.bundles.conftest import REPO_ROOT, assert_pulled_identical, big_layout, skopeo_pull, snapshot
from tests.bundles.releases_util import API, Site, _bundle, import_release, release_api, trust
from tests.containerd import Containerd
from tests.images import OCI_MANIFEST, REF_NAME, OciLayout
from tests.logs import request_lines
from tests.pgengine import env_for, metadata
from tests.registry.harborapi import Harbor, RobotAccount
from tests.s3engines import S3Engine


def follow(follower: Appliance, url: str, robot: RobotAccount | None, secret_file: Path, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`cargohold follow URL --once` on the follower's data directory (the robot's secret from a file)."""
    name = robot.name if robot else "robot$nobody"
    return subprocess.run([sys.executable, "-m", "web.cli", "follow", url, "--robot", name, "--secret-file",
                           str(secret_file), "--once", "--data-dir", str(follower.data_dir), *extra],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env={**(env if env is not None else os.environ),
                               **env_for(["--data-dir", follower.data_dir])})


def _robot(primary: Appliance, tmp: Path) -> tuple[RobotAccount, Path]:
    """A project robot of the primary with pull on the default project: all a follower needs."""
    robot = Harbor(primary, primary.admin).project_robot("spectro-images", ("pull",))
    secret = tmp / "follower.secret"
    secret.write_text(robot.secret + "\n")
    secret.chmod(0o600)
    return robot, secret


def _digest(app: Appliance, repository: str, tag: str) -> str | None:
    r = requests.head(f"{app.url}/v2/{repository}/manifests/{tag}", timeout=30, headers={
        "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"})
    return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def _states(app: Appliance) -> list[tuple[str, str, str]]:
    return [(r["name"], r["version"], r["state"]) for r in release_api(app, "GET", "/releases").json()["releases"]]


def _events(app: Appliance) -> list[str]:
    return [e["action"] for e in release_api(app, "GET", "/releases/events").json()["events"]]


def test_follower_copies_promotions_and_rollbacks_in_the_primary_order(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    primary = appliance_factory(name="primary")
    follower = appliance_factory(name="follower")
    trust(primary, ec_key, tmp_path)  # only the primary checks bundle signatures; the follower checks digests
    robot, secret = _robot(primary, tmp_path)
    a, b, d = (site.repo(k) for k in "abd")

    r1 = import_release(primary, site.v1)
    assert release_api(primary, "POST", f"/releases/{r1['id']}/promote").status_code == 200

    # A wrong secret: one clear line, nothing changes here, and the secret is nowhere in the output.
    before = snapshot(follower.data_dir)
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-Secret-123\n")
    refused = follow(follower, primary.url, robot, wrong)
    assert refused.returncode == 1, refused.stderr
    assert f"refused the robot account {robot.name} (401)" in refused.stderr
    assert "not-the-Secret-123" not in refused.stderr + refused.stdout
    assert snapshot(follower.data_dir) == before
    assert _states(follower) == []
    ready = requests.get(f"{follower.url}/readyz", timeout=10).json()
    assert ready["status"] == "ready" and ready["follower"]["ok"] is False and ready["follower"]["lastSync"] is None
    assert "401" in release_api(follower, "GET", "/follower").json()["lastError"]
    assert release_api(primary, "GET", "/follower").status_code == 404  # the primary follows nobody

    # Round 1: release 1 copied and promoted; pulls from the follower give the bundle's bytes.
    done = follow(follower, primary.url, robot, secret)
    assert done.returncode == 0, done.stderr
    assert robot.secret not in done.stderr + done.stdout
    copied = [line for line in done.stderr.splitlines() if "copied as local release" in line]
    assert len(copied) == 1 and "edge-site 1.0.0" in copied[0], done.stderr
    assert _states(follower) == [("edge-site", "1.0.0", "promoted")]
    got = skopeo_pull(follower, site.refs["a"], tmp_path / "f1-a")
    assert got == site.digests["a1"]
    assert assert_pulled_identical(tmp_path / "f1-a", site.v1_layout.root, got) == 4
    shown = release_api(follower, "GET", "/releases/promoted").json()
    assert shown["keyId"] == keys.key_id(ec_key) and f"(on {primary.url})" in shown["promotedBy"]
    assert [d["digest"] for d in shown["clusterDefinitions"]] == [site.v1_definition_digest]
    live = requests.get(f"{follower.url}{API}/cluster-definitions/{site.definition}", auth=follower.admin,
                        timeout=30)
    assert live.status_code == 200 and live.json()["version"] == "1.0.0"

    # v2 imported, promoted, then rolled back on the primary: the follower applies the same three events in
    # order, and ends with the primary's tags (d:1.0, new in v2, stays on both).
    r2 = import_release(primary, site.v2)
    assert release_api(primary, "POST", f"/releases/{r2['id']}/promote").status_code == 200
    assert _digest(primary, a, "1.0") == site.digests["a2"]
    assert release_api(primary, "POST", "/releases/rollback").status_code == 200
    done = follow(follower, primary.url, robot, secret, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [e["action"] for e in report["applied"]] == ["promote", "rollback"]
    assert report["inSync"] and len(report["copied"]) == 1
    assert _events(follower) == _events(primary) == ["promote", "promote", "rollback"]
    assert _states(follower) == _states(primary) == [("edge-site", "1.0.0", "promoted"),
                                                       ("edge-site", "2.0.0", "rolled-back")]
    for repository, want in ((a, "a1"), (b, "b1"), (site.repo("c"), "c"), (d, "d")):
        assert _digest(follower, repository, "1.0") == _digest(primary, repository, "1.0") == site.digests[want]
    got = skopeo_pull(follower, site.refs["d"], tmp_path / "f2-d")
    assert assert_pulled_identical(tmp_path / "f2-d", site.v2_layout.root, got) > 0

    # Resuming: nothing new, nothing applied twice.
    again = follow(follower, primary.url, robot, secret, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["applied"] == [] and json.loads(again.stdout)["copied"] == []
    ready = requests.get(f"{follower.url}/readyz", timeout=10).json()["follower"]
    assert ready["ok"] and ready["eventsBehind"] == 0 and not ready["stale"]
    state = release_api(follower, "GET", "/follower").json()
    assert state["primary"] == primary.url and state["lastEvent"] == 3 and state["lastError"] is None
    metrics = requests.get(f"{follower.url}/metrics", timeout=10).text
    assert "cargohold_follower_in_sync 1.0" in metrics and "cargohold_follower_events_behind 0.0" in metrics

    # The events API refuses what is not a sequence number; a release file is served only for its release.
    assert release_api(primary, "GET", "/releases/events", params={"after": "-1"}).status_code == 400
    assert release_api(primary, "GET", "/releases/events", params={"limit": "5000"}).status_code == 400
    assert release_api(primary, "GET", "/releases/events", auth=None).status_code == 401
    archive = release_api(primary, "GET", f"/releases/{r1['id']}").json()["files"][0]
    served = release_api(primary, "GET", f"/releases/{r1['id']}/files/{archive['digest']}", auth=robot.auth)
    assert served.status_code == 200 and served.headers["Docker-Content-Digest"] == archive["digest"]
    assert release_api(primary, "GET", f"/releases/{r2['id']}/files/{archive['digest']}").status_code == 404
    assert release_api(primary, "GET", f"/releases/{r1['id']}/files/sha256:{'0' * 64}").status_code == 404
    assert release_api(primary, "GET", f"/releases/{r1['id']}/files/sha256:xyz").status_code == 400

    # A promotion made here, not on the primary, is reported as divergence (exit 1), and not undone.
    assert release_api(follower, "POST", f"/releases/{shown['id'] + 1}/promote").status_code == 200
    diverged = follow(follower, primary.url, robot, secret)
    assert diverged.returncode == 1
    assert "is rolled-back on the primary, promoted here" in diverged.stderr
    assert _states(follower)[1][2] == "promoted"


def test_a_release_collected_on_the_primary_is_skipped_and_the_follower_still_converges(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    primary = appliance_factory(name="primary")
    follower = appliance_factory(name="follower")
    trust(primary, ec_key, tmp_path)
    robot, secret = _robot(primary, tmp_path)
    for bundle in (site.v1, site.v2):
        release = import_release(primary, bundle)
        assert release_api(primary, "POST", f"/releases/{release['id']}/promote").status_code == 200
    # Retention 1: v1 (superseded) loses the content only it had; its release row stays on the primary.
    gc = release_api(primary, "POST", "/gc", json={"retain": 1, "grace": "0s"})
    assert gc.status_code == 200, gc.text
    assert _digest(primary, site.repo("a"), site.digests["a1"]) is None

    # The follower as a service: a round every second until stopped.
    service = subprocess.Popen([sys.executable, "-m", "web.cli", "follow", primary.url, "--robot", robot.name,
                                "--secret-file", str(secret), "--interval", "1s", "--data-dir",
                                str(follower.data_dir)], stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                               env={**os.environ, **env_for(["--data-dir", follower.data_dir])})
    try:
        deadline = time.monotonic() + 120
        while _states(follower) != [("edge-site", "2.0.0", "promoted")] and time.monotonic() < deadline:
            assert service.poll() is None, service.communicate()[1]
            time.sleep(0.5)
    finally:
        service.terminate()
        _, stderr = service.communicate(timeout=30)
    assert _states(follower) == [("edge-site", "2.0.0", "promoted")], stderr
    assert "release 1 (edge-site 1.0.0): not copied" in stderr and "an old release (superseded), skipped" in stderr
    assert "event 1: promote release 1: skipped" in stderr
    for key, want in (("a", "a2"), ("b", "b2"), ("c", "c"), ("d", "d")):
        assert _digest(follower, site.repo(key), "1.0") == site.digests[want]


def test_a_primary_on_https_is_followed_with_its_ca(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    primary = appliance_factory("--tls", name="primary", scheme="https")
    follower = appliance_factory(name="follower")
    ca = tmp_path / "primary-ca.crt"
    with warnings.catch_warnings():  # fetched unverified, as an edge host bootstraps; every call below verifies
        warnings.simplefilter("ignore", InsecureRequestWarning)
        ca.write_bytes(requests.get(f"{primary.url}/ca.crt", verify=False, timeout=10).content)
    trust(primary, ec_key, tmp_path)
    made = requests.post(f"{primary.url}/api/v2.0/robots", auth=primary.admin, verify=str(ca), timeout=30, json={
        "name": "follower", "level": "project", "duration": -1, "permissions": [
            {"kind": "project", "namespace": "spectro-images", "access": [{"resource": "repository",
                                                                           "action": "pull"}]}]})
    assert made.status_code == 201, made.text
    robot = RobotAccount(made.json()["id"], made.json()["name"], made.json()["secret"])
    assert robot.name == "robot$spectro-images+follower"  # the name operations.md shows
    secret = tmp_path / "follower.secret"
    secret.write_text(robot.secret)
    r1 = import_release(primary, site.v1)
    assert release_api(primary, "POST", f"/releases/{r1['id']}/promote", verify=str(ca)).status_code == 200

    untrusted = follow(follower, primary.url, robot, secret)
    assert untrusted.returncode == 1 and "TLS verification failed; give its CA with --ca" in untrusted.stderr
    assert _states(follower) == []
    done = follow(follower, primary.url, robot, secret, "--ca", str(ca))
    assert done.returncode == 0, done.stderr
    assert _states(follower) == [("edge-site", "1.0.0", "promoted")]
    assert _digest(follower, site.repo("a"), "1.0") == site.digests["a1"]


def test_memory_stays_flat_while_a_blob_larger_than_the_process_is_copied(
        appliance_factory: Callable[..., Appliance], tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    """`follow --once` copying a 160 MiB layer peaks far below it (the CLI process alone is ~60 MiB)."""
    primary = appliance_factory(name="primary")
    follower = appliance_factory(name="follower")
    trust(primary, ec_key, tmp_path)
    robot, secret = _robot(primary, tmp_path)
    layout, ref = big_layout(tmp_path / "layout", layers=1, layer_size=160 << 20)
    bundle = craft.write_bundle(tmp_path / "big.tar.zst", craft.standard_entries(layout.root, ec_key), level=1)
    release = import_release(primary, bundle)
    assert release_api(primary, "POST", f"/releases/{release['id']}/promote").status_code == 200
    # Measured in a child of a fresh interpreter, so RUSAGE_CHILDREN sees only the follow.
    probe = (
        "import resource, subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '-m', 'web.cli', 'follow', {primary.url!r}, '--robot', "
        f"{robot.name!r}, '--secret-file', {str(secret)!r}, '--once', '--data-dir', {str(follower.data_dir)!r}], "
        "capture_output=True, text=True)\n"
        "assert p.returncode == 0, p.stderr\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                         env={**os.environ, **env_for(["--data-dir", follower.data_dir])})
    assert out.returncode == 0, out.stderr
    peak_kib = int(out.stdout.strip())
    assert peak_kib < 130 * 1024, f"peak RSS {peak_kib // 1024} MiB while copying a 160 MiB blob"
    assert _digest(follower, "spectro-images/" + ref.rsplit(":", 1)[0], ref.rsplit(":", 1)[1]) == \
        _digest(primary, "spectro-images/" + ref.rsplit(":", 1)[0], ref.rsplit(":", 1)[1]) is not None


def _not_ready_bundle(tmp: Path, key: keys.PrivateKey) -> tuple[Path, OciLayout, str, str]:
    """A signed bundle whose cluster definition needs an image it does not carry: promotable only by force.

    It also carries a two-platform index; returns the bundle, its layout, the index's reference and digest.
    """
    tag = uuid.uuid4().hex[:8]
    layout = OciLayout(tmp / "nr-layout")
    ref = f"docker.io/cargotest/nr-{tag}:1.0"
    image = layout.add_image([20_000], seed=uuid.uuid4().int % 100_000, ref=ref)
    # An SBOM for the image, as an OCI 1.1 referrer (untagged, found through its subject).
    sbom = layout.add_blob(b'{"spdxVersion": "SPDX-2.3"}', "application/spdx+json")
    empty = layout.add_blob(b"{}", "application/vnd.oci.empty.v1+json")
    referrer = layout.add_blob(json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
        "config": empty.descriptor(), "layers": [sbom.descriptor()], "subject": image.descriptor()},
        sort_keys=True).encode(), OCI_MANIFEST)
    layout.index_entries.append(referrer.descriptor(artifactType="application/spdx+json"))
    multi = f"quay.io/cargotest/nr-multi-{tag}:2.0"
    index = layout.add_multiarch([30_000], ref=multi, seed=uuid.uuid4().int % 100_000)
    archive = build_archive(tmp / "nr.tgz", simple_definition(f"nr-{tag}", [ref, f"docker.io/cargotest/gone-{tag}:1"]))
    member = f"cluster-definitions/{archive.name}"
    entries = craft.standard_entries(layout.root, key, name="not-ready", version="1.0.0", extra=[(member, archive)],
                                     definitions=[fmt.FileEntry("nr", "1.0.0", member)])
    return craft.write_bundle(tmp / "not-ready.tar.zst", entries), layout, multi, index.digest


def test_a_forced_promotion_is_replayed_with_its_reason_and_the_history_survives_an_upgrade(
        appliance_factory: Callable[..., Appliance], tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    primary = appliance_factory(name="primary")
    follower = appliance_factory(name="follower")
    trust(primary, ec_key, tmp_path)
    robot, secret = _robot(primary, tmp_path)
    bundle, layout, multi, index = _not_ready_bundle(tmp_path, ec_key)
    release = import_release(primary, bundle)
    refused = release_api(primary, "POST", f"/releases/{release['id']}/promote")
    assert refused.status_code == 409 and refused.json()["errors"][0]["code"] == "NOT_READY"
    forced = release_api(primary, "POST", f"/releases/{release['id']}/promote",
                         json={"force": True, "reason": "gone image is not deployed here"})
    assert forced.status_code == 200 and forced.json()["forced"]

    # The follower's own check would refuse it too: the primary's decision is what it applies.
    done = follow(follower, primary.url, robot, secret)
    assert done.returncode == 0, done.stderr
    assert "promote release 1 (forced: gone image is not deployed here)" in done.stderr
    here = release_api(follower, "GET", "/releases/promoted").json()
    assert here["forced"] and here["reason"] == "gone image is not deployed here"
    assert release_api(follower, "GET", "/releases/events").json()["events"][0]["forced"]
    # The image's referrer came with it, and the index with every platform, byte for byte.
    image_repo = "spectro-images/" + _first_ref(layout).rsplit(":", 1)[0]
    image_digest = _digest(primary, image_repo, "1.0")
    listed = requests.get(f"{follower.url}/v2/{image_repo}/referrers/{image_digest}", timeout=30).json()
    assert [m["digest"] for m in listed["manifests"]] == [
        m["digest"] for m in requests.get(f"{primary.url}/v2/{image_repo}/referrers/{image_digest}",
                                          timeout=30).json()["manifests"]]
    assert len(listed["manifests"]) == 1 and listed["manifests"][0]["artifactType"] == "application/spdx+json"
    got = skopeo_pull(follower, multi, tmp_path / "multi")
    assert got == index
    assert assert_pulled_identical(tmp_path / "multi", layout.root, got) == 7  # index, 2 x (manifest, config, layer)

    # A primary upgraded from before release events: the migration rebuilds them from the audit log, in order.
    assert release_api(primary, "POST", "/releases/rollback").status_code == 409  # refused: no event
    from bundles.schema import _backfill_release_events  # the migration's own function (new with it)

    with metadata(primary.data_dir) as db:  # the primary's own database, whichever engine holds it
        recorded = db.execute("SELECT action, release_id, other_id, username, forced, reason FROM release_events "
                              "ORDER BY seq").fetchall()
        db.execute("DELETE FROM release_events")
        _backfill_release_events(db)
        rebuilt = db.execute("SELECT action, release_id, other_id, username, forced, reason FROM release_events "
                             "ORDER BY seq").fetchall()
    recorded, rebuilt = [tuple(r) for r in recorded], [tuple(r) for r in rebuilt]
    assert recorded == [("promote", 1, None, "admin", 1, "gone image is not deployed here")]
    assert [r[:2] + r[3:] for r in rebuilt] == [r[:2] + r[3:] for r in recorded]


def _first_ref(layout: OciLayout) -> str:
    return str(next(e["annotations"][REF_NAME] for e in layout.index_entries  # type: ignore[index]
                    if "annotations" in e))


class _Compromised:
    """The real primary behind a proxy that sends wrong bytes for `corrupt` blobs and 404 for `missing` ones."""

    def __init__(self, upstream: Appliance) -> None:
        self.upstream = upstream
        self.corrupt: set[str] = set()
        self.missing: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._relay("GET")

            def do_HEAD(self) -> None:
                self._relay("HEAD")

            def _relay(self, method: str) -> None:
                digest = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
                if "/blobs/" in self.path and digest in outer.missing:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                up = requests.request(method, f"{outer.upstream.url}{self.path}", headers=headers, timeout=60,
                                      allow_redirects=False)
                body = up.content
                if "/blobs/" in self.path and digest in outer.corrupt and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]  # same length, other bytes
                self.send_response(up.status_code)
                for k, v in up.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def compromised() -> Iterator[Callable[[Appliance], _Compromised]]:
    made: list[_Compromised] = []

    def make(upstream: Appliance) -> _Compromised:
        made.append(_Compromised(upstream))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def _layer(site: Site, key: str) -> str:
    """The first layer of image `key` of the v1 layout."""
    manifest = json.loads((site.v1_layout.root / "blobs" / "sha256" / site.digests[key].split(":")[1]).read_text())
    return str(manifest["layers"][0]["digest"])


def test_a_refused_copy_publishes_nothing_wrong_bytes_missing_blob_full_disk_content_trust(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey,
        compromised: Callable[[Appliance], _Compromised]) -> None:
    primary = appliance_factory(name="primary")
    follower = appliance_factory(name="follower")
    trust(primary, ec_key, tmp_path)
    robot, secret = _robot(primary, tmp_path)
    r1 = import_release(primary, site.v1)
    assert release_api(primary, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    proxy = compromised(primary)
    layer = _layer(site, "b1")
    before = snapshot(follower.data_dir)

    proxy.corrupt.add(layer)
    refused = follow(follower, proxy.url, robot, secret)
    assert refused.returncode == 1
    assert f"blob {layer}" in refused.stderr and "does not match the digest" in refused.stderr, refused.stderr
    assert "nothing of it was published" in refused.stderr
    assert snapshot(follower.data_dir) == before
    assert _states(follower) == [] and _digest(follower, site.repo("a"), "1.0") is None

    # Content the primary no longer has in full: refused the same way.
    proxy.corrupt.clear()
    proxy.missing.add(layer)
    incomplete = follow(follower, proxy.url, robot, secret)
    assert incomplete.returncode == 1
    assert "the primary no longer has all of it" in incomplete.stderr, incomplete.stderr
    assert snapshot(follower.data_dir) == before

    # A disk that would be left under the reserve: refused before a blob is fetched.
    proxy.missing.clear()
    full = follow(follower, proxy.url, robot, secret,
                  env={**os.environ, "CARGOHOLD_IMPORT_RESERVE_BYTES": str(1 << 50)})
    assert full.returncode == 1 and "not enough free space" in full.stderr, full.stderr
    assert snapshot(follower.data_dir) == before

    # A project here that serves only cosign-signed images refuses the unsigned ones, as an import would.
    harbor = Harbor(follower, follower.admin)
    assert harbor("POST", "/projects/spectro-images/metadatas",
                  json={"enable_content_trust_cosign": "true"}).status_code == 200
    unsigned = follow(follower, proxy.url, robot, secret)
    assert unsigned.returncode == 1 and "enables enable_content_trust_cosign" in unsigned.stderr, unsigned.stderr
    assert snapshot(follower.data_dir) == before
    assert harbor("DELETE", "/projects/spectro-images/metadatas/enable_content_trust_cosign").status_code == 200

    # The same primary, honest again: the follower catches up.
    proxy.missing.clear()
    done = follow(follower, proxy.url, robot, secret)
    assert done.returncode == 0, done.stderr
    assert _digest(follower, site.repo("b"), "1.0") == site.digests["b1"]


def test_containerd_pulls_through_the_follower_when_the_primary_is_stopped(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey,
        containerd: Containerd) -> None:
    primary = appliance_factory(name="primary")
    follower = appliance_factory(name="follower")
    trust(primary, ec_key, tmp_path)
    robot, secret = _robot(primary, tmp_path)
    r1 = import_release(primary, site.v1)
    assert release_api(primary, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    done = follow(follower, primary.url, robot, secret)
    assert done.returncode == 0, done.stderr

    # Edge hosts list the primary first, the follower second, for the upstream registry.
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / "docker.io").mkdir(parents=True)
    (hosts_dir / "docker.io" / "hosts.toml").write_text(
        f'server = "http://127.0.0.1:{free_port()}"\n'  # closed: a fall-through would fail, not reach the internet
        f'\n[host."http://{primary.host}"]\n  capabilities = ["pull", "resolve"]\n'
        f'\n[host."http://{follower.host}"]\n  capabilities = ["pull", "resolve"]\n')
    primary.stop()
    ref = site.refs["a"]
    containerd.ctr("images", "pull", ref, hosts_dir=hosts_dir)
    try:
        assert containerd.image_digest(ref) == site.digests["a1"]
        served = [r for r in request_lines(follower.log()) if r["path"].startswith("/v2/cargotest/rel-a-")]
        assert served and all(r["query"] == "ns=docker.io" for r in served)
    finally:
        containerd.ctr("images", "rm", ref, check=False)

    # The follower says it cannot reach its primary; it keeps serving.
    stale = follow(follower, primary.url, robot, secret)
    assert stale.returncode == 1 and f"primary {primary.url} is unreachable" in stale.stderr
    ready = requests.get(f"{follower.url}/readyz", timeout=10).json()
    assert ready["status"] == "ready" and ready["follower"]["ok"] is False
    assert "unreachable" in release_api(follower, "GET", "/follower").json()["lastError"]



def test_a_follower_with_its_blobs_in_an_object_store_copies_and_serves_releases(
        appliance_factory: Callable[..., Appliance], site: Site, tmp_path: Path, ec_key: keys.PrivateKey,
        ceph_rgw: S3Engine) -> None:
    """The follower on a real Ceph RGW bucket: copied blobs land in the bucket, not on its data volume, and a
    release whose definition archive an earlier release already brought reads it back from the store."""
    primary = appliance_factory(name="primary")
    bucket = ceph_rgw.new_bucket()
    store_env = {**ceph_rgw.env(), "CARGOHOLD_STORAGE_URL": ceph_rgw.storage_url(bucket)}
    follower = appliance_factory(name="follower", env=store_env)
    trust(primary, ec_key, tmp_path)
    robot, secret = _robot(primary, tmp_path)

    r1 = import_release(primary, site.v1)
    assert release_api(primary, "POST", f"/releases/{r1['id']}/promote").status_code == 200
    done = follow(follower, primary.url, robot, secret, env={**os.environ, **store_env})
    assert done.returncode == 0, done.stderr
    got = skopeo_pull(follower, site.refs["a"], tmp_path / "s3-a")
    assert got == site.digests["a1"]
    assert assert_pulled_identical(tmp_path / "s3-a", site.v1_layout.root, got) == 4
    keys_in_bucket = {o["Key"] for o in ceph_rgw.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert f"blobs/sha256/{got.split(':')[1][:2]}/{got.split(':')[1]}" in keys_in_bucket
    assert not [p for p in (follower.data_dir / "blobs").rglob("*") if p.is_file()]

    # Version 1.0.1 carries the same images and definition archive: the archive is already in the follower's
    # bucket, so the follower parses it from a copy of the stored object instead of fetching it again.
    v101 = _bundle(tmp_path / "site-v101.tar.zst", site.v1_layout, ec_key, "1.0.1", site.v1.parent / "edge-v1.tgz")
    r2 = import_release(primary, v101)
    assert r2["id"] != r1["id"]
    again = follow(follower, primary.url, robot, secret, env={**os.environ, **store_env})
    assert again.returncode == 0, again.stderr
    assert _states(follower) == _states(primary)
    shown = release_api(follower, "GET", f"/releases/{_local_id(follower, 2)}").json()
    assert [d["digest"] for d in shown["clusterDefinitions"]] == [site.v1_definition_digest]


def _local_id(app: Appliance, nth: int) -> int:
    """The id of the `nth` release listed on `app`, oldest first."""
    listed = sorted(release_api(app, "GET", "/releases").json()["releases"], key=lambda r: r["id"])
    return int(listed[nth - 1]["id"])
