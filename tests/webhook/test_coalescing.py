"""CoalescingTransport: the writes of one event-loop step leave as one write, nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import uvloop
from gvirtus_kai_webhook.server import CoalescingTransport

WAIT = 10.0  # generous: a loaded 2-core machine


class _Peer:
    """The far end of a loopback TCP connection: everything it receives, and when it ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.ended = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                self.received += chunk
        except ConnectionError:
            pass
        finally:
            self.ended.set()
            writer.close()


@dataclass
class _CountingTransport:
    """Counts the writes that reach the real transport and forwards every call to it."""

    real: asyncio.Transport
    writes: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.real.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@dataclass
class _Connection:
    peer: _Peer
    counting: _CountingTransport
    transport: CoalescingTransport


@pytest.fixture
async def connection() -> AsyncIterator[_Connection]:
    peer = _Peer()
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    real, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    assert isinstance(real, asyncio.Transport)
    counting = _CountingTransport(real)
    transport = CoalescingTransport(counting, loop)  # type: ignore[arg-type]
    try:
        yield _Connection(peer, counting, transport)
    finally:
        real.abort()
        server.close()
        await server.wait_closed()


async def _next_loop_steps() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_writes_of_one_loop_step_reach_the_transport_as_one_write(
    connection: _Connection,
) -> None:
    connection.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    connection.transport.write(b"{}")
    assert connection.counting.writes == []  # nothing leaves before the step ends
    await _next_loop_steps()
    assert connection.counting.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


async def test_peer_receives_every_byte_in_order(connection: _Connection) -> None:
    for index in range(5):
        connection.transport.write(b"%d," % index)
        await _next_loop_steps()
    connection.transport.close()
    await asyncio.wait_for(connection.peer.ended.wait(), WAIT)
    assert bytes(connection.peer.received) == b"0,1,2,3,4,"


async def test_close_sends_pending_data_before_closing(connection: _Connection) -> None:
    connection.transport.write(b"last answer")
    connection.transport.close()  # same loop step: the data is still pending here
    assert connection.transport.is_closing()
    await asyncio.wait_for(connection.peer.ended.wait(), WAIT)
    assert bytes(connection.peer.received) == b"last answer"


async def test_abort_drops_pending_data(connection: _Connection) -> None:
    connection.transport.write(b"never sent")
    connection.transport.abort()
    await asyncio.wait_for(connection.peer.ended.wait(), WAIT)
    await _next_loop_steps()
    assert connection.counting.writes == []
    assert bytes(connection.peer.received) == b""


async def test_write_buffer_size_counts_pending_bytes(connection: _Connection) -> None:
    connection.transport.write(b"12345")
    assert connection.transport.get_write_buffer_size() >= 5
    await _next_loop_steps()
    assert connection.counting.writes == [b"12345"]


async def _exchange_on_this_loop() -> tuple[list[bytes], bytes]:
    """Head and body written in one step, then close: what the transport got, what the peer got."""
    peer = _Peer()
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    real, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    counting = _CountingTransport(real)
    transport = CoalescingTransport(counting, loop)  # type: ignore[arg-type]
    transport.write(b"head;")
    transport.write(b"body")
    await _next_loop_steps()
    transport.close()
    await asyncio.wait_for(peer.ended.wait(), WAIT)
    server.close()
    await server.wait_closed()
    return counting.writes, bytes(peer.received)


def test_uvloop_transports_work_through_the_coalescing_transport() -> None:
    # The server runs on uvloop, whose transports are not asyncio.Transport subclasses.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        writes, received = runner.run(_exchange_on_this_loop())
    assert writes == [b"head;body"]
    assert received == b"head;body"
