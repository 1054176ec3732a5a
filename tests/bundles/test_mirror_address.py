"""The mirror configuration's address is a host[:port] and nothing else.

The address becomes a directory name in the generated tree
(``containerd/mirror/<address>/hosts.toml``, written to disk by
`write_directory` and packed into the tar an operator extracts on edge
hosts), so ``..`` or a control character must never get that far.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bundles.mirror import MirrorSettings, mirror_files, write_directory


@pytest.mark.parametrize("address", ["..", ".", "a\nb", "a\\b", "h:port", "h:123456", "-h", "h..x", "a\tb", ""])
def test_an_address_that_is_not_host_or_host_port_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="must be host or host:port"):
        MirrorSettings(address, "spectro-images")


@pytest.mark.parametrize("address", ["10.0.0.5:5000", "registry.site", "edge-1.example:443", "[fd00::1]:5000",
                                     "localhost", "EDGE.example"])
def test_real_addresses_are_accepted(address: str) -> None:
    assert MirrorSettings(address, "spectro-images").url.endswith(address)


def test_files_stay_inside_the_output_directory(tmp_path: Path) -> None:
    files = mirror_files(MirrorSettings("edge.example:5000", "spectro-images"), ["docker.io"])
    written = write_directory(files, tmp_path / "out")
    assert all((tmp_path / "out") in p.resolve().parents for p in written)
