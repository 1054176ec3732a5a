"""Oversized pax / GNU long-name headers are refused before they are read into memory.

`tarfile` reads an extended header whole, whatever size it claims; a few
hundred KiB of gzip can claim hundreds of MiB. Both archive readers (cluster
definitions here, bundle import in test_import_refusals) parse headers with
`bundles.tarheaders.BoundedTarInfo`.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc
import zlib

import pytest

from bundles.clusterdef import DefinitionError, read_members
from bundles.tarheaders import MAX_EXTENDED_HEADER_BYTES


def extended_header_bomb(size: int, kind: bytes = tarfile.XHDTYPE) -> bytes:
    """The tar bytes of one extended header claiming `size` bytes (zeros after one record), then the end."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = kind
    info.size = size
    record = b"20 comment=aaaaaaaa\n"
    out = io.BytesIO()
    out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
    out.write(record)
    out.write(b"\0" * (size - len(record) + (-size % 512) + 1024))
    return out.getvalue()


def gzip_stream_of_zeros_header(size: int, kind: bytes) -> bytes:
    """Like `extended_header_bomb`, gzip-compressed without building the whole tar in memory."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = kind
    info.size = size
    co = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts = [co.compress(info.tobuf(format=tarfile.USTAR_FORMAT)), co.compress(b"20 comment=aaaaaaaa\n")]
    zeros = b"\0" * (1 << 20)
    left = size - 20 + (-size % 512) + 1024
    while left > 0:
        parts.append(co.compress(zeros[:min(left, len(zeros))]))
        left -= len(zeros)
    parts.append(co.flush())
    return b"".join(parts)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu-longname"])
def test_a_cluster_definition_archive_claiming_a_huge_header_is_refused_with_flat_memory(kind: bytes) -> None:
    archive = gzip_stream_of_zeros_header(200 << 20, kind)
    assert len(archive) < 1 << 20  # 200 MiB of header from well under 1 MiB of upload
    tracemalloc.start()
    try:
        with pytest.raises(DefinitionError, match="extended header"):
            read_members(io.BytesIO(archive))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # tarfile's gzip stream inflates 8 KiB reads (up to ~8 MiB each for zeros); the 200 MiB header is never held.
    assert peak < 64 << 20, f"parsing the header held {peak} bytes"


def test_ordinary_long_names_still_parse() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        name = "cluster/" + "d" * 300 + "/cluster.yaml"  # longer than ustar's 100: needs a pax header
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"a: 1"[:3]))
    members, _ = read_members(io.BytesIO(out.getvalue()))
    assert list(members) == [name]
    assert MAX_EXTENDED_HEADER_BYTES >= 64 << 10


def test_global_pax_headers_are_capped_in_total() -> None:
    # Each one is small, but global headers accumulate (and are copied for every later member).
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(4):
            value = "v" * (MAX_EXTENDED_HEADER_BYTES // 3)
            record = f" comment{i}={value}\n"
            length = len(record) + len(str(len(record)))
            length = len(record) + len(str(length))
            data = f"{length}{record}".encode()
            info = tarfile.TarInfo(f"pax_global_header{i}")
            info.type = tarfile.XGLTYPE
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        member = tarfile.TarInfo("cluster.yaml")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"a: 1"[:3]))
    with pytest.raises(DefinitionError, match="global pax headers total more than"):
        read_members(io.BytesIO(out.getvalue()))


def test_one_small_global_header_is_fine() -> None:
    # `git archive` writes one (the commit id) at the start of every archive.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "0123456789abcdef0123456789abcdef01234567"}) as tar:
        member = tarfile.TarInfo("cluster.yaml")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"a: 1"[:3]))
    members, _ = read_members(io.BytesIO(out.getvalue()))
    assert list(members) == ["cluster.yaml"]
