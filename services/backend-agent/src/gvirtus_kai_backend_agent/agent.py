"""The agent's readings of its backend pod and the answers built from them.

The socket tables are read on every request (a few milliseconds even with a thousand
connections), so ``/readyz`` and ``/load`` say what holds now. GPU readings come from a worker
thread once a second and are served from the latest one: NVML calls can block, and a probe or a
poll must not wait for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gvirtus_kai_common.health import Answer, Route
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gvirtus_kai_backend_agent import procnet
from gvirtus_kai_backend_agent.gpu import GpuReading, Gpus

log = logging.getLogger(__name__)

GPU_REFRESH_SECONDS = 1.0
JSON = "application/json"


class Agent:
    def __init__(self, pod: str, gvirtus_port: int, proc_net: Path, gpus: Gpus) -> None:
        self.pod = pod
        self.gvirtus_port = gvirtus_port
        self._proc_net = proc_net
        self._gpus = gpus
        self._gpu_readings: list[GpuReading] = []
        self.running = False

    def port_load(self) -> procnet.PortLoad:
        return procnet.port_load(procnet.read_tables(self._proc_net), self.gvirtus_port)

    @property
    def gpu_readings(self) -> list[GpuReading]:
        return self._gpu_readings

    def load(self) -> dict[str, Any]:
        """The ``/load`` document: what the controller ranks this backend by."""
        port = self.port_load()
        return {
            "pod": self.pod,
            "listening": port.listening,
            "port": self.gvirtus_port,
            "connections": port.connections,
            "clients": list(port.clients),
            "gpus": [
                {
                    "index": gpu.index,
                    "utilization": gpu.utilization,
                    "memoryUsedBytes": gpu.memory_used_bytes,
                }
                for gpu in self._gpu_readings
            ],
            "gpuReadings": "nvml" if self._gpus.available else "none",
        }

    def routes(self) -> dict[str, Route]:
        return {"/load": self._load_answer, "/readyz": self._ready_answer}

    def _load_answer(self) -> Answer:
        return "200 OK", JSON, json.dumps(self.load()).encode()

    def _ready_answer(self) -> Answer:
        if self.port_load().listening:
            return "200 OK", JSON, json.dumps({"ready": True}).encode()
        reason = f"nothing listens on the GVirtuS port {self.gvirtus_port}"
        body = json.dumps({"ready": False, "reason": reason}).encode()
        return "503 Service Unavailable", JSON, body

    async def run(self) -> None:
        """Start NVML, then refresh the GPU readings every second until cancelled."""
        self.running = True
        try:
            await asyncio.to_thread(self._gpus.start)
            while self._gpus.available:
                started = time.monotonic()
                self._gpu_readings = await asyncio.to_thread(self._gpus.read)
                await asyncio.sleep(max(0.0, GPU_REFRESH_SECONDS - (time.monotonic() - started)))
            await asyncio.Event().wait()  # nothing to refresh; serve the socket tables
        finally:
            self.running = False
            await asyncio.to_thread(self._gpus.stop)


class AgentCollector(Collector):
    """The agent's gauges, read when scraped, each labelled with the backend pod's name."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        agent = self._agent
        port = agent.port_load()
        pod = [agent.pod]
        for name, text, value in (
            ("listening", "1 while the GVirtuS port is listening.", float(port.listening)),
            ("connections", "Established connections to the GVirtuS port.", port.connections),
            (
                "clients",
                "Distinct client addresses connected to the GVirtuS port.",
                len(port.clients),
            ),
        ):
            family = GaugeMetricFamily(f"gvirtus_backend_{name}", text, labels=["pod"])
            family.add_metric(pod, value)
            yield family
        utilization = GaugeMetricFamily(
            "gvirtus_backend_gpu_utilization_ratio",
            "Share of the last NVML sample period a kernel ran on the GPU, 0-1.",
            labels=["pod", "gpu"],
        )
        memory = GaugeMetricFamily(
            "gvirtus_backend_gpu_memory_used_bytes",
            "GPU memory in use, in bytes.",
            labels=["pod", "gpu"],
        )
        for gpu in agent.gpu_readings:
            utilization.add_metric([agent.pod, str(gpu.index)], gpu.utilization)
            memory.add_metric([agent.pod, str(gpu.index)], gpu.memory_used_bytes)
        yield utilization
        yield memory


def metrics_registry(agent: Agent) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    return registry
