"""The real ``gvirtus-device-plugin`` process: health and readiness, JSON logs, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.device_plugin.kubelet import WAIT_SECONDS, KubeletEmulator

COMMAND = str(Path(sys.executable).parent / "gvirtus-device-plugin")
# The bound for SIGTERM to process exit.
EXIT_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PluginProcess:
    process: asyncio.subprocess.Process
    health_url: str
    socket: Path
    cdi_spec: Path

    async def stderr_lines(self) -> list[str]:
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode().splitlines()


@contextlib.asynccontextmanager
async def running_plugin(plugin_dir: Path, cdi_dir: Path) -> AsyncIterator[PluginProcess]:
    """The plugin process, killed on exit if it is still running."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(
        GVIRTUS_KAI_PLUGIN_DIR=str(plugin_dir),
        GVIRTUS_KAI_CDI_DIR=str(cdi_dir),
        GVIRTUS_KAI_DEVICE_COUNT="2",
        GVIRTUS_KAI_HEALTH_HOST="127.0.0.1",
        GVIRTUS_KAI_HEALTH_PORT=str(port),
    )
    process = await asyncio.create_subprocess_exec(COMMAND, env=env, stderr=asyncio.subprocess.PIPE)
    try:
        yield PluginProcess(
            process,
            f"http://127.0.0.1:{port}",
            plugin_dir / "gvirtus-nvidia.com-gpu.sock",
            cdi_dir / "gvirtus.io-vgpu.json",
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def plugin_process(
    kubelet: KubeletEmulator, plugin_dir: Path, cdi_dir: Path
) -> AsyncIterator[PluginProcess]:
    async with running_plugin(plugin_dir, cdi_dir) as plugin:
        await kubelet.wait_for_registrations(1)
        yield plugin


@pytest.fixture
async def plugin_without_kubelet(plugin_dir: Path, cdi_dir: Path) -> AsyncIterator[PluginProcess]:
    """The plugin process started before any kubelet, once its health endpoint answers."""
    async with running_plugin(plugin_dir, cdi_dir) as plugin:
        await status_within(plugin, "/healthz", 200)
        yield plugin


async def status_within(plugin: PluginProcess, path: str, expected: int) -> int | str:
    """GET ``path`` until it answers ``expected`` or WAIT_SECONDS pass; the last answer."""
    deadline = time.monotonic() + WAIT_SECONDS
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
        while True:
            try:
                answer: int | str = (await client.get(plugin.health_url + path)).status_code
            except httpx.TransportError as error:
                answer = type(error).__name__
            if answer == expected or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.05)


async def test_process_registers_and_reports_healthy(plugin_process: PluginProcess) -> None:
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
        response = await client.get(f"{plugin_process.health_url}/healthz")
    assert response.status_code == 200


async def test_readyz_is_503_while_no_kubelet_has_accepted_it(
    plugin_without_kubelet: PluginProcess,
) -> None:
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
        ready = await client.get(f"{plugin_without_kubelet.health_url}/readyz")
        alive = await client.get(f"{plugin_without_kubelet.health_url}/healthz")
    assert (ready.status_code, alive.status_code) == (503, 200)


async def test_readyz_turns_200_when_a_kubelet_accepts_the_registration(
    plugin_without_kubelet: PluginProcess, plugin_dir: Path
) -> None:
    async with KubeletEmulator(plugin_dir) as kubelet:
        await kubelet.wait_for_registrations(1)
        assert await status_within(plugin_without_kubelet, "/readyz", 200) == 200


async def test_readyz_is_503_once_kubelet_sock_disappears(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    assert await status_within(plugin_process, "/readyz", 200) == 200
    await kubelet.stop()  # removes kubelet.sock
    assert await status_within(plugin_process, "/readyz", 503) == 503


async def test_readyz_is_200_again_once_the_returning_kubelet_accepts_it(
    plugin_process: PluginProcess, kubelet: KubeletEmulator, plugin_dir: Path
) -> None:
    await kubelet.stop()
    assert await status_within(plugin_process, "/readyz", 503) == 503
    async with KubeletEmulator(plugin_dir) as returned:
        await returned.wait_for_registrations(1)
        assert await status_within(plugin_process, "/readyz", 200) == 200


async def test_process_exposes_registration_in_metrics(plugin_process: PluginProcess) -> None:
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
        response = await client.get(f"{plugin_process.health_url}/metrics")
    assert "gvirtus_device_plugin_registered 1.0" in response.text


async def test_health_endpoint_survives_a_kubelet_restart(
    plugin_process: PluginProcess, kubelet: KubeletEmulator, plugin_dir: Path
) -> None:
    await kubelet.stop()
    async with KubeletEmulator(plugin_dir) as restarted:
        await restarted.wait_for_registrations(1)
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            response = await client.get(f"{plugin_process.health_url}/healthz")
        assert response.status_code == 200


async def test_sigterm_exits_zero_within_a_second(plugin_process: PluginProcess) -> None:
    started = time.monotonic()
    plugin_process.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS)
    assert (code, time.monotonic() - started < EXIT_SECONDS) == (0, True)


async def test_sigterm_removes_socket_and_cdi_spec(plugin_process: PluginProcess) -> None:
    assert (plugin_process.socket.is_socket(), plugin_process.cdi_spec.is_file()) == (True, True)
    plugin_process.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS)
    assert (plugin_process.socket.exists(), plugin_process.cdi_spec.exists()) == (False, False)


async def test_logs_are_json_lines(plugin_process: PluginProcess) -> None:
    plugin_process.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS)
    lines = await plugin_process.stderr_lines()
    messages = [json.loads(line)["msg"] for line in lines]
    assert "registered with the kubelet" in messages


async def test_logs_no_error_on_a_clean_stop(plugin_process: PluginProcess) -> None:
    plugin_process.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS)
    levels = [json.loads(line)["level"] for line in await plugin_process.stderr_lines()]
    assert [level for level in levels if level not in ("info", "debug")] == []


async def test_stderr_holds_nothing_but_json_across_kubelet_restarts(
    plugin_process: PluginProcess, kubelet: KubeletEmulator, plugin_dir: Path
) -> None:
    # Restarts close connections under grpc's feet: its C core then has things to say.
    for _ in range(5):
        await kubelet.stop()
        kubelet = KubeletEmulator(plugin_dir)
        await kubelet.start()
        await kubelet.wait_for_registrations(1)
    await kubelet.stop()
    plugin_process.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS)
    not_json = []
    for line in await plugin_process.stderr_lines():
        with contextlib.suppress(json.JSONDecodeError):
            json.loads(line)
            continue
        not_json.append(line)
    assert not_json == []
