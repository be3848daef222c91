"""The agent's readings of its backend pod and the answers built from them.

Reading the socket tables costs the kernel a walk of every TCP socket of the machine (tens of
milliseconds on a busy node), and NVML calls can block; so both are read in worker threads every
``interval`` seconds, and every answer (``/load``, ``/readyz``, ``/metrics``) serves the latest
reading at once: a probe or a poll never waits for the kernel or the driver.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gvirtus_kai_common.health import Answer, Route
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gvirtus_kai_backend_agent import procnet
from gvirtus_kai_backend_agent.gpu import GpuReading, Gpus

log = logging.getLogger(__name__)

JSON = "application/json"


class Agent:
    def __init__(
        self, pod: str, gvirtus_port: int, proc_net: Path, gpus: Gpus, interval: float = 1.0
    ) -> None:
        self.pod = pod
        self.gvirtus_port = gvirtus_port
        self._proc_net = proc_net
        self._gpus = gpus
        self._interval = interval
        self.port: procnet.PortLoad | None = None  # None: the tables could not be read
        self._table_error = "the socket tables are not read yet"
        self._tables_failing = False
        self.gpu_readings: list[GpuReading] = []
        self.running = False

    def read_tables(self) -> None:
        """Read the socket tables once (blocking); a failure is logged when it starts."""
        try:
            self.port = procnet.port_load(procnet.read_tables(self._proc_net), self.gvirtus_port)
        except (OSError, ValueError) as error:
            if not self._tables_failing:
                log.error("cannot read the socket tables", extra={"error": str(error)})
            self._tables_failing = True
            self.port = None
            self._table_error = f"cannot read the socket tables: {error}"
            return
        if self._tables_failing:
            log.info("reading the socket tables again")
        self._tables_failing = False

    def load(self) -> dict[str, Any] | None:
        """The ``/load`` document, what the controller ranks this backend by; None while the
        socket tables cannot be read."""
        port = self.port
        if port is None:
            return None
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
                for gpu in self.gpu_readings
            ],
            "gpuReadings": "nvml" if self._gpus.available else "none",
        }

    def routes(self) -> dict[str, Route]:
        return {"/load": self._load_answer, "/readyz": self._ready_answer}

    def _load_answer(self) -> Answer:
        load = self.load()
        if load is None:
            return _unavailable({"error": self._table_error})
        return "200 OK", JSON, json.dumps(load).encode()

    def _ready_answer(self) -> Answer:
        port = self.port
        if port is None:
            return _unavailable({"ready": False, "reason": self._table_error})
        if not port.listening:
            reason = f"nothing listens on the GVirtuS port {self.gvirtus_port}"
            return _unavailable({"ready": False, "reason": reason})
        return "200 OK", JSON, b'{"ready": true}'

    async def run(self) -> None:
        """Read the socket tables and the GPUs every interval until cancelled."""
        self.running = True
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._every_interval(self.read_tables))
                tasks.create_task(self._read_gpus())
        finally:
            self.running = False

    async def _read_gpus(self) -> None:
        await asyncio.to_thread(self._gpus.start)
        if not self._gpus.available:
            return
        try:
            await self._every_interval(self._store_gpu_readings)
        finally:
            await asyncio.to_thread(self._gpus.stop)

    def _store_gpu_readings(self) -> None:
        self.gpu_readings = self._gpus.read()

    async def _every_interval(self, read: Callable[[], None]) -> None:
        while True:
            started = time.monotonic()
            await asyncio.to_thread(read)
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))


def _unavailable(document: dict[str, Any]) -> Answer:
    return "503 Service Unavailable", JSON, json.dumps(document).encode()


class AgentCollector(Collector):
    """The agent's gauges from its latest reading, each labelled with the backend pod's name;
    the connection gauges are left out while the socket tables cannot be read."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        agent = self._agent
        port = agent.port
        if port is not None:
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
                family.add_metric([agent.pod], value)
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
