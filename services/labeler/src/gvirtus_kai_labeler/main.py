"""``gvirtus-labeler [--once] [--all-nodes]``: the process entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from gvirtus_kai_common.health import HealthServer, run_with_health
from gvirtus_kai_common.kube import ApiFailure, api_client
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import EXIT_BAD_SETTINGS, load_settings
from gvirtus_kai_common.shutdown import run_until_stopped
from prometheus_client import CollectorRegistry

from gvirtus_kai_labeler.controller import Labeler, NodeNotFound
from gvirtus_kai_labeler.metrics import Metrics
from gvirtus_kai_labeler.settings import Settings

log = logging.getLogger("gvirtus_kai_labeler")

PROGRAM = "gvirtus-labeler"
EXIT_FAILED = 1  # --once could not label
# On SIGTERM the watch task gets this long to unwind before the process exits regardless.
SHUTDOWN_GRACE_SECONDS = 0.5


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Add the GVirtuS role labels to nodes that lack them; never change a value.",
    )
    parser.add_argument("--once", action="store_true", help="label, then exit (0 on success)")
    parser.add_argument(
        "--all-nodes",
        action="store_true",
        help="label every node through one watch instead of only GVIRTUS_KAI_NODE_NAME",
    )
    return parser


async def _run(settings: Settings, once: bool, all_nodes: bool) -> int:
    client = api_client(PROGRAM, settings.log_level)
    if client is None:
        return EXIT_BAD_SETTINGS
    registry = CollectorRegistry()
    labeler = Labeler(
        client,
        settings.labels,
        Metrics(registry),
        node_name=None if all_nodes else settings.node_name,
    )
    try:
        if once:
            return await _label_once(labeler)
        health = HealthServer(settings.health_host, settings.health_port, labeler.healthy, registry)
        status = await run_with_health(health, labeler.run, grace_seconds=SHUTDOWN_GRACE_SECONDS)
        log.info("stopped", extra={"scope": labeler.scope, "exit_status": status})
        return status
    finally:
        await client.close()


async def _label_once(labeler: Labeler) -> int:
    try:
        added = await run_until_stopped(labeler.label_once())
    except NodeNotFound as error:
        log.error(f"could not label: {error}")
        return EXIT_FAILED
    except ApiFailure as error:
        log.error(f"could not label {labeler.scope}: {error}")
        return EXIT_FAILED
    if added is None:
        log.info("stopped before labelling finished")
        return EXIT_FAILED
    log.info("labelled", extra={"scope": labeler.scope, "labels_added": added})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    flags = argparse.Namespace()
    settings = load_settings(Settings, PROGRAM, argv, parser=command_line(), flags=flags)
    if not flags.all_nodes and not settings.node_name:
        print(
            f"{PROGRAM}: invalid settings: GVIRTUS_KAI_NODE_NAME is empty; set it from the "
            "downward API (spec.nodeName) or run with --all-nodes",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    setup_logging(settings.log_level)
    return asyncio.run(_run(settings, once=flags.once, all_nodes=flags.all_nodes))


if __name__ == "__main__":
    sys.exit(main())
