"""The OCI distribution API tests against a site of two replicas behind a round-robin balancer.

The same assertions that judge one appliance (tests/registry/test_api_*.py: pull, push, chunked and
monolithic uploads, mounts, manifests, tags, referrers, listings, errors) run in a child pytest with
``--replicas`` (tests/conftest.py), where the session's appliance is two real replicas on a real PostgreSQL
and a real Ceph RADOS Gateway behind nginx, consecutive requests alternating (tests/replicas.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_oci_api_tests_pass_through_two_replicas(tmp_path: Path) -> None:
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests" / "registry").glob("test_api_*.py"))
    assert len(files) >= 5, files
    # Its own --basetemp: a child pytest must not tidy away the numbered temporary directories of this run.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--replicas",
                          f"--basetemp={tmp_path / 'child'}", *files],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) >= 150, summary  # 157 when written
    assert not re.search(r"failed|error|skipped", summary), summary
