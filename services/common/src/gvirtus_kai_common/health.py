"""A tiny asyncio HTTP server for ``/healthz``, ``/readyz`` and ``/metrics``.

The labeler and the device plugin are not web services; pulling in a web framework only for three
read-only endpoints would cost memory and start-up time, so this speaks just enough HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gvirtus_kai_common.metrics import CONTENT_TYPE, Registry

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]


class HealthServer:
    """Serves ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.

    ``/healthz`` (liveness) is 200 when ``is_healthy()``, else 503; ``/readyz`` (readiness) the
    same for ``is_ready()``, which defaults to the health check: a process that can be alive but
    not yet useful, like a device plugin the kubelet has not accepted, passes both separately.
    """

    def __init__(
        self,
        host: str,
        port: int,
        is_healthy: HealthCheck = lambda: True,
        registry: Registry | None = None,
        *,
        is_ready: HealthCheck | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._is_healthy = is_healthy
        self._is_ready = is_ready if is_ready is not None else is_healthy
        self._registry = registry if registry is not None else Registry()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None:
            raise RuntimeError("health server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("health server listening", extra={"host": self._host, "port": self.port})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            # Drain headers; we never read a body.
            while await asyncio.wait_for(reader.readline(), timeout=5) not in (b"\r\n", b"\n", b""):
                pass
            status, content_type, body = self._respond(request_line)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            # HEAD gets the headers GET would, without the body.
            writer.write(head.encode() + (b"" if request_line.startswith(b"HEAD ") else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            # ValueError: a request or header line over the stream limit; nothing to answer.
            pass
        finally:
            writer.close()

    def _respond(self, request_line: bytes) -> tuple[str, str, bytes]:
        parts = request_line.decode("latin-1").split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        path = parts[1].split("?", 1)[0]
        if path == "/healthz":
            if self._is_healthy():
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", b"unhealthy\n"
        if path == "/readyz":
            if self._is_ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE, self._registry.exposition()
        return "404 Not Found", "text/plain", b"not found\n"
