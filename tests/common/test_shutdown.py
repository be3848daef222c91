"""run_until_stopped: the one way every service runs until SIGTERM/SIGINT and then drains."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
from gvirtus_kai_common.shutdown import run_until_stopped


@pytest.fixture(autouse=True)
def restore_signal_dispositions() -> Iterator[None]:
    """A stopped run_until_stopped leaves SIGTERM/SIGINT ignored (for the process's last steps);
    the test process gets its own back."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, disposition in saved.items():
        signal.signal(number, disposition)


def _signal_soon(number: signal.Signals) -> None:
    """Send ourselves ``number`` once the service under test is running."""
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), number)


async def test_a_service_that_returns_gives_its_result() -> None:
    async def service() -> int:
        return 7

    assert await run_until_stopped(service()) == 7


async def test_an_exception_of_the_service_propagates() -> None:
    async def service() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        await run_until_stopped(service())


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_cancels_the_service_which_cleans_up(number: signal.Signals) -> None:
    cleaned = asyncio.Event()

    async def service() -> str:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()
        return "finished"  # never: the signal stops it first

    _signal_soon(number)
    assert await asyncio.wait_for(run_until_stopped(service()), 10) is None
    assert cleaned.is_set()


async def test_drain_lets_the_service_finish_its_work() -> None:
    finished = asyncio.Event()
    draining = asyncio.Event()

    async def service() -> None:
        await draining.wait()
        await asyncio.sleep(0.05)  # the work still in flight
        finished.set()

    async def drain() -> None:
        draining.set()

    _signal_soon(signal.SIGTERM)
    await asyncio.wait_for(run_until_stopped(service(), drain=drain, grace_seconds=5), 10)
    assert finished.is_set()


async def test_a_service_that_outlives_the_grace_period_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def service() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def drain() -> None:
        pass  # asks nothing of the service: it never finishes by itself

    _signal_soon(signal.SIGTERM)
    await asyncio.wait_for(run_until_stopped(service(), drain=drain, grace_seconds=0.1), 10)
    assert cancelled.is_set()


async def test_signal_handlers_are_removed_when_the_service_returns() -> None:
    async def service() -> None:
        return None

    await run_until_stopped(service())
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM)


async def test_a_second_signal_after_stopping_does_not_kill_the_process() -> None:
    async def service() -> None:
        await asyncio.sleep(3600)

    _signal_soon(signal.SIGTERM)
    await asyncio.wait_for(run_until_stopped(service()), 10)
    os.kill(os.getpid(), signal.SIGTERM)  # would end the test run with the default action
    await asyncio.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
