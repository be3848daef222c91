"""Fixtures: short temporary plugin/CDI dirs, a kubelet emulator, the plugin running in-process."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gvirtus_kai_device_plugin.plugin import DevicePlugin
from gvirtus_kai_device_plugin.settings import Settings

from tests.device_plugin.kubelet import WAIT_SECONDS, KubeletEmulator, pod_resources_socket
from tests.device_plugin.process import PluginProcess, running_plugin, status_within

# The spec's file name for the default CDI kind gvirtus.io/vgpu.
DEFAULT_SPEC_NAME = "gvirtus.io-vgpu.json"


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A short path: unix socket paths are limited to 108 bytes, pytest's tmp_path can exceed it."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="gdp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugin_dir(host_dir: Path) -> Path:
    path = host_dir / "plugins"
    path.mkdir()
    return path


@pytest.fixture
def cdi_dir(host_dir: Path) -> Path:
    return host_dir / "cdi"


@pytest.fixture
def make_settings(plugin_dir: Path, cdi_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "plugin_dir": plugin_dir,
            "cdi_dir": cdi_dir,
            "device_count": 4,
            "pod_resources_socket": pod_resources_socket(plugin_dir),
        }
        values.update(overrides)
        return Settings(**values)

    cdi_dir.mkdir(exist_ok=True)
    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def kubelet(plugin_dir: Path, cdi_dir: Path) -> AsyncIterator[KubeletEmulator]:
    """A kubelet serving Registration and, like every kubelet, PodResources."""
    async with KubeletEmulator(
        plugin_dir,
        cdi_spec=cdi_dir / DEFAULT_SPEC_NAME,
        pod_resources_socket=pod_resources_socket(plugin_dir),
    ) as emulator:
        yield emulator


class RunningPlugin:
    """A DevicePlugin's run() as a task in the test's event loop, stopped as SIGTERM does it:
    by cancelling the task."""

    def __init__(self, plugin: DevicePlugin) -> None:
        self.plugin = plugin
        self.task = asyncio.create_task(plugin.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), WAIT_SECONDS)


@pytest.fixture
async def start_plugin() -> AsyncIterator[Callable[[Settings], RunningPlugin]]:
    started: list[RunningPlugin] = []

    def start(settings: Settings) -> RunningPlugin:
        running = RunningPlugin(DevicePlugin(settings))
        started.append(running)
        return running

    yield start
    # A plugin that fails to stop cleanly fails the test that started it; stopping twice is fine.
    for running in started:
        await running.stop()


@pytest.fixture
async def registered_plugin(
    settings: Settings,
    kubelet: KubeletEmulator,
    start_plugin: Callable[[Settings], RunningPlugin],
) -> RunningPlugin:
    """The plugin after the kubelet accepted it and received its first device list."""
    running = start_plugin(settings)
    await kubelet.wait_for_registrations(1)
    await kubelet.wait_for_device_lists(1)
    return running


@pytest.fixture
async def plugin_process(
    kubelet: KubeletEmulator, plugin_dir: Path, cdi_dir: Path
) -> AsyncIterator[PluginProcess]:
    async with running_plugin(plugin_dir, cdi_dir) as plugin:
        await kubelet.wait_for_registrations(1)
        # The kubelet has the request; the plugin is registered once it has the answer too.
        assert await status_within(plugin, "/readyz", 200) == 200
        yield plugin


@pytest.fixture
async def plugin_without_kubelet(plugin_dir: Path, cdi_dir: Path) -> AsyncIterator[PluginProcess]:
    """The plugin process started before any kubelet, once its health endpoint answers."""
    async with running_plugin(plugin_dir, cdi_dir) as plugin:
        await status_within(plugin, "/healthz", 200)
        yield plugin
