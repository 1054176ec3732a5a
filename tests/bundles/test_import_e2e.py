"""End to end: bundles imported into the running appliance (CLI and HTTP API), pulled back with skopeo.

The CLI imports into the appliance's data directory while the server runs
(SQLite in WAL mode lets both work at once), exactly as an operator on the
box would; the HTTP tests upload to the server itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import requests

from bundles import keys
from tests.appliance import Appliance
from tests.bundles import craft
from tests.bundles.conftest import (
    assert_pulled_identical,
    big_layout,
    cli,
    run,
    skopeo_pull,
    snapshot,
    source_digest,
    unique_layout,
)


def test_cli_import_then_skopeo_pulls_every_image_byte_identical(trusted: Appliance, tmp_path: Path,
                                                                ec_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout")
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    proc = cli("bundle", "import", str(bundle), "--data-dir", str(trusted.data_dir), "--json")
    report = json.loads(proc.stdout)
    assert "verifying" in proc.stderr and "/s" in proc.stderr  # the progress bar: state, bytes, rate
    assert report["keyId"] == keys.key_id(ec_key)
    assert sorted(i["reference"] for i in report["images"]) == sorted(refs)
    assert report["blobs"]["new"] == len(list((layout.root / "blobs" / "sha256").iterdir()))
    for i, ref in enumerate(refs):
        pulled = tmp_path / f"pulled-{i}"
        digest = skopeo_pull(trusted, ref, pulled)
        assert digest == source_digest(layout.root, ref)
        assert assert_pulled_identical(pulled, layout.root, digest) >= 3

    again = json.loads(cli("bundle", "import", str(bundle), "--data-dir", str(trusted.data_dir), "--json").stdout)
    assert again["blobs"] == {"new": 0, "reused": report["blobs"]["new"]}
    assert again["bytesWritten"] == 0

    status = cli("bundle", "status", again["jobId"], "--data-dir", str(trusted.data_dir), "--json")
    job = json.loads(status.stdout)
    assert job["state"] == "done" and job["report"]["jobId"] == again["jobId"]
    listing = cli("bundle", "list", "--data-dir", str(trusted.data_dir)).stdout
    assert report["jobId"] in listing and again["jobId"] in listing


def test_cli_refusal_exits_nonzero_with_the_reason(trusted: Appliance, tmp_path: Path) -> None:
    layout, _refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    stranger = keys.generate("ecdsa-p256")
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, stranger))
    before = snapshot(trusted.data_dir)
    proc = cli("bundle", "import", str(bundle), "--data-dir", str(trusted.data_dir), check=False)
    assert proc.returncode == 1
    assert f"bundle refused: the bundle is signed by key {keys.key_id(stranger)}" in proc.stderr
    assert snapshot(trusted.data_dir)["tables"] == before["tables"]
    unsigned = craft.write_bundle(tmp_path / "u.tar.zst", craft.standard_entries(layout.root, None))
    proc = cli("bundle", "import", str(unsigned), "--data-dir", str(trusted.data_dir), check=False)
    assert proc.returncode == 1 and "unsigned bundles are refused by policy" in proc.stderr
    assert snapshot(trusted.data_dir)["tables"] == before["tables"]
    jobs = json.loads(cli("bundle", "list", "--data-dir", str(trusted.data_dir), "--json").stdout)
    assert jobs[0]["state"] == "failed" and "unsigned" in jobs[0]["error"]


def test_delta_bundle_imports_over_its_base_and_fails_clearly_without_it(trusted: Appliance, tmp_path: Path,
                                                                         ec_key: keys.PrivateKey) -> None:
    layout, base_refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    base = craft.write_bundle(tmp_path / "base.tar.zst", craft.standard_entries(layout.root, ec_key,
                                                                               name="site", version="1"))
    base_blobs = {f"blobs/sha256/{p.name}": p.stat().st_size for p in (layout.root / "blobs" / "sha256").iterdir()}
    # The next release: the same layout plus one new image; the delta leaves out what the base brought.
    new_ref = base_refs[0].replace(":v0", ":v1-next")
    layout.add_image([120_000], seed=int(time.time()) % 100_000 + 7, ref=new_ref)
    delta_entries = craft.standard_entries(
        layout.root, ec_key, name="site", version="2", omit=frozenset(base_blobs),
        base={"name": "site", "version": "1"},
        external=[(f"sha256:{n.rsplit('/', 1)[1]}", s) for n, s in base_blobs.items()])
    delta = craft.write_bundle(tmp_path / "delta.tar.zst", delta_entries)
    assert delta.stat().st_size < base.stat().st_size

    before = snapshot(trusted.data_dir)
    proc = cli("bundle", "import", str(delta), "--data-dir", str(trusted.data_dir), check=False)
    assert proc.returncode == 1
    assert "delta bundle over site 1" in proc.stderr and "import the base bundle site 1 first" in proc.stderr
    assert snapshot(trusted.data_dir)["tables"] == before["tables"]

    cli("bundle", "import", str(base), "--data-dir", str(trusted.data_dir))
    report = json.loads(cli("bundle", "import", str(delta), "--data-dir", str(trusted.data_dir), "--json").stdout)
    assert report["bundle"]["base"] == {"name": "site", "version": "1"}
    assert report["blobs"]["reused"] == 0  # the delta carried only new content
    digest = skopeo_pull(trusted, new_ref, tmp_path / "pulled-new")
    assert_pulled_identical(tmp_path / "pulled-new", layout.root, digest)
    digest = skopeo_pull(trusted, base_refs[0], tmp_path / "pulled-old")
    assert digest == source_digest(layout.root, base_refs[0])


def _wait_job(app: Appliance, url: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        resp = requests.get(f"{app.url}{url}", auth=app.admin, timeout=10)
        assert resp.status_code == 200, resp.text
        job = resp.json()
        assert job["state"] in ("verifying", "importing", "done", "failed")
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.1)


def test_http_multipart_upload_with_detached_signature(trusted: Appliance, tmp_path: Path,
                                                       rsa_key: keys.PrivateKey, ec_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    key_pem = tmp_path / "rsa.pem"
    key_pem.write_bytes(keys.private_pem(rsa_key))
    run("openssl", "dgst", "-sha256", "-sign", str(key_pem), "-out", str(tmp_path / "b.sig"), str(bundle))

    url = f"{trusted.url}/api/v1/bundles"
    with bundle.open("rb") as f:
        resp = requests.post(url, files={"uploadFile": ("b.tar.zst", f)}, timeout=30)
    assert resp.status_code == 401 and resp.json()["errors"][0]["code"] == "UNAUTHORIZED"

    with bundle.open("rb") as f, (tmp_path / "b.sig").open("rb") as s:
        resp = requests.post(url, files={"uploadFile": ("b.tar.zst", f), "signature": ("b.sig", s)},
                             auth=trusted.admin, timeout=60)
    assert resp.status_code == 202, resp.text
    job_url = resp.json()["jobUrl"]
    assert resp.headers["Location"] == job_url
    job = _wait_job(trusted, job_url)
    assert job["state"] == "done", job
    report = job["report"]
    assert isinstance(report, dict)
    assert {(s["kind"], s["keyId"]) for s in report["signatures"]} == {
        ("embedded", keys.key_id(ec_key)), ("detached", keys.key_id(rsa_key))}
    for i, ref in enumerate(refs):
        digest = skopeo_pull(trusted, ref, tmp_path / f"pulled-{i}")
        assert_pulled_identical(tmp_path / f"pulled-{i}", layout.root, digest)
    listed = requests.get(f"{trusted.url}/api/v1/imports", auth=trusted.admin, timeout=10).json()["imports"]
    assert any(j["id"] == job["id"] for j in listed)


def test_http_upload_with_a_wrong_detached_signature_fails_the_job(trusted: Appliance, tmp_path: Path,
                                                                  ec_key: keys.PrivateKey,
                                                                  rsa_key: keys.PrivateKey) -> None:
    layout, _refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    bundle = craft.write_bundle(tmp_path / "b.tar.zst", craft.standard_entries(layout.root, ec_key))
    other = tmp_path / "other.pem"
    other.write_bytes(keys.private_pem(keys.generate("rsa", 2048)))
    run("openssl", "dgst", "-sha256", "-sign", str(other), "-out", str(tmp_path / "b.sig"), str(bundle))
    before = snapshot(trusted.data_dir)["tables"]
    with bundle.open("rb") as f, (tmp_path / "b.sig").open("rb") as s:
        resp = requests.post(f"{trusted.url}/api/v1/bundles", auth=trusted.admin, timeout=60,
                             files={"uploadFile": ("b.tar.zst", f), "signature": ("b.sig", s)})
    assert resp.status_code == 202, resp.text
    job = _wait_job(trusted, resp.json()["jobUrl"])
    assert job["state"] == "failed"
    assert "detached signature does not verify" in str(job["error"])
    assert snapshot(trusted.data_dir)["tables"] == before


def test_http_import_of_an_uploaded_file(trusted: Appliance, tmp_path: Path, ec_key: keys.PrivateKey) -> None:
    layout, refs = unique_layout(tmp_path / "layout", images=1, multiarch=False)
    name = f"copied-{tmp_path.name}.tar.zst"
    craft.write_bundle(trusted.data_dir / "imports" / name, craft.standard_entries(layout.root, ec_key))
    url = f"{trusted.url}/api/v1/bundles/import"
    for bad in ("../cargohold.db", "/etc/passwd", "staging/../../cargohold.db", "", 7):
        resp = requests.post(url, json={"path": bad}, auth=trusted.admin, timeout=10)
        assert resp.status_code == 400, (bad, resp.text)
        assert "under the imports directory" in resp.json()["errors"][0]["message"]
    resp = requests.post(url, json={"path": "no-such-bundle.tar.zst"}, auth=trusted.admin, timeout=10)
    assert resp.status_code == 404 and "no bundle" in resp.json()["errors"][0]["message"]
    resp = requests.post(url, json={"path": name}, auth=trusted.admin, timeout=10)
    assert resp.status_code == 202, resp.text
    job = _wait_job(trusted, resp.json()["jobUrl"])
    assert job["state"] == "done", job
    digest = skopeo_pull(trusted, refs[0], tmp_path / "pulled")
    assert digest == source_digest(layout.root, refs[0])
    resp = requests.get(f"{trusted.url}/api/v1/imports/nope", auth=trusted.admin, timeout=10)
    assert resp.status_code == 404


def test_keys_add_list_remove(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    key = keys.generate("ed25519")
    (tmp_path / "priv.pem").write_bytes(keys.private_pem(key))
    (tmp_path / "pub.pem").write_bytes(keys.public_pem(key))
    proc = cli("keys", "add", str(tmp_path / "priv.pem"), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "private key" in proc.stderr and "-pubout" in proc.stderr
    run("openssl", "genrsa", "-out", str(tmp_path / "weak.pem"), "1024")
    run("openssl", "pkey", "-in", str(tmp_path / "weak.pem"), "-pubout", "-out", str(tmp_path / "weak.pub"))
    proc = cli("keys", "add", str(tmp_path / "weak.pub"), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "1024 bits" in proc.stderr
    run("openssl", "ecparam", "-name", "secp521r1", "-genkey", "-noout", "-out", str(tmp_path / "p521.pem"))
    run("openssl", "pkey", "-in", str(tmp_path / "p521.pem"), "-pubout", "-out", str(tmp_path / "p521.pub"))
    proc = cli("keys", "add", str(tmp_path / "p521.pub"), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "secp521r1" in proc.stderr

    kid = keys.key_id(key)
    assert kid in cli("keys", "add", str(tmp_path / "pub.pem"), "-d", "site signing 2026", "--data-dir", data).stdout
    proc = cli("keys", "add", str(tmp_path / "pub.pem"), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "already trusted" in proc.stderr
    rotated = keys.generate("rsa", 2048)
    (tmp_path / "rsa.pub").write_bytes(keys.public_pem(rotated))
    cli("keys", "add", str(tmp_path / "rsa.pub"), "-d", "site signing 2027", "--data-dir", data)
    listing = cli("keys", "list", "--data-dir", data).stdout
    assert kid in listing and "ed25519" in listing and "site signing 2026" in listing
    assert keys.key_id(rotated) in listing and "rsa-2048" in listing
    listed = json.loads(cli("keys", "list", "--json", "--data-dir", data).stdout)
    assert {k["id"] for k in listed} == {kid, keys.key_id(rotated)}
    assert all("PRIVATE" not in k["publicKey"] for k in listed)
    assert "removed" in cli("keys", "remove", kid[:20], "--data-dir", data).stdout
    listing = cli("keys", "list", "--data-dir", data).stdout
    assert kid not in listing and keys.key_id(rotated) in listing
    proc = cli("keys", "remove", kid, "--data-dir", data, check=False)
    assert proc.returncode == 1 and "no trusted key" in proc.stderr



def test_http_job_is_readable_while_the_import_runs(trusted: Appliance, tmp_path: Path,
                                                    ec_key: keys.PrivateKey) -> None:
    layout, ref = big_layout(tmp_path / "layout", layers=24, layer_size=4 << 20)
    name = f"big-{tmp_path.name}.tar.zst"
    bundle = craft.write_bundle(trusted.data_dir / "imports" / name, craft.standard_entries(layout.root, ec_key),
                                level=1)
    resp = requests.post(f"{trusted.url}/api/v1/bundles/import", json={"path": name}, auth=trusted.admin,
                         timeout=10)
    assert resp.status_code == 202, resp.text
    url = f"{trusted.url}{resp.json()['jobUrl']}"
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = requests.get(url, auth=trusted.admin, timeout=10).json()
        seen.append((job["state"], job["bytesDone"], job["bytesTotal"]))
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.02)
    assert seen[-1][0] == "done", job
    running = [s for s in seen if s[0] in ("verifying", "importing") and 0 < s[1] < s[2]]
    assert running, f"never saw the job in progress: {seen[:5]} ... {seen[-3:]}"
    assert all(total == bundle.stat().st_size for _, _, total in running)
    assert job["report"]["images"][0]["reference"] == ref


def test_http_upload_over_the_size_limit_is_refused(appliance_factory: Callable[..., Appliance],
                                                    tmp_path: Path) -> None:
    app = appliance_factory(env={"CARGOHOLD_BUNDLE_MAX_BYTES": "100000"})
    payload = tmp_path / "big.tar.zst"
    payload.write_bytes(b"\0" * 200_000)
    with payload.open("rb") as f:
        resp = requests.post(f"{app.url}/api/v1/bundles", files={"uploadFile": ("big.tar.zst", f)},
                             auth=app.admin, timeout=30)
    assert resp.status_code == 413, resp.text
    assert "bundle_max_bytes" in resp.json()["errors"][0]["message"]
    assert not [p for p in (app.data_dir / "imports").rglob("*") if p.is_file()]
    jobs = requests.get(f"{app.url}/api/v1/imports", auth=app.admin, timeout=10).json()["imports"]
    assert jobs == []
