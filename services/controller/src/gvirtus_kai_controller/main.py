"""``gvirtus-controller``: the process entry point."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Sequence

from gvirtus_kai_common.health import HealthServer
from gvirtus_kai_common.kube import api_client
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import EXIT_BAD_SETTINGS, load_settings
from gvirtus_kai_common.shutdown import run_until_stopped

from gvirtus_kai_controller.controller import Controller
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
        )
    controller = Controller(client, settings, metrics, elector=elector)
    health = HealthServer(
        settings.health_host,
        settings.health_port,
        controller.healthy,
        metrics.registry,
        is_ready=controller.ready,
    )
    try:
        try:
            await health.start()
        except OSError as error:
            log.error(
                "cannot serve /healthz, /readyz and /metrics",
                extra={"port": settings.health_port, "error": str(error)},
            )
            return EXIT_FAILED
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
            await run_until_stopped(controller.run())
        except Exception:  # run() only ends by cancellation; anything else is a bug
            log.exception("control loop ended unexpectedly")
            return EXIT_FAILED
        await controller.stop()
        log.info("stopped")
        return 0
    finally:
        await health.stop()
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    description = "Assign each gated GVirtuS pod one ready backend, then release it."
    settings = load_settings(Settings, PROGRAM, argv, description=description)
    setup_logging(settings.log_level)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
