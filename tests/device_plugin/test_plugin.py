"""The plugin against the kubelet emulator, over real gRPC on unix sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from gvirtus_kai_device_plugin.plugin import DevicePlugin
from gvirtus_kai_device_plugin.settings import Settings

from tests.device_plugin.conftest import RunningPlugin
from tests.device_plugin.kubelet import WAIT_SECONDS, KubeletEmulator

# How soon it must register again after a kubelet restart or a lost socket.
REREGISTER_SECONDS = 1.0


async def test_registers_with_version_endpoint_resource_and_options(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, settings: Settings
) -> None:
    request = kubelet.registrations[0].request
    assert (request.version, request.endpoint, request.resource_name) == (
        "v1beta1",
        "gvirtus-nvidia.com-gpu.sock",
        "nvidia.com/gpu",
    )
    options = request.options
    assert (options.pre_start_required, options.get_preferred_allocation_available) == (False, True)


async def test_endpoint_is_a_socket_file_in_the_plugin_dir(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, plugin_dir: Path
) -> None:
    assert (plugin_dir / kubelet.registrations[0].request.endpoint).is_socket()


async def test_plugin_answers_get_device_plugin_options_like_it_registered(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    registration = kubelet.registrations[0]
    assert registration.options == registration.request.options


async def test_list_and_watch_sends_device_count_healthy_devices(
    make_settings: Callable[..., Settings],
    kubelet: KubeletEmulator,
    start_plugin: Callable[[Settings], RunningPlugin],
) -> None:
    start_plugin(make_settings(device_count=3))
    await kubelet.wait_for_device_lists(1)
    assert kubelet.device_lists[0] == [
        ("gvirtus-vgpu-0", "Healthy"),
        ("gvirtus-vgpu-1", "Healthy"),
        ("gvirtus-vgpu-2", "Healthy"),
    ]


async def test_list_and_watch_sends_nothing_more_while_nothing_changes(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    await asyncio.sleep(0.5)
    assert len(kubelet.device_lists) == 1


async def test_list_and_watch_ends_with_ok_status_when_the_plugin_stops(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    await registered_plugin.stop()
    await kubelet.wait_for(lambda: kubelet.stream_status is not None)
    assert kubelet.stream_status == grpc.StatusCode.OK


async def test_allocate_one_device(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    response = await kubelet.allocate(["gvirtus-vgpu-1"])
    container = response.container_responses[0]
    assert dict(container.envs) == {"GVIRTUS_VGPU_IDS": "gvirtus-vgpu-1"}
    assert [d.name for d in container.cdi_devices] == ["gvirtus.io/vgpu=gvirtus-vgpu-1"]


async def test_allocate_several_devices_for_one_container(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    response = await kubelet.allocate(["gvirtus-vgpu-3", "gvirtus-vgpu-0"])
    container = response.container_responses[0]
    assert container.envs["GVIRTUS_VGPU_IDS"] == "gvirtus-vgpu-0,gvirtus-vgpu-3"
    assert [d.name for d in container.cdi_devices] == [
        "gvirtus.io/vgpu=gvirtus-vgpu-0",
        "gvirtus.io/vgpu=gvirtus-vgpu-3",
    ]


async def test_allocate_answers_several_containers_separately(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    response = await kubelet.allocate(["gvirtus-vgpu-0"], ["gvirtus-vgpu-2", "gvirtus-vgpu-1"])
    assert [c.envs["GVIRTUS_VGPU_IDS"] for c in response.container_responses] == [
        "gvirtus-vgpu-0",
        "gvirtus-vgpu-1,gvirtus-vgpu-2",
    ]


async def test_allocate_rejects_an_unknown_id_with_invalid_argument(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await kubelet.allocate(["gvirtus-vgpu-0"], ["gvirtus-vgpu-4"])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'gvirtus-vgpu-4'" in (raised.value.details() or "")


async def test_preferred_allocation_is_the_lowest_free_ids(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    available = ["gvirtus-vgpu-3", "gvirtus-vgpu-1", "gvirtus-vgpu-2"]
    assert await kubelet.preferred_allocation(available, [], 2) == [
        "gvirtus-vgpu-1",
        "gvirtus-vgpu-2",
    ]


async def test_preferred_allocation_rejects_an_unknown_id(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await kubelet.preferred_allocation(["gvirtus-vgpu-1", "gpu-9"], [], 1)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pre_start_container_succeeds_without_doing_anything(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    response = await kubelet.pre_start_container(["gvirtus-vgpu-0"])
    assert response.ByteSize() == 0


async def test_registers_again_within_a_second_of_a_kubelet_restart(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, plugin_dir: Path
) -> None:
    await kubelet.stop()
    async with KubeletEmulator(plugin_dir) as restarted:
        await restarted.wait_for_registrations(1)
        delay = restarted.registrations[0].received_at - restarted.socket_created_at
        assert delay < REREGISTER_SECONDS


async def test_serves_the_restarted_kubelet_a_device_list(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, plugin_dir: Path
) -> None:
    await kubelet.stop()
    async with KubeletEmulator(plugin_dir) as restarted:
        await restarted.wait_for_device_lists(1)
        assert len(restarted.device_lists[0]) == 4


async def test_logs_why_it_registers_again(
    registered_plugin: RunningPlugin,
    kubelet: KubeletEmulator,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="gvirtus_kai_device_plugin"):
        settings.socket_path.unlink()
        await kubelet.wait_for_registrations(2)
    reasons = [getattr(r, "reason", None) for r in caplog.records]
    assert "our socket was removed" in reasons


async def test_recovers_when_its_own_socket_is_deleted(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, settings: Settings
) -> None:
    settings.socket_path.unlink()
    deleted_at = time.monotonic()
    await kubelet.wait_for_registrations(2)
    assert settings.socket_path.is_socket()
    assert kubelet.registrations[1].received_at - deleted_at < REREGISTER_SECONDS


async def test_waits_for_a_kubelet_that_is_not_there_yet(
    settings: Settings, plugin_dir: Path, start_plugin: Callable[[Settings], RunningPlugin]
) -> None:
    start_plugin(settings)
    await asyncio.sleep(0.5)  # a few failed attempts against a missing kubelet.sock
    async with KubeletEmulator(plugin_dir) as late:
        await late.wait_for_registrations(1)
        assert late.registrations[0].received_at - late.socket_created_at < REREGISTER_SECONDS


async def test_retries_a_kubelet_that_refuses_registration(
    settings: Settings, plugin_dir: Path, start_plugin: Callable[[Settings], RunningPlugin]
) -> None:
    async with KubeletEmulator(plugin_dir, refusals=2) as refusing:
        start_plugin(settings)
        await refusing.wait_for_registrations(1)
        assert len(refusing.refused) == 2


async def test_logs_the_kubelets_refusal(
    settings: Settings,
    plugin_dir: Path,
    start_plugin: Callable[[Settings], RunningPlugin],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with KubeletEmulator(plugin_dir, refusals=1) as refusing:
        with caplog.at_level(logging.WARNING, logger="gvirtus_kai_device_plugin"):
            start_plugin(settings)
            await refusing.wait_for_registrations(1)
        errors = [getattr(r, "error", "") for r in caplog.records if r.levelno == logging.WARNING]
        assert errors == ["UNAVAILABLE: emulated kubelet refuses for now"]


async def test_backs_off_between_refused_registrations(
    settings: Settings, plugin_dir: Path, start_plugin: Callable[[Settings], RunningPlugin]
) -> None:
    async with KubeletEmulator(plugin_dir, refusals=1000) as refusing:
        start_plugin(settings)
        await asyncio.sleep(2.0)
        # Without backoff a 2 s window holds hundreds of attempts (each takes milliseconds).
        # With it (ceiling 0.2 s doubling, full jitter) about 5 are expected; 12 would need seven
        # consecutive near-zero draws under ceilings of 3.2 s and more: not going to happen.
        assert 2 <= len(refusing.refused) <= 12


async def test_stop_cuts_short_a_registration_the_kubelet_never_answers(
    settings: Settings, plugin_dir: Path, start_plugin: Callable[[Settings], RunningPlugin]
) -> None:
    async with KubeletEmulator(plugin_dir, unresponsive=True) as wedged:
        running = start_plugin(settings)
        await wedged.wait_for(lambda: len(wedged.refused) == 1)
        # The registration RPC would only time out after 5 s; a stop must not wait for that.
        await asyncio.wait_for(running.stop(), timeout=2.0)
        assert (running.task.done(), settings.socket_path.exists()) == (True, False)


async def test_clean_stop_removes_the_socket(
    registered_plugin: RunningPlugin, settings: Settings
) -> None:
    await registered_plugin.stop()
    assert not settings.socket_path.exists()


def sample(plugin: DevicePlugin, name: str) -> float | None:
    return plugin.registry.get_sample_value(name)


async def test_metrics_count_registrations_and_allocations(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    await kubelet.allocate(["gvirtus-vgpu-0"], ["gvirtus-vgpu-1"])
    plugin = registered_plugin.plugin
    assert (
        sample(plugin, "gvirtus_device_plugin_registered"),
        sample(plugin, "gvirtus_device_plugin_registrations_total"),
        sample(plugin, "gvirtus_device_plugin_container_allocations_total"),
    ) == (1, 1, 2)


async def test_registered_gauge_drops_to_0_while_kubelet_sock_is_gone(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator
) -> None:
    plugin = registered_plugin.plugin
    await kubelet.stop()
    for _ in range(int(WAIT_SECONDS / 0.05)):  # the plugin polls kubelet.sock every 100 ms
        if sample(plugin, "gvirtus_device_plugin_registered") == 0:
            break
        await asyncio.sleep(0.05)
    assert (sample(plugin, "gvirtus_device_plugin_registered"), plugin.registered) == (0, False)
