"""The real ``gvirtus-device-plugin`` process, started as the DaemonSet starts it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.device_plugin.kubelet import WAIT_SECONDS, pod_resources_socket

COMMAND = str(Path(sys.executable).parent / "gvirtus-device-plugin")


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
    stderr: Path

    async def stderr_lines(self) -> list[str]:
        """What the process wrote to stderr, once it has exited."""
        await self.process.wait()
        return self.stderr.read_text().splitlines()


@contextlib.asynccontextmanager
async def running_plugin(
    plugin_dir: Path, cdi_dir: Path, prefix: tuple[str, ...] = (), port: int | None = None
) -> AsyncIterator[PluginProcess]:
    """The plugin process (run through ``prefix``, if given; its health port ``port``, else a
    free one), killed on exit if still running."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(
        GVIRTUS_KAI_PLUGIN_DIR=str(plugin_dir),
        GVIRTUS_KAI_POD_RESOURCES_SOCKET=str(pod_resources_socket(plugin_dir)),
        GVIRTUS_KAI_CDI_DIR=str(cdi_dir),
        GVIRTUS_KAI_DEVICE_COUNT="2",
        GVIRTUS_KAI_HEALTH_HOST="127.0.0.1",
        GVIRTUS_KAI_HEALTH_PORT=str(port),
    )
    # A file, not a pipe: a pipe nobody reads until the end fills up, and a process that logs a
    # lot (a connection flood) would then block on its next log line.
    stderr = plugin_dir.parent / f"plugin-{port}.stderr"
    with stderr.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(*prefix, COMMAND, env=env, stderr=sink)
    try:
        yield PluginProcess(
            process,
            f"http://127.0.0.1:{port}",
            plugin_dir / "gvirtus-nvidia.com-gpu.sock",
            cdi_dir / "gvirtus.io-vgpu.json",
            stderr,
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


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
