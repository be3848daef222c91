"""GPU utilisation and memory in use through NVML, when the node has an NVIDIA driver.

``pynvml`` (the ``nvidia-ml-py`` package) loads the driver's ``libnvidia-ml`` at ``nvmlInit``;
a node without a driver, or a container the GPU runtime did not give the library, fails there,
and the agent then reports no GPUs, saying so once. NVML talks to the driver through its control
device, so where the container has none pynvml (a few MiB of ctypes structures) is not even
imported. NVML calls may block (a GPU that is resetting, a driver in its persistence start-up),
so callers run them in a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

# The NVIDIA runtime puts it into every container it gives GPUs to.
NVIDIA_CONTROL_DEVICE = Path("/dev/nvidiactl")
NO_DRIVER = "no NVIDIA driver here: reporting no GPUs"


@dataclass(frozen=True)
class GpuReading:
    index: int
    utilization: float  # share of the last sample period a kernel ran, 0-1
    memory_used_bytes: int


def _load_pynvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError as error:  # pragma: no cover - the package is a dependency
        log.info(NO_DRIVER, extra={"error": f"pynvml is not installed: {error}"})
        return None
    module: ModuleType = pynvml
    return module


class Gpus:
    """The node's GPUs as NVML sees them; ``available`` is False where NVML cannot start."""

    def __init__(self, nvml: Any = None, control_device: Path = NVIDIA_CONTROL_DEVICE) -> None:
        self._nvml = nvml
        self._control_device = control_device
        self._handles: list[Any] = []
        self.available = False
        self._failing: set[int] = set()

    def start(self) -> None:
        """Initialise NVML once (blocking); logs once why there are no readings, if none."""
        nvml = self._nvml
        if nvml is None:
            if not self._control_device.exists():
                log.info(NO_DRIVER, extra={"error": f"no {self._control_device}"})
                return
            nvml = _load_pynvml()
            if nvml is None:
                return
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as error:
            log.info(NO_DRIVER, extra={"error": str(error) or type(error).__name__})
            return
        self._nvml = nvml
        self.available = True
        log.info("reading GPUs through NVML", extra={"gpus": count})

    def read(self) -> list[GpuReading]:
        """One reading per GPU (blocking); a GPU NVML cannot read now is left out, and logged
        when it starts and stops failing."""
        if not self.available:
            return []
        nvml = self._nvml
        readings = []
        for index, handle in enumerate(self._handles):
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as error:
                if index not in self._failing:
                    self._failing.add(index)
                    log.warning("cannot read a GPU", extra={"gpu": index, "error": str(error)})
                continue
            if index in self._failing:
                self._failing.discard(index)
                log.info("reading the GPU again", extra={"gpu": index})
            readings.append(GpuReading(index, int(rates.gpu) / 100.0, int(memory.used)))
        return readings

    def stop(self) -> None:
        if self.available:
            self.available = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                log.debug("NVML shutdown failed", exc_info=True)
