"""``gvirtus-controller``: the process entry point."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Sequence

from gvirtus_kai_common.health import HealthServer, run_with_health
from gvirtus_kai_common.kube import ApiErrors, api_client
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import EXIT_BAD_SETTINGS, load_settings

from gvirtus_kai_controller.controller import ACCOUNT, Controller
from gvirtus_kai_controller.leader import LeaderElector
from gvirtus_kai_controller.metrics import Metrics
from gvirtus_kai_controller.settings import Settings

log = logging.getLogger("gvirtus_kai_controller")

PROGRAM = "gvirtus-controller"
EXIT_FAILED = 1


async def run(settings: Settings) -> int:
    """Run the controller until SIGTERM/SIGINT; the exit status."""
    client = api_client(PROGRAM, settings.log_level)
    if client is None:
        return EXIT_BAD_SETTINGS
    metrics = Metrics()
    elector: LeaderElector | None = None
    controller: Controller
    if settings.leader_election:
        elector = LeaderElector(
            client,
            namespace=settings.namespace,
            name=settings.lease_name,
            identity=settings.pod_name or socket.gethostname(),
            lease_duration=settings.lease_duration_seconds,
            on_change=lambda leading: controller.leadership_changed(leading),
            api_errors=ApiErrors(metrics.api_errors, ACCOUNT),
        )
    controller = Controller(client, settings, metrics, elector=elector)
    health = HealthServer(
        settings.health_host,
        settings.health_port,
        controller.healthy,
        metrics.registry,
        is_ready=controller.ready,
    )
    log.info(
        "controller starting",
        extra={
            "namespace": settings.namespace,
            "backend_service": settings.backend_service,
            "policy": settings.policy,
            "max_pods_per_backend": settings.max_pods_per_backend,
            "leader_election": settings.leader_election,
        },
    )
    try:
        status = await run_with_health(health, controller.run)
        await controller.stop()  # in-flight writes, then the Lease
        log.info("stopped", extra={"exit_status": status})
        return status
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    description = "Assign each gated GVirtuS pod one ready backend, then release it."
    settings = load_settings(Settings, PROGRAM, argv, description=description)
    setup_logging(settings.log_level)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
