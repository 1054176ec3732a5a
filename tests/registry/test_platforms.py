"""Platform matching and the bounded read of an image config's platform (pure functions, no server)."""

from __future__ import annotations

import io
import json

import pytest

from registry.platforms import (
    MAX_CONFIG_BYTES,
    Platform,
    PlatformError,
    best_match,
    read_config_platform,
    runs_on,
)


def p(text: str) -> Platform:
    os_name, arch, *variant = text.split("/")
    return Platform(os_name, arch, variant[0] if variant else "")


@pytest.mark.parametrize(("image", "machine", "runs"), [
    ("linux/amd64", "linux/amd64", True),
    ("linux/amd64", "linux/arm64", False),           # the hole: an amd64 image is not an arm64 image
    ("linux/arm64", "linux/arm64/v8", True),         # arm64 without a variant is arm64/v8
    ("linux/arm64/v8", "linux/arm64", True),
    ("linux/arm/v6", "linux/arm/v7", True),          # an older arm variant runs on a newer CPU ...
    ("linux/arm/v7", "linux/arm/v6", False),         # ... not the other way round
    ("linux/arm", "linux/arm/v7", True),             # arm without a variant is arm/v7
    ("linux/arm/v7", "linux/arm64", False),          # 32-bit arm on arm64 is never assumed
    ("linux/amd64/v3", "linux/amd64", False),        # an x86-64-v3 build needs a v3 CPU
    ("linux/amd64", "linux/amd64/v3", True),
    ("windows/amd64", "linux/amd64", False),
    ("linux/riscv64/rva22", "linux/riscv64/rva22", True),
    ("linux/riscv64/rva23", "linux/riscv64/rva22", False),  # a variant that is not vN must be equal
])
def test_runs_on(image: str, machine: str, runs: bool) -> None:
    assert runs_on(p(image), p(machine)) is runs


def test_a_cluster_architecture_is_linux() -> None:
    assert Platform.for_cluster("arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(Platform.for_cluster("amd64")) == "linux/amd64"


def test_best_match_picks_what_a_runtime_would() -> None:
    entries = [(p("linux/arm/v6"), "v6"), (p("linux/arm/v7"), "v7"), (p("linux/arm64/v8"), "a64")]
    assert best_match(entries, Platform.for_cluster("arm/v7")) == "v7"
    assert best_match(entries, Platform.for_cluster("arm/v6")) == "v6"
    assert best_match(entries, Platform.for_cluster("arm64")) == "a64"
    assert best_match(entries, Platform.for_cluster("amd64")) is None


def test_config_platform_is_read_and_bounded() -> None:
    doc = json.dumps({"os": "linux", "architecture": "arm64", "variant": "v8"}).encode()
    assert read_config_platform(io.BytesIO(doc), len(doc)) == Platform("linux", "arm64", "v8")
    with pytest.raises(PlatformError, match="no os and architecture"):
        read_config_platform(io.BytesIO(b'{"os": "linux"}'), 15)
    with pytest.raises(PlatformError, match="not JSON"):
        read_config_platform(io.BytesIO(b"\xff\xfe"), 2)
    with pytest.raises(PlatformError, match="over the"):
        read_config_platform(io.BytesIO(b""), MAX_CONFIG_BYTES + 1)  # refused on its size, never read

    class Endless(io.RawIOBase):
        """A stream that would never end: the read must stop at the cap anyway."""

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            b[:] = b" " * len(b)
            return len(b)

    with pytest.raises(PlatformError, match="over the"):
        read_config_platform(io.BufferedReader(Endless()), 10)  # type: ignore[type-var]  # a lying size: still bounded
