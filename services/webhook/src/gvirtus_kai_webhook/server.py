"""``gvirtus-webhook``: serve the admission webhook over HTTPS until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import Any, cast

import uvicorn
import uvloop
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import load_settings
from gvirtus_kai_common.shutdown import run_until_stopped
from prometheus_client import disable_created_metrics
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .admission import AdmissionReviewer
from .app import WebhookApp
from .dns import BackendResolver
from .metrics import WebhookMetrics
from .settings import Settings
from .tls import ReloadingServerTLS, TLSLoadError

log = logging.getLogger(__name__)

# In-flight reviews get this long to finish after SIGTERM; the API server's own webhook timeout
# (at most 30 s) is far longer than any review takes.
GRACEFUL_SHUTDOWN_SECONDS = 10
TLS_POLL_SECONDS = 1.0
GC_GEN0_THRESHOLD = 10_000  # allocations between young-generation collections (default 700)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``serve()`` owns SIGTERM/SIGINT.

    uvicorn would re-raise the signal after a graceful stop, turning a clean exit into "killed by
    SIGTERM"; with the shared stop event the process exits 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _drop_terminal_colours(record: logging.LogRecord) -> bool:
    # uvicorn attaches an ANSI-coloured copy of some messages; in JSON lines it is only noise.
    record.__dict__.pop("color_message", None)
    return True


class CoalescingTransport(asyncio.Transport):
    """Hands the writes of one event-loop step to the real transport as one write.

    uvicorn writes a response's head and body separately; over TLS each write becomes its own
    record and its own send() call. Joined, a review's answer costs one of each: the biggest
    per-request saving left below the application (the same idea as TCP_CORK). Data waits at most
    until the loop's next step, and ``close()`` sends what is pending first.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the Transport methods without subclassing asyncio.Transport.
        real = cast(asyncio.Transport, transport)
        super().connection_made(CoalescingTransport(real, self.loop))


def uvicorn_config(app: WebhookApp, settings: Settings, tls: ReloadingServerTLS) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        loop="none",  # the loop is ours (uvloop), see main()
        http=HttpProtocol,  # uvicorn's httptools protocol, writes coalesced
        ws="none",
        lifespan="off",
        interface="asgi3",
        access_log=False,  # one structured line per admission is logged by the reviewer instead
        log_config=None,  # keep the JSON root handler
        server_header=False,
        proxy_headers=False,  # the API server connects directly; nothing to trust
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        ssl_context_factory=lambda _config, _default: tls.listening_context,
    )


class ListenError(Exception):
    """The listening socket could not be created."""


def _is_ipv6_any(host: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket] | None:
    """Sockets for uvicorn to serve on, or ``None`` to let it bind ``host`` as given.

    asyncio binds ``::`` with IPV6_V6ONLY, which refuses IPv4; on a dual-stack cluster the API
    server or the kubelet's probes may well come over IPv4. So ``::`` gets one socket that takes
    both families (IPV6_V6ONLY off), the way most servers read it. On a node without IPv6 "every
    address" can only mean the IPv4 ones.
    """
    if not _is_ipv6_any(host):
        return None
    try:
        if socket.has_dualstack_ipv6():
            sock = socket.create_server(
                ("::", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
            )
        else:
            log.warning("no IPv6 on this node: listening on IPv4 only", extra={"port": port})
            sock = socket.create_server(("0.0.0.0", port), backlog=backlog)
    except OSError as exc:
        raise ListenError(f"cannot listen on [{host}]:{port}: {exc}") from exc
    log.info(
        "listening on all addresses",
        extra={"address": sock.getsockname()[0], "port": sock.getsockname()[1]},
    )
    return [sock]


def _tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the request path.

    Everything imported and built so far lives as long as the process: frozen, the collector
    never walks it again. Requests allocate many short-lived dicts but hardly any cycles, so a
    larger first-generation threshold makes collections rarer without letting memory grow.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, finish in-flight reviews and return."""
    metrics = WebhookMetrics()
    tls = ReloadingServerTLS(settings.tls_cert_file, settings.tls_key_file, metrics)
    reviewer = AdmissionReviewer(settings, BackendResolver(settings, metrics), metrics)

    server: _Server | None = None

    def is_ready() -> bool:
        return server is not None and server.started and not server.should_exit

    app = WebhookApp(reviewer, metrics.registry, is_ready)
    config = uvicorn_config(app, settings, tls)
    server = _Server(config)
    sockets = listening_sockets(settings.listen_host, settings.listen_port, config.backlog)
    _tune_garbage_collector()

    async def drain() -> None:
        server.should_exit = True  # uvicorn stops accepting and finishes in-flight requests

    watcher = asyncio.create_task(tls.watch(TLS_POLL_SECONDS))
    try:
        await run_until_stopped(
            server.serve(sockets=sockets), drain=drain, grace_seconds=GRACEFUL_SHUTDOWN_SECONDS + 1
        )
    finally:
        watcher.cancel()
        for sock in sockets or ():
            sock.close()  # uvicorn closes them on a normal stop; this covers a failed start


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(Settings, "gvirtus-webhook", argv, description=__doc__)
    setup_logging(settings.log_level)
    # One line per admission is logged; skip the record fields the JSON lines never show
    # (the logging HOWTO's "Optimization" switches).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    logging.getLogger("uvicorn.error").addFilter(_drop_terminal_colours)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape noise
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except (TLSLoadError, ListenError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
