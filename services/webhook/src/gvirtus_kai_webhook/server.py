"""``gvirtus-webhook``: serve the admission webhook over HTTPS until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Iterator

import uvicorn
import uvloop
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.shutdown import stop_event_on_signals
from prometheus_client import disable_created_metrics
from pydantic import ValidationError

from .admission import AdmissionReviewer
from .app import WebhookApp
from .dns import BackendResolver
from .metrics import WebhookMetrics
from .settings import Settings
from .tls import ReloadingServerTLS, TLSLoadError

log = logging.getLogger(__name__)

ENV_PREFIX = "GVIRTUS_KAI_"
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


def uvicorn_config(app: WebhookApp, settings: Settings, tls: ReloadingServerTLS) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        loop="none",  # the loop is ours (uvloop), see main()
        http="httptools",
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
    server = _Server(uvicorn_config(app, settings, tls))
    _tune_garbage_collector()
    stop = stop_event_on_signals()
    watcher = asyncio.create_task(tls.watch(TLS_POLL_SECONDS))
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("stopping: finishing in-flight requests")
        server.should_exit = True
        await serving
    finally:
        watcher.cancel()
        stopping.cancel()


def _describe_settings_error(exc: ValidationError) -> str:
    lines = ["gvirtus-webhook: invalid settings:"]
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "?"
        lines.append(f"  {ENV_PREFIX}{field.upper()}: {error['msg']}")
    return "\n".join(lines)


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(_describe_settings_error(exc), file=sys.stderr)
        sys.exit(2)
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
    except TLSLoadError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
