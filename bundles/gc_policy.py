"""Garbage collection as the appliance runs it: release retention plus in-use protection, over `registry.gc`.

The CLI (`cargohold gc`) and the HTTP API (`POST /api/cargohold/v1/gc`)
both call `collect`. Roots: every tag (the registry's own rule, which also
keeps content pushed outside bundles while it is tagged), the images and
files of the releases the retention keeps (`Releases.retained`), the
stored cluster definitions' archives, and every digest a live cluster runs
(`bundles.inuse`).

The cluster rule, chosen to fail safe: when a cluster is configured (a
kubeconfig, or in-cluster credentials) and cannot be reached, collection
is refused unless the caller says to go on without it
(``ignore_cluster``); when none is configured, collection proceeds with a
warning that in-use protection is off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundles.inuse import ClusterUnreachable, in_cluster_available, in_use_digests, read_cluster
from bundles.releases import Releases
from registry import metrics
from registry.gc import DEFAULT_GRACE_SECONDS, GarbageCollector, Progress
from registry.uploads import Uploads

_log = logging.getLogger(__name__)

DEFAULT_RETAIN = 3
KUBECONFIG_ENV = "CARGOHOLD_KUBECONFIG"


class GcRefused(RuntimeError):
    """Collection refused (the configured cluster is unreachable); the message says what to do."""


@dataclass(frozen=True)
class ClusterSource:
    """Where the live cluster's pods are read from; neither set means no cluster is configured."""

    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False

    @property
    def configured(self) -> bool:
        return self.kubeconfig is not None or self.in_cluster

    @classmethod
    def from_env(cls, kubeconfig: Path | None = None, context: str | None = None) -> ClusterSource:
        """An explicit kubeconfig, else CARGOHOLD_KUBECONFIG, else in-cluster credentials when present."""
        if kubeconfig is None and os.environ.get(KUBECONFIG_ENV):
            kubeconfig = Path(os.environ[KUBECONFIG_ENV])
        return cls(kubeconfig, context, kubeconfig is None and in_cluster_available())


def collect(releases: Releases, uploads: Uploads | None, retain: int = DEFAULT_RETAIN,
            grace_seconds: float = DEFAULT_GRACE_SECONDS, dry_run: bool = False,
            cluster: ClusterSource = ClusterSource(), ignore_cluster: bool = False,
            progress: Progress | None = None) -> dict[str, Any]:
    """Run (or dry-run) garbage collection with retention and in-use protection; returns the JSON report.

    Raises GcRefused when a configured cluster cannot be reached and
    `ignore_cluster` is false; ReleaseError for a retention below 1.
    """
    # Every collection (CLI, API, maintenance job) runs through here: its start and end are logged here, once.
    what = "garbage collection" + (" dry run" if dry_run else "")
    _log.info("%s started (retain %s)", what, retain, extra={"dry_run": dry_run, "retain": retain})
    try:
        report = _collect(releases, uploads, retain, grace_seconds, dry_run, cluster, ignore_cluster, progress)
    except GcRefused as exc:
        _log.warning("%s refused: %s", what, exc, extra={"dry_run": dry_run, "retain": retain})
        raise
    except Exception:
        _log.exception("%s failed", what, extra={"dry_run": dry_run, "retain": retain})
        raise
    _log.info("%s finished: %s manifests, %s blobs, %s bytes %s", what, len(report["manifestsRemoved"]),
              len(report["blobsRemoved"]), report["bytesReclaimed"], "reclaimable" if dry_run else "reclaimed",
              extra={"dry_run": dry_run, "retain": retain, "manifests": len(report["manifestsRemoved"]),
                     "blobs": len(report["blobsRemoved"]), "bytes": report["bytesReclaimed"]})
    return report


def _collect(releases: Releases, uploads: Uploads | None, retain: int, grace_seconds: float, dry_run: bool,
             cluster: ClusterSource, ignore_cluster: bool, progress: Progress | None) -> dict[str, Any]:
    warnings: list[str] = []
    in_use: frozenset[str] = frozenset()
    cluster_json: dict[str, Any] = {"configured": cluster.configured, "reachable": None}
    if cluster.configured:
        try:
            found = read_cluster(cluster.kubeconfig, cluster.context)
        except ClusterUnreachable as exc:
            if not ignore_cluster:
                metrics.record_gc("refused", dry_run, 0.0, None, 0.0)
                raise GcRefused(f"the cluster cannot be reached, so the images it runs cannot be protected: {exc}. "
                                "Nothing was collected. Fix the connection, or run again with --ignore-cluster "
                                "to collect without in-use protection.") from None
            warnings.append(f"WARNING: the cluster cannot be reached ({exc}); collecting WITHOUT in-use protection "
                            "as asked (--ignore-cluster)")
            cluster_json["reachable"] = False
        else:
            in_use, notes = in_use_digests(found, releases.registry, releases.project, releases.rules)
            cluster_json.update({"reachable": True, "source": found.source, "pods": found.pods,
                                 "images": len(found.images | found.image_ids), "protectedDigests": sorted(in_use),
                                 "unresolved": notes})
    else:
        warnings.append("no cluster is configured (--kubeconfig or CARGOHOLD_KUBECONFIG): in-use protection is "
                        "off; only tags and retained releases are kept")
    kept = releases.retained(retain)
    collector = GarbageCollector(releases.registry, uploads, grace_seconds)
    roots = releases.roots(retain, in_use)
    report = collector.run(roots, dry_run=dry_run) if progress is None else \
        collector.run(roots, dry_run=dry_run, progress=progress)
    report.warnings[:0] = warnings
    return {**report.to_json(), "retain": retain, "keptReleases": kept, "cluster": cluster_json}
