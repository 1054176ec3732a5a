"""What the import page shows beyond the raw report: the release it staged, what edge hosts get now and
after promotion, each cluster definition's verdict, and, for a refused import, what it means and what to do.

The report an import records (`bundles.importer`) is a snapshot; whether a
tag still waits for promotion is read live from `bundles.releases`, so the
page stays right after the release is promoted, rolled back or discarded.
"""

from __future__ import annotations

from typing import Any

from bundles.jobs import ImportJob
from bundles.releases import ReleaseError, Releases
from web.ui import messages


def _served_now(releases: Releases, repository: str, tag: str) -> str | None:
    row = releases.db.execute("SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                              "WHERE r.name = ? AND t.name = ?", [repository, tag]).fetchone()
    return str(row[0]) if row else None


def import_context(job: ImportJob, releases: Releases) -> dict[str, Any]:
    """Template variables for ``ui/import.html``: ``release``, ``images``, ``verdicts``, ``refusal``."""
    out: dict[str, Any] = {"release": None, "images": [], "verdicts": [], "refusal": None}
    if job.state == "failed":
        out["refusal"] = {**messages.import_refusal(job.error_code), "code": job.error_code,
                          "nothing": messages.NOTHING_IMPORTED, "detail": messages.plain(job.error)}
    report = job.report or {}
    recorded = report.get("release") or {}
    release_id = recorded.get("id")
    shown = None
    if isinstance(release_id, int):
        try:
            shown = releases.show(release_id)
            check = releases.check(release_id) if shown["state"] != "discarded" else {"definitions": []}
        except ReleaseError:
            shown = None
    pending = {(i["repository"], i["tag"]): i for i in (shown or {}).get("images", []) if i.get("pending")}
    for image in report.get("images") or []:
        repository, tag, digest = image.get("repository"), image.get("tag"), image.get("digest")
        now = _served_now(releases, repository, tag) if tag else digest
        waiting = (repository, tag) in pending
        out["images"].append({"reference": image.get("reference"), "repository": repository, "tag": tag,
                              "digest": digest, "servedNow": now, "pending": waiting})
    if shown is not None:
        out["release"] = shown
        out["verdicts"] = [{"name": d["definition"], "version": d["definitionVersion"], "ready": d["ready"],
                            "findings": sum(1 for f in d["findings"] if f["finding"] != "present")}
                           for d in check["definitions"]]
    return out
