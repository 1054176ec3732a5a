#!/usr/bin/env python3
"""Benchmark (not a test): one big file through `bundle build --file`, `bundle import` and an HTTP download.

A sparse file (zeros, then a marker in its last bytes) of --size GiB is
built into a signed bundle, imported into a fresh data directory, then
downloaded whole from a running appliance (nginx front, X-Accel-Redirect)
and by a Range request for its last bytes. Prints wall time and peak
resident memory of the build and import processes and of the gunicorn
workers that answered the download: all three must stay flat whatever the
size. Zeros compress ~30,000:1, which the importer refuses as a bomb by
default, so the import runs with CARGOHOLD_BUNDLE_MAX_RATIO raised; a real
ISO compresses far less. Exit status 1 if a digest or the range is wrong.

    python scripts/bench_files.py [--size 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.appliance import start_appliance  # noqa: E402

MARKER = b"tail-marker"


def _run(*args: str | Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run `cargohold ARGS`; (seconds, peak RSS in KiB of that one child, from wait4)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "web.cli", *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"cargohold {' '.join(map(str, args))} failed ({proc.returncode})")
    return time.monotonic() - started, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4, help="file size in GiB")
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-files-", dir=ROOT))
    work.mkdir(parents=True, exist_ok=True)
    try:
        size = args.size << 30
        disk = work / "disk.raw"
        with disk.open("wb") as f:
            f.truncate(size)
            f.seek(size - len(MARKER))
            f.write(MARKER)
        hasher = hashlib.sha256()
        with disk.open("rb") as f:
            while block := f.read(1 << 22):
                hasher.update(block)
        expected = hasher.hexdigest()
        _run("keys", "generate", work / "k", "--type", "ed25519")
        bundle = work / "b.tar.zst"
        secs, rss = _run("bundle", "build", "--name", "big", "--version", "1", "--file", f"{disk}=disk.raw:1",
                         "--sign-key", work / "k.pem", "-o", bundle)
        print(f"build   {args.size} GiB file: {secs:6.1f} s, peak RSS {rss / 1024:.0f} MiB, "
              f"bundle {bundle.stat().st_size / 1024:.0f} KiB")
        site = work / "site"
        _run("keys", "add", work / "k.pub.pem", "--data-dir", site)
        secs, rss = _run("bundle", "import", bundle, "--data-dir", site, "--quiet",
                         env={"CARGOHOLD_BUNDLE_MAX_RATIO": "1000000"})
        print(f"import  {args.size} GiB file: {secs:6.1f} s, peak RSS {rss / 1024:.0f} MiB")
        disk.unlink()
        app = start_appliance(site)
        try:
            started, got, n = time.monotonic(), hashlib.sha256(), 0
            with requests.get(f"{app.url}/api/cargohold/v1/files/disk.raw:1", stream=True, timeout=60) as r:
                r.raise_for_status()
                for chunk in r.iter_content(1 << 20):
                    got.update(chunk)
                    n += len(chunk)
            secs = time.monotonic() - started
            tail = requests.get(f"{app.url}/api/cargohold/v1/files/disk.raw",
                                headers={"Range": f"bytes=-{len(MARKER)}"}, timeout=60)
            workers = []
            for pid in app.worker_pids():
                with open(f"/proc/{pid}/status") as status:
                    workers += [int(line.split()[1]) for line in status if line.startswith("VmHWM")]
        finally:
            app.stop()
        print(f"download {args.size} GiB over HTTP: {secs:6.1f} s ({n / secs / (1 << 20):.0f} MiB/s), "
              f"worker peak RSS {max(workers) / 1024:.0f} MiB")
        ok = got.hexdigest() == expected and n == size and tail.status_code == 206 and tail.content == MARKER
        print("bytes and range:", "ok" if ok else "WRONG")
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
