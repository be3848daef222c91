"""SIGTERM/SIGINT handling for asyncio services: the signal sets an event the main task awaits."""

from __future__ import annotations

import asyncio
import signal


def stop_event_on_signals(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Event:
    """Return an event that is set on SIGTERM or SIGINT (Kubernetes sends SIGTERM on pod stop)."""
    loop = loop or asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
