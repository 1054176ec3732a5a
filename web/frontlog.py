"""nginx's lines in the appliance's log: its access lines (the few it writes) and its error log.

The front (web/front.py) writes its access log, one JSON object per line
(nginx's ``escape=json``), into a pipe, and its error log to its standard
error, another pipe. A thread of the gunicorn master reads each and logs
every line on the ``cargohold.front`` logger, so nginx's lines come out in
the appliance's format (text or JSON, web/logs.py) with the same fields as
the app's request lines and the request id nginx gave the request.

nginx writes an access line only for a request whose client did not get the
app's whole answer (see `web.front.render_config`): answered by nginx itself
(429, 413, 400...), not answered by the app (502, 504), or left by the client
before the end. Error-log lines name the request that caused them with its
full request line; query strings there are cut before they are logged.

The master forks gunicorn workers while these threads run: a fork in the
middle of a write would leave the child a held lock on standard error. A
lock the relay holds while it logs, and that a fork takes first
(`os.register_at_fork`), keeps forks between writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from typing import Any

_log = logging.getLogger("cargohold.front")
_writing = threading.Lock()
# nginx's info and notice lines (connections closed, workers started) are shown at DEBUG only (web/front.py).
_LEVELS = {"debug": logging.DEBUG, "info": logging.DEBUG, "notice": logging.DEBUG, "warn": logging.WARNING,
           "error": logging.ERROR, "crit": logging.CRITICAL, "alert": logging.CRITICAL, "emerg": logging.CRITICAL}
# "2026/12/02 08:00:15 [warn] 26315#26315: *3 message" (the error log), "nginx: [emerg] message" (at start)
_ERROR_LINE = re.compile(r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?(?:nginx: )?\[(?P<level>[a-z]+)\] "
                         r"(?:\d+#\d+: )?(?P<message>.*)$")
_QUERY = re.compile(r"(?<=[^\s\"?])\?[^\s\"]*")


def _before_fork() -> None:
    _writing.acquire()


def _after_fork() -> None:
    _writing.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def without_queries(text: str) -> str:
    """`text` with every URL query string (``?…`` up to a space or quote) replaced by ``?…``."""
    return _QUERY.sub("?…", text)


def access_line(line: str) -> None:
    """Log one of nginx's access lines (a JSON object, web/front.py's ``cargohold`` log_format)."""
    try:
        doc: dict[str, Any] = json.loads(line)
    except ValueError:
        _log.warning("front: %s", without_queries(line.strip()))
        return
    status = _int(doc.get("status"))
    upstream = str(doc.get("upstream_status") or "")
    complete = doc.get("completion") == "OK"
    if not upstream or upstream == "-":
        why = "answered by the front"
    elif status in (502, 504) and upstream in ("502", "504"):
        why = "the app did not answer"
    elif not complete:
        why = "the client did not receive the whole answer"
    else:
        why = "logged by the front"
    method, path = str(doc.get("method") or "-"), without_queries(str(doc.get("path") or "-"))
    fields: dict[str, Any] = {
        "request_id": doc.get("request_id") or None,
        "client": doc.get("client") or "-",
        "method": method,
        "path": path,
        "status": status,
        "bytes_in": _int(doc.get("bytes_in")),  # the whole request as received: line, headers and body
        "bytes_out": _int(doc.get("bytes_out")),
        "duration_ms": round(_float(doc.get("request_time")) * 1000, 1),
        "upstream_status": upstream or None,
        "complete": complete,
    }
    _log.log(logging.ERROR if status >= 500 else logging.INFO, "%s %s %s (%s)", method, path, status, why,
             extra=fields)


def error_line(line: str) -> None:
    """Log one line of nginx's error log at its own level (its queries cut)."""
    text = line.rstrip("\n")
    if not text.strip():
        return
    found = _ERROR_LINE.match(text)
    if found is None:
        _log.warning("nginx: %s", without_queries(text))
        return
    _log.log(_LEVELS.get(found["level"], logging.WARNING), "nginx: %s", without_queries(found["message"]))


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _float(value: Any) -> float:
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def relay(fd: int, handle: Any, name: str) -> threading.Thread:
    """A daemon thread that reads lines from pipe `fd` (and closes it at EOF), passing each to `handle`."""
    def run() -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                # A line that cannot be logged must not end the relay.
                with _writing, contextlib.suppress(Exception):
                    handle(line)
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
