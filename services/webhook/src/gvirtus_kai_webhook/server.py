"""``gvirtus-webhook``: serve the admission webhook over HTTPS until SIGTERM.

uvicorn's HTTP/1.1 protocol (httptools) serves each connection. What it leaves unbounded is bounded
here, around it: connections are accepted here, so the cap sees each one before a TLS handshake is
spent on it, and the handshake has a deadline; a ``ConnectionGuard`` then gives every request head
a deadline and a size limit.

Stock ``uvicorn.Server`` cannot: ``limit_concurrency`` answers 503 only after accept and TLS, and
with httptools no option bounds a head's size or arrival time (``timeout_keep_alive`` is between
requests). The uvicorn internals used instead are checked in tests/webhook/test_uvicorn_contract.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from email.utils import formatdate
from typing import cast

import uvicorn
import uvloop
from gvirtus_kai_common.connections import ConnectionLimit, within_descriptor_limit
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import EXIT_BAD_SETTINGS, load_settings
from gvirtus_kai_common.shutdown import run_until_stopped
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.server import ServerState

from gvirtus_kai_webhook.admission import AdmissionReviewer
from gvirtus_kai_webhook.app import build_app
from gvirtus_kai_webhook.dns import BackendResolver
from gvirtus_kai_webhook.metrics import WebhookMetrics
from gvirtus_kai_webhook.models import ErrorBody
from gvirtus_kai_webhook.settings import Settings
from gvirtus_kai_webhook.tls import ReloadingServerTLS, TLSLoadError

log = logging.getLogger(__name__)

PROGRAM = "gvirtus-webhook"
EXIT_FAILED = 1
TLS_POLL_SECONDS = 1.0
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more is answered 431 and closed
# A closing connection waits this long for the client's TLS close_notify, then is dropped: a
# client that never answers must not hold its descriptor (the event loop's default is 30 s).
TLS_SHUTDOWN_SECONDS = 0.1
BACKLOG = 128
GUARD = "gvirtus.connection"  # the key of a request's ConnectionGuard in its ASGI scope's state

# The same JSON error body as every other refusal of ours (written here: no app sees the request).
_HEAD_TOO_LARGE_BODY = (
    ErrorBody(code=431, message=f"request head is larger than {MAX_HEAD_BYTES} bytes")
    .model_dump_json()
    .encode()
)
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_HEAD_TOO_LARGE_BODY), _HEAD_TOO_LARGE_BODY)
)


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


class ConnectionGuard(asyncio.Protocol):
    """One client connection, passed through to uvicorn's HTTP protocol, with the bounds that
    protocol lacks: while no request is in progress (before the first one, between keep-alive
    requests, while a head trickles in) the connection is closed after ``idle_seconds`` and a
    head over ``MAX_HEAD_BYTES`` is answered 431. uvicorn starts the app once a head is complete;
    ``guarded`` tells the guard when each request starts and ends."""

    def __init__(
        self,
        http: Callable[[ConnectionGuard], asyncio.Protocol],
        idle_seconds: float,
        on_lost: Callable[[ConnectionGuard], None],
    ) -> None:
        self._http = http(self)
        self._idle_seconds = idle_seconds
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._requests = 0
        self._unclaimed = 0  # bytes received since the last request started or ended
        self._closing = False
        self.lost = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._http.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._http.data_received(data)
        if self._requests == 0:
            over = self._unclaimed <= MAX_HEAD_BYTES < self._unclaimed + len(data)
            self._unclaimed += len(data)
            if over:
                # A complete head starts the app in a task that runs before this callback; a
                # head still unclaimed then is too large.
                self._loop.call_soon(self._check_head)

    def eof_received(self) -> bool | None:
        return self._http.eof_received()

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._http.connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)

    def request_started(self) -> None:
        self._requests += 1
        self._unclaimed = 0
        self._disarm()

    def request_finished(self) -> None:
        self._requests -= 1
        if self._requests == 0:
            self._unclaimed = 0
            if self._closing:
                self.close()
            else:
                self._arm()

    def close_when_idle(self) -> None:
        """Close now if no request is in progress, else once the last one has been answered."""
        self._closing = True
        if self._requests == 0:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _check_head(self) -> None:
        transport = self._transport
        # Not onto a connection uvicorn is closing (it answered a bad head 400); uvloop would
        # drop the write anyway, but that is not a promise of the transport interface.
        if transport is None or transport.is_closing():
            return
        if self._requests == 0 and self._unclaimed > MAX_HEAD_BYTES:
            transport.write(HEAD_TOO_LARGE)
            transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self._loop.call_later(self._idle_seconds, self.close)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def guarded(app: ASGIApp, stopping: Callable[[], bool]) -> ASGIApp:
    """``app``, telling each request's ``ConnectionGuard`` when the request starts and ends; once
    the server is stopping, every answer says ``Connection: close``, so a client learns from the
    answer itself to send its next review elsewhere."""

    async def guarded_app(scope: Scope, receive: Receive, send: Send) -> None:
        guard = scope.get("state", {}).get(GUARD)
        if not isinstance(guard, ConnectionGuard):
            await app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"connection", b"close")]}
            await send(message)

        guard.request_started()
        try:
            await app(scope, receive, send_closing if stopping() else send)
        finally:
            guard.request_finished()

    return guarded_app


class WebhookServer:
    """HTTPS for the app: at most ``max_connections`` at once, stopped in the rollout's order."""

    def __init__(
        self, tls: ReloadingServerTLS, settings: Settings, metrics: WebhookMetrics
    ) -> None:
        self._tls = tls
        self._settings = settings
        self._metrics = metrics
        self._limit = ConnectionLimit(
            within_descriptor_limit(settings.max_connections), metrics.connections_refused, "https"
        )
        self._state = ServerState()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._guards: set[ConnectionGuard] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.stopping = False

    def is_ready(self) -> bool:
        return self._accepting is not None and not self.stopping

    async def serve(self, app: ASGIApp, listener: socket.socket) -> None:
        """Serve ``app`` on ``listener`` until ``drain`` has finished."""
        config = uvicorn.Config(
            guarded(app, lambda: self.stopping),
            http="httptools",
            ws="none",
            lifespan="off",
            log_config=None,  # the JSON root handler takes uvicorn's few lines
            access_log=False,  # the reviewer logs one structured line per admission instead
            server_header=False,
            proxy_headers=False,  # the API server connects directly; no forwarded-for to trust
            # uvicorn's own idle timer between requests; the guard's fires first anyway.
            timeout_keep_alive=math.ceil(self._settings.idle_timeout_seconds),
        )
        config.load()
        protocol = cast(Callable[..., asyncio.Protocol], config.http_protocol_class)

        def http(guard: ConnectionGuard) -> asyncio.Protocol:
            # uvicorn's HTTP protocol, built as its own server builds it, with the connection's
            # guard in the ASGI scope["state"] of each of its requests.
            return protocol(config=config, server_state=self._state, app_state={GUARD: guard})

        listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(listener, http))
        dating = asyncio.create_task(self._keep_date_header())
        host, port = listener.getsockname()[:2]
        log.info("serving HTTPS", extra={"host": host, "port": port, "cap": self._limit.maximum})
        try:
            await self._stopped.wait()
        finally:
            self._accepting.cancel()
            dating.cancel()

    async def drain(self) -> None:
        """The rollout order: readiness 503 while still serving (every answer now says
        ``Connection: close``), then stop accepting, close idle connections at once, and give
        in-flight reviews the drain time."""
        self.stopping = True
        settings = self._settings
        log.info("stopping: not ready", extra={"delay_seconds": settings.shutdown_delay_seconds})
        await asyncio.sleep(settings.shutdown_delay_seconds)
        if self._accepting is not None:
            self._accepting.cancel()
        for task in self._handshakes:
            task.cancel()
        guards = set(self._guards)
        for guard in guards:
            guard.close_when_idle()
        busy = {guard.lost for guard in guards if not guard.lost.done()}
        if busy:
            log.info("finishing in-flight requests", extra={"connections": len(busy)})
            await asyncio.wait(busy, timeout=settings.shutdown_drain_seconds)
        for guard in list(self._guards):
            guard.abort()
        self._stopped.set()

    async def _keep_date_header(self) -> None:
        # Every answer carries a Date (RFC 9110): uvicorn's protocol sends the server state's
        # default headers, which uvicorn's own server refreshes each second; so does this.
        while True:
            self._state.default_headers = [(b"date", formatdate(usegmt=True).encode())]
            await asyncio.sleep(1.0)

    async def _accept(
        self, listener: socket.socket, http: Callable[[ConnectionGuard], asyncio.Protocol]
    ) -> None:
        # Accepting here rather than with loop.create_server lets the cap see a connection
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
            self._metrics.connections_open.set(self._limit.open)
            task = asyncio.create_task(self._handshake(connection, http))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(
        self, connection: socket.socket, http: Callable[[ConnectionGuard], asyncio.Protocol]
    ) -> None:
        guard = ConnectionGuard(http, self._settings.idle_timeout_seconds, self._lost)
        self._guards.add(guard)
        connected = False
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: guard,
                connection,
                ssl=self._tls.listening_context,
                ssl_handshake_timeout=self._settings.idle_timeout_seconds,
                ssl_shutdown_timeout=TLS_SHUTDOWN_SECONDS,
            )
            connected = True
        except (OSError, ssl.SSLError, TimeoutError):
            pass  # a failed or too slow handshake, or the client left
        finally:
            if not connected:  # the guard never saw the connection, so it cannot report it lost
                connection.close()
                self._lost(guard)

    def _lost(self, guard: ConnectionGuard) -> None:
        if guard in self._guards:
            self._guards.discard(guard)
            self._release()

    def _release(self) -> None:
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
