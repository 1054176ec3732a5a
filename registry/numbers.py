"""Numbers from request input (query parameters, headers, path segments): ASCII digits only, bounded.

`str.isdigit()` and `int()` both take more than a client means by a number:
``"²".isdigit()`` is true but ``int("²")`` raises, ``int("٣")`` is 3,
``int(" 7")``, ``int("+7")`` and ``int("1_0")`` all succeed, and a number past
2**63 - 1 overflows SQLite's INTEGER when it reaches a query. Every HTTP face
parses numbers through `parse_number` instead; it raises `NumberInvalid`,
whose message names the parameter, and each face answers that in its own
error shape (a 400, or a 404 where the number names a resource that cannot
exist). Plain Python: no Flask here.
"""

from __future__ import annotations

MAX_INT64 = (1 << 63) - 1  # SQLite's largest INTEGER
_MAX_DIGITS = len(str(MAX_INT64))


class NumberInvalid(ValueError):
    """`text` given for the parameter `name` is not a number in the allowed range; `message` says so."""

    def __init__(self, name: str, text: str, message: str) -> None:
        super().__init__(message)
        self.name, self.text, self.message = name, text, message


def is_ascii_number(text: str) -> bool:
    """True if `text` is 1 to 19 ASCII digits and at most 2**63 - 1: a number SQLite can hold."""
    return (text.isascii() and text.isdigit() and len(text.lstrip("0")) <= _MAX_DIGITS
            and int(text) <= MAX_INT64)


def parse_number(text: str, name: str, low: int = 0, high: int = MAX_INT64) -> int:
    """`text` as an integer in [low, high]; raises NumberInvalid naming `name` otherwise.

    Only ASCII digits count (no sign, spaces, underscores or other scripts'
    digits); `high` is capped at 2**63 - 1.
    """
    high = min(high, MAX_INT64)
    if not (text.isascii() and text.isdigit()):
        raise NumberInvalid(name, text, f"{name} must be a non-negative integer (ASCII digits 0-9), not {text[:40]!r}")
    if len(text.lstrip("0")) > _MAX_DIGITS or not low <= int(text) <= high:  # no int() of a huge string
        raise NumberInvalid(name, text, f"{name} must be between {low} and {high}, not {text[:40]}")
    return int(text)
