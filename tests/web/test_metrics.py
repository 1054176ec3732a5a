"""/metrics of the real appliance, scraped and parsed with prometheus_client's own parser.

Each test starts its own appliance (two gunicorn workers behind the nginx
front), so every counter starts at zero and the deltas are exact. Clients are
real: skopeo pushes and pulls, `cargohold bundle import` from the command
line (counted through the serving appliance's metrics directory), GC and
scrub jobs through the HTTP API and `cargohold gc`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from bundles import keys
from tests.appliance import ADMIN_PASSWORD, Appliance, _launch, free_port
from tests.bundles import craft
from tests.bundles.conftest import cli, unique_layout
from tests.images import OciLayout
from tests.registry.conftest import run

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MANIFEST_ROUTE = "/v2/<path:name>/manifests/<reference>"
BLOB_ROUTE = "/v2/<path:name>/blobs/<digest>"
UPLOAD_ROUTE = "/v2/<path:name>/blobs/uploads/<uuid>"
PROJECT = "spectro-images"


def scrape(app: Appliance, **kwargs: object) -> Samples:
    resp = requests.get(f"{app.url}/metrics", timeout=10, **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def skopeo(*args: str, tmp_path: Path) -> str:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed; scripts/setup-test-env installs it")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    proc = run("skopeo", *args, env=env)
    return proc.stdout


def wait_job(app: Appliance, location: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{app.url}{location}", auth=app.admin, timeout=10).json()
        if job["state"] != "running":
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def trust(app: Appliance, key: keys.PrivateKey, tmp_path: Path) -> None:
    pub = tmp_path / f"key-{uuid.uuid4().hex[:6]}.pub.pem"
    pub.write_bytes(keys.public_pem(key))
    cli("keys", "add", str(pub), "--description", "metrics test", "--data-dir", str(app.data_dir))


@pytest.fixture(scope="module")
def ec_key() -> keys.PrivateKey:
    return keys.generate("ecdsa-p256")


@pytest.fixture
def fresh(appliance_factory: Callable[..., Appliance]) -> Appliance:
    return appliance_factory()


def test_skopeo_push_and_pulls_move_the_request_pull_push_upload_and_byte_counters(
        fresh: Appliance, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    image = layout.add_image([300_000, 40_000], seed=11, ref="img:1")
    manifest = json.loads(layout.read(image))
    blob_bytes = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    repo = f"{PROJECT}/metrics/app"
    before = scrape(fresh)

    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", fresh.creds, f"oci:{layout.root}:img:1",
           f"docker://{fresh.host}/{repo}:1", tmp_path=tmp_path)
    pushed = scrape(fresh)
    assert delta(before, pushed, "cargohold_pushes_total", project=PROJECT) == 1
    assert delta(before, pushed, "cargohold_http_requests_total", route=MANIFEST_ROUTE, method="PUT",
                 status="201") == 1
    # skopeo opens one upload session per blob it sends (config and two layers) and finishes each.
    assert delta(before, pushed, "cargohold_upload_sessions_started_total") == 3
    assert delta(before, pushed, "cargohold_upload_sessions_completed_total") == 3
    assert value(pushed, "cargohold_upload_sessions_open") == 0
    received = sum(delta(before, pushed, "cargohold_http_received_bytes_total", route=r)
                   for r in (UPLOAD_ROUTE, "/v2/<path:name>/blobs/uploads/"))
    assert received == blob_bytes  # the blob bodies, byte for byte (the manifest's count on its own route)
    assert delta(before, pushed, "cargohold_http_received_bytes_total", route=MANIFEST_ROUTE) == image.size

    for i in range(2):
        skopeo("copy", "--src-tls-verify=false", f"docker://{fresh.host}/{repo}:1", f"oci:{tmp_path / f'out{i}'}:p",
               tmp_path=tmp_path)
    pulled = scrape(fresh)
    assert delta(pushed, pulled, "cargohold_pulls_total", project=PROJECT) == 2
    assert delta(pushed, pulled, "cargohold_http_requests_total", route=MANIFEST_ROUTE, method="GET",
                 status="200") == 2
    # Blob bodies go out through nginx (X-Accel-Redirect); the app counts what the front sends.
    assert delta(pushed, pulled, "cargohold_http_requests_total", route=BLOB_ROUTE, method="GET",
                 status="200") == 6
    assert delta(pushed, pulled, "cargohold_http_sent_bytes_total", route=BLOB_ROUTE) == 2 * blob_bytes
    assert delta(pushed, pulled, "cargohold_http_sent_bytes_total", route=MANIFEST_ROUTE) == 2 * image.size

    # A Range request counts the range, not the file.
    first_layer = manifest["layers"][0]
    resp = requests.get(f"{fresh.url}/v2/{repo}/blobs/{first_layer['digest']}", headers={"Range": "bytes=10-1009"},
                        timeout=10)
    assert resp.status_code == 206 and len(resp.content) == 1000
    ranged = scrape(fresh)
    assert delta(pulled, ranged, "cargohold_http_sent_bytes_total", route=BLOB_ROUTE) == 1000

    # Unmatched paths share one label; a digest or a path never becomes one.
    requests.get(f"{fresh.url}/no/such/{uuid.uuid4().hex}", timeout=10)
    after = scrape(fresh)
    assert delta(ranged, after, "cargohold_http_requests_total", route="unmatched", method="GET", status="404") == 1
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not [r for r in routes if "sha256" in r or "metrics/app" in r or r.startswith("/no/")], routes
    assert value(after, "cargohold_http_request_duration_seconds_count", route=MANIFEST_ROUTE, method="GET") >= 2
    assert value(after, "cargohold_build_info", version=_version()) == 1


def _version() -> str:
    from registry.version import VERSION

    return VERSION


def test_cli_and_http_imports_count_by_outcome_and_code_with_releases(fresh: Appliance, tmp_path: Path,
                                                                      ec_key: keys.PrivateKey) -> None:
    trust(fresh, ec_key, tmp_path)
    before = scrape(fresh)
    layout, _refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    # From the command line, beside the running server: counted through the serving appliance's directory.
    cli("bundle", "import", str(bundle), "--data-dir", str(fresh.data_dir), "--json")
    unsigned = craft.write_bundle(tmp_path / "u.tar.zst", craft.standard_entries(layout.root, None))
    proc = cli("bundle", "import", str(unsigned), "--data-dir", str(fresh.data_dir), check=False)
    assert proc.returncode == 1
    after_cli = scrape(fresh)
    assert delta(before, after_cli, "cargohold_bundle_imports_total", outcome="done", code="") == 1
    assert delta(before, after_cli, "cargohold_bundle_imports_total", outcome="refused", code="UNSIGNED") == 1
    assert delta(before, after_cli, "cargohold_bundle_import_duration_seconds_count", outcome="done") == 1
    assert delta(before, after_cli, "cargohold_bundle_import_bytes_total") == bundle.stat().st_size
    assert delta(before, after_cli, "cargohold_releases", state="staged") == 1
    assert value(after_cli, "cargohold_bundle_imports_in_progress") == 0

    # Over HTTP, in a worker's background thread.
    layout2, _ = unique_layout(tmp_path / "layout2", images=1, multiarch=False)
    second = craft.write_bundle(tmp_path / "c.tar.zst", craft.standard_entries(layout2.root, ec_key, version="2"))
    with second.open("rb") as f:
        resp = requests.post(f"{fresh.url}/api/v1/bundles", files={"uploadFile": ("c.tar.zst", f)},
                             auth=fresh.admin, timeout=60)
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 60
    while (job := requests.get(f"{fresh.url}{resp.headers['Location']}", auth=fresh.admin,
                               timeout=10).json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job["state"] == "done", job
    after_http = scrape(fresh)
    assert delta(after_cli, after_http, "cargohold_bundle_imports_total", outcome="done", code="") == 1
    assert delta(after_cli, after_http, "cargohold_releases", state="staged") == 1
    assert delta(after_cli, after_http, "cargohold_http_received_bytes_total",
                 route="/api/v1/bundles") >= second.stat().st_size


def test_gc_and_scrub_runs_count_what_they_reclaimed_and_found(fresh: Appliance, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    image = layout.add_image([200_000, 30_000], seed=23, ref="img:1")
    repo = f"{PROJECT}/metrics/gone"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", fresh.creds, f"oci:{layout.root}:img:1",
           f"docker://{fresh.host}/{repo}:1", tmp_path=tmp_path)
    # Untagged only: the manifest stays, for garbage collection to take with its blobs.
    assert requests.delete(f"{fresh.url}/v2/{repo}/manifests/1", auth=fresh.admin, timeout=10).status_code == 202
    before = scrape(fresh)

    # A dry run from the command line counts as one, reclaiming nothing.
    cli("gc", "--dry-run", "--grace", "0s", "--data-dir", str(fresh.data_dir))
    dry = scrape(fresh)
    assert delta(before, dry, "cargohold_gc_runs_total", outcome="done", dry_run="true") == 1
    assert delta(before, dry, "cargohold_gc_reclaimed_bytes_total") == 0

    resp = requests.post(f"{fresh.url}/api/cargohold/v1/jobs/gc", json={"grace": "0s"}, auth=fresh.admin, timeout=10)
    assert resp.status_code == 202, resp.text
    job = wait_job(fresh, resp.headers["Location"])
    assert job["state"] == "done", job
    result = job["result"]
    assert isinstance(result, dict)
    collected = scrape(fresh)
    assert len(result["blobsRemoved"]) >= 4  # the manifest, the config and two layers
    assert image.digest in {m["digest"] for m in result["manifestsRemoved"]}
    assert delta(dry, collected, "cargohold_gc_runs_total", outcome="done", dry_run="false") == 1
    assert delta(dry, collected, "cargohold_gc_removed_blobs_total") == len(result["blobsRemoved"])
    assert delta(dry, collected, "cargohold_gc_removed_manifests_total") == len(result["manifestsRemoved"]) >= 1
    assert delta(dry, collected, "cargohold_gc_reclaimed_bytes_total") == \
        result["bytesReclaimed"] + result["uploadBytesReclaimed"] >= 230_000
    assert value(collected, "cargohold_gc_last_success_timestamp_seconds") >= job["createdAt"]  # type: ignore[operator]

    # Scrub finds a blob whose bytes changed on disk.
    kept = layout.add_image([50_000], seed=24, ref="kept:1")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", fresh.creds, f"oci:{layout.root}:kept:1",
           f"docker://{fresh.host}/{PROJECT}/metrics/kept:1", tmp_path=tmp_path)
    layer = json.loads(layout.read(kept))["layers"][0]["digest"].split(":", 1)[1]
    damaged = fresh.data_dir / "blobs" / "sha256" / layer[:2] / layer
    damaged.write_bytes(b"not the layer any more")
    resp = requests.post(f"{fresh.url}/api/cargohold/v1/jobs/scrub", json={}, auth=fresh.admin, timeout=10)
    assert resp.status_code == 202, resp.text
    job = wait_job(fresh, resp.headers["Location"])
    assert job["state"] == "done", job
    result = job["result"]
    assert isinstance(result, dict)
    scrubbed = scrape(fresh)
    assert delta(collected, scrubbed, "cargohold_scrub_runs_total", outcome="done") == 1
    assert delta(collected, scrubbed, "cargohold_scrub_damaged_blobs_total") == 1
    assert delta(collected, scrubbed, "cargohold_scrub_checked_blobs_total") == result["checked"] >= 3
    assert delta(collected, scrubbed, "cargohold_scrub_checked_bytes_total") == result["bytes"]
    assert value(scrubbed, "cargohold_scrub_last_success_timestamp_seconds") > 0


def _worker_request_counts(app: Appliance) -> dict[int, float]:
    """Per worker pid, the requests its own multiprocess file holds (read as prometheus_client writes it)."""
    directory = (app.data_dir / "metrics").resolve()
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_", 1)[1])
        total = sum(v for key, v, *_ in MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
                    if json.loads(key)[1] == "cargohold_http_requests_total")
        counts[pid] = total
    return counts


def test_every_worker_is_counted_and_a_dead_workers_counts_stay(
        appliance_factory: Callable[..., Appliance]) -> None:
    # Without the front each request's new connection goes to whichever worker accepts it first: both get some.
    # (Behind nginx its keep-alive pool may stay with one worker for thousands of requests.)
    fresh = appliance_factory("--front", "none")
    workers = fresh.worker_pids(2)
    assert len(workers) == 2
    route = dict(route="/v2/", method="GET", status="401")
    before = scrape(fresh)
    sent = 0

    def hit(_: int) -> int:
        return int(requests.get(f"{fresh.url}/v2/", timeout=10).status_code)

    # Concurrent connections until both workers have answered some (normally the first round).
    with ThreadPoolExecutor(16) as pool:
        for _ in range(10):
            assert set(pool.map(hit, range(200))) == {401}
            sent += 200
            counts = _worker_request_counts(fresh)
            if all(counts.get(pid, 0) > 0 for pid in workers):
                break
    assert all(counts.get(pid, 0) > 0 for pid in workers), counts
    after = scrape(fresh)
    assert delta(before, after, "cargohold_http_requests_total", **route) == sent

    # A worker that dies takes its in-flight gauge with it, never its counts.
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while workers[0] in fresh.worker_pids(2) or len(fresh.worker_pids(2)) < 2:
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.1)
    assert not list((fresh.data_dir / "metrics").resolve().glob(f"gauge_livesum_{workers[0]}.db"))
    for _ in range(20):
        assert requests.get(f"{fresh.url}/v2/", timeout=10).status_code == 401
    later = scrape(fresh)
    assert delta(before, later, "cargohold_http_requests_total", **route) == sent + 20
    assert value(later, "cargohold_http_requests_in_flight") == 1  # the scrape itself


def _remote_appliance(tmp_path: Path, env: dict[str, str]) -> tuple[Appliance, str]:
    """An appliance listening on every address, and the base URL of this host's own non-loopback address."""
    address = next((a for a in _host_addresses() if not a.startswith("127.")), None)
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to come from")
    port = free_port()
    data = tmp_path / "remote-data"
    data.mkdir()
    full_env = {**os.environ, "CARGOHOLD_ADMIN_PASSWORD": ADMIN_PASSWORD, **env}
    app = _launch(data, port, tmp_path / "remote.log", ["--bind", f"0.0.0.0:{port}"], full_env, "http", False, 30)
    return app, f"http://{address}:{port}"


def _host_addresses() -> list[str]:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            return [s.getsockname()[0]]
        except OSError:
            return []


def test_metrics_access_loopback_default_refuses_remote_clients_even_with_a_forged_forwarded_for(
        tmp_path: Path) -> None:
    app, remote = _remote_appliance(tmp_path, {})
    try:
        assert requests.get(f"http://127.0.0.1:{app.port}/metrics", timeout=10).status_code == 200
        resp = requests.get(f"{remote}/metrics", timeout=10)
        assert resp.status_code == 401 and "metrics token" in resp.json()["errors"][0]["message"]
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
        for forged in ("127.0.0.1", "127.0.0.1, 127.0.0.1", "::1"):
            resp = requests.get(f"{remote}/metrics", headers={"X-Forwarded-For": forged, "X-Real-IP": forged},
                                timeout=10)
            assert resp.status_code == 401, forged
        assert requests.get(f"{remote}/metrics", auth=app.admin, timeout=10).status_code == 200
        assert requests.get(f"{remote}/livez", timeout=10).status_code == 200  # health needs no credentials
        assert requests.get(f"{remote}/readyz", timeout=10).status_code == 200
    finally:
        app.stop()


def test_metrics_access_token_needs_the_token_or_an_administrator(
        appliance_factory: Callable[..., Appliance], tmp_path: Path) -> None:
    token = "metrics-" + uuid.uuid4().hex
    app = appliance_factory(env={"CARGOHOLD_METRICS_ACCESS": "token", "CARGOHOLD_METRICS_TOKEN": token})
    url = f"{app.url}/metrics"
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 401, resp.text
    assert "metrics token" in resp.json()["errors"][0]["message"]
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    resp = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200 and "cargohold_http_requests_total" in resp.text
    assert requests.get(url, auth=app.admin, timeout=10).status_code == 200
    assert requests.get(url, auth=("admin", "wrong-password-1"), timeout=10).status_code == 401
    # A user who is not a system administrator is refused (403), naming why.
    cli("admin", "add-user", "viewer", "--data-dir", str(app.data_dir),
        env={"CARGOHOLD_NEW_PASSWORD": "viewer-Pass-123"})
    resp = requests.get(url, auth=("viewer", "viewer-Pass-123"), timeout=10)
    assert resp.status_code == 403 and "not a system administrator" in resp.json()["errors"][0]["message"]
    assert token not in app.log()


def test_metrics_access_open_and_a_bad_setting_is_refused_at_start(
        appliance_factory: Callable[..., Appliance], tmp_path: Path) -> None:
    app = appliance_factory(env={"CARGOHOLD_METRICS_ACCESS": "open"})
    assert requests.get(f"{app.url}/metrics", timeout=10).status_code == 200
    proc = cli("serve", "--data-dir", str(tmp_path / "bad"), env={"CARGOHOLD_METRICS_ACCESS": "public"},
               check=False, timeout=30)
    assert proc.returncode == 2
    assert "CARGOHOLD_METRICS_ACCESS='public': not one of loopback, token, open" in proc.stderr


def test_the_metrics_directory_is_private_fresh_at_each_start_and_removed_at_stop(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    first = (app.data_dir / "metrics").resolve()
    assert first.is_dir() and first.stat().st_mode & 0o777 == 0o700
    assert not str(first).startswith(str(app.data_dir))  # not on the data volume (see web/metrics_dir.py)
    for _ in range(50):
        requests.get(f"{app.url}/v2/", timeout=10)
    assert value(scrape(app), "cargohold_http_requests_total", route="/v2/", method="GET", status="401") >= 50
    app.stop()
    assert not first.exists()
    again = appliance_factory(name="data-0")
    assert again.data_dir == app.data_dir
    second = (again.data_dir / "metrics").resolve()
    assert second != first and second.is_dir()
    # Counting starts again (only the start-up probes of tests/appliance.py so far), as for any restarted target.
    assert value(scrape(again), "cargohold_http_requests_total", route="/v2/", method="GET", status="401") < 5
