"""The serving process tree (web/server.py, web/front.py): nginx front, gunicorn master and workers.

Each test starts its own appliance: they kill and signal it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.appliance import Appliance, restart_on, start_appliance, still_alive
from tests.registry.v2client import V2, sha256


def _open_files(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except FileNotFoundError:  # closed while we looked
            continue
    return found


def test_the_master_holds_no_handle_on_the_database_or_data_files(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    V2(app).push_blob("spectro-images/test/front-handles", b"written through a worker")
    assert len(app.worker_pids()) == 2
    data_dir = str(app.data_dir.resolve()) + "/"
    held = [path for path in _open_files(app.process.pid) if path.startswith(f"{data_dir}/")]
    assert held == [], f"the gunicorn master holds {held}: SQLite connections and locks must not cross fork()"
    # The workers do hold the database: the check above looks at the right kind of path.
    assert any(p.startswith(f"{data_dir}cargohold.db") for w in app.worker_pids() for p in _open_files(w))


def test_blob_bodies_are_sent_by_the_front_not_the_app(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    v2 = V2(app)
    repo = "spectro-images/test/front-blobs"
    data = os.urandom(3 << 20)
    digest = v2.push_blob(repo, data)
    workers = app.worker_pids()
    before = {pid: _proc_io(pid)["wchar"] for pid in workers}
    r = V2(app, auth=False).request("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert "X-Accel-Redirect" not in r.headers
    # No worker wrote anything near the blob's size to a socket: nginx sent it from the file.
    assert all(_proc_io(pid)["wchar"] - before[pid] < len(data) // 4 for pid in workers)
    part = V2(app, auth=False).request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert sha256(data) == digest


def _proc_io(pid: int) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())}


def test_killing_the_master_takes_every_process_down_and_the_port_is_free_at_once(tmp_path: Path) -> None:
    app = start_appliance(tmp_path / "data")
    try:
        V2(app).push_blob("spectro-images/test/front-kill", b"before the kill")
        workers, front = app.worker_pids(), app.front_pids()
        assert len(workers) == 2 and len(front) >= 2, (workers, front)
        app.process.kill()
        app.process.wait()
        assert still_alive(workers + front, timeout=3) == [], "orphaned workers or nginx outlived the master"
        again = restart_on(app)
        try:
            assert V2(again).request("GET", "/v2/spectro-images/test/front-kill/blobs/"
                                     + sha256(b"before the kill")).content == b"before the kill"
        finally:
            again.stop()
    finally:
        app.stop()


def test_killing_a_worker_replaces_it_and_serving_goes_on(appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory()
    v2 = V2(app)
    digest = v2.push_blob("spectro-images/test/front-worker", b"kept")
    victim = app.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while victim in app.worker_pids() or len(app.worker_pids()) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    for _ in range(10):
        assert v2.request("GET", f"/v2/spectro-images/test/front-worker/blobs/{digest}").content == b"kept"


def test_sigterm_lets_a_download_in_flight_finish_and_refuses_new_connections(
        appliance_factory: Callable[..., Appliance]) -> None:
    app = appliance_factory(env={"CARGOHOLD_GRACEFUL_TIMEOUT": "20"})
    repo = "spectro-images/test/front-drain"
    data = os.urandom(24 << 20)  # more than loopback's socket buffers hold: the front must keep sending
    digest = V2(app).push_blob(repo, data)
    received = bytearray()
    done = threading.Event()

    def slow_reader() -> None:
        # About 2 MiB/s: the download is still running when SIGTERM arrives.
        with socket.create_connection(("127.0.0.1", app.port), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            s.sendall(f"GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {app.host}\r\n\r\n".encode())
            while chunk := s.recv(64 << 10):
                received.extend(chunk)
                head_end = received.find(b"\r\n\r\n")
                if head_end >= 0 and len(received) - head_end - 4 >= len(data):
                    break
                time.sleep(0.03)
        done.set()

    reader = threading.Thread(target=slow_reader)
    reader.start()
    deadline = time.monotonic() + 10
    while len(received) < (1 << 20):
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.02)
    sent_at = time.monotonic()
    app.process.send_signal(signal.SIGTERM)
    # New connections are refused soon after, while the old download goes on.
    while True:
        try:
            with socket.create_connection(("127.0.0.1", app.port), timeout=1):
                pass
        except OSError:
            break
        assert time.monotonic() - sent_at < 5, "still accepting connections 5 s after SIGTERM"
        time.sleep(0.05)
    assert not done.is_set(), "the download finished before the test could check draining"
    reader.join(timeout=25)
    assert done.is_set()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == data
    assert app.process.wait(timeout=25) == 0
    assert time.monotonic() - sent_at < 20 + 5


@pytest.mark.parametrize("missing", ["/nonexistent/nginx"])
def test_a_missing_nginx_is_named_at_start(tmp_path: Path, missing: str) -> None:
    with pytest.raises(RuntimeError, match="is not an executable file"):
        start_appliance(tmp_path / "data", env={"CARGOHOLD_NGINX": missing})


def test_a_chunked_definition_upload_is_always_length_required(appliance: Appliance) -> None:
    # nginx forwards a small chunked body it has already read whole with a Content-Length, so the app alone
    # answered 411 or parsed the body depending on timing (seen as 400 in 5 of 30 tries); the front decides.
    url = f"{appliance.url}/api/cargohold/v1/cluster-definitions"
    answers = [requests.post(url, auth=appliance.admin, data=iter([b"x" * 5000]), timeout=10) for _ in range(30)]
    assert {(r.status_code, r.json()["errors"][0]["code"]) for r in answers} == {(411, "LENGTH_REQUIRED")}


def test_a_worker_that_exits_gracefully_leaves_the_front_serving(appliance_factory: Callable[..., Appliance]) -> None:
    # A worker exiting on SIGTERM (a HUP reload, systemd stopping the service, a recycle) unwound through the
    # master's stack, which it was forked in, and deleted the runtime directory: the app's socket went with it
    # and nginx answered 502 for everything until a restart.
    app = appliance_factory()
    v2 = V2(app)
    digest = v2.push_blob("spectro-images/test/front-graceful", b"still served")
    (socket_path,) = {Path(line.rsplit("unix:", 1)[1].split()[0]) for line in app.log().splitlines()
                      if "the app on unix:" in line}
    victim = app.worker_pids()[0]
    os.kill(victim, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while victim in app.worker_pids() or len(app.worker_pids()) < 2:
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    assert socket_path.exists(), f"{socket_path} was removed by the exiting worker"
    for _ in range(10):
        r = v2.request("GET", f"/v2/spectro-images/test/front-graceful/blobs/{digest}")
        assert r.status_code == 200 and r.content == b"still served"


def test_sigterm_to_every_process_of_the_service_stops_it_cleanly(tmp_path: Path) -> None:
    # systemd's default KillMode=control-group sends SIGTERM to the master, the workers and nginx at once.
    app = start_appliance(tmp_path / "data")
    pids = [app.process.pid, *app.worker_pids(), *app.front_pids()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    assert app.process.wait(timeout=40) == 0, app.log()
    assert "Error:" not in app.log() and "Traceback" not in app.log(), app.log()
