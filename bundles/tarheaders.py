"""Tar header parsing with a cap on the size of extended headers.

`tarfile` reads a pax extended header or a GNU long name/link record into
memory whole, whatever size its header block claims, before looking at it.
A few hundred KiB of gzip or zstd can declare gigabytes of such a header,
so an archive that should be refused instead exhausts the worker's memory.
`BoundedTarInfo` refuses any such record larger than `MAX_EXTENDED_HEADER_BYTES`
before reading it, and global pax headers (which accumulate) past that size in
total; both archive readers (bundle import, cluster definitions)
parse headers with it.
"""

from __future__ import annotations

import tarfile
from typing import Any

# Real pax records hold a long path, a link target, times and a few attributes: a few KiB at most.
MAX_EXTENDED_HEADER_BYTES = 1 << 20

_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


class BoundedTarInfo(tarfile.TarInfo):
    """A `tarfile.TarInfo` that refuses oversized extended headers (`tarfile.HeaderError`)."""

    def _proc_member(self, archive: Any) -> Any:
        if self.type in _EXTENDED and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise tarfile.HeaderError(f"extended header (pax or GNU long name) of {self.size} bytes before "
                                      f"{self.name!r}; at most {MAX_EXTENDED_HEADER_BYTES} are accepted")
        if self.type == tarfile.XGLTYPE:
            # Global headers accumulate in the archive's pax_headers (and are copied for every later member):
            # capped in total, not only one by one.
            seen = int(getattr(archive, "_global_header_bytes", 0)) + self.size
            if seen > MAX_EXTENDED_HEADER_BYTES:
                raise tarfile.HeaderError(f"global pax headers total more than {MAX_EXTENDED_HEADER_BYTES} bytes")
            archive._global_header_bytes = seen
        return super()._proc_member(archive)  # type: ignore[misc]
