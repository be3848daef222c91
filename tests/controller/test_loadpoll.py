"""The load poller against real HTTP servers on 127.0.0.1: agents that answer, hang, trickle,
answer garbage or lie; each answer either believed whole or the backend's load unknown."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from gvirtus_kai_controller.loadpoll import MAX_BODY_BYTES, LoadPoller
from gvirtus_kai_controller.placement import Backend, BackendLoad

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
StartAgent = Callable[..., Awaitable[Backend]]
TIMEOUT = 0.5

GOOD: dict[str, Any] = {
    "pod": "gvirtus-backend-abc",
    "listening": True,
    "port": 9999,
    "connections": 4,
    "clients": ["10.244.1.6", "10.244.1.7"],
    "gpus": [
        {"index": 0, "utilization": 0.35, "memoryUsedBytes": 123456},
        {"index": 1, "utilization": 0.15, "memoryUsedBytes": 0},
    ],
    "gpuReadings": "nvml",
}


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def answering(body: bytes, status: str = "200 OK") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: the poller reuses its connection
                await read_head(reader)
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


def answering_json(document: Any) -> Handler:
    return answering(json.dumps(document).encode())


async def hanging(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    await asyncio.sleep(3600)


async def trickling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    body = json.dumps(GOOD).encode()
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    for byte in body:  # each byte well within a read timeout, the whole far beyond it
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.05)


@pytest.fixture
async def agent() -> AsyncIterator[StartAgent]:
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def tracked(handler: Handler, reader: asyncio.StreamReader, writer: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await handler(reader, writer)

    async def start(handler: Handler, ip: str = "127.0.0.1") -> Backend:
        """A backend whose agent is ``handler`` on ``ip`` (any of 127/8: distinct backends)."""
        server = await asyncio.start_server(functools.partial(tracked, handler), ip, 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return Backend(ip, 9999, agent_port=port)

    yield start
    for server in servers:
        server.close()
    for task in handlers:  # hung handlers hold their connections open
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


@pytest.fixture
async def poller() -> AsyncIterator[LoadPoller]:
    poll = LoadPoller(TIMEOUT)
    yield poll
    await poll.close()


def with_fields(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


async def test_a_good_answer_gives_clients_connections_and_gpu_utilization(
    agent: StartAgent, poller: LoadPoller
) -> None:
    backend = await agent(answering_json(GOOD))
    poll = await poller.poll_one(backend)
    assert poll.outcome == "ok"
    assert poll.load == BackendLoad(frozenset({"10.244.1.6", "10.244.1.7"}), 4, (0.35, 0.15))
    assert poll.load.mean_gpu_utilization == pytest.approx(0.25)


async def test_unknown_fields_are_ignored(agent: StartAgent, poller: LoadPoller) -> None:
    backend = await agent(answering_json(with_fields(uptimeSeconds=12, version="2")))
    assert (await poller.poll_one(backend)).outcome == "ok"


async def test_ipv4_mapped_client_addresses_read_as_the_pod_ip(
    agent: StartAgent, poller: LoadPoller
) -> None:
    backend = await agent(answering_json(with_fields(clients=["::ffff:10.244.1.6"])))
    poll = await poller.poll_one(backend)
    assert poll.load is not None
    assert poll.load.clients == frozenset({"10.244.1.6"})


async def test_an_agent_without_gpu_readings_is_a_known_load_with_no_gpus(
    agent: StartAgent, poller: LoadPoller
) -> None:
    backend = await agent(answering_json(with_fields(gpus=[], gpuReadings="none")))
    poll = await poller.poll_one(backend)
    assert poll.load is not None
    assert poll.load.mean_gpu_utilization == 0.0


async def test_an_agent_that_hangs_is_unknown_within_the_timeout(
    agent: StartAgent, poller: LoadPoller
) -> None:
    backend = await agent(hanging)
    started = time.monotonic()
    poll = await poller.poll_one(backend)
    assert poll == type(poll)("timeout")
    assert time.monotonic() - started < TIMEOUT + 0.4


async def test_an_agent_that_trickles_its_answer_is_cut_off_at_the_timeout(
    agent: StartAgent, poller: LoadPoller
) -> None:
    backend = await agent(trickling)
    started = time.monotonic()
    assert (await poller.poll_one(backend)).outcome == "timeout"
    assert time.monotonic() - started < TIMEOUT + 0.4


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>hello</html>", "not JSON"),
        (b'{"pod": "x"', "truncated JSON"),
        (b"[]", "not an object"),
        (json.dumps({"pod": "x"}).encode(), "fields missing"),
    ],
)
async def test_an_agent_that_answers_garbage_is_unknown(
    agent: StartAgent, poller: LoadPoller, body: bytes, why: str
) -> None:
    backend = await agent(answering(body))
    assert (await poller.poll_one(backend)).outcome == "invalid", why


@pytest.mark.parametrize(
    "lie",
    [
        {"connections": -4},
        {"connections": "4"},
        {"connections": 4.0},
        {"listening": "yes"},
        {"clients": ["not-an-address"]},
        {"clients": "10.244.1.6"},
        {"connections": 1},  # two distinct clients over one connection
        {"gpus": [{"index": 0, "utilization": 1.5, "memoryUsedBytes": 1}]},
        {"gpus": [{"index": 0, "utilization": 0.5, "memoryUsedBytes": -1}]},
        {"gpus": [{"index": -1, "utilization": 0.5, "memoryUsedBytes": 1}]},
        {"gpuReadings": "guessed"},
        {"port": 8888},  # it measures another port than the one pods are pinned to
    ],
    ids=str,
)
async def test_an_agent_that_lies_is_unknown(
    agent: StartAgent, poller: LoadPoller, lie: dict[str, Any]
) -> None:
    backend = await agent(answering_json(with_fields(**lie)))
    poll = await poller.poll_one(backend)
    assert (poll.outcome, poll.load) == ("invalid", None)


async def test_an_error_status_is_unknown(agent: StartAgent, poller: LoadPoller) -> None:
    backend = await agent(answering(json.dumps(GOOD).encode(), "503 Service Unavailable"))
    assert (await poller.poll_one(backend)).outcome == "status"


async def test_an_answer_too_large_is_not_read_whole(agent: StartAgent, poller: LoadPoller) -> None:
    backend = await agent(answering(b" " * (MAX_BODY_BYTES + 1)))
    assert (await poller.poll_one(backend)).outcome == "too_large"


async def test_a_closed_port_and_a_missing_agent_port_are_unknown(poller: LoadPoller) -> None:
    server = await asyncio.start_server(answering_json(GOOD), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    assert (await poller.poll_one(Backend("127.0.0.1", 9999, agent_port=port))).outcome == "error"
    assert (await poller.poll_one(Backend("127.0.0.1", 9999))).outcome == "no_agent_port"


async def test_backends_are_polled_concurrently_so_hung_agents_delay_none_of_the_others(
    agent: StartAgent, poller: LoadPoller
) -> None:
    hung = [await agent(hanging, f"127.0.0.{10 + i}") for i in range(5)]
    good = [await agent(answering_json(GOOD), f"127.0.0.{20 + i}") for i in range(5)]
    started = time.monotonic()
    polls = await poller.poll(hung + good)
    elapsed = time.monotonic() - started
    assert {polls[b.address].outcome for b in hung} == {"timeout"}
    assert {polls[b.address].outcome for b in good} == {"ok"}
    assert elapsed < TIMEOUT * 2  # five timeouts one after the other would take 5 x TIMEOUT
