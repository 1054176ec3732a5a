"""No acknowledged write is ever lost (issue #10, part 5): SIGKILL and SIGTERM under write load.

Four clients write at once, as on a site: a /v2/ pusher (monolithic and
chunked blob uploads, manifest PUTs by tag), a multipart bundle upload
(``POST /api/v1/bundles``), a tus upload (``/api/v1/uploads``) and the import
of a bundle already on the box (``POST /api/v1/bundles/import``). Every
answer is written down in a `Ledger`: what was acknowledged (2xx) and what
was sent but never answered (it may or may not have landed). At a random
moment the gunicorn master (the whole appliance) or one worker gets SIGKILL;
the appliance is restarted on the same data directory and port, and the
store is checked against the ledger:

* everything acknowledged is there: blob bytes, manifests by tag and by
  digest, tus offsets at least what was acknowledged (and the upload
  completes), import jobs with their audit rows, done or failed as
  interrupted and then imported again to done, with every image;
* nothing is half-visible: no tag without its manifest, no manifest without
  its blobs, no blob file whose bytes do not match its name, no bundle with
  only some of its images, no tag that no client pushed or imported;
* the database passes ``PRAGMA integrity_check``.

Kill moments, sizes and victims come from one seed, printed at the start:
``CARGOHOLD_KILL_SEED=<seed>`` replays a run's choices (the interleaving with
the server's threads is the machine's). The bounded tests run in the default
suite; ``-m slow`` runs the master kill 30 times and the worker kill 10.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from bundles import keys
from tests.appliance import ADMIN_PASSWORD, Appliance, free_port, restart_on, start_appliance, still_alive
from tests.bundles import craft
from tests.bundles.buildutil import cargohold
from tests.images import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, OciLayout

PROJECT = "spectro-images"
TIMEOUT = 30
TUS_CHUNK = 256 << 10
OPEN_STATES = ("verifying", "importing")
_SEED = int(os.environ.get("CARGOHOLD_KILL_SEED") or secrets.randbits(32))


@pytest.fixture(scope="module")
def seed() -> int:
    print(f"\nkill tests seed {_SEED}: replay with CARGOHOLD_KILL_SEED={_SEED}")
    return _SEED


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[keys.PrivateKey, Path]:
    """The key the test bundles are signed with, and its public PEM for `cargohold keys add`."""
    key = keys.generate("ecdsa-p256")
    pub = tmp_path_factory.mktemp("kill-keys") / "kill.pub.pem"
    pub.write_bytes(keys.public_pem(key))
    return key, pub


def _trusting_data_dir(path: Path, pub: Path) -> Path:
    cargohold("keys", "add", pub, "--description", "kill tests", "--data-dir", path)
    return path


# -- the ledger: what the clients were told --------------------------------------------------------------------


@dataclass
class BundleSpec:
    """A bundle the test built: its images (reference -> manifest digest) and whether an import of it finished."""

    name: str
    path: Path
    images: dict[str, str]
    done: bool = False


@dataclass
class Session:
    """A chunked /v2/ blob upload: the bytes acknowledged by PATCH 202s, and whether the closing PUT got its 201."""

    repo: str
    location: str
    data: bytes
    epoch: int
    acked: int = 0
    finished: bool = False


@dataclass
class TusRecord:
    """A tus upload: the offset the last 204 acknowledged, and the import job its last PATCH answered with."""

    url: str
    spec: BundleSpec
    data: bytes
    epoch: int
    acked: int = 0
    job: str | None = None

    @property
    def id(self) -> str:
        return self.url.rsplit("/", 1)[1]


@dataclass
class JobRecord:
    """An import job a 202 (or a completed tus upload) told the client about, and the audit rows it implies."""

    id: str
    source: str
    spec: BundleSpec
    via: str  # "multipart", "import", "tus" or "reimport"
    epoch: int
    audit: tuple[tuple[str, str, str], ...]
    tus_id: str | None = None
    state: str | None = None  # as last seen by the client


@dataclass
class Ledger:
    """Everything the clients were answered, across kills and restarts (one data directory)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    epoch: int = 0
    blobs: dict[tuple[str, str], tuple[bytes, int]] = field(default_factory=dict)  # (repo, digest) -> data, epoch
    manifests: dict[tuple[str, str], tuple[str, bytes, int]] = field(default_factory=dict)  # (repo, tag) -> ...
    unanswered_tags: set[tuple[str, str]] = field(default_factory=set)
    sessions: list[Session] = field(default_factory=list)
    tus: list[TusRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    bundles: list[BundleSpec] = field(default_factory=list)
    acks: Counter[str] = field(default_factory=Counter)
    recovered: Counter[str] = field(default_factory=Counter)  # what the kills cut short, for the run's record

    def next_epoch(self, epoch: int) -> None:
        """Start round `epoch`; the bytes of earlier rounds' writes are let go (the store check needs only digests)."""
        with self.lock:
            self.epoch = epoch
            self.blobs = {key: (b"" if at < epoch else data, at) for key, (data, at) in self.blobs.items()}
            self.manifests = {key: (d, b"" if at < epoch else body, at)
                              for key, (d, body, at) in self.manifests.items()}
            for upload in self.sessions:
                if upload.finished:
                    upload.data = b""
            for record in self.tus:
                if record.job is not None:
                    record.data = b""

    def summary(self) -> str:
        return (f"{len(self.blobs)} blobs, {len(self.manifests)} manifests, {len(self.sessions)} chunked uploads, "
                f"{len(self.tus)} tus uploads, {len(self.jobs)} import jobs over {len(self.bundles)} bundles")


def _place(reference: str) -> tuple[str, str]:
    """(repository, tag) where the appliance serves a bundle image's reference."""
    name, _, tag = reference.rpartition(":")
    return f"{PROJECT}/{name}", tag


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class _Aborted(Exception):
    """The load was stopped while a request body was being sent."""


class _Body:
    """A request body sent in pieces with pauses, like a client on a slow link; sized, so it goes with Content-Length.

    `sent` counts what has been handed to the socket. Raises _Aborted (the
    connection drops mid-body) once `stop` is set.
    """

    def __init__(self, pieces: list[bytes | memoryview], pause: float, stop: threading.Event | None = None) -> None:
        self.pieces = pieces
        self.pause = pause
        self.stop = stop
        self.sent = 0

    def __len__(self) -> int:
        return sum(len(p) for p in self.pieces)

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            if self.stop is not None and self.stop.is_set():
                raise _Aborted()
            yield bytes(piece)
            self.sent += len(piece)
            time.sleep(self.pause)  # the link's pace, not a wait for a condition


def _slices(data: bytes, size: int) -> list[bytes | memoryview]:
    view = memoryview(data)
    return [view[i:i + size] for i in range(0, len(data), size)]


# -- bundles -----------------------------------------------------------------------------------------------------


def make_bundle(directory: Path, key: keys.PrivateKey, rng: random.Random, label: str) -> BundleSpec:
    """A signed bundle of two images with fresh incompressible layers (sizes from `rng`); `label` names them."""
    root = directory / f"layout-{label}"
    layout = OciLayout(root)
    images = {}
    for i, layer_count in enumerate((2, 1)):
        layers = [layout.add_blob(rng.randbytes(rng.randint(384 << 10, 1280 << 10)), OCI_LAYER)
                  for _ in range(layer_count)]
        config = layout.add_blob(_canonical({"architecture": "amd64", "os": "linux", "label": f"{label}-{i}",
                                             "rootfs": {"type": "layers", "diff_ids": []}}), OCI_CONFIG)
        manifest = layout.add_blob(_canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                               "config": config.descriptor(),
                                               "layers": [b.descriptor() for b in layers]}), OCI_MANIFEST)
        reference = f"docker.io/killtest/{label}-{i}:v1"
        layout.tag(manifest, reference, {"architecture": "amd64", "os": "linux"})
        images[reference] = manifest.digest
    path = directory / f"{label}.tar.zst"
    craft.write_bundle(path, craft.standard_entries(root, key, name=f"kill-{label}", version="1"), level=1)
    for f in (root / "blobs" / "sha256").iterdir():
        f.unlink()
    return BundleSpec(path.name, path, images)


# -- the load ----------------------------------------------------------------------------------------------------


class WriteLoad:
    """The four writing clients against one appliance, each in its own thread, recording into a Ledger."""

    PATHS = ("push", "multipart", "tus", "import")

    def __init__(self, app: Appliance, ledger: Ledger, key: keys.PrivateKey, workdir: Path, seed: str) -> None:
        self.app = app
        self.ledger = ledger
        self.key = key
        self.workdir = workdir
        self.seed = seed
        self.stop = threading.Event()
        self.errors: list[str] = []  # what the kill did to requests in flight: not acknowledged, no harm
        self.failures: list[str] = []  # answers no kill explains (a 4xx, a broken protocol promise)
        self.threads = [threading.Thread(target=self._run, args=(path,), name=f"load-{path}", daemon=True)
                        for path in self.PATHS]
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> WriteLoad:
        for t in self.threads:
            t.start()
        return self

    def wait_for_acks(self, timeout: float = 60) -> None:
        """Wait until every path has had at least one write acknowledged in this epoch."""
        deadline = time.monotonic() + timeout
        start = Counter(self.ledger.acks)
        while True:
            with self.ledger.lock:
                missing = [p for p in self.PATHS if self.ledger.acks[p] <= start[p]]
            if not missing:
                return
            assert time.monotonic() < deadline, f"no write acknowledged on {missing} within {timeout:.0f} s: " \
                                                f"{self.errors[-5:]}\n{self.app.log()[-3000:]}"
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        assert not [t.name for t in self.threads if t.is_alive()], "a load thread did not stop"
        assert not self.failures, f"the clients got answers no kill explains: {self.failures}"

    # -- one loop per path

    def _run(self, path: str) -> None:
        rng = random.Random(f"{self.seed}:{path}")
        session = requests.Session()
        session.auth = self.app.admin
        work: Callable[[requests.Session, random.Random, int], None] = getattr(self, f"_{path}")
        n = 0
        while not self.stop.is_set():
            try:
                work(session, rng, n)
            except Exception as exc:
                # Not acknowledged (the ledger only holds 2xx answers); after a worker kill, carry on. A
                # dropped connection or the front's 502 is what a kill does; anything else is a failure.
                fallout = isinstance(exc, requests.RequestException | _Aborted | OSError) or (
                    isinstance(exc, _Refused) and exc.status in (502, 503, 504))
                (self.errors if fallout else self.failures).append(f"{path}: {type(exc).__name__}: {exc}"[:400])
                session.close()
                self.stop.wait(0.05)
            n += 1
        session.close()

    def _url(self, path: str) -> str:
        return f"{self.app.url}{path}" if path.startswith("/") else path

    def _push(self, s: requests.Session, rng: random.Random, n: int) -> None:
        """One image: config by monolithic POST, layer by POST + PATCH chunks + PUT, manifest PUT by tag."""
        ledger, epoch = self.ledger, self.ledger.epoch
        repo = f"{PROJECT}/kill/push-e{epoch}"
        config = _canonical({"architecture": "amd64", "os": "linux", "n": f"{self.seed}:{n}",
                             "rootfs": {"type": "layers", "diff_ids": []}})
        r = s.post(self._url(f"/v2/{repo}/blobs/uploads/"), params={"digest": _sha256(config)}, data=config,
                   headers={"Content-Type": "application/octet-stream"}, timeout=TIMEOUT)
        _expect(r, 201)
        with ledger.lock:
            ledger.blobs[(repo, _sha256(config))] = (config, epoch)
            ledger.acks["push"] += 1
        layer = rng.randbytes(rng.randint(64 << 10, 512 << 10))
        r = s.post(self._url(f"/v2/{repo}/blobs/uploads/"), timeout=TIMEOUT)
        _expect(r, 202)
        upload = Session(repo, r.headers["Location"], layer, epoch)
        with ledger.lock:
            ledger.sessions.append(upload)
        cut = sorted(rng.sample(range(1, len(layer)), 2))
        for start, end in ((0, cut[0]), (cut[0], cut[1])):
            r = s.patch(self._url(upload.location), data=layer[start:end], timeout=TIMEOUT,
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{start}-{end - 1}"})
            _expect(r, 202)
            assert r.headers["Range"] == f"0-{end - 1}", r.headers
            upload.location = r.headers["Location"]
            upload.acked = end
        r = s.put(self._url(upload.location), params={"digest": _sha256(layer)}, data=layer[cut[1]:],
                  timeout=TIMEOUT, headers={"Content-Type": "application/octet-stream",
                                            "Content-Range": f"{cut[1]}-{len(layer) - 1}"})
        _expect(r, 201)
        with ledger.lock:
            upload.acked, upload.finished = len(layer), True
            ledger.blobs[(repo, _sha256(layer))] = (layer, epoch)
        manifest = _canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": _sha256(config), "size": len(config)},
                               "layers": [{"mediaType": OCI_LAYER, "digest": _sha256(layer), "size": len(layer)}]})
        tag = f"n{n}"
        with ledger.lock:
            ledger.unanswered_tags.add((repo, tag))
        r = s.put(self._url(f"/v2/{repo}/manifests/{tag}"), data=manifest, headers={"Content-Type": OCI_MANIFEST},
                  timeout=TIMEOUT)
        _expect(r, 201)
        assert r.headers["Docker-Content-Digest"] == _sha256(manifest)
        with ledger.lock:
            ledger.manifests[(repo, tag)] = (_sha256(manifest), manifest, epoch)
            ledger.acks["push"] += 1

    def _new_bundle(self, rng: random.Random, kind: str, n: int) -> BundleSpec:
        spec = make_bundle(self.workdir, self.key, rng, f"{kind}e{self.ledger.epoch}n{n}")
        with self.ledger.lock:
            self.ledger.bundles.append(spec)
        return spec

    def _job_answered(self, r: requests.Response, spec: BundleSpec, via: str,
                      audit: tuple[tuple[str, str, str], ...] = ()) -> JobRecord:
        _expect(r, 202)
        job = r.json()["job"]
        assert r.headers["Location"] == r.json()["jobUrl"] == f"/api/v1/imports/{job['id']}"
        record = JobRecord(job["id"], job["source"], spec, via, self.ledger.epoch,
                           (("create", "import", f"{job['id']}:{job['source']}"), *audit))
        with self.ledger.lock:
            self.ledger.jobs.append(record)
            self.ledger.acks[via] += 1
        return record

    def _follow(self, s: requests.Session, record: JobRecord) -> None:
        """Poll the job until it ends (or the load stops): the next bundle comes after, as an operator would."""
        while not self.stop.is_set():
            r = s.get(self._url(f"/api/v1/imports/{record.id}"), timeout=TIMEOUT)
            _expect(r, 200)
            record.state = r.json()["state"]
            if record.state == "done":
                record.spec.done = True
            if record.state not in OPEN_STATES:
                return
            self.stop.wait(0.05)

    def _multipart(self, s: requests.Session, rng: random.Random, n: int) -> None:
        spec = self._new_bundle(rng, "mp", n)
        boundary = secrets.token_hex(16)
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"uploadFile\"; filename=\"{spec.name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = _Body([head, *_slices(spec.path.read_bytes(), 128 << 10), tail], pause=0.01, stop=self.stop)
        spec.path.unlink()  # the appliance keeps its own copy until the import succeeds
        r = s.post(self._url("/api/v1/bundles"), data=body, timeout=TIMEOUT,
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if r.status_code != 202:
            raise _Refused(r)
        source = r.json()["job"]["source"]
        self._follow(s, self._job_answered(r, spec, "multipart", (("create", "bundle", source),)))

    def _import(self, s: requests.Session, rng: random.Random, n: int) -> None:
        spec = self._new_bundle(rng, "imp", n)
        # The operator copied the bundle to the box (imports/ on the data volume) and asks for its import.
        os.replace(spec.path, self.app.data_dir / "imports" / spec.name)
        spec.path = self.app.data_dir / "imports" / spec.name
        r = s.post(self._url("/api/v1/bundles/import"), json={"path": spec.name}, timeout=TIMEOUT)
        if r.status_code != 202:
            raise _Refused(r)
        self._follow(s, self._job_answered(r, spec, "import"))

    def _tus(self, s: requests.Session, rng: random.Random, n: int) -> None:
        spec = self._new_bundle(rng, "tus", n)
        data = spec.path.read_bytes()
        spec.path.unlink()
        r = s.post(self._url("/api/v1/uploads"), timeout=TIMEOUT,
                   headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
                            "Upload-Metadata": _tus_metadata(filename=spec.name, kind="bundle")})
        _expect(r, 201)
        record = TusRecord(self._url(r.headers["Location"]), spec, data, self.ledger.epoch)
        with self.ledger.lock:
            self.ledger.tus.append(record)
        offset = 0
        while offset < len(data):
            if self.stop.is_set():
                raise _Aborted()
            chunk = data[offset:offset + TUS_CHUNK]
            r = _tus_patch(s, record.url, offset, chunk)
            _expect(r, 204)
            offset = int(r.headers["Upload-Offset"])
            with self.ledger.lock:
                record.acked = offset
                self.ledger.acks["tus"] += 1
        job = r.headers.get("Cargohold-Import-Job")
        assert job, f"the last PATCH of {record.url} answered without Cargohold-Import-Job"
        answered = JobRecord(job, spec.name, spec, "tus", self.ledger.epoch,
                             (("create", "import", f"{job}:{spec.name}"),), tus_id=record.id)
        with self.ledger.lock:
            record.job = job
            self.ledger.jobs.append(answered)
        self._follow(s, answered)


class _Refused(Exception):
    """An answer that is not the acknowledgement the client waited for."""

    def __init__(self, r: requests.Response) -> None:
        super().__init__(f"{r.request.method} {r.url} -> {r.status_code}: {r.text[:200]}")
        self.status = r.status_code


def _expect(r: requests.Response, status: int) -> None:
    """A non-`status` answer is not an acknowledgement: raise so the client moves on (or the test sees it)."""
    if r.status_code != status:
        raise _Refused(r)


def _tus_metadata(**fields: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


def _tus_patch(s: requests.Session, url: str, offset: int, chunk: bytes | _Body,
               checksum: bytes | None = None) -> requests.Response:
    digest = checksum if checksum is not None else (hashlib.sha256(chunk).digest() if isinstance(chunk, bytes)
                                                    else None)
    headers = {"Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
               "Content-Type": "application/offset+octet-stream"}
    if digest is not None:
        headers["Upload-Checksum"] = f"sha256 {base64.b64encode(digest).decode()}"
    return s.patch(url, data=chunk, headers=headers, timeout=TIMEOUT)


# -- checking the store ------------------------------------------------------------------------------------------


@contextmanager
def _read_only(data_dir: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{data_dir / 'cargohold.db'}?mode=ro", uri=True, timeout=30)
    with closing(conn):
        yield conn


class StoreCheck:
    """Read the data directory (read-only SQLite, blob files) and hold it against the ledger."""

    def __init__(self, data_dir: Path, ledger: Ledger) -> None:
        self.data_dir = data_dir
        self.ledger = ledger
        self._hashed: dict[Path, tuple[int, int, int]] = {}

    def _blob_files(self) -> dict[str, Path]:
        files = {}
        for path in (self.data_dir / "blobs" / "sha256").glob("*/*"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files[f"sha256:{path.name}"] = path
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._hashed.get(path) != stamp:
                h = hashlib.sha256()
                with path.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                assert h.hexdigest() == path.name, f"blob file {path} holds bytes whose digest is {h.hexdigest()}"
                self._hashed[path] = stamp
        return files

    def __call__(self, when: str, settled: bool) -> None:
        """Check everything; `settled`: every acknowledged import has been seen through to done."""
        ledger = self.ledger
        with _read_only(self.data_dir) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], when
            assert db.execute("PRAGMA foreign_key_check").fetchall() == [], when
            # One read transaction: a worker-kill check runs while the appliance goes on writing, and
            # the tables must be read from one snapshot (a repository created between two SELECTs
            # would look like a manifest of an unknown repository).
            db.execute("BEGIN")
            repos = dict(db.execute("SELECT id, name FROM repositories").fetchall())
            tags = {(repos[r], t): d for r, t, d in db.execute("SELECT repository_id, name, digest FROM tags")}
            manifests = {(repos[r], d) for r, d in db.execute("SELECT repository_id, digest FROM manifests")}
            linked = {(repos[r], d) for r, d in db.execute("SELECT repository_id, digest FROM repository_blobs")}
            refs = db.execute("SELECT repository_id, manifest, child, kind FROM manifest_refs").fetchall()
            sized = dict(db.execute("SELECT digest, size FROM blobs").fetchall())
            jobs = {r[0]: r for r in db.execute("SELECT id, state, error, source FROM import_jobs")}
            audit = set(db.execute("SELECT operation, resource_type, resource FROM audit_logs").fetchall())
            db.execute("COMMIT")
        files = self._blob_files()

        # Nothing half-visible.
        for (repo, tag), digest in tags.items():
            assert (repo, digest) in manifests, f"{when}: tag {repo}:{tag} points at a missing manifest {digest}"
        for repo, digest in manifests:
            assert digest in files, f"{when}: manifest {repo}@{digest} has no blob file"
        for repo_id, manifest, child, kind in refs:
            repo = repos[repo_id]
            if kind == "blob":
                assert (repo, child) in linked and child in files, \
                    f"{when}: manifest {repo}@{manifest} references blob {child}, which is missing"
            else:
                assert (repo, child) in manifests, f"{when}: index {repo}@{manifest} references missing {child}"
        for repo, digest in linked:
            assert digest in files, f"{when}: {repo} links blob {digest}, which has no file"
        for digest, size in sized.items():
            assert digest in files and files[digest].stat().st_size == size, f"{when}: blob row {digest} ({size})"

        # Everything acknowledged is there.
        with ledger.lock:
            blobs, pushed = dict(ledger.blobs), dict(ledger.manifests)
            unanswered, bundles, records = set(ledger.unanswered_tags), list(ledger.bundles), list(ledger.jobs)
        for (repo, digest) in blobs:
            assert (repo, digest) in linked, f"{when}: acknowledged blob {repo}@{digest} is gone"
        for (repo, tag), (digest, _, _) in pushed.items():
            assert tags.get((repo, tag)) == digest, \
                f"{when}: acknowledged manifest {repo}:{tag} ({digest}) is {tags.get((repo, tag))}"
            assert ("create", "artifact", f"{repo}:{tag}") in audit, f"{when}: no audit row for {repo}:{tag}"
        for record in records:
            assert record.id in jobs, f"{when}: import job {record.id} ({record.via}, answered 202) is gone"
            missing = [row for row in record.audit if row not in audit]
            assert not missing, f"{when}: import job {record.id} ({record.via}) lost its audit rows {missing}"

        # Only what a client sent is visible, and each bundle all or nothing.
        bundle_tags = {_place(ref) for spec in bundles for ref in spec.images}
        strangers = sorted(set(tags) - set(pushed) - unanswered - bundle_tags)
        assert not strangers, f"{when}: tags no client pushed or imported: {strangers}"
        for spec in bundles:
            present = {ref: tags.get(_place(ref)) for ref in spec.images}
            wrong = {ref: d for ref, d in present.items() if d is not None and d != spec.images[ref]}
            assert not wrong, f"{when}: bundle {spec.name} images point at the wrong manifests: {wrong}"
            shown = [ref for ref, d in present.items() if d is not None]
            assert len(shown) in (0, len(spec.images)), \
                f"{when}: bundle {spec.name} is half visible: {shown} of {sorted(spec.images)}"
            if spec.done:
                assert len(shown) == len(spec.images), \
                    f"{when}: bundle {spec.name}, whose import a client saw done, is not visible: {shown}"
        if settled:
            unfinished = sorted({r.spec.name for r in records if not r.spec.done})
            assert not unfinished, f"{when}: acknowledged imports never finished: {unfinished}"


# -- checking through the API, and finishing what was cut short ---------------------------------------------------


def _session(app: Appliance) -> requests.Session:
    s = requests.Session()
    s.auth = app.admin
    return s


def check_served(app: Appliance, ledger: Ledger, epoch: int) -> None:
    """Every blob and manifest acknowledged in `epoch` is served: the bytes, by tag and by digest."""
    with closing(_session(app)) as s:
        for (repo, digest), (data, at) in list(ledger.blobs.items()):
            if at != epoch or not data:
                continue
            r = s.get(f"{app.url}/v2/{repo}/blobs/{digest}", timeout=TIMEOUT)
            assert r.status_code == 200 and r.content == data, f"blob {repo}@{digest}: {r.status_code}"
        for (repo, tag), (digest, body, at) in list(ledger.manifests.items()):
            if at != epoch:
                continue
            for reference in (tag, digest):
                r = s.get(f"{app.url}/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST},
                          timeout=TIMEOUT)
                assert r.status_code == 200 and r.content == body, f"manifest {repo}:{reference}: {r.status_code}"
                assert r.headers["Docker-Content-Digest"] == digest


def _upload_end(r: requests.Response) -> int:
    """The bytes an upload holds per its Range header ("0-<last>"; "0-0" for none or one: ambiguous)."""
    return int(r.headers["Range"].split("-")[1]) + 1


def finish_uploads(app: Appliance, ledger: Ledger) -> None:
    """Each chunked /v2/ upload cut short holds at least the bytes acknowledged, and completes from there."""
    with closing(_session(app)) as s:
        for upload in [u for u in ledger.sessions if not u.finished]:
            url = f"{app.url}{upload.location}"
            digest = _sha256(upload.data)
            status = s.get(url, timeout=TIMEOUT)
            if status.status_code == 404 and s.head(f"{app.url}/v2/{upload.repo}/blobs/{digest}",
                                                    timeout=TIMEOUT).status_code == 200:
                upload.finished = True  # its closing PUT landed, unanswered: the blob is in its repository
                ledger.recovered["chunked upload finished unanswered"] += 1
                continue
            assert status.status_code == 204, \
                f"upload {upload.location} with {upload.acked} acknowledged bytes: {status.status_code} {status.text}"
            held = _upload_end(status)
            if status.headers["Range"] == "0-0":
                held = min(upload.acked, 1)  # 0 or 1 byte; a wrong guess is answered 416 with the offset
            assert held >= upload.acked, f"upload {upload.location} holds {held} bytes, {upload.acked} acknowledged"
            for _ in range(2):
                rest = upload.data[held:]
                r = s.put(url, params={"digest": digest}, data=rest, timeout=TIMEOUT,
                          headers={"Content-Type": "application/octet-stream",
                                   **({"Content-Range": f"{held}-{len(upload.data) - 1}"} if rest else {})})
                if r.status_code != 416:
                    break
                held = _upload_end(r)
            assert r.status_code == 201, f"finishing {upload.location} from {held}: {r.status_code} {r.text}"
            ledger.recovered["chunked upload resumed"] += 1
            upload.finished, upload.acked = True, len(upload.data)
            ledger.blobs[(upload.repo, digest)] = (upload.data, upload.epoch)
            got = s.get(f"{app.url}/v2/{upload.repo}/blobs/{digest}", timeout=TIMEOUT)
            assert got.status_code == 200 and got.content == upload.data


def finish_tus(app: Appliance, ledger: Ledger) -> None:
    """Each tus upload holds at least the offset acknowledged; an unfinished one completes and its import starts."""
    with closing(_session(app)) as s:
        for record in [t for t in ledger.tus if t.job is None]:
            head = s.head(record.url, headers={"Tus-Resumable": "1.0.0"}, timeout=TIMEOUT)
            assert head.status_code == 200, f"tus upload {record.url} ({record.acked} acknowledged): {head.status_code}"
            offset = int(head.headers["Upload-Offset"])
            assert offset >= record.acked, f"tus upload {record.url} is at {offset}, {record.acked} acknowledged"
            job = head.headers.get("Cargohold-Import-Job")
            audit: tuple[tuple[str, str, str], ...] = ()  # the last PATCH landed unanswered: no promise of a row
            if offset < len(record.data):
                r = _tus_patch(s, record.url, offset, record.data[offset:])
                assert r.status_code == 204, f"completing tus upload {record.url} from {offset}: {r.status_code} " \
                                             f"{r.text}"
                job = r.headers.get("Cargohold-Import-Job")
                audit = (("create", "import", f"{job}:{record.spec.name}"),)
                ledger.recovered["tus upload resumed"] += 1
            else:
                ledger.recovered["tus upload completed unanswered"] += 1
            assert job, (f"tus upload {record.url} is complete ({offset} of {len(record.data)} bytes) but no import "
                         f"started, and nothing can start it now")
            record.job, record.acked = job, len(record.data)
            ledger.jobs.append(JobRecord(job, record.spec.name, record.spec, "tus", record.epoch, audit,
                                         tus_id=record.id))


def _wait_jobs(app: Appliance, ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Any]] = {}
    with closing(_session(app)) as s:
        for job_id in ids:
            while True:
                r = s.get(f"{app.url}/api/v1/imports/{job_id}", timeout=TIMEOUT)
                assert r.status_code == 200, f"import job {job_id} answered 202 earlier, now {r.status_code}: {r.text}"
                seen[job_id] = r.json()
                if seen[job_id]["state"] not in OPEN_STATES:
                    break
                assert time.monotonic() < deadline, f"import job {job_id} still {seen[job_id]['state']}"
                time.sleep(0.05)
    return seen


def settle_imports(app: Appliance, ledger: Ledger) -> None:
    """Every acknowledged import ends done, or failed as interrupted and then imported again to done."""
    with closing(_session(app)) as s:
        for record in list(ledger.jobs):
            if record.spec.done and record.state in ("done", "interrupted"):
                continue  # settled in an earlier round (the store check still finds its row and audit rows)
            job = _wait_jobs(app, [record.id])[record.id]
            record.state = job["state"]
            if job["state"] == "done":
                record.spec.done = True
                continue
            assert job["state"] == "failed" and job["error"].startswith("interrupted"), \
                f"import job {record.id} ({record.via}) failed, and not as interrupted: {job['error']}"
            ledger.recovered[f"interrupted import ({record.via})"] += 1
            record.state = "interrupted"
            if record.spec.done:
                continue  # a later import of the same bundle finished it
            if record.tus_id is not None:
                # An operator on the box: the completed upload's file stays until its import succeeds.
                path = app.data_dir / "imports" / "tus" / record.tus_id / record.source
                assert path.is_file(), f"the bytes of tus upload {record.tus_id} are gone: {path}"
                report = json.loads(cargohold("bundle", "import", path, "--data-dir", app.data_dir, "--json").stdout)
                assert sorted(i["reference"] for i in report["images"]) == sorted(record.spec.images)
                record.spec.done = True
                continue
            r = s.post(f"{app.url}/api/v1/bundles/import", json={"path": record.source}, timeout=TIMEOUT)
            assert r.status_code == 202, f"importing {record.source} again after {record.id}: {r.status_code} {r.text}"
            again = r.json()["job"]["id"]
            ledger.jobs.append(JobRecord(again, record.source, record.spec, "reimport", record.epoch,
                                         (("create", "import", f"{again}:{record.source}"),), state="done"))
            finished = _wait_jobs(app, [again])[again]
            assert finished["state"] == "done", f"import again of {record.source}: {finished}"
            record.spec.done = True


def recover_and_check(app: Appliance, ledger: Ledger, check: StoreCheck, epoch: int, when: str) -> None:
    """Right after the kill (and restart): check, then finish what was cut short as a client would, and check again."""
    before = Counter(ledger.recovered)
    check(f"{when}, before any recovery", settled=False)
    check_served(app, ledger, epoch)
    finish_uploads(app, ledger)
    finish_tus(app, ledger)
    settle_imports(app, ledger)
    check(f"{when}, after recovery", settled=True)
    print(f"  cut short and recovered: {dict(ledger.recovered - before) or 'nothing'}")


def _processes(app: Appliance) -> list[int]:
    return [*app.worker_pids(), *app.front_pids()]


# -- the tests ---------------------------------------------------------------------------------------------------


def _master_kills(tmp_path: Path, seed: int, signing: tuple[keys.PrivateKey, Path], rounds: int,
                  window: float) -> None:
    key, pub = signing
    data_dir = _trusting_data_dir(tmp_path / "data", pub)
    ledger = Ledger()
    check = StoreCheck(data_dir, ledger)
    app = start_appliance(data_dir)
    try:
        for epoch in range(rounds):
            rng = random.Random(f"{seed}:master:{epoch}")
            ledger.next_epoch(epoch)
            load = WriteLoad(app, ledger, key, tmp_path / "work", f"{seed}:master:{epoch}").start()
            try:
                load.wait_for_acks()
                delay = rng.uniform(0, window)
                time.sleep(delay)  # the random kill moment
                before = _processes(app)
                app.process.kill()
                app.process.wait()
                killed_at = time.monotonic()
            finally:
                load.finish()
            print(f"round {epoch}: master SIGKILLed {delay:.2f} s after the first acks; {ledger.summary()}")
            assert still_alive(before, timeout=3) == [], "workers or nginx outlived their killed master"
            gone_at = time.monotonic()
            app = restart_on(app)
            print(f"round {epoch}: its processes gone {gone_at - killed_at:.2f} s after the kill; restarted on port "
                  f"{app.port}, answering {time.monotonic() - gone_at:.2f} s later")
            recover_and_check(app, ledger, check, epoch, f"seed {seed} round {epoch} (master killed)")
        app.stop()
        assert app.process.returncode == 0, app.log()[-3000:]
        check(f"seed {seed}: after the last stop", settled=True)
        shutil.rmtree(data_dir)  # gigabytes after many rounds; a failure keeps them for a look
    finally:
        app.stop()


def test_sigkill_of_the_master_under_write_load_loses_no_acknowledged_write(
        tmp_path: Path, seed: int, signing: tuple[keys.PrivateKey, Path]) -> None:
    _master_kills(tmp_path, seed, signing, rounds=3, window=1.5)


@pytest.mark.slow
def test_sigkill_of_the_master_repeatedly(tmp_path: Path, seed: int, signing: tuple[keys.PrivateKey, Path]) -> None:
    _master_kills(tmp_path, seed, signing, rounds=30, window=4.0)


def _worker_kills(tmp_path: Path, seed: int, signing: tuple[keys.PrivateKey, Path], rounds: int,
                  window: float) -> None:
    key, pub = signing
    data_dir = _trusting_data_dir(tmp_path / "data", pub)
    ledger = Ledger()
    check = StoreCheck(data_dir, ledger)
    app = start_appliance(data_dir)
    try:
        for epoch in range(rounds):
            rng = random.Random(f"{seed}:worker:{epoch}")
            ledger.next_epoch(epoch)
            load = WriteLoad(app, ledger, key, tmp_path / "work", f"{seed}:worker:{epoch}").start()
            try:
                load.wait_for_acks()
                delay = rng.uniform(0, window)
                time.sleep(delay)  # the random kill moment
                workers = sorted(app.worker_pids())
                victim = rng.choice(workers)
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 20
                while victim in app.worker_pids(expected=0) or len(app.worker_pids(expected=0)) < len(workers):
                    assert time.monotonic() < deadline, "the killed worker was not replaced"
                    time.sleep(0.05)
                # The load goes on against the replacement, then stops.
                load.wait_for_acks()
            finally:
                load.finish()
            print(f"round {epoch}: worker {victim} of {workers} SIGKILLed {delay:.2f} s after the first acks; "
                  f"{ledger.summary()}")
            assert app.process.poll() is None, "the master went down with a worker"
            recover_and_check(app, ledger, check, epoch, f"seed {seed} round {epoch} (worker {victim} killed)")
        app.stop()
        assert app.process.returncode == 0, app.log()[-3000:]
        check(f"seed {seed}: after the stop", settled=True)
        shutil.rmtree(data_dir)  # a failure keeps it for a look
    finally:
        app.stop()


def test_sigkill_of_a_worker_under_write_load_loses_no_acknowledged_write(
        tmp_path: Path, seed: int, signing: tuple[keys.PrivateKey, Path]) -> None:
    _worker_kills(tmp_path, seed, signing, rounds=1, window=1.5)


@pytest.mark.slow
def test_sigkill_of_workers_repeatedly(tmp_path: Path, seed: int, signing: tuple[keys.PrivateKey, Path]) -> None:
    _worker_kills(tmp_path, seed, signing, rounds=10, window=3.0)


_LAST_BYTE_THEN_DEATH = """
import io, os, signal, sys
from pathlib import Path
from registry.paths import DataPaths
from web.tus import TusUploads

def die(upload):  # the worker is killed the moment the last byte has landed, before any import job exists
    os.kill(os.getpid(), signal.SIGKILL)

data_dir, upload_id, offset = sys.argv[1], sys.argv[2], int(sys.argv[3])
chunk = sys.stdin.buffer.read()
TusUploads(DataPaths(Path(data_dir)), 3600, 1 << 40).append(upload_id, offset, io.BytesIO(chunk), len(chunk), None, die)
"""


def test_a_tus_upload_whose_worker_dies_as_the_last_byte_lands_still_gets_its_import(
        tmp_path: Path, signing: tuple[keys.PrivateKey, Path]) -> None:
    """The window between "all bytes are in" and "the import job exists", hit on purpose (random kills rarely do).

    The appliance's own upload code takes the last chunk in a process that
    dies where the import would start. The client never got an answer, so
    it does what tus-js-client does: HEAD, then PATCH whatever is missing.
    Either way the upload must end with an import job (the UI has no other
    way to start one) that imports the bundle.
    """
    key, pub = signing
    data_dir = _trusting_data_dir(tmp_path / "data", pub)
    spec = make_bundle(tmp_path, key, random.Random(f"{_SEED}:last-byte"), "lastbyte")
    data = spec.path.read_bytes()
    app = start_appliance(data_dir)
    try:
        with closing(_session(app)) as s:
            r = s.post(f"{app.url}/api/v1/uploads", timeout=TIMEOUT,
                       headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
                                "Upload-Metadata": _tus_metadata(filename=spec.name, kind="bundle")})
            assert r.status_code == 201, r.text
            url = f"{app.url}{r.headers['Location']}"
            acked = len(data) - 1000
            r = _tus_patch(s, url, 0, data[:acked])
            assert r.status_code == 204 and r.headers["Upload-Offset"] == str(acked), r.text
        app.stop()
        died = subprocess.run([sys.executable, "-c", _LAST_BYTE_THEN_DEATH, str(data_dir), url.rsplit("/", 1)[1],
                               str(acked)], input=data[acked:], capture_output=True,
                              cwd=Path(__file__).resolve().parents[2], timeout=60)
        assert died.returncode == -signal.SIGKILL, died.stderr.decode()
        app = restart_on(app)
        with closing(_session(app)) as s:
            head = s.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=TIMEOUT)
            assert head.status_code == 200, head.text
            offset = int(head.headers["Upload-Offset"])
            assert offset >= acked
            job = head.headers.get("Cargohold-Import-Job")
            if offset < len(data):
                r = _tus_patch(s, url, offset, data[offset:])
                assert r.status_code == 204, r.text
                job = r.headers.get("Cargohold-Import-Job")
            assert job, (f"the upload is complete ({offset} of {len(data)} bytes) but no import started, and the "
                         "client cannot start one: the bundle would never be imported")
        assert _wait_jobs(app, [job])[job]["state"] == "done"
        with closing(_session(app)) as s:
            for reference, digest in spec.images.items():
                repo, tag = _place(reference)
                r = s.get(f"{app.url}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=TIMEOUT)
                assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
    finally:
        app.stop()


_ADOPTED_THEN_DEATH = """
import os, signal, sys
from pathlib import Path
from registry.blobstore import FilesystemBlobStore
from registry.digest import Digest
from registry.model import Registry
from registry.paths import DataPaths
from registry.uploads import Uploads

adopt = FilesystemBlobStore.adopt

def adopt_then_die(self, path, digest, size):  # the worker is killed the moment the upload became the blob
    adopt(self, path, digest, size)
    os.kill(os.getpid(), signal.SIGKILL)

FilesystemBlobStore.adopt = adopt_then_die
data_dir, repo, uuid, digest = sys.argv[1:5]
uploads = Uploads(Registry(DataPaths(Path(data_dir))))
uploads.finish(uploads.get(repo, uuid), Digest.parse(digest))
"""


def test_a_blob_upload_whose_worker_dies_as_it_is_stored_completes_when_the_client_retries(tmp_path: Path) -> None:
    """The window between "the upload's file is the blob" and "the repository links it", hit on purpose.

    Every byte was acknowledged by a PATCH 202; the closing PUT got no
    answer, so the client sends it again and must get its 201, not lose
    the upload it was told was safe.
    """
    app = start_appliance(tmp_path / "data")
    repo = f"{PROJECT}/kill/adopted"
    data = os.urandom(300_000)
    try:
        with closing(_session(app)) as s:
            r = s.post(f"{app.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
            assert r.status_code == 202, r.text
            location = r.headers["Location"]
            r = s.patch(f"{app.url}{location}", data=data, timeout=TIMEOUT,
                        headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(data) - 1}"})
            assert r.status_code == 202 and r.headers["Range"] == f"0-{len(data) - 1}", r.text
        app.stop()
        died = subprocess.run([sys.executable, "-c", _ADOPTED_THEN_DEATH, str(app.data_dir), repo,
                               location.rsplit("/", 1)[1], _sha256(data)], capture_output=True,
                              cwd=Path(__file__).resolve().parents[2], timeout=60)
        assert died.returncode == -signal.SIGKILL, died.stderr.decode()
        app = restart_on(app)
        with closing(_session(app)) as s:
            r = s.put(f"{app.url}{location}", params={"digest": _sha256(data)}, timeout=TIMEOUT)
            assert r.status_code == 201, f"the retried PUT of an upload whose bytes were all acknowledged: " \
                                         f"{r.status_code} {r.text}"
            got = s.get(f"{app.url}/v2/{repo}/blobs/{_sha256(data)}", timeout=TIMEOUT)
            assert got.status_code == 200 and got.content == data
            assert s.get(f"{app.url}{location}", timeout=TIMEOUT).status_code == 404  # the session is over
    finally:
        app.stop()


def _in_pid_namespace(data_dir: Path, port: int, env: dict[str, str]) -> tuple[Appliance, int]:
    """`cargohold serve` as a container runs it: pid 1 of a fresh pid namespace. Returns it and that pid 1's host pid.

    unshare forks the namespace's first process and waits for it (ignoring
    SIGTERM itself; with --kill-child its own death is passed on as SIGTERM).
    SIGTERM to the host pid stops the appliance as `docker stop` does,
    SIGKILL kills the whole namespace at once, like `docker kill`.
    """
    log_path = data_dir.parent / f"{data_dir.name}-ns-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(["unshare", "--pid", "--mount-proc", "--kill-child=SIGTERM", sys.executable, "-m",
                                 "web.cli", "serve", "--data-dir", str(data_dir), "--bind", f"127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[2])
    app = Appliance(data_dir, port, proc, log_path, env=env)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"the appliance in a pid namespace exited {proc.returncode}:\n{app.log()}"
        children = app.children()
        try:
            if children:
                requests.get(f"{app.url}/v2/", timeout=1)
                return app, children[0]
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"the appliance in a pid namespace did not answer:\n{app.log()}"
        time.sleep(0.1)


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += _descendants(int(child))
    return found


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_an_import_cut_short_by_a_container_restart_shows_as_interrupted_and_imports_again(
        tmp_path: Path, signing: tuple[keys.PrivateKey, Path]) -> None:
    """The Dockerfile runs `cargohold serve` as pid 1: after `docker kill` and a start, the same pids come back."""
    if not _can_unshare():
        pytest.skip("needs unshare(1) with pid namespaces (root)")
    key, pub = signing
    data_dir = _trusting_data_dir(tmp_path / "data", pub)
    layout = OciLayout(tmp_path / "layout")
    layers = [layout.add_blob(os.urandom(4 << 20), OCI_LAYER) for _ in range(12)]
    config = layout.add_blob(_canonical({"architecture": "amd64", "os": "linux",
                                         "rootfs": {"type": "layers", "diff_ids": []}}), OCI_CONFIG)
    manifest = layout.add_blob(_canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                           "config": config.descriptor(),
                                           "layers": [b.descriptor() for b in layers]}), OCI_MANIFEST)
    layout.tag(manifest, "docker.io/killtest/container:1", {"architecture": "amd64", "os": "linux"})
    craft.write_bundle(data_dir / "imports" / "container.tar.zst",
                       craft.standard_entries(layout.root, key, name="container", version="1"), level=1)
    port = free_port()
    env = {**os.environ, "CARGOHOLD_ADMIN_PASSWORD": ADMIN_PASSWORD}
    app, init = _in_pid_namespace(data_dir, port, env)
    try:
        with closing(_session(app)) as s:
            r = s.post(f"{app.url}/api/v1/bundles/import", json={"path": "container.tar.zst"}, timeout=TIMEOUT)
            assert r.status_code == 202, r.text
            job_id = r.json()["job"]["id"]
            everything = _descendants(init)
            os.kill(init, signal.SIGKILL)  # docker kill: the namespace goes with its pid 1
        app.process.wait(timeout=10)
        assert still_alive(everything, timeout=5) == []
        with _read_only(data_dir) as db:
            state, pid = db.execute("SELECT state, pid FROM import_jobs WHERE id = ?", [job_id]).fetchone()
        assert state in OPEN_STATES, f"the import ended ({state}) before the kill could cut it short"

        app, init = _in_pid_namespace(data_dir, port, env)  # docker start: the same pids again
        job = _wait_jobs(app, [job_id], timeout=15)[job_id]
        assert job["state"] == "failed" and job["error"].startswith("interrupted"), \
            f"job {job_id} (pid {pid} in the namespace) after the restart: {job['state']} {job['error']}"
        with closing(_session(app)) as s:
            r = s.post(f"{app.url}/api/v1/bundles/import", json={"path": "container.tar.zst"}, timeout=TIMEOUT)
            assert r.status_code == 202, r.text
            again = r.json()["job"]["id"]
        assert _wait_jobs(app, [again])[again]["state"] == "done"
        os.kill(init, signal.SIGTERM)
        assert app.process.wait(timeout=40) == 0, app.log()[-3000:]
    finally:
        if app.process.poll() is None:
            os.kill(init, signal.SIGKILL)
            app.process.wait()


def test_sigterm_lets_uploads_in_flight_finish_within_the_grace_period(tmp_path: Path) -> None:
    grace = 20
    app = start_appliance(tmp_path / "data", env={"CARGOHOLD_GRACEFUL_TIMEOUT": str(grace)})
    try:
        s = _session(app)
        repo = f"{PROJECT}/kill/sigterm"
        blob = os.urandom(3 << 20)
        r = s.post(f"{app.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        tus_data = os.urandom(4 << 20)
        r = s.post(f"{app.url}/api/v1/uploads", timeout=TIMEOUT,
                   headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(tus_data)),
                            "Upload-Metadata": _tus_metadata(filename="drain.tar.zst", kind="bundle")})
        assert r.status_code == 201, r.text
        tus_url = f"{app.url}{r.headers['Location']}"
        s.close()

        # Both bodies stream at about 1 MiB/s: still running when SIGTERM arrives.
        v2_body = _Body(_slices(blob, 32 << 10), pause=0.03)
        tus_part = tus_data[:3 << 20]
        tus_body = _Body(_slices(tus_part, 32 << 10), pause=0.03)
        answers: dict[str, tuple[requests.Response | BaseException, float]] = {}

        def send(name: str, call: Callable[[requests.Session], requests.Response]) -> None:
            with closing(_session(app)) as own:
                try:
                    answers[name] = (call(own), time.monotonic())
                except BaseException as exc:
                    answers[name] = (exc, time.monotonic())

        threads = [
            threading.Thread(target=send, args=("v2", lambda own: own.patch(
                f"{app.url}{location}", data=v2_body, timeout=60,
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(blob) - 1}"}))),
            threading.Thread(target=send, args=("tus", lambda own: _tus_patch(
                own, tus_url, 0, tus_body, hashlib.sha256(tus_part).digest()))),
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while v2_body.sent < (512 << 10) or tus_body.sent < (512 << 10):
            assert time.monotonic() < deadline and not answers, f"the uploads did not start: {answers}"
            time.sleep(0.02)
        sent_at = time.monotonic()
        app.process.send_signal(signal.SIGTERM)
        in_flight = (v2_body.sent, tus_body.sent)
        for t in threads:
            t.join(grace + 10)
        assert in_flight[0] < len(v2_body) and in_flight[1] < len(tus_body), "the bodies were sent before SIGTERM"
        v2, v2_at = answers["v2"]
        tus, tus_at = answers["tus"]
        assert isinstance(v2, requests.Response) and v2.status_code == 202, v2
        assert v2.headers["Range"] == f"0-{len(blob) - 1}"
        assert isinstance(tus, requests.Response) and tus.status_code == 204, tus
        assert tus.headers["Upload-Offset"] == str(len(tus_part))
        assert min(v2_at, tus_at) > sent_at, "an upload finished before SIGTERM: nothing was drained"
        assert max(v2_at, tus_at) - sent_at < grace
        assert app.process.wait(timeout=grace + 10) == 0, app.log()[-3000:]
        assert time.monotonic() - sent_at < grace + 5

        # What the drained requests acknowledged is there after a restart, and both uploads complete.
        again = start_appliance(app.data_dir, env={"CARGOHOLD_GRACEFUL_TIMEOUT": str(grace)})
        try:
            with closing(_session(again)) as s2:
                status = s2.get(f"{again.url}{location}", timeout=TIMEOUT)
                assert status.status_code == 204 and status.headers["Range"] == f"0-{len(blob) - 1}"
                r = s2.put(f"{again.url}{location}", params={"digest": _sha256(blob)}, timeout=TIMEOUT)
                assert r.status_code == 201, r.text
                assert s2.get(f"{again.url}/v2/{repo}/blobs/{_sha256(blob)}", timeout=TIMEOUT).content == blob
                url = tus_url.replace(app.url, again.url)
                head = s2.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=TIMEOUT)
                assert head.status_code == 200 and head.headers["Upload-Offset"] == str(len(tus_part))
        finally:
            again.stop()
    finally:
        app.stop()
