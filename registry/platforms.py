"""Image platforms: what an image runs on, read from where the OCI specs put it, and what runs where.

A platform is ``os/architecture[/variant]`` (`Platform`). It comes from an
index entry's ``platform`` object, or, for a single-platform image, from
its config blob's ``os``, ``architecture`` and ``variant``
(`read_config_platform`, a bounded read: a config is small, and anything
over `MAX_CONFIG_BYTES` is not read at all).

Variants follow the runtimes' normalisation: an arm64 image without a
variant is ``arm64/v8``, an arm one ``arm/v7``, an amd64 one ``amd64/v1``.
`runs_on` answers whether an image of one platform runs on a machine of
another: same os and architecture, and for numbered variants (arm
``v5``..``v8``, amd64 micro-architecture levels ``v1``..``v4``) the
image's variant at most the machine's; other variants must be equal.
An arm64 machine is not taken to run 32-bit arm images: not every arm64
CPU can, so that is never assumed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import IO

# Config media types that describe a runnable image (and so carry its platform).
IMAGE_CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json",
                      "application/vnd.docker.container.image.v1+json")
MAX_CONFIG_BYTES = 4 << 20  # real configs are a few KiB; a long history stays far below this

_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7", "amd64": "v1"}
_NUMBERED = re.compile(r"^v(\d{1,3})$")


class PlatformError(ValueError):
    """A platform that cannot be known: the message says why."""


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]``; `variant` is empty when none is given."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def of(cls, doc: object) -> Platform | None:
        """From an index entry's platform or an image config (both name os, architecture, variant)."""
        if not isinstance(doc, dict):
            return None
        os_name, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
        if not isinstance(os_name, str) or not os_name or not isinstance(arch, str) or not arch:
            return None
        return cls(os_name, arch, variant if isinstance(variant, str) else "")

    @classmethod
    def for_cluster(cls, arch: str) -> Platform:
        """A cluster architecture as a definition writes it (``arm64``, ``arm/v7``): always linux."""
        architecture, _, variant = arch.partition("/")
        return cls("linux", architecture, variant)

    def normalised(self) -> Platform:
        """The same platform with the architecture's default variant filled in."""
        return Platform(self.os, self.architecture, self.variant or _DEFAULT_VARIANT.get(self.architecture, ""))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def runs_on(image: Platform, machine: Platform) -> bool:
    """Does an image built for `image` run on a `machine` (see the module docstring)?"""
    image, machine = image.normalised(), machine.normalised()
    if image.os != machine.os or image.architecture != machine.architecture:
        return False
    if image.variant == machine.variant:
        return True
    have, want = _NUMBERED.match(image.variant), _NUMBERED.match(machine.variant)
    return bool(have and want and int(have.group(1)) <= int(want.group(1)))


def best_match(candidates: list[tuple[Platform, str]], machine: Platform) -> str | None:
    """Of (platform, key) pairs, the key a runtime on `machine` would pick: the closest variant that runs."""
    fitting = [(p.normalised(), key) for p, key in candidates if runs_on(p, machine)]
    if not fitting:
        return None

    def closeness(item: tuple[Platform, str]) -> int:
        m = _NUMBERED.match(item[0].variant)
        return int(m.group(1)) if m else 1_000  # an exactly equal non-numbered variant is the best there is

    return max(fitting, key=closeness)[1]


def read_config_platform(stream: IO[bytes], size: int) -> Platform:
    """The platform an image config names; reads at most `MAX_CONFIG_BYTES`.

    Raises PlatformError when the config is too large, not JSON, or names
    no os and architecture.
    """
    if size > MAX_CONFIG_BYTES:
        raise PlatformError(f"its config is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit for reading it")
    data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise PlatformError(f"its config is over the {MAX_CONFIG_BYTES}-byte limit for reading it")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PlatformError("its config is not JSON") from None
    platform = Platform.of(doc)
    if platform is None:
        raise PlatformError("its config names no os and architecture")
    return platform
