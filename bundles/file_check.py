"""The readiness check's verdict on the files a cluster definition requires (``content.files[]``).

A required file (name and sha256, optionally size) is looked up among the
file artifacts of the project (`bundles.files`), in ``<project>/files/<name>``,
and gets one finding in the check's own shape (`bundles.check.ImageFinding`,
kind ``file``), the first that applies:

    repository_missing  no file of that name is on the appliance
    digest_mismatch     files of that name are here, none with those bytes
                        (or the size the definition gives is not the file's)
    blob_missing        the file's artifact is tagged, but its bytes are not in the store
    present             a tagged file of that name has exactly those bytes
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bundles import artifacts
from bundles.clusterdef import RequiredFile
from bundles.files import SiteFile

MakeFinding = Callable[[str, str, str, str, "str | None", "int | None", tuple[str, ...]], Any]


def file_findings(required: Sequence[RequiredFile], site_files: Callable[[], Iterable[SiteFile]], project: str,
                  on_disk: Callable[[str], bool], make: MakeFinding) -> list[Any]:
    """One finding per required file, against `site_files()` (read only when a file is required)."""
    if not required:
        return []
    by_repository: dict[str, list[Any]] = {}
    for f in site_files():
        by_repository.setdefault(f.repository, []).append(f)
    out = []
    for need in required:
        reference = f"{need.name}@{need.digest}"
        try:
            repository = f"{project}/{artifacts.file_repository(need.name)}"
        except artifacts.ArtifactError as exc:
            out.append(make(reference, f"{project}/files/?", "repository_missing", str(exc), None, need.size,
                            need.sources))
            continue
        here = [f for f in by_repository.get(repository, []) if f.name == need.name]
        match = next((f for f in here if str(f.digest) == need.digest), None)
        if not here:
            out.append(make(reference, repository, "repository_missing",
                            f"no file {need.name} is on the appliance ({repository})", None, need.size, need.sources))
        elif match is None:
            seen = ", ".join(sorted({f"{f.version}: {f.digest}" for f in here}))
            out.append(make(reference, repository, "digest_mismatch",
                            f"file {need.name} is here with other bytes ({seen}); the definition needs {need.digest}",
                            str(here[0].digest), need.size, need.sources))
        elif need.size is not None and need.size != match.size:
            out.append(make(reference, repository, "digest_mismatch",
                            f"file {need.name} {need.digest} has {match.size} bytes; the definition says {need.size}",
                            need.digest, match.size, need.sources))
        elif not on_disk(need.digest):
            out.append(make(reference, repository, "blob_missing",
                            f"file {need.name} ({match.version}) is tagged but its bytes are not in the store",
                            need.digest, match.size, need.sources))
        else:
            out.append(make(reference, repository, "present", "", need.digest, match.size, need.sources))
    return out
