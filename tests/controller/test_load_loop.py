"""The controller's loop placing by measured load, on the real API server, with real agent HTTP
servers on this machine: the EndpointSlice names the agent port, the controller polls it
and ranks, falls back to pinned pods for an agent that hangs or lies, and holds the client limit;
Events and metrics tell the load used."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from lightkube import AsyncClient

from tests.cluster.kube import local_ipv4
from tests.controller.conftest import Running, Scene, StartController
from tests.controller.kube import Ready, assigned, backend_slice, eventually, gated_pod, told

POLL = 0.2


def answer_of(port: int, clients: list[str], gpu: float = 0.0, **lies: Any) -> bytes:
    document = {
        "pod": "backend",
        "listening": True,
        "port": port,
        "connections": len(clients),
        "clients": clients,
        "gpus": [{"index": 0, "utilization": gpu, "memoryUsedBytes": 1}],
        "gpuReadings": "nvml",
        **lies,
    }
    return json.dumps(document).encode()


# A backend's GVirtuS port -> what its agent answers (None: it never answers).
Agents = Callable[[dict[int, bytes | None]], Awaitable[None]]


@pytest.fixture
async def agents(client: AsyncClient, scene: Scene) -> AsyncIterator[Agents]:
    """Backends on this machine's address (the API server refuses loopback endpoints), told
    apart by their GVirtuS port: one EndpointSlice each, naming its GVirtuS and agent port."""
    ip = local_ipv4()
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(answers: dict[int, bytes | None]) -> None:
        for gvirtus_port, body in answers.items():

            async def handle(
                reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter,
                body: bytes | None = body,
            ) -> None:
                task = asyncio.current_task()
                assert task is not None
                handlers.add(task)
                try:
                    await reader.readuntil(b"\r\n\r\n")
                    if body is None:
                        await asyncio.sleep(3600)
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body or b'')}\r\n"
                    writer.write(head.encode() + b"Connection: close\r\n\r\n" + (body or b""))
                    await writer.drain()
                finally:
                    writer.close()

            server = await asyncio.start_server(handle, ip, 0)
            servers.append(server)
            agent_port = int(server.sockets[0].getsockname()[1])
            await client.create(
                backend_slice(
                    scene,
                    f"s{gvirtus_port}",
                    [Ready(ip)],
                    port=gvirtus_port,
                    agent_port=agent_port,
                )
            )

    yield start
    for server in servers:
        server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


def at(port: int) -> str:
    return f"{local_ipv4()}:{port}"


async def polled(running: Running, address: str, metric: str, value: float) -> bool:
    async def seen() -> bool:
        return running.sample(metric, backend=address) == value

    return await eventually(seen, f"{metric}{{backend={address}}} == {value}")


async def test_a_new_pod_goes_to_the_backend_whose_agent_measures_the_least_load(
    client: AsyncClient, scene: Scene, start_controller: StartController, agents: Agents
) -> None:
    await agents(
        {
            9001: answer_of(9001, ["10.9.0.1", "10.9.0.2", "10.9.0.3"]),
            9002: answer_of(9002, ["10.9.0.4"], gpu=0.35),
        }
    )
    running = await start_controller(policy="leastLoaded", load_poll_seconds=POLL)
    await polled(running, at(9002), "gvirtus_controller_backend_clients", 1)
    assert running.sample("gvirtus_controller_backend_clients", backend=at(9001)) == 3
    assert running.sample(
        "gvirtus_controller_backend_gpu_utilization_ratio", backend=at(9002)
    ) == pytest.approx(0.35)

    await client.create(gated_pod(scene, "p"))

    assert await assigned(client, scene, "p") == at(9002)
    messages = await told(client, scene, "p", "BackendAssigned")
    assert messages == [
        f"assigned GVirtuS backend {at(9002)} (policy leastLoaded; 1 client, 0 pending, GPU 35%)"
    ]
    # Pinned and not connected yet: pending on its backend until the agent lists its IP.
    await polled(running, at(9002), "gvirtus_controller_backend_pending_pods", 1)


async def test_backends_whose_agents_hang_or_lie_are_unknown_and_ranked_by_their_pods(
    client: AsyncClient, scene: Scene, start_controller: StartController, agents: Agents
) -> None:
    await agents(
        {
            9001: None,  # hangs
            9002: answer_of(9002, ["10.9.0.1"], connections=-1),  # lies
            9003: answer_of(9003, [f"10.9.0.{i}" for i in range(1, 6)]),  # five clients
        }
    )
    running = await start_controller(
        policy="leastLoaded", load_poll_seconds=POLL, load_timeout_seconds=0.3
    )

    async def timed_out() -> bool:  # a whole poll round done: it waits for the slowest
        return running.sample("gvirtus_controller_load_polls_total", outcome="timeout") >= 1

    await eventually(timed_out, "a poll that timed out")
    assert running.sample("gvirtus_controller_load_polls_total", outcome="invalid") >= 1
    unknown = "gvirtus_controller_backend_load_unknown"
    assert [running.sample(unknown, backend=at(port)) for port in (9001, 9002, 9003)] == [1, 1, 0]

    for name in ("first", "second"):
        await client.create(gated_pod(scene, name))
        await assigned(client, scene, name)

    # No pinned pods (0) beats five measured clients; then the other unknown one, by port.
    assert await assigned(client, scene, "first") == at(9001)
    assert await assigned(client, scene, "second") == at(9002)
    [message] = await told(client, scene, "first", "BackendAssigned")
    assert "load unknown" in message


async def test_a_backend_at_its_client_limit_keeps_pods_waiting_and_says_why(
    client: AsyncClient, scene: Scene, start_controller: StartController, agents: Agents
) -> None:
    await agents({9001: answer_of(9001, ["10.9.0.1", "10.9.0.2"])})
    running = await start_controller(
        policy="leastLoaded", load_poll_seconds=POLL, max_clients_per_backend=2
    )
    await polled(running, at(9001), "gvirtus_controller_backend_clients", 2)

    await client.create(gated_pod(scene, "p"))

    reasons = await told(client, scene, "p", "WaitingForBackend")
    assert reasons == ["all 1 backends full (maxPodsPerBackend=0, maxClientsPerBackend=2)"]

    async def waiting() -> bool:
        return running.sample("gvirtus_controller_pods_waiting") == 1

    await eventually(waiting, "one pod waiting in the metrics")
    assert running.sample("gvirtus_controller_oldest_wait_seconds") >= 0
