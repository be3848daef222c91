"""A cap on the connections a server holds open at once, shared by every server we run.

Anyone who can reach a port can open connections; each costs a descriptor and memory. Past the
cap new connections are refused (closed at once), counted, and logged: one warning per interval,
however many are refused, so a flood cannot flood the log too.
"""

from __future__ import annotations

import logging
import resource
import time

from prometheus_client import Counter

log = logging.getLogger(__name__)

WARNING_INTERVAL_SECONDS = 10.0
# Descriptors kept free for everything but client connections: listeners, DNS queries, the
# certificate files, log streams, the event loop's own.
RESERVED_DESCRIPTORS = 64


def within_descriptor_limit(maximum: int) -> int:
    """``maximum``, lowered to what the process's descriptor limit leaves for connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return maximum
    room = max(1, soft - RESERVED_DESCRIPTORS)
    if room < maximum:
        log.warning(
            "connection cap lowered to fit the descriptor limit",
            extra={"configured": maximum, "cap": room, "descriptor_limit": soft},
        )
        return room
    return maximum


class ConnectionLimit:
    def __init__(self, maximum: int, refused: Counter, server: str) -> None:
        self.maximum = maximum
        self.open = 0
        self._refused = refused
        self._server = server
        self._refused_since_warning = 0
        self._last_warning = float("-inf")

    def admit(self) -> bool:
        """Count a new connection in, or count it refused (False) when the cap is reached."""
        if self.open < self.maximum:
            self.open += 1
            return True
        self._refused.inc()
        self._refused_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning >= WARNING_INTERVAL_SECONDS:
            log.warning(
                "too many connections; refusing new ones",
                extra={
                    "server": self._server,
                    "open": self.open,
                    "refused": self._refused_since_warning,
                },
            )
            self._last_warning = now
            self._refused_since_warning = 0
        return False

    def release(self) -> None:
        self.open -= 1
