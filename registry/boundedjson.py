"""Parsing JSON that arrives before anything vouches for it, within caps on size, nesting and element count.

A bundle's manifest (``cargohold-bundle.json``), its embedded signature and
its ``index.json`` are read, and the manifest is parsed, before a signature
is checked. `json.loads` has no limits of its own: 64 MiB of ``[],[],...``
(a few KiB once compressed) becomes 32 million Python lists, about 1.7 GB,
and a few hundred thousand ``[`` end in a `RecursionError`. `loads` checks
the bytes first, without recursion and without building anything: the size,
that they are UTF-8, the number of containers (objects and arrays) and of
elements, then the deepest nesting, telling strings (which may hold any
bracket) from structure. Only a document within every cap is
handed to `json.loads`, whose memory is then bounded by the caps.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# A JSON string, or one bracket. The string alternative is unrolled (anything but a quote or backslash, or a
# backslash and what it escapes) so it matches in one linear pass, with nothing to backtrack through.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JsonRefused(ValueError):
    """The document is over a cap (`too_large` is True) or is not valid UTF-8 JSON; the message says which."""

    def __init__(self, message: str, too_large: bool) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


@dataclass(frozen=True)
class JsonLimits:
    """Caps for one kind of document. Containers (objects, arrays) cost the most memory per input byte."""

    max_bytes: int
    max_depth: int
    max_containers: int
    max_elements: int


def check(data: bytes, what: str, limits: JsonLimits) -> None:
    """Refuse `data` (JsonRefused, too_large=True) if it is over a cap; never builds the document."""
    if len(data) > limits.max_bytes:
        raise JsonRefused(f"{what} has {len(data)} bytes, more than the {limits.max_bytes} allowed", True)
    # Brackets and commas inside strings count too: an over-estimate (a string rarely holds any) that costs no
    # copy of the document.
    containers = data.count(b"[") + data.count(b"{")
    if containers > limits.max_containers:
        raise JsonRefused(f"{what} holds {containers} objects and arrays, more than the {limits.max_containers} "
                          "allowed", True)
    elements = data.count(b",") + 1  # every value after the first in an array or object follows a comma
    if elements > limits.max_elements:
        raise JsonRefused(f"{what} holds about {elements} elements, more than the {limits.max_elements} allowed",
                          True)
    # Nesting needs strings told apart from structure. One token at a time, none kept: at most
    # 2 * max_containers brackets and about 2 * max_elements strings (a key and a value per element).
    depth = 0
    for token in _TOKEN.finditer(data):
        first = token.group()[0]
        if first in b"[{":
            depth += 1
            if depth > limits.max_depth:
                raise JsonRefused(f"{what} nests deeper than the {limits.max_depth} levels allowed", True)
        elif first in b"]}":
            depth -= 1


def loads(data: bytes, what: str, limits: JsonLimits) -> Any:
    """Parse UTF-8 JSON `data` within `limits`; raises JsonRefused naming `what` and the problem."""
    if len(data) > limits.max_bytes:  # before decoding: never copy more than the cap
        raise JsonRefused(f"{what} has {len(data)} bytes, more than the {limits.max_bytes} allowed", True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"{what} is not valid JSON: not UTF-8 (byte {exc.start})", False) from None
    check(data, what, limits)
    try:
        return json.loads(text)
    except RecursionError:  # unreachable within max_depth; kept so no input can end in a traceback
        raise JsonRefused(f"{what} nests too deeply", True) from None
    except ValueError as exc:
        raise JsonRefused(f"{what} is not valid JSON: {exc}", False) from None
