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

# One encoder for every line (json.dumps with options would build a new one per call); values
# JSON cannot hold (an exception, a path) are logged as their str().
_ENCODE = json.JSONEncoder(default=str).encode

# Longest user-supplied text a log line or an error message repeats (a Kubernetes name is 253).
CLIP_CHARS = 256


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``str(value)``, cut to ``limit`` characters with a note of how long it was.

    Every string a client sent goes through this before it reaches a log line or a message, so a
    hostile 200 KB annotation cannot make a 200 KB log line.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (clipped, {len(text)} characters in all)"


def utc_timestamp(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC in milliseconds: 2024-05-01T12:00:00.250+00:00."""
    whole = int(seconds // 1)  # floor, also before 1970
    milliseconds = int((seconds - whole) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{milliseconds:03d}+00:00"


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
        return _ENCODE(entry)


def setup_logging(level: str = "info") -> None:
    """Route the root logger to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
