"""``gvirtus-backend-agent``: measure the GVirtuS backend from inside its pod, never connecting.

A sidecar in the backend pod's network namespace: reads the kernel's socket tables for the
GVirtuS port and NVML for the GPUs, and serves /load (JSON), /readyz (the port listens),
/healthz and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence

from gvirtus_kai_common.health import HealthServer, run_with_health
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import ENV_PREFIX, EXIT_BAD_SETTINGS, load_settings

from gvirtus_kai_backend_agent.agent import Agent, metrics_registry
from gvirtus_kai_backend_agent.gpu import Gpus
from gvirtus_kai_backend_agent.settings import Settings

log = logging.getLogger("gvirtus_kai_backend_agent")

PROGRAM = "gvirtus-backend-agent"


def proc_net_problem(settings: Settings) -> str | None:
    """Why the socket tables cannot be read, or None; ``tcp6`` may be missing (no IPv6)."""
    table = settings.proc_net / "tcp"
    if not os.access(table, os.R_OK):
        return f"{ENV_PREFIX}PROC_NET: cannot read {table}"
    return None


async def serve(settings: Settings) -> int:
    agent = Agent(
        settings.pod_name or socket.gethostname(),
        settings.gvirtus_port,
        settings.proc_net,
        Gpus(),
        settings.sample_interval_seconds,
    )
    # The first reading before the port opens: no answer ever says "not read yet".
    agent.read_tables()
    health = HealthServer(
        settings.health_host,
        settings.health_port,
        lambda: agent.running,
        metrics_registry(agent),
        routes=agent.routes(),
    )
    log.info(
        "starting",
        extra={
            "pod": agent.pod,
            "gvirtus_port": agent.gvirtus_port,
            "proc_net": str(settings.proc_net),
        },
    )
    return await run_with_health(health, agent.run)


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(Settings, PROGRAM, argv, description=__doc__)
    problem = proc_net_problem(settings)
    if problem:
        print(f"{PROGRAM}: invalid settings:", problem, sep="\n  ", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    setup_logging(settings.log_level)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
