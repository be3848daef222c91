"""``gvirtus-device-plugin``: advertise virtual GPU slots to the kubelet of a GPU-less node."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from gvirtus_kai_common.health import HealthServer, run_with_health
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import ENV_PREFIX, EXIT_BAD_SETTINGS, load_settings
from prometheus_client import CollectorRegistry

from gvirtus_kai_device_plugin import files
from gvirtus_kai_device_plugin.plugin import STOP_SECONDS, DevicePlugin
from gvirtus_kai_device_plugin.settings import Settings

log = logging.getLogger("gvirtus_kai_device_plugin")

PROGRAM = "gvirtus-device-plugin"


def check_directories(settings: Settings) -> list[str]:
    """Problems with the two host directories, each naming its setting."""
    problems = []
    # The kubelet owns the plugin dir: if it is missing the path is wrong, so do not create it.
    plugin_dir = files.writability_problem(settings.plugin_dir, create=False)
    if plugin_dir:
        problems.append(f"{ENV_PREFIX}PLUGIN_DIR: {plugin_dir}")
    # Runtimes scan the CDI dir but nothing guarantees it exists yet.
    cdi_dir = files.writability_problem(settings.cdi_dir, create=True)
    if cdi_dir:
        problems.append(f"{ENV_PREFIX}CDI_DIR: {cdi_dir}")
    return problems


async def serve(settings: Settings) -> int:
    registry = CollectorRegistry()
    plugin = DevicePlugin(settings, registry)
    # Outside the restart loop: a kubelet restart must not take the probe endpoint down.
    # Alive while the control loop runs; ready only while the kubelet holds our registration,
    # so a rollout waits for each node's plugin to be registered.
    health = HealthServer(
        settings.health_host,
        settings.health_port,
        lambda: plugin.running,
        registry,
        is_ready=lambda: plugin.registered,
    )
    # The stop asks the kubelet whether the CDI spec may go: it must not be cut short by the
    # default one-second grace.
    return await run_with_health(health, plugin.run, grace_seconds=STOP_SECONDS)


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(Settings, PROGRAM, argv, description=__doc__)
    setup_logging(settings.log_level)
    problems = check_directories(settings)
    if problems:
        print(f"{PROGRAM}: invalid settings:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    log.info(
        "starting",
        extra={
            "resource": settings.resource_name,
            "devices": settings.device_count,
            "plugin_dir": str(settings.plugin_dir),
            "cdi_spec": str(settings.cdi_spec_path),
            "pod_resources_socket": str(settings.pod_resources_socket),
        },
    )
    try:
        sys.exit(asyncio.run(serve(settings)))
    except Exception:
        # Whatever stopped it unexpectedly is said as a JSON line, not a bare traceback.
        log.exception("device plugin failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
