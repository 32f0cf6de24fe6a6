"""Structured logs: one JSON object per line (or a human line on a terminal), a request id
that follows a recording from the API to the worker and the dispatcher, and no secrets.

- ``configure(format, level, stream)`` installs ONE handler on the root logger (replacing
  any earlier one it installed). ``format`` is ``json``, ``text`` or ``auto`` (text when
  ``stream`` is a terminal, else JSON). Every record passes ``RedactSecrets`` first.
- Request ids: ``REQUEST_ID`` is a context variable. The REST gateway and the gRPC server set
  it from the incoming ``x-request-id`` (if it is a plausible id, else a fresh ``req_…``) and
  return it in the ``x-request-id`` response header / initial metadata. While it is set,
  every ``jobs`` and ``events`` row inserted on that thread records it: migration
  ``m0006_operations`` adds ``request_id`` columns filled by triggers that call the SQL
  function ``tapedeck_request_id()``, which ``install_sql_function`` registers on every
  connection ``tapedeck.infra.db.Database`` opens. The worker runs each job, and the dispatcher
  sends each event, under the id stored with it, so their log lines carry the id of the
  request (finalize, or an expiry sweep) that caused the work.
- ``RedactSecrets`` rewrites anything shaped like a Tapedeck credential (``sk_``, ``rk_``,
  ``dtok_``, ``up_``, ``whsec_`` tokens), a bearer credential, or a presigned URL's
  signature/credential, in the message, its arguments and the formatted traceback.

Imports only the standard library and ``tapedeck.ids`` (``tapedeck.db`` imports this module).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tapedeck.ids import base62

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("tapedeck_request_id",
                                                                         default=None)
REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,128}$", re.ASCII)

REDACTED = "[redacted]"
_SECRET_PATTERNS = (
    # Tapedeck credentials: sk_/rk_/dtok_ (test|live), up_ upload tokens, whsec_ secrets.
    # The mode (test_/live_) stays visible.
    re.compile(r"(?<![A-Za-z0-9_])((?:sk|rk|dtok)_(?:test_|live_)?+|up_|whsec_)"
               r"[A-Za-z0-9_+/=.\-]{6,}"),
    # Authorization header values.
    re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"),
    # Presigned URLs: the signature and the credential (access key) query parameters.
    re.compile(r"(?i)(x-amz-(?:signature|credential|security-token)=)[^&\s'\"]+"),
    # token=... query parameters of chunk upload URLs.
    re.compile(r"(?i)([?&]token=)[^&\s'\"]+"),
)


def redact(text: str) -> str:
    """``text`` with every secret-shaped substring replaced by its prefix + ``[redacted]``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


# -- request ids --------------------------------------------------------------------------------

def new_request_id() -> str:
    """A fresh request id: ``req_`` + 20 base62 characters of 112 random bits."""
    return "req_" + base62(int.from_bytes(secrets.token_bytes(14)), 20)


def accept_request_id(incoming: str | None) -> str:
    """The caller's ``x-request-id`` if it is a plausible id (1-128 of ``A-Za-z0-9_.:@/+=-``),
    else a fresh one."""
    if incoming and _VALID_ID.match(incoming):
        return incoming
    return new_request_id()


def current_request_id() -> str | None:
    """The request id of the running request, job or delivery (None outside any)."""
    return REQUEST_ID.get()


@contextmanager
def request_context(request_id: str | None) -> Iterator[str]:
    """Run the block under ``request_id`` (a fresh id when None); yields the id in force."""
    rid = request_id or new_request_id()
    token = REQUEST_ID.set(rid)
    try:
        yield rid
    finally:
        REQUEST_ID.reset(token)


def install_sql_function(conn: sqlite3.Connection) -> None:
    """Register ``tapedeck_request_id()`` (the current request id, or NULL) on ``conn``; the
    triggers of migration ``m0006_operations`` call it when a job or event is inserted."""
    conn.create_function("tapedeck_request_id", 0, current_request_id, deterministic=False)


# -- formatting ---------------------------------------------------------------------------------

class RedactSecrets(logging.Filter):
    """Replaces secrets in a record's message (arguments merged in) and traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class AddRequestId(logging.Filter):
    """Sets ``record.request_id`` from the context (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, "thread", "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        out["thread"] = record.threadName
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger [request id] message`` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.rid = f" [{rid}]" if rid else ""
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        return super().format(record)


def resolve_format(log_format: str, stream: TextIO) -> str:
    """``json`` or ``text``: ``auto`` is text on a terminal, JSON otherwise."""
    if log_format not in ("auto", "json", "text"):
        raise ValueError(f"log_format must be json, text or auto, not {log_format!r}")
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return log_format


def build_handler(log_format: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with the request-id and redaction filters and the chosen format."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(AddRequestId())
    handler.addFilter(RedactSecrets())
    chosen = resolve_format(log_format, stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.set_name("tapedeck")
    return handler


def configure(log_format: str = "auto", level: str = "info",
              stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (default stderr) through ``build_handler``;
    replaces a handler an earlier ``configure`` installed. Returns the handler."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "tapedeck":
            root.removeHandler(old)
            old.close()
    handler = build_handler(log_format, stream)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party loggers that are chatty at INFO (each HTTP request, each connection).
    for name in ("urllib3", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Each retried S3 connection is a warning there; a failed call is counted and reported
    # by us (storage_unavailable, health), so only urllib3's errors are kept.
    logging.getLogger("urllib3.connectionpool").setLevel(max(logging.ERROR, root.level))
    return handler
