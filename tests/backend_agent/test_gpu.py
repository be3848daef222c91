"""GPU readings through an NVML stand-in with pynvml's names, and the driverless case for real."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gvirtus_kai_backend_agent.gpu import NO_DRIVER, GpuReading, Gpus


class NVMLError(Exception):
    pass


class FakeNvml:
    """The pynvml calls the agent makes (pynvml's names), for GPUs given as (utilisation %,
    bytes used)."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[tuple[int, int]], *, init_error: str | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.broken: set[int] = set()
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        if handle in self.broken:
            raise NVMLError("GPU is lost")
        return SimpleNamespace(gpu=self.gpus[handle][0], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=self.gpus[handle][1], total=1 << 34, free=0)

    def nvmlShutdown(self) -> None:
        self.shut_down = True


def test_each_gpu_reports_utilisation_as_a_ratio_and_memory_in_bytes() -> None:
    gpus = Gpus(FakeNvml([(35, 123456), (100, 0)]))
    gpus.start()

    assert gpus.available
    assert gpus.read() == [GpuReading(0, 0.35, 123456), GpuReading(1, 1.0, 0)]


def test_a_failed_init_reports_no_gpus_and_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    gpus = Gpus(FakeNvml([(50, 1)], init_error="Driver Not Loaded"))
    with caplog.at_level(logging.INFO, logger="gvirtus_kai_backend_agent.gpu"):
        gpus.start()
        readings = [gpus.read() for _ in range(3)]

    assert not gpus.available
    assert readings == [[], [], []]
    said = [r for r in caplog.records if r.getMessage() == NO_DRIVER]
    assert len(said) == 1
    assert said[0].__dict__["error"] == "Driver Not Loaded"


def test_a_gpu_that_cannot_be_read_is_left_out_and_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNvml([(10, 1), (20, 2)])
    gpus = Gpus(nvml)
    gpus.start()
    nvml.broken.add(0)
    with caplog.at_level(logging.INFO, logger="gvirtus_kai_backend_agent.gpu"):
        during = [gpus.read() for _ in range(3)]
        nvml.broken.clear()
        after = gpus.read()

    assert during == [[GpuReading(1, 0.2, 2)]] * 3
    assert after == [GpuReading(0, 0.1, 1), GpuReading(1, 0.2, 2)]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("cannot read a GPU") == 1
    assert messages.count("reading the GPU again") == 1


def test_stop_shuts_nvml_down() -> None:
    nvml = FakeNvml([(0, 0)])
    gpus = Gpus(nvml)
    gpus.start()
    gpus.stop()

    assert nvml.shut_down
    assert gpus.read() == []


def test_without_the_driver_control_device_nvml_is_not_even_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    gpus = Gpus(control_device=tmp_path / "nvidiactl")
    with caplog.at_level(logging.INFO, logger="gvirtus_kai_backend_agent.gpu"):
        gpus.start()

    assert not gpus.available
    assert "pynvml" not in sys.modules
    said = [r for r in caplog.records if r.getMessage() == NO_DRIVER]
    assert [r.__dict__["error"] for r in said] == [f"no {tmp_path / 'nvidiactl'}"]


def test_the_real_pynvml_without_a_driver_reports_no_gpus(tmp_path: Path) -> None:
    # A control device that exists gets NVML loaded: without the driver's library it fails
    # in nvmlInit, as on a GPU node whose runtime did not mount the library.
    device = tmp_path / "nvidiactl"
    device.touch()
    gpus = Gpus(control_device=device)
    gpus.start()
    if gpus.available:
        pytest.skip("this machine has an NVIDIA driver")
    assert gpus.read() == []
