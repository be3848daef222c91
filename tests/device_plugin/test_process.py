"""The real ``gvirtus-device-plugin`` process: health and readiness, JSON logs, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.device_plugin.kubelet import WAIT_SECONDS, KubeletEmulator
from tests.device_plugin.process import PluginProcess, running_plugin, status_within

# How soon it must exit after SIGTERM.
EXIT_SECONDS = 1.0


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


async def test_sigterm_removes_the_socket(plugin_process: PluginProcess) -> None:
    assert plugin_process.socket.is_socket()
    plugin_process.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS)
    assert not plugin_process.socket.exists()


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


DESCRIPTOR_LIMIT = 128
# A connect the server's full listen backlog leaves unanswered is given up on: the kernel drops
# SYNs it has no room for and the client would retry them for minutes.
CONNECT_SECONDS = 2.0


async def open_flood(host: str, port: int, count: int) -> list[asyncio.StreamWriter]:
    """Up to ``count`` connections to ``host:port``, opened 32 at a time; those accepted."""

    async def connect() -> asyncio.StreamWriter | None:
        try:
            connecting = asyncio.open_connection(host, port)
            _, writer = await asyncio.wait_for(connecting, CONNECT_SECONDS)
        except (OSError, TimeoutError):
            return None
        return writer

    writers: list[asyncio.StreamWriter] = []
    for _ in range(0, count, 32):
        batch = await asyncio.gather(*(connect() for _ in range(32)))
        writers.extend(writer for writer in batch if writer is not None)
    return writers


async def test_a_connection_flood_on_the_health_port_under_a_low_descriptor_limit_is_survived(
    plugin_dir: Path, cdi_dir: Path
) -> None:
    lowered = (
        sys.executable,
        "-c",
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({DESCRIPTOR_LIMIT}, {DESCRIPTOR_LIMIT})); "
        "os.execv(sys.argv[1], sys.argv[1:])",
    )
    async with running_plugin(plugin_dir, cdi_dir, prefix=lowered) as plugin:
        await status_within(plugin, "/healthz", 200)
        host, port = plugin.health_url.removeprefix("http://").split(":")
        flood = await open_flood(host, int(port), 3 * DESCRIPTOR_LIMIT)
        await asyncio.sleep(0.5)
        descriptors = psutil.Process(plugin.process.pid).num_fds()
        alive = plugin.process.returncode is None
        for writer in flood:
            writer.close()
        # Probes are answered again once the flood is gone.
        assert await status_within(plugin, "/healthz", 200) == 200
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
            metrics = (await client.get(f"{plugin.health_url}/metrics")).text
        plugin.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(plugin.process.wait(), WAIT_SECONDS)
        # Under descriptor exhaustion gRPC's C core also prints its own plain-text errors
        # (a failed socket()); only the plugin's JSON records are read here.
        lines = [json.loads(line) for line in await plugin.stderr_lines() if line.startswith("{")]
    assert (alive, descriptors < DESCRIPTOR_LIMIT) == (True, True)
    refused = re.search(r"^gvirtus_health_connections_refused_total (\S+)$", metrics, re.M)
    assert refused is not None
    assert float(refused.group(1)) > 0
    assert any(line["msg"].startswith("too many connections") for line in lines)


async def test_a_health_port_already_in_use_fails_naming_the_port(
    plugin_dir: Path, cdi_dir: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_plugin(plugin_dir, cdi_dir, port=port) as plugin:
            code = await asyncio.wait_for(plugin.process.wait(), WAIT_SECONDS)
            lines = [json.loads(line) for line in await plugin.stderr_lines()]
    assert code == 1
    [error] = [line for line in lines if line["level"] == "error"]
    assert (error["msg"], error["port"]) == ("cannot serve /healthz, /readyz and /metrics", port)
