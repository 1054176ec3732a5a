"""Read the appliance's log (web/logs.py) in tests: its records, in either format, as dicts.

Text lines are ``<time> <LEVEL> [<pid>] <logger> <request id|-> <message> key=value...``
with JSON-quoted values where needed; JSON lines are objects. Both come back
as the same dict: ``time``, ``level``, ``pid``, ``logger``, ``request_id``,
``message`` and the record's fields (numbers as numbers).
"""

from __future__ import annotations

import json
import re
from typing import Any

TEXT_LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<level>[A-Z]+) \[(?P<pid>\d+)\] "
                       r"(?P<logger>\S+) (?P<request_id>\S+) (?P<rest>.*)$")
_FIELD = re.compile(r' (?P<key>[a-z_]+)=(?P<value>"(?:[^"\\]|\\.)*"|\S*)')
# The fields a request line (cargohold.request) carries, in its order.
REQUEST_FIELDS = ("client", "principal", "method", "route", "path", "query", "repository", "status", "bytes_in",
                  "bytes_out", "duration_ms")


def _value(text: str) -> Any:
    if text.startswith('"'):
        return json.loads(text)
    if text == "-":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    return text


def parse_text(line: str, fields: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """One text line as a dict (None for a line that is not a record: a traceback's, a plain CLI line).

    `fields`: the record's field names, the first of which ends the message
    (without them, every ``key=value`` after the message's first word counts).
    """
    found = TEXT_LINE.match(line)
    if found is None:
        return None
    record: dict[str, Any] = {k: found[k] for k in ("time", "level", "logger")}
    record["pid"] = int(found["pid"])
    record["request_id"] = None if found["request_id"] == "-" else found["request_id"]
    rest = found["rest"]
    start = rest.find(f" {fields[0]}=") if fields else -1
    if start < 0:
        start = len(rest)
        for match in _FIELD.finditer(rest):
            start = match.start()
            break
    record["message"] = rest[:start]
    for match in _FIELD.finditer(rest[start:]):
        record[match["key"]] = _value(match["value"])
    return record


def records(log: str) -> list[dict[str, Any]]:
    """Every record of a log, whichever format each line is in (lines that are neither are skipped)."""
    out = []
    for line in log.split("\n"):  # as a log reader does: records are separated by newlines only
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
            continue
        fields = REQUEST_FIELDS if " cargohold.request " in line else ()
        parsed = parse_text(line, fields)
        if parsed is not None:
            out.append(parsed)
    return out


def request_lines(log: str) -> list[dict[str, Any]]:
    """The app's request lines (logger cargohold.request)."""
    return [r for r in records(log) if r.get("logger") == "cargohold.request"]
