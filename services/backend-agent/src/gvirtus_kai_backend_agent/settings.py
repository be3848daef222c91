"""Backend agent settings, read from ``GVIRTUS_KAI_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from gvirtus_kai_common.settings import HealthServerSettings
from pydantic import Field


class Settings(HealthServerSettings):
    gvirtus_port: int = Field(
        9999, ge=1, le=65535, description="port the GVirtuS backend listens on in this pod"
    )
    pod_name: str = Field(
        "",
        description="the backend pod's name (downward API metadata.name), the `pod` label of"
        " every metric; empty: the host name",
    )
    proc_net: Path = Field(
        Path("/proc/net"),
        description="directory of the tcp and tcp6 socket tables of the pod's network namespace",
    )
    sample_interval_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="seconds between readings of the socket tables and of the GPUs; every"
        " answer serves the latest reading",
    )
    # The GVirtuS backend's readings are served on this port: /load, /readyz, /metrics.
    health_port: int = Field(
        9180, ge=0, le=65535, description="port of /load, /readyz, /healthz and /metrics"
    )
