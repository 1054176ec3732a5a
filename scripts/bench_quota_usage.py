#!/usr/bin/env python3
"""Benchmark (not a test): what computing a project's quota usage on demand costs.

Builds a throwaway database with BLOBS blob rows spread over five projects of
REPOS repositories each (each repository holds its own slice of the blobs
plus a quarter-slice shared by all, as base layers are), then times, per call
(median and p95):

- `quotas.usage` of one project (what a blob upload into a limited project
  adds, and what GET /quotas/{id} and the project summary cost);
- `ProjectQuota.require` for one new blob (the check of a blob upload);
- `ProjectQuota.require` for 2,000 blobs (the check of a bundle import);
- `quotas.usages` of every project (GET /quotas).

    python scripts/bench_quota_usage.py [--blobs 5000] [--repos 50]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry import quotas
from registry.access import Projects
from registry.db import write_transaction
from registry.model import Registry
from registry.paths import DataPaths

PROJECTS = 5


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=5000)
    parser.add_argument("--repos", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = DataPaths(Path(tmp) / "data")
        paths.ensure()
        registry = Registry(paths)
        projects = Projects(registry)
        for p in range(PROJECTS):
            projects.create(f"proj{p}", True, None, 1 << 50)
        now = time.time()
        digests = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(args.blobs)]
        per = max(1, args.blobs // args.repos)
        with write_transaction(registry.db) as db:
            db.conn.executemany("INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?)",
                                [(d, 1000 + i, now) for i, d in enumerate(digests)])
            for p in range(PROJECTS):
                for r in range(args.repos):
                    rid = db.execute("INSERT INTO repositories (name, created_at) VALUES (?, ?)",
                                     [f"proj{p}/repo{r}", now]).lastrowid
                    chosen = digests[r * per:(r + 1) * per] + digests[:per // 4]
                    db.conn.executemany("INSERT OR IGNORE INTO repository_blobs (repository_id, digest, created_at) "
                                        "VALUES (?, ?, ?)", [(rid, d, now) for d in chosen])
        db = registry.db
        links = db.execute("SELECT COUNT(*) FROM repository_blobs").fetchone()[0]
        per_project = db.execute("SELECT COUNT(*) FROM repository_blobs rb JOIN repositories r ON "
                                 "r.id = rb.repository_id WHERE r.name LIKE 'proj0/%'").fetchone()[0]
        print(f"{args.blobs} blobs, {PROJECTS} projects of {args.repos} repositories, {links} links "
              f"({per_project} in the measured project)")
        new_blob = {"sha256:" + "f" * 64: 10}
        import_blobs = {d: 1 for d in digests[:2000]}
        rows = [("usage of one project", lambda: quotas.usage(db, "proj0"), 30),
                ("require: one new blob", lambda: registry.quota.require(db, "proj0", new_blob), 30),
                ("require: 2,000 blobs (an import)", lambda: registry.quota.require(db, "proj0", import_blobs), 10),
                ("usages of every project (GET /quotas)", lambda: quotas.usages(db), 10)]
        print("| | median | p95 |\n|---|---|---|")
        for name, fn, runs in rows:
            median, p95 = timed(fn, runs)
            print(f"| {name} | {median:.1f} ms | {p95:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
