"""The health/metrics endpoint of the labeler and the device plugin, over a real TCP socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gvirtus_kai_common.health import HealthServer
from gvirtus_kai_common.metrics import CONTENT_TYPE, Counter, Registry


async def _exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return status_line, headers, body


class _Health:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = True
        self.registry = Registry()
        self.requests = Counter("probe_requests", "Probes seen.", registry=self.registry)


@pytest.fixture
async def health() -> AsyncIterator[tuple[_Health, int]]:
    state = _Health()
    server = HealthServer(
        "127.0.0.1", 0, lambda: state.healthy, state.registry, is_ready=lambda: state.ready
    )
    await server.start()
    try:
        yield state, server.port
    finally:
        await server.stop()


@pytest.fixture
async def without_readiness_check() -> AsyncIterator[tuple[_Health, int]]:
    """A server given only a health check, as the labeler starts it."""
    state = _Health()
    server = HealthServer("127.0.0.1", 0, lambda: state.healthy, state.registry)
    await server.start()
    try:
        yield state, server.port
    finally:
        await server.stop()


async def test_healthz_is_200_while_the_check_passes(health: tuple[_Health, int]) -> None:
    _, port = health
    status, headers, body = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == ("HTTP/1.1 200 OK", b"ok\n")
    assert headers["content-length"] == "3"


async def test_healthz_is_503_when_the_check_fails(health: tuple[_Health, int]) -> None:
    state, port = health
    state.healthy = False
    status, _, _ = await _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 503 Service Unavailable"


async def test_readyz_is_200_while_the_readiness_check_passes(
    health: tuple[_Health, int],
) -> None:
    _, port = health
    status, headers, body = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert (status, body) == ("HTTP/1.1 200 OK", b"ready\n")
    assert headers["content-length"] == "6"


async def test_readyz_is_503_while_alive_but_not_ready(health: tuple[_Health, int]) -> None:
    state, port = health
    state.ready = False
    ready, _, _ = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
    alive, _, _ = await _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert ready == "HTTP/1.1 503 Service Unavailable"
    assert alive == "HTTP/1.1 200 OK"


async def test_readyz_follows_the_latest_readiness_check(health: tuple[_Health, int]) -> None:
    state, port = health
    state.ready = False
    before, _, _ = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
    state.ready = True
    after, _, _ = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert (before, after) == ("HTTP/1.1 503 Service Unavailable", "HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    ("healthy", "status"), [(True, "200 OK"), (False, "503 Service Unavailable")]
)
async def test_readyz_without_a_readiness_check_follows_the_health_check(
    without_readiness_check: tuple[_Health, int], healthy: bool, status: str
) -> None:
    state, port = without_readiness_check
    state.healthy = healthy
    answer, _, _ = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert answer == f"HTTP/1.1 {status}"


async def test_metrics_serve_the_registry_in_text_format(health: tuple[_Health, int]) -> None:
    state, port = health
    state.requests.inc(3)
    status, headers, body = await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == CONTENT_TYPE
    assert b"probe_requests_total 3.0\n" in body


async def test_head_gets_headers_without_a_body(health: tuple[_Health, int]) -> None:
    _, port = health
    status, headers, body = await _exchange(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert (status, headers["content-length"], body) == ("HTTP/1.1 200 OK", "3", b"")


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"POST /healthz HTTP/1.1", "HTTP/1.1 405 Method Not Allowed"),
        (b"GET /nowhere HTTP/1.1", "HTTP/1.1 404 Not Found"),
        (b"garbage", "HTTP/1.1 405 Method Not Allowed"),
    ],
)
async def test_other_requests_get_an_error_status(
    health: tuple[_Health, int], request_line: bytes, status: str
) -> None:
    _, port = health
    answer, _, _ = await _exchange(port, request_line + b"\r\n\r\n")
    assert answer == status


async def test_an_oversized_request_line_is_dropped_and_the_server_keeps_serving(
    health: tuple[_Health, int],
) -> None:
    _, port = health
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), timeout=10) == b""
    writer.close()
    status, _, _ = await _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
