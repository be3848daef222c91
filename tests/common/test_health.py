"""The health/metrics endpoint of the labeler, the device plugin and the controller, over real
TCP sockets: what it answers, and how it bounds clients that are slow, idle, verbose or many."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest
from gvirtus_kai_common.health import HealthServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter


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
        self.registry = CollectorRegistry()
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
    assert headers["content-type"] == CONTENT_TYPE_LATEST
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


# --- bounds ----------------------------------------------------------------------------------

TIMEOUT = 0.5  # the request deadline of the bounded server below
MAX_CONNECTIONS = 4


@pytest.fixture
async def bounded() -> AsyncIterator[tuple[HealthServer, _Health, int]]:
    state = _Health()
    server = HealthServer(
        "127.0.0.1",
        0,
        lambda: state.healthy,
        state.registry,
        max_connections=MAX_CONNECTIONS,
        request_timeout=TIMEOUT,
    )
    await server.start()
    try:
        yield server, state, server.port
    finally:
        await server.stop()


async def _closed_after(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes (nothing if it resets), and how long that
    took."""
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), timeout=10)
    except ConnectionResetError:
        data = b""
    return data, time.monotonic() - started


async def test_a_head_longer_than_the_limit_gets_431_and_is_closed(
    bounded: tuple[HealthServer, _Health, int],
) -> None:
    _, _, port = bounded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    with contextlib.suppress(ConnectionError):
        for _ in range(200):  # 2 MB of header lines that never end
            writer.write(b"X-Flood: " + b"a" * 10_000 + b"\r\n")
            await writer.drain()
    answer, _ = await _closed_after(reader)
    writer.close()
    # A 431 unless the unread flood made the close a reset that overtook it.
    assert answer.startswith(b"HTTP/1.1 431 ") or answer == b""


async def test_an_idle_connection_is_closed_at_the_deadline(
    bounded: tuple[HealthServer, _Health, int],
) -> None:
    _, _, port = bounded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer, waited = await _closed_after(reader)
    writer.close()
    assert answer == b""
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 5


async def test_a_head_trickling_in_is_closed_at_one_deadline_for_the_whole_head(
    bounded: tuple[HealthServer, _Health, int],
) -> None:
    _, _, port = bounded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    with contextlib.suppress(ConnectionError):
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            writer.write(bytes([byte]))  # one byte every 50 ms: each well within the deadline
            await writer.drain()
            if reader.at_eof() or time.monotonic() - started > TIMEOUT + 5:
                break
            await asyncio.sleep(0.05)
    answer, _ = await _closed_after(reader)
    writer.close()
    assert answer == b""
    assert time.monotonic() - started < TIMEOUT + 5


async def test_connections_over_the_cap_are_closed_at_once_and_counted(
    bounded: tuple[HealthServer, _Health, int],
) -> None:
    _, state, port = bounded
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    await asyncio.sleep(0.05)  # let the server take them all in
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer, waited = await _closed_after(reader)
    writer.close()
    assert (answer, waited < TIMEOUT) == (b"", True)
    refused = state.registry.get_sample_value("gvirtus_health_connections_refused_total")
    assert refused == 1.0
    for _, idle_writer in idle:
        idle_writer.close()
    # Once the idle ones are gone, probes are answered again.
    await asyncio.sleep(0.05)
    status, _, _ = await _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"


async def test_the_first_refused_connection_logs_a_warning(
    bounded: tuple[HealthServer, _Health, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, port = bounded
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="gvirtus_kai_common.connections"):
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _closed_after(reader)
            writer.close()
    for _, idle_writer in idle:
        idle_writer.close()
    warnings = [r for r in caplog.records if r.getMessage().startswith("too many connections")]
    assert len(warnings) == 1  # a flood logs one line per interval, not one per connection


async def test_an_oversized_request_line_is_dropped_and_the_server_keeps_serving(
    health: tuple[_Health, int],
) -> None:
    _, port = health
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    answer, _ = await _closed_after(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") or answer == b""
    status, _, _ = await _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"


async def test_routes_of_the_service_answer_and_replace_a_built_in_path() -> None:
    routes = {
        "/load": lambda: ("200 OK", "application/json", b'{"n": 1}'),
        "/readyz": lambda: ("503 Service Unavailable", "application/json", b'{"why": "x"}'),
    }
    server = HealthServer("127.0.0.1", 0, routes=routes)
    await server.start()
    try:
        load = await _exchange(server.port, b"GET /load HTTP/1.1\r\n\r\n")
        ready = await _exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
    finally:
        await server.stop()

    assert (load[0], load[1]["content-type"], load[2]) == (
        "HTTP/1.1 200 OK",
        "application/json",
        b'{"n": 1}',
    )
    assert (ready[0], ready[2]) == ("HTTP/1.1 503 Service Unavailable", b'{"why": "x"}')


async def test_a_failing_route_answers_500_and_the_server_keeps_serving() -> None:
    def broken() -> tuple[str, str, bytes]:
        raise OSError("table vanished")

    server = HealthServer("127.0.0.1", 0, routes={"/load": broken})
    await server.start()
    try:
        failed, _, _ = await _exchange(server.port, b"GET /load HTTP/1.1\r\n\r\n")
        alive, _, _ = await _exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    finally:
        await server.stop()

    assert (failed, alive) == ("HTTP/1.1 500 Internal Server Error", "HTTP/1.1 200 OK")
