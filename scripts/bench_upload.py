#!/usr/bin/env python3
"""Benchmark bundle uploads from the web form (tus-js-client in Chromium) against tuspy, to the same appliance.

Starts the appliance (``tests.appliance.start_appliance``: whatever ``cargohold
serve`` runs, with or without its front), writes a file of random bytes, and
uploads it, in the same run and alternating (A B, then B A), with

* tuspy (64 MiB chunks, each with its SHA-256 in ``Upload-Checksum``, as
  docs/ui.md shows a script doing it), and
* the upload page in Debian's Chromium driven by Playwright (headless, a
  fresh browser context per upload: sign in, choose the file, "Upload and
  import", timed until the page moves to the import),

in three browser contexts: ``http://127.0.0.1:PORT`` (a secure context),
``https://127.0.0.1:PORT`` (``--tls``, the generated CA; Chromium ignores
certificate errors, tuspy verifies against the CA) and
``http://cargohold.test:PORT`` (a host name mapped to 127.0.0.1 with
Chromium's ``--host-resolver-rules``: not a secure context, as a LAN
address is). Every upload's digest, as the appliance recorded it, is checked
against the file's; each upload is then removed. The random file is not a
bundle: the import each completed upload starts is refused at once, and the
benchmark waits for that before the next upload.

Prints MiB/s per client and the browser/tuspy ratio per context (the target
is >= 0.5, stretch 0.8: docs/performance.md, "Browser uploads"). This is a
measurement, not a test: it asserts nothing and never runs in the test suite.

    python scripts/bench_upload.py                 # 1 GiB, 2 runs per client and context (under 2 minutes)
    python scripts/bench_upload.py --quick         # 128 MiB, 1 run: a smoke check
    python scripts/bench_upload.py --json out.json
    python scripts/bench_upload.py --sweep-only    # the web form's parts x chunk sizes, http://127.0.0.1, next to tuspy

Needs: /usr/bin/chromium and the test extras (playwright, tuspy): scripts/setup-test-env.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.appliance import Appliance, start_appliance  # noqa: E402
from tests.web.uiutil import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from bench_registry import random_blob  # noqa: E402

MiB = 1 << 20
LAN_NAME = "cargohold.test"
TUSPY_CHUNK = 64 * MiB
TUS_JS = ROOT / "web" / "static" / "vendor" / "tus-js-client" / "README.md"


@dataclass(frozen=True)
class Target:
    """One browser context: where the browser goes, and where tuspy goes (the same server)."""

    name: str
    app: Appliance
    browser_url: str
    tuspy_url: str
    ca: Path | None = None


@dataclass
class Result:
    """Every run of one client in one context."""

    seconds: list[float] = field(default_factory=list)
    secure_context: bool | None = None
    final_request_ms: list[float] = field(default_factory=list)

    def mib_s(self, size: int) -> list[float]:
        return [size / MiB / s for s in self.seconds]


def basic(app: Appliance) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{app.admin[0]}:{app.admin[1]}".encode()).decode()}


def verify_for(target: Target) -> str | bool:
    return str(target.ca) if target.ca else True


def finish(target: Target, upload_url: str, digest: str) -> None:
    """Check the upload's recorded digest, wait for the import it started to be refused, remove the upload."""
    headers = {"Tus-Resumable": "1.0.0", **basic(target.app)}
    head = requests.head(upload_url, headers=headers, timeout=60, verify=verify_for(target))
    if head.headers.get("Cargohold-Upload-Sha256") != digest:
        raise RuntimeError(f"{upload_url}: the appliance recorded {head.headers.get('Cargohold-Upload-Sha256')}, "
                           f"the file is {digest}")
    job = head.headers.get("Cargohold-Import-Job")
    deadline = time.monotonic() + 300
    while job and time.monotonic() < deadline:
        state = requests.get(f"{target.tuspy_url}/api/v1/imports/{job}", auth=target.app.admin, timeout=60,
                             verify=verify_for(target)).json()["state"]
        if state in ("done", "failed"):
            break
        time.sleep(0.2)
    requests.delete(upload_url, headers=headers, timeout=60, verify=verify_for(target))


def tuspy_upload(target: Target, path: Path, digest: str) -> float:
    """Upload `path` with tuspy (64 MiB chunks with SHA-256 checksums); returns seconds."""
    from tusclient import client as tus_client
    from tusclient.uploader.uploader import Uploader

    class Sha256Uploader(Uploader):
        CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)

    env_before = os.environ.get("REQUESTS_CA_BUNDLE")
    if target.ca:  # tuspy verifies with requests' defaults: point them at the appliance's CA
        os.environ["REQUESTS_CA_BUNDLE"] = str(target.ca)
    try:
        client = tus_client.TusClient(f"{target.tuspy_url}/api/v1/uploads", headers=basic(target.app))
        uploader = Sha256Uploader(str(path), client=client, chunk_size=TUSPY_CHUNK, upload_checksum=True,
                                  metadata={"filename": path.name, "kind": "bundle"})
        start = time.monotonic()
        uploader.upload()
        seconds = time.monotonic() - start
    finally:
        if env_before is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = env_before
    assert uploader.url is not None
    finish(target, uploader.url, digest)
    return seconds


def browser_upload(browser: Any, target: Target, path: Path, digest: str, result: Result,
                   overrides: dict[str, int] | None = None, link_mbit: int | None = None) -> float:
    """Upload `path` through the upload page in a fresh browser context; returns seconds.

    `link_mbit`: Chromium's network emulation holds the page's uploads, all connections together, to that
    rate, as a LAN link would (with 0.5 ms added to each request).
    """
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(60_000)
    for name, value in (overrides or {}).items():
        context.add_init_script(f"window.{name} = {int(value)};")

    def completes_the_file(response: Any) -> bool:  # the final upload's POST, or the only upload's
        request = response.request
        return bool(request.method == "POST" and request.url.endswith("/api/v1/uploads") and response.status == 201
                    and request.headers.get("upload-concat") != "partial")

    try:
        page = context.new_page()
        page.goto(f"{target.browser_url}/ui/login")
        page.get_by_label("Username").fill(target.app.admin[0])
        page.get_by_label("Password").fill(target.app.admin[1])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{target.browser_url}/ui/")
        page.goto(f"{target.browser_url}/ui/upload")
        result.secure_context = bool(page.evaluate("() => window.isSecureContext"))
        page.get_by_label("Bundle file").set_input_files(str(path))
        if link_mbit:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0.5,
                                                            "downloadThroughput": link_mbit * 125_000,
                                                            "uploadThroughput": link_mbit * 125_000})
        limit_ms = max(120.0, path.stat().st_size / MiB / 5) * 1000  # slower than 5 MiB/s: something is wrong
        with page.expect_response(completes_the_file, timeout=limit_ms) as last:
            start = time.monotonic()
            page.get_by_role("button", name="Upload and import").click()
            try:
                page.wait_for_url(re.compile(r".*/ui/imports/[0-9a-f]{32}$"), wait_until="commit", timeout=limit_ms)
            except Exception as exc:
                error = page.locator("#upload-error")
                raise RuntimeError(f"the upload did not finish at {page.url}: "
                                   f"{error.inner_text() if error.count() else ''}") from exc
            seconds = time.monotonic() - start
        response = last.value
        response.finished()
        if (response.request.headers.get("upload-concat") or "").startswith("final;"):
            timing = response.request.timing
            result.final_request_ms.append(timing["responseEnd"] - timing["requestStart"])
        upload_url = f"{target.tuspy_url}{response.headers['location']}"
    finally:
        context.close()
    finish(target, upload_url, digest)
    return seconds


@contextmanager
def appliances(work: Path) -> Iterator[list[Target]]:
    """The three contexts: plain http (two names for one server) and https with the generated CA."""
    # The front's runtime files (nginx.conf, the app's socket) in a directory of the benchmark's own: an appliance
    # started in another PID namespace sharing /tmp would take a runtime directory there for a stale one.
    runtime = work / "run"
    runtime.mkdir()
    env = {"CARGOHOLD_RUNTIME_DIR": str(runtime)}
    plain = start_appliance(work / "data-http", env=env)
    tls: Appliance | None = None
    try:
        tls = start_appliance(work / "data-https", "--tls", scheme="https", env=env)
        ca = work / "ca.crt"
        ca.write_bytes(requests.get(f"{tls.url}/ca.crt", verify=False, timeout=10).content)
        yield [
            Target("http://127.0.0.1 (secure context)", plain, plain.url, plain.url),
            Target("https, generated CA (secure context)", tls, tls.url, tls.url, ca),
            Target(f"http://{LAN_NAME} (not a secure context)", plain, f"http://{LAN_NAME}:{plain.port}", plain.url),
        ]
    finally:
        plain.stop()
        if tls is not None:
            tls.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    size = (args.size_mib or (128 if args.quick else 1024)) * MiB
    runs = args.runs or (1 if args.quick else 2)
    work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    report: dict[str, Any] = {"size_mib": size // MiB, "runs": runs, "machine": machine()}
    try:
        source = work / "bench-upload.tar.zst"
        digest = random_blob(source, size).digest
        with appliances(work) as targets, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {LAN_NAME} 127.0.0.1"])
            report["machine"]["chromium"] = browser.version
            contexts = []
            for target in [] if args.sweep_only else targets:
                tuspy, web = Result(), Result()
                for i in range(runs):
                    order = ["tuspy", "browser"] if i % 2 == 0 else ["browser", "tuspy"]
                    for who in order:
                        if who == "tuspy":
                            tuspy.seconds.append(tuspy_upload(target, source, digest))
                        else:
                            web.seconds.append(browser_upload(browser, target, source, digest, web))
                        last = (tuspy if who == "tuspy" else web).seconds[-1]
                        print(f"  {target.name}: {who} {size / MiB / last:.0f} MiB/s", flush=True)
                ratios = [b / t for b, t in zip(web.mib_s(size), tuspy.mib_s(size), strict=True)]
                contexts.append({
                    "context": target.name, "secure_context": web.secure_context,
                    "tuspy_mib_s": tuspy.mib_s(size), "browser_mib_s": web.mib_s(size),
                    "tuspy_median": median(tuspy.mib_s(size)), "browser_median": median(web.mib_s(size)),
                    "ratio_paired_median": median(ratios),
                    "final_request_ms": web.final_request_ms,
                })
            report["contexts"] = contexts
            if args.sweep:
                report["sweep"] = sweep(browser, targets[0], source, digest, size,
                                        [int(x) for x in args.sweep_parts.split(",")],
                                        [int(x) for x in args.sweep_chunks.split(",")], runs, args.link_mbit)
            browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def sweep(browser: Any, target: Target, source: Path, digest: str, size: int, parts: list[int], chunks: list[int],
          runs: int, link_mbit: int | None) -> list[dict[str, Any]]:
    """The web form with each part count x chunk size (MiB), `runs` times each next to a tuspy run, alternating.

    With `link_mbit` the browser's uploads are held to that rate (tuspy's are not: compare browser figures
    with each other and with the link, not with tuspy)."""
    rows = []
    for n in parts:
        for chunk_mib in chunks:
            overrides = {"CARGOHOLD_PARALLEL_UPLOADS": n, "CARGOHOLD_CHUNK_SIZE": chunk_mib * MiB}
            web, tus, final = Result(), Result(), Result()
            for i in range(runs):
                if i % 2:
                    tus.seconds.append(tuspy_upload(target, source, digest))
                web.seconds.append(browser_upload(browser, target, source, digest, final, overrides, link_mbit))
                if not i % 2:
                    tus.seconds.append(tuspy_upload(target, source, digest))
            ratios = [b / t for b, t in zip(web.mib_s(size), tus.mib_s(size), strict=True)]
            rows.append({"parts": n, "chunk_mib": chunk_mib, "link_mbit": link_mbit, "browser_mib_s": web.mib_s(size),
                         "tuspy_mib_s": tus.mib_s(size), "browser_median": median(web.mib_s(size)),
                         "ratio_paired_median": median(ratios), "final_request_ms": final.final_request_ms})
            print(f"  sweep: {n} parts x {chunk_mib} MiB: browser {median(web.mib_s(size)):.0f} MiB/s, "
                  f"ratio {median(ratios):.2f}", flush=True)
    return rows


def machine() -> dict[str, Any]:
    version = re.search(r"tus-js-client (\S+)", TUS_JS.read_text()) if TUS_JS.exists() else None
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "tus_js_client": version.group(1) if version else None,
            "load_1min": os.getloadavg()[0]}


def print_report(report: dict[str, Any]) -> None:
    for row in report.get("sweep", []):
        link = f" (link {row['link_mbit']} Mbit/s)" if row.get("link_mbit") else ""
        print(f"sweep {row['parts']} parts x {row['chunk_mib']:>2} MiB{link}: browser "
              f"{', '.join(f'{x:.0f}' for x in row['browser_mib_s'])} MiB/s, tuspy "
              f"{', '.join(f'{x:.0f}' for x in row['tuspy_mib_s'])} MiB/s, ratio {row['ratio_paired_median']:.2f}")
    print(f"\n{report['size_mib']} MiB file, {report['runs']} run(s) per client and context; "
          f"Chromium {report['machine'].get('chromium')}, tus-js-client {report['machine']['tus_js_client']}, "
          f"{report['machine']['cpus']} CPUs\n")
    print(f"{'context':<44} {'secure':>6} {'tuspy MiB/s':>12} {'browser MiB/s':>14} {'ratio':>6}  target >= 0.5")
    for c in report["contexts"]:
        print(f"{c['context']:<44} {c['secure_context']!s:>6} {c['tuspy_median']:>12.0f} "
              f"{c['browser_median']:>14.0f} {c['ratio_paired_median']:>6.2f}  "
              f"{'ok' if c['ratio_paired_median'] >= 0.5 else 'MISSED'}"
              f"{' (stretch 0.8 ok)' if c['ratio_paired_median'] >= 0.8 else ''}")
        if c["final_request_ms"]:
            print(f"{'':<44} final (concatenation) request: "
                  f"{', '.join(f'{ms:.0f}' for ms in c['final_request_ms'])} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="128 MiB, one run per client and context")
    parser.add_argument("--size-mib", type=int, help="file size in MiB (default 1024; 128 with --quick)")
    parser.add_argument("--runs", type=int, help="runs per client and context (default 2; 1 with --quick)")
    parser.add_argument("--sweep", action="store_true", help="also measure part counts x chunk sizes")
    parser.add_argument("--sweep-only", action="store_true", help="only the sweep (implies --sweep)")
    parser.add_argument("--sweep-parts", default="1,2,3,4,6", help="part counts to sweep (default 1,2,3,4,6)")
    parser.add_argument("--sweep-chunks", default="16,32,64", help="chunk sizes in MiB to sweep (default 16,32,64)")
    parser.add_argument("--link-mbit", type=int, help="sweep only: hold the browser's uploads to this rate (Mbit/s)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    args.sweep = args.sweep or args.sweep_only
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup-test-env)")
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
