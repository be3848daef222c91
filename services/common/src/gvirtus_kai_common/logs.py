"""JSON-lines logging: one object per line, extra fields passed with ``extra={...}``."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_BLANK_RECORD = logging.LogRecord("", 0, "", 0, "", None, None)
_STANDARD_ATTRS = frozenset(vars(_BLANK_RECORD).keys() | {"message", "asctime", "taskName"})


# (second, "YYYY-MM-DDTHH:MM:SS") of the last line: formatting a date is the costly part of a
# timestamp, and lines come many to a second.
_formatted_second: tuple[int, str] = (-1, "")


def utc_timestamp(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC in milliseconds: 2024-05-01T12:00:00.250+00:00."""
    global _formatted_second
    whole = int(seconds // 1)  # floor, also before 1970
    cached = _formatted_second
    if cached[0] != whole:
        cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _formatted_second = cached
    return f"{cached[1]}.{int((seconds - whole) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_handler: logging.StreamHandler[Any] | None = None  # the one setup_logging installed
_ENCODER = json.JSONEncoder(default=str)  # json.dumps(default=...) builds one per call


def setup_logging(level: str = "info") -> None:
    """Route the root logger to stderr as JSON lines at ``level``."""
    global _handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _handler = handler


def _only_our_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """setup_logging's handler if it is the only place a record from ``logger`` would go."""
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    root_handlers = logging.root.handlers
    if len(root_handlers) != 1 or root_handlers[0] is not _handler or logging.root.filters:
        return None
    return _handler


def log_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """``logger.info(msg, extra=fields)`` for per-request lines on a hot path.

    When the line would only reach setup_logging's handler, it is written directly: the same JSON
    object, without building a LogRecord and scanning its attributes (several times cheaper).
    Any other logging set-up (a test's capture handler, extra handlers) gets a normal record.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _only_our_handler(logger)
    if handler is None:
        logger.info(msg, extra=fields, stacklevel=2)
        return
    entry = {
        "time": utc_timestamp(time.time()),
        "level": "info",
        "logger": logger.name,
        "msg": msg,
        **fields,
    }
    line = _ENCODER.encode(entry) + "\n"
    lock = handler.lock
    assert lock is not None  # every Handler.__init__ creates it
    with lock:
        handler.stream.write(line)
        handler.stream.flush()
