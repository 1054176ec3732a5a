"""The appliance's log: one handler on standard error, in text or JSON, for every process and thread.

`configure` is called once per process at start: by the CLI for every
command (web/cli.py), so `cargohold serve`'s gunicorn master, the set-up
child it forks and the workers forked after it all inherit it, and gunicorn's
own logger (`GunicornLogger`) hands its lines to the same handler instead of
keeping its own. journald (systemd) and `docker logs` collect standard error;
nothing is written to files.

Formats (``CARGOHOLD_LOG_FORMAT``):

- ``text``: ``<time> <LEVEL> [<pid>] <logger> <request id|-> <message> key=value...``,
  control characters escaped so one record is one line (a traceback follows
  on its own lines);
- ``json``: one object per line, built by python-json-logger, with ``time``,
  ``level``, ``logger``, ``pid``, ``request_id``, ``message`` and the
  record's own fields (a request line's ``status``, ``duration_ms``...).

Times are ISO 8601 in UTC with milliseconds. Python warnings and gunicorn's
start-up and error lines go through the same handler, so in JSON mode every
line the Python processes write is an object (docs/operations.md, "Logs").
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gunicorn import glogging
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from registry import logcontext
from web.config import LOG_FORMATS, LOG_LEVELS, Config

LEVELS, FORMATS = LOG_LEVELS, LOG_FORMATS
# Attributes every LogRecord has, and the ones the formatters add: the rest are a record's own fields.
_STANDARD = frozenset(RESERVED_ATTRS) | {"message", "asctime", "request_id", "taskName"}
# Control characters (C0 and C1), and the Unicode line breaks some readers (Python's splitlines) split lines on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f-\x9f]+")  # fullmatch: "$" would let a final newline through


@dataclass(frozen=True)
class LogSettings:
    """The log's level and format, checked."""

    level: str = "INFO"
    format: str = "text"

    @classmethod
    def of(cls, config: Config) -> LogSettings:
        """The settings of `config`; raises ValueError naming the setting for a value it does not know."""
        level = str(config.log_level).strip().upper()
        if level not in LEVELS:
            raise ValueError(f"CARGOHOLD_LOG_LEVEL={config.log_level!r} is not one of {', '.join(LEVELS)}")
        form = str(config.log_format).strip().lower()
        if form not in FORMATS:
            raise ValueError(f"CARGOHOLD_LOG_FORMAT={config.log_format!r} is not one of {', '.join(FORMATS)}")
        return cls(level, form)


def iso_time(created: float) -> str:
    """`created` (seconds since the epoch) as ISO 8601 UTC with milliseconds: 2026-12-02T07:54:34.123Z."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _escaped(text: str) -> str:
    """`text` on one line: control characters (a newline in a client-chosen name) as escapes."""
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], text)  # "\n", "\u001b", "\u2028"...


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request (or request-started job) it was made in."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = logcontext.request_id()
        return True


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> [<pid>] <logger> <request id|-> <message> key=value...``, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        message = _escaped(record.getMessage())
        extra = "".join(f" {key}={_text_value(value)}" for key, value in _fields(record).items())
        line = (f"{iso_time(record.created)} {record.levelname} [{record.process}] {record.name} "
                f"{getattr(record, 'request_id', None) or '-'} {message}{extra}")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool | int | float):
        return str(value)
    text = str(value)
    return text if _BARE.fullmatch(text) else _escaped(json.dumps(text, ensure_ascii=False))


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record: time, level, logger, pid, request_id, message, then the record's fields."""

    def __init__(self) -> None:
        super().__init__(reserved_attrs=sorted(_STANDARD), json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = iso_time(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["pid"] = record.process
        log_data["request_id"] = getattr(record, "request_id", None)
        log_data["message"] = record.message
        super().add_fields(log_data, record, message_dict)


_handler: logging.Handler | None = None
_json = False


def json_mode() -> bool:
    """Whether this process logs JSON (`configure` with format json)."""
    return _json


def say(message: str, level: int = logging.INFO) -> None:
    """A message of the command line for standard error: as is, or as a log record in JSON mode.

    `cargohold serve`'s own lines (the data directory, the address, the
    first-start notes, an error that stops it) are then JSON objects like
    every other line a log collector reads from it.
    """
    if _json:
        logging.getLogger("cargohold.cli").log(level, message)
    else:
        print(message, file=sys.stderr, flush=True)


def configure(settings: LogSettings) -> None:
    """Send every log record of this process to standard error in `settings`' format, at its level.

    Idempotent (a second call replaces the handler). Python warnings are
    logged too (``py.warnings``), and gunicorn's loggers pass their lines to
    this handler (see `GunicornLogger`).
    """
    global _handler, _json
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonLineFormatter() if settings.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level)
    _handler = handler
    _json = settings.format == "json"
    logging.captureWarnings(True)
    _route_gunicorn(settings.level)


def _route_gunicorn(level: str) -> None:
    error = logging.getLogger("gunicorn.error")
    for old in list(error.handlers):
        error.removeHandler(old)
    error.propagate = True
    error.setLevel(level)
    # The request log (web/requestlog.py) replaces gunicorn's access log.
    access = logging.getLogger("gunicorn.access")
    for old in list(access.handlers):
        access.removeHandler(old)
    access.propagate = False
    access.disabled = True


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, writing through the appliance's handler (`configure`) rather than its own.

    gunicorn runs `setup` when it starts and on a reload (HUP); here that
    only routes its ``gunicorn.error`` lines to the root handler. Its access
    log stays off: web/requestlog.py writes one line per request instead.
    """

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self._access_log_enabled = False
        self.loglevel = self.LOG_LEVELS.get(str(cfg.loglevel).lower(), logging.INFO)
        _route_gunicorn(logging.getLevelName(self.loglevel))

    @property
    def access_log_enabled(self) -> bool:
        return False

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
