"""``gvirtus-labeler [--once] [--all-nodes]``: the process entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from gvirtus_kai_common.health import HealthServer
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.metrics import Registry
from gvirtus_kai_common.settings import describe_settings_error
from gvirtus_kai_common.shutdown import stop_event_on_signals
from lightkube import AsyncClient, ConfigError, KubeConfig
from pydantic import ValidationError

from gvirtus_kai_labeler.controller import ApiFailure, Labeler, NodeNotFound
from gvirtus_kai_labeler.metrics import Metrics
from gvirtus_kai_labeler.settings import Settings

log = logging.getLogger("gvirtus_kai_labeler")

EXIT_FAILED = 1  # --once could not label
EXIT_BAD_SETTINGS = 2
# On SIGTERM the watch task gets this long to unwind before the process exits regardless.
SHUTDOWN_GRACE_SECONDS = 0.5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gvirtus-labeler",
        description="Add the GVirtuS role labels to nodes that lack them; never change a value.",
    )
    parser.add_argument("--once", action="store_true", help="label, then exit (0 on success)")
    parser.add_argument(
        "--all-nodes",
        action="store_true",
        help="label every node through one watch instead of only GVIRTUS_KAI_NODE_NAME",
    )
    return parser.parse_args(argv)


def load_settings() -> Settings | str:
    """The settings, or a message naming each bad one."""
    try:
        return Settings()
    except ValidationError as error:
        return "invalid settings: " + "; ".join(describe_settings_error(error))


async def _run(settings: Settings, once: bool, all_nodes: bool) -> int:
    stop = stop_event_on_signals()
    try:
        config = KubeConfig.from_env()
    except (ConfigError, OSError) as error:
        log.error(
            "no Kubernetes API configuration: not in a cluster and no usable KUBECONFIG",
            extra={"error": str(error)},
        )
        return EXIT_BAD_SETTINGS
    client = AsyncClient(config, field_manager="gvirtus-labeler")
    registry = Registry()
    labeler = Labeler(
        client,
        settings.labels,
        Metrics(registry),
        node_name=None if all_nodes else settings.node_name,
    )
    try:
        if once:
            return await _label_once(labeler, stop)
        health = HealthServer(settings.health_host, settings.health_port, labeler.healthy, registry)
        try:
            await health.start()
        except OSError as error:
            log.error(
                "cannot serve /healthz and /metrics",
                extra={"port": settings.health_port, "error": str(error)},
            )
            return EXIT_FAILED
        try:
            return await _run_until_stopped(labeler, stop)
        finally:
            await health.stop()
    finally:
        await client.close()


async def _label_once(labeler: Labeler, stop: asyncio.Event) -> int:
    work = asyncio.ensure_future(labeler.label_once())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not work.done():
        work.cancel()
        log.info("stopped before labelling finished")
        return EXIT_FAILED
    try:
        added = work.result()
    except NodeNotFound as error:
        log.error(f"could not label: {error}")
        return EXIT_FAILED
    except ApiFailure as error:
        log.error(f"could not label {labeler.scope}: {error}")
        return EXIT_FAILED
    log.info("labelled", extra={"scope": labeler.scope, "labels_added": added})
    return 0


async def _run_until_stopped(labeler: Labeler, stop: asyncio.Event) -> int:
    work = asyncio.create_task(labeler.run())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if work.done():  # run() only ends by cancellation; anything else is a bug worth a restart
        log.error("control loop ended unexpectedly", exc_info=work.exception())
        return EXIT_FAILED
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(work, SHUTDOWN_GRACE_SECONDS)
    log.info("stopped", extra={"scope": labeler.scope})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    if isinstance(settings, str):
        print(f"gvirtus-labeler: {settings}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if not args.all_nodes and not settings.node_name:
        print(
            "gvirtus-labeler: invalid settings: GVIRTUS_KAI_NODE_NAME is empty; set it from the "
            "downward API (spec.nodeName) or run with --all-nodes",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    setup_logging(settings.log_level)
    if settings.log_level != "debug":
        # The HTTP client logs every request at info: one line per watch event is noise.
        for chatty in ("httpx2", "httpcore2"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    return asyncio.run(_run(settings, once=args.once, all_nodes=args.all_nodes))


if __name__ == "__main__":
    sys.exit(main())
