"""The log context of the work in progress: which request (id, principal) a log line belongs to.

One `RequestInfo` per HTTP request, held in a context variable that the
request log (web/requestlog.py) binds when a request arrives and resets when
its answer has gone out. Every log record made meanwhile, in any module,
carries its request id (the log formatter reads `request_id()`), and the
places that establish who a request acts as (`registry.access.Access.authenticate`,
`registry.token_api`) note the principal's name here for the request line.

Threads do not inherit context variables: work a request starts in the
background (a bundle import, a maintenance job) goes through `start_thread`,
which runs it in a copy of the starting context, so its log lines carry the
id of the request that started it. Plain Python, no Flask: the core and the
CLI use it too (outside a request there is simply no id).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class RequestInfo:
    """What the log knows about the request being served. Mutable: filled in as the request is handled."""

    request_id: str
    principal: str | None = None  # a user or robot name; never a credential


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("cargohold_request", default=None)


def bind(info: RequestInfo | None) -> contextvars.Token[RequestInfo | None]:
    """Make `info` the current request's (None: no request); pass the token to `reset` when the request is over."""
    return _current.set(info)


def reset(token: contextvars.Token[RequestInfo | None]) -> None:
    _current.reset(token)


def current() -> RequestInfo | None:
    return _current.get()


def request_id() -> str | None:
    """The id of the request this work belongs to (None outside any request)."""
    info = _current.get()
    return info.request_id if info is not None else None


def note_principal(name: str | None) -> None:
    """Record who the current request acts as (a user or robot name); no-op outside a request."""
    info = _current.get()
    if info is not None and name:
        info.principal = name


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread running `target` in a copy of this context (so it logs with this request's id)."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread
