"""``gvirtus-webhook``: serve the admission webhook over HTTPS until SIGTERM.

Hypercorn serves HTTP/1.1: unlike uvicorn, its keep-alive timeout also runs before the first
request and while a request head trickles in, so idle and slow clients are closed. It has no
connection cap, so connections are accepted here, and each one the cap admits is handed, after
the TLS handshake, to Hypercorn's per-connection server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import cast

import uvloop
from fastapi import FastAPI
from gvirtus_kai_common.connections import ConnectionLimit, within_descriptor_limit
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import EXIT_BAD_SETTINGS, load_settings
from gvirtus_kai_common.shutdown import run_until_stopped
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app

from gvirtus_kai_webhook.admission import AdmissionReviewer
from gvirtus_kai_webhook.app import build_app
from gvirtus_kai_webhook.dns import BackendResolver
from gvirtus_kai_webhook.metrics import WebhookMetrics
from gvirtus_kai_webhook.settings import Settings
from gvirtus_kai_webhook.tls import ReloadingServerTLS, TLSLoadError

log = logging.getLogger(__name__)

PROGRAM = "gvirtus-webhook"
EXIT_FAILED = 1
TLS_POLL_SECONDS = 1.0
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more is answered 431 and closed
# A closing connection waits this long for the client's TLS close_notify, then is dropped: a
# client that never answers must not hold its descriptor (asyncio's default is 30 s).
TLS_SHUTDOWN_SECONDS = 0.1
BACKLOG = 128


class ListenError(Exception):
    """The listening socket could not be created."""


def _is_ipv6_any(host: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def listening_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """The socket to serve on. ``::`` takes both IPv4 and IPv6 (IPV6_V6ONLY off): on a
    dual-stack cluster the API server or the kubelet's probes may come over either; on a node
    without IPv6 "every address" can only mean the IPv4 ones."""
    try:
        if not _is_ipv6_any(host):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return socket.create_server((host, port), family=family, backlog=backlog)
        if socket.has_dualstack_ipv6():
            return socket.create_server(
                ("::", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
            )
        log.warning("no IPv6 on this node: listening on IPv4 only", extra={"port": port})
        return socket.create_server(("0.0.0.0", port), backlog=backlog)
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        raise ListenError(f"cannot listen on {shown}:{port}: {exc}") from exc


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.keep_alive_timeout = settings.idle_timeout_seconds
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.include_server_header = False
    config.accesslog = None  # the reviewer logs one structured line per admission instead
    config.errorlog = logging.getLogger("hypercorn.error")  # into the JSON root handler
    return config


class ClientStreamProtocol(asyncio.StreamReaderProtocol):
    """A client that never answers our TLS close_notify (one still trickling a body after its
    408, say) is gone all the same: the connection ends as a close, not as the "SSL shutdown
    timed out" error Hypercorn would raise into the app, which logged it as a failure of ours."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(None if isinstance(exc, TimeoutError) else exc)


class WebhookServer:
    """HTTPS for the app: at most ``max_connections`` at once, stopped in the rollout's order."""

    def __init__(
        self, tls: ReloadingServerTLS, settings: Settings, metrics: WebhookMetrics
    ) -> None:
        self._config = hypercorn_config(settings)
        self._context = WorkerContext(None)  # its ``terminated`` closes idle connections
        self._tls = tls
        self._settings = settings
        self._metrics = metrics
        self._limit = ConnectionLimit(
            within_descriptor_limit(settings.max_connections), metrics.connections_refused, "https"
        )
        self._connections: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.stopping = False

    def is_ready(self) -> bool:
        return self._accepting is not None and not self.stopping

    async def serve(self, app: FastAPI, listener: socket.socket) -> None:
        """Serve ``app`` on ``listener`` until ``drain`` has finished."""
        # FastAPI is an ASGI app; only its type annotations differ from Hypercorn's.
        self._app = wrap_app(cast(ASGIFramework, app), self._config.wsgi_max_body_size, "asgi")
        listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(listener))
        host, port = listener.getsockname()[:2]
        log.info("serving HTTPS", extra={"host": host, "port": port, "cap": self._limit.maximum})
        try:
            await self._stopped.wait()
        finally:
            self._accepting.cancel()

    async def drain(self) -> None:
        """The rollout order: readiness 503 while still serving, then stop accepting, close
        idle connections at once, and give in-flight reviews the drain time."""
        self.stopping = True
        # From now on every answer says "Connection: close" (Hypercorn adds it once a connection
        # has served this many requests): a client learns to reconnect elsewhere from the answer
        # itself, instead of sending its next review down a connection we are about to close.
        self._config.keep_alive_max_requests = 0
        settings = self._settings
        log.info("stopping: not ready", extra={"delay_seconds": settings.shutdown_delay_seconds})
        await asyncio.sleep(settings.shutdown_delay_seconds)
        if self._accepting is not None:
            self._accepting.cancel()
        await self._context.terminated.set()
        if self._connections:
            log.info("finishing in-flight requests", extra={"connections": len(self._connections)})
            await asyncio.wait(set(self._connections), timeout=settings.shutdown_drain_seconds)
        for task in self._connections:
            task.cancel()
        self._stopped.set()

    async def _accept(self, listener: socket.socket) -> None:
        # Accepting here rather than with asyncio.start_server lets the cap see a connection
        # before anything is read from it or a TLS handshake is spent on it.
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of descriptors after all: let some close first
                log.warning("accept failed", extra={"error": str(exc)})
                await asyncio.sleep(0.1)
                continue
            if not self._limit.admit():
                connection.close()
                continue
            task = asyncio.create_task(self._serve_connection(connection))
            self._connections.add(task)
            self._metrics.connections_open.set(self._limit.open)

    async def _serve_connection(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = ClientStreamProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                connection,
                ssl=self._tls.listening_context,
                ssl_handshake_timeout=self._settings.idle_timeout_seconds,
                ssl_shutdown_timeout=TLS_SHUTDOWN_SECONDS,
            )
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            serving = asyncio.ensure_future(
                TCPServer(self._app, loop, self._config, self._context, {}, reader, writer)
            )
            closed = asyncio.ensure_future(writer.wait_closed())
            try:
                # Hypercorn notices a client that hung up only when its idle timer fires; the
                # connection ends as soon as its transport has closed instead.
                await asyncio.wait({serving, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        except (OSError, ssl.SSLError, TimeoutError):
            connection.close()  # a failed or too slow handshake, or the client left
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._connections.discard(task)
            self._limit.release()
            self._metrics.connections_open.set(self._limit.open)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain (see ``WebhookServer.drain``) and return."""
    metrics = WebhookMetrics()
    tls = ReloadingServerTLS(settings.tls_cert_file, settings.tls_key_file, metrics)
    listener = listening_socket(settings.listen_host, settings.listen_port)
    reviewer = AdmissionReviewer(settings, BackendResolver(settings, metrics), metrics)
    server = WebhookServer(tls, settings, metrics)
    app = build_app(
        reviewer, metrics.registry, server.is_ready, body_timeout=settings.body_timeout_seconds
    )
    watcher = asyncio.create_task(tls.watch(TLS_POLL_SECONDS))
    try:
        await run_until_stopped(server.serve(app, listener), drain=server.drain)
    finally:
        watcher.cancel()
        listener.close()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(Settings, PROGRAM, argv, description=__doc__)
    setup_logging(settings.log_level)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except TLSLoadError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_BAD_SETTINGS)
    except ListenError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_FAILED)
