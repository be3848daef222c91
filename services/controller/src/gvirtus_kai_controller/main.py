"""``gvirtus-controller``: the process entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Sequence

from gvirtus_kai_common.health import HealthServer
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.metrics import Registry
from gvirtus_kai_common.settings import describe_settings_error
from gvirtus_kai_common.shutdown import stop_event_on_signals
from lightkube import AsyncClient, ConfigError, KubeConfig
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from gvirtus_kai_controller.controller import Controller
from gvirtus_kai_controller.leader import LeaderElector
from gvirtus_kai_controller.metrics import Metrics
from gvirtus_kai_controller.settings import Settings

log = logging.getLogger("gvirtus_kai_controller")

PROGRAM = "gvirtus-controller"
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2


class _PrometheusPage(Registry):
    """Serves a prometheus_client registry through the shared health server."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._source = registry

    def exposition(self) -> bytes:
        return generate_latest(self._source)


async def run(settings: Settings, stop: asyncio.Event) -> int:
    """Run the controller until ``stop`` is set; the exit status."""
    try:
        config = KubeConfig.from_env()
    except (ConfigError, OSError) as error:
        log.error(
            "no Kubernetes API configuration: not in a cluster and no usable KUBECONFIG",
            extra={"error": str(error)},
        )
        return EXIT_BAD_SETTINGS
    client = AsyncClient(config, field_manager=PROGRAM)
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
        _PrometheusPage(metrics.registry),
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
        work = asyncio.ensure_future(controller.run())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if work.done():
            log.error("control loop ended unexpectedly", exc_info=work.exception())
            return EXIT_FAILED
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        await controller.stop()
        log.info("stopped")
        return 0
    finally:
        await health.stop()
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog=PROGRAM,
        description="Assign each gated GVirtuS pod one ready backend, then release it.",
    ).parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        print(f"{PROGRAM}: invalid settings:", *describe_settings_error(error), sep="\n  ")
        return EXIT_BAD_SETTINGS
    setup_logging(settings.log_level)
    if settings.log_level != "debug":
        # The HTTP client logs every request at info: one line per watch event is noise.
        for chatty in ("httpx2", "httpcore2"):
            logging.getLogger(chatty).setLevel(logging.WARNING)

    async def _main() -> int:
        return await run(settings, stop_event_on_signals())

    return asyncio.run(_main())


if __name__ == "__main__":
    sys.exit(main())
