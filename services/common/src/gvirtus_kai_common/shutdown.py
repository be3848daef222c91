"""Run a service until SIGTERM or SIGINT, then let it drain: the one stop path of every service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_until_stopped(
    service: Coroutine[Any, Any, T],
    *,
    drain: Callable[[], Awaitable[None]] | None = None,
    grace_seconds: float = 1.0,
) -> T | None:
    """Run ``service`` until it returns (its result) or a signal arrives (None).

    On SIGTERM/SIGINT (Kubernetes sends SIGTERM on pod stop) ``drain()`` is awaited, when given,
    to let the service finish its work; then the service gets ``grace_seconds`` to return before
    it is cancelled. Without ``drain`` the service is cancelled, so it cleans up in ``finally``.
    An exception of the service propagates. After a signal, SIGTERM and SIGINT stay ignored: the
    stop they ask for is under way, and a repeat during the process's last steps must not turn
    a clean exit into a kill.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    work = asyncio.ensure_future(service)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        log.info("stopping", extra={"grace_seconds": grace_seconds})
        if drain is not None:
            await drain()
        else:
            work.cancel()
        await asyncio.wait({work}, timeout=grace_seconds)
        if not work.done():
            log.warning("did not stop within the grace period; cancelling")
            work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None
    finally:
        stopping.cancel()
        for number in signals:
            loop.remove_signal_handler(number)
            if stop.is_set():
                signal.signal(number, signal.SIG_IGN)
        if not work.done():  # we were cancelled ourselves
            work.cancel()
