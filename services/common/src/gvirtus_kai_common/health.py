"""A tiny asyncio HTTP server for ``/healthz``, ``/readyz`` and ``/metrics``.

The labeler, the device plugin and the controller are not web services; a web framework only for
three read-only endpoints would cost memory and start-up time, so this speaks just enough HTTP/1.1:
one request per connection, answered and closed. Anyone who can reach the port can connect, so
every connection is bounded: the whole request head must arrive within ``request_timeout`` of
the connection opening (which also closes idle connections), it may be at most
``MAX_HEAD_BYTES`` long (else 431), and at most ``max_connections`` are open at once (the excess
is closed at once, counted, and logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from gvirtus_kai_common.connections import ConnectionLimit, within_descriptor_limit
from gvirtus_kai_common.shutdown import run_until_stopped

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]
# An answer: status line text ("200 OK"), content type, body.
Answer = tuple[str, str, bytes]
# A read-only endpoint of a service's own, answered from what it already holds (no waiting).
Route = Callable[[], Answer]

MAX_HEAD_BYTES = 8 * 1024  # a probe or a scrape sends a few hundred bytes
REQUEST_TIMEOUT_SECONDS = 5.0  # from connect to the answer written
MAX_CONNECTIONS = 64

_HEAD_END = b"\r\n\r\n"


class HealthServer:
    """Serves ``GET``/``HEAD`` of ``/healthz``, ``/readyz`` and ``/metrics``.

    ``/healthz`` (liveness) is 200 when ``is_healthy()``, else 503; ``/readyz`` (readiness) the
    same for ``is_ready()``, which defaults to the health check: a process that can be alive but
    not yet useful, like a device plugin the kubelet has not accepted, passes both separately.
    ``routes`` adds paths of the service's own and may replace the built-in ones (an answer
    with a reason in place of the plain ``/readyz``); they are bounded like the rest.
    """

    def __init__(
        self,
        host: str,
        port: int,
        is_healthy: HealthCheck = lambda: True,
        registry: CollectorRegistry | None = None,
        *,
        is_ready: HealthCheck | None = None,
        routes: Mapping[str, Route] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self._host = host
        self._port = port
        self._is_healthy = is_healthy
        self._is_ready = is_ready if is_ready is not None else is_healthy
        self._registry = registry if registry is not None else CollectorRegistry()
        self._routes = dict(routes or {})
        self._request_timeout = request_timeout
        refused = Counter(
            "gvirtus_health_connections_refused",
            "Connections to the health and metrics port closed at once: too many were open.",
            registry=self._registry,
        )
        self._limit = ConnectionLimit(within_descriptor_limit(max_connections), refused, "health")
        self._server: asyncio.Server | None = None

    @property
    def requested_port(self) -> int:
        return self._port

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None:
            raise RuntimeError("health server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        # ``limit`` caps what the stream buffers while looking for the end of the head.
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=MAX_HEAD_BYTES
        )
        log.info("health server listening", extra={"host": self._host, "port": self.port})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._limit.admit():
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(self._request_timeout):
                try:
                    head = await reader.readuntil(_HEAD_END)
                except asyncio.LimitOverrunError:
                    answer = ("431 Request Header Fields Too Large", "text/plain", b"too long\n")
                    head = b""
                else:
                    answer = self._respond(head.split(b"\r\n", 1)[0])
                status, content_type, body = answer
                response = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                # HEAD gets the headers GET would, without the body.
                writer.write(response if head.startswith(b"HEAD ") else response + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            # A slow, idle or vanished client: drop it, with anything it has not read.
            writer.transport.abort()
        finally:
            self._limit.release()
            writer.close()

    def _respond(self, request_line: bytes) -> Answer:
        parts = request_line.decode("latin-1").split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        path = parts[1].split("?", 1)[0]
        if path in self._routes:
            try:
                return self._routes[path]()
            except Exception:
                log.exception("endpoint failed", extra={"path": path})
                return "500 Internal Server Error", "text/plain", b"failed\n"
        if path == "/healthz":
            if self._is_healthy():
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", b"unhealthy\n"
        if path == "/readyz":
            if self._is_ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", "text/plain", b"not found\n"


EXIT_FAILED = 1  # the port could not be served, or the service's loop failed


async def run_with_health(
    health: HealthServer,
    service: Callable[[], Coroutine[Any, Any, object]],
    *,
    grace_seconds: float = 1.0,
) -> int:
    """Serve the health endpoints while ``service()`` runs until SIGTERM/SIGINT
    (``run_until_stopped``); the exit status: 0 once stopped, ``EXIT_FAILED`` when the port
    cannot be served or the service failed (logged as a JSON line, not a bare traceback)."""
    try:
        await health.start()
    except OSError as error:
        log.error(
            "cannot serve /healthz, /readyz and /metrics",
            extra={"port": health.requested_port, "error": str(error)},
        )
        return EXIT_FAILED
    try:
        await run_until_stopped(service(), grace_seconds=grace_seconds)
    except Exception:
        log.exception("service loop ended unexpectedly")
        return EXIT_FAILED
    finally:
        await health.stop()
    return 0
