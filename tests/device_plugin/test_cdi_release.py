"""On SIGTERM the CDI spec goes only when the kubelet says no container holds one of our devices.

The kubelet side is real gRPC on unix sockets (Registration and PodResources ``List``, as in
``kubelet``); the plugin is the real process. What decides is the PodResources answer: a container
holding our resource keeps the spec for its restarts, and a kubelet that cannot be asked keeps it
too, because keeping a spec nobody needs is harmless and removing one a pod needs is not.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
from gvirtus_kai_device_plugin import podresources
from gvirtus_kai_device_plugin.api import podresources_pb2
from gvirtus_kai_device_plugin.plugin import STOP_SECONDS

from tests.device_plugin.kubelet import (
    WAIT_SECONDS,
    KubeletEmulator,
    PodResourcesServer,
    container_devices,
)
from tests.device_plugin.process import PluginProcess, running_plugin

RESOURCE = "nvidia.com/gpu"
KEPT_UNASKED = (
    "stopped; socket removed, CDI spec kept: cannot ask the kubelet which containers hold our "
    "devices"
)


def lister(kubelet: KubeletEmulator) -> PodResourcesServer:
    assert kubelet.pod_resources is not None
    return kubelet.pod_resources


async def sigterm(plugin: PluginProcess) -> tuple[int, list[dict[str, Any]]]:
    """Stop the plugin as the kubelet stops its pod; its exit code and JSON log records."""
    plugin.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(plugin.process.wait(), WAIT_SECONDS)
    return code, [json.loads(line) for line in await plugin.stderr_lines()]


def stop_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    (record,) = [r for r in records if r["msg"].startswith("stopped;")]
    return record


# --- which containers count, from the List answer --------------------------------------------


def listed(*pods: podresources_pb2.PodResources) -> podresources_pb2.ListPodResourcesResponse:
    return podresources_pb2.ListPodResourcesResponse(pod_resources=pods)


def test_a_container_holding_our_resource_is_a_holder_with_its_device_ids() -> None:
    answer = listed(container_devices("apps", "cuda", {RESOURCE: ["gvirtus-vgpu-3"]}))
    assert podresources.holders(answer, RESOURCE) == [
        podresources.Holder("apps", "cuda", "main", ("gvirtus-vgpu-3",))
    ]


def test_devices_of_another_resource_name_do_not_make_a_holder() -> None:
    # Even with ids that look like ours: only the resource name says whose devices they are.
    answer = listed(
        container_devices("apps", "fpga", {"example.com/fpga": ["gvirtus-vgpu-0"]}),
        container_devices("apps", "plain"),
    )
    assert podresources.holders(answer, RESOURCE) == []


def test_cpus_memory_and_dra_claims_do_not_make_a_holder() -> None:
    pod = podresources_pb2.PodResources(
        name="pinned",
        namespace="apps",
        cpu_ids=[2, 3],
        containers=[
            podresources_pb2.ContainerResources(
                name="main",
                cpu_ids=[2, 3],
                memory=[podresources_pb2.ContainerMemory(memory_type="memory", size=1 << 30)],
                dynamic_resources=[
                    podresources_pb2.DynamicResource(
                        claim_name="gpu",
                        claim_namespace="apps",
                        claim_resources=[
                            podresources_pb2.ClaimResource(
                                cdi_devices=[podresources_pb2.CDIDevice(name="gvirtus.io/vgpu=x")],
                                driver_name="gpu.example.com",
                            )
                        ],
                    )
                ],
            )
        ],
    )
    assert podresources.holders(listed(pod), RESOURCE) == []


def test_every_container_holding_our_resource_is_a_holder() -> None:
    answer = listed(
        container_devices("a", "one", {RESOURCE: ["gvirtus-vgpu-0"]}),
        container_devices("b", "two", {RESOURCE: ["gvirtus-vgpu-1"], "example.com/x": ["x"]}),
    )
    assert [str(holder) for holder in podresources.holders(answer, RESOURCE)] == [
        "a/one/main",
        "b/two/main",
    ]


# --- the plugin process on SIGTERM ------------------------------------------------------------


async def test_sigterm_with_no_container_holding_our_devices_removes_the_spec_and_the_socket(
    plugin_process: PluginProcess,
) -> None:
    assert plugin_process.cdi_spec.is_file()
    code, records = await sigterm(plugin_process)
    assert (code, plugin_process.cdi_spec.exists(), plugin_process.socket.exists()) == (
        0,
        False,
        False,
    )
    assert stop_record(records)["msg"] == (
        "stopped; socket and CDI spec removed: no container on the node holds our devices"
    )


async def test_sigterm_while_a_container_holds_one_of_our_devices_keeps_the_spec(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    await kubelet.allocate(["gvirtus-vgpu-1"])  # admits pod-0, as List now reports
    before = plugin_process.cdi_spec.read_bytes()
    code, records = await sigterm(plugin_process)
    assert (code, plugin_process.cdi_spec.read_bytes(), plugin_process.socket.exists()) == (
        0,
        before,
        False,
    )
    record = stop_record(records)
    assert (record["level"], record["containers"], record["examples"]) == (
        "info",
        1,
        ["default/pod-0/container-0"],
    )


async def test_a_container_holding_only_another_resources_devices_does_not_keep_the_spec(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    lister(kubelet).pods.append(
        container_devices("apps", "fpga", {"example.com/fpga": ["gvirtus-vgpu-0"]})
    )
    code, _ = await sigterm(plugin_process)
    assert (code, plugin_process.cdi_spec.exists()) == (0, False)


async def test_a_pod_gone_before_the_stop_no_longer_keeps_the_spec(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    # The uninstall after the GVirtuS pods were deleted: the kubelet has forgotten them.
    await kubelet.allocate(["gvirtus-vgpu-0"])
    lister(kubelet).pods.clear()
    code, _ = await sigterm(plugin_process)
    assert (code, plugin_process.cdi_spec.exists()) == (0, False)


async def test_sigterm_without_a_pod_resources_socket_keeps_the_spec_and_logs_why(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    server = lister(kubelet)
    await server.stop()  # removes the socket: a kubelet serving no PodResources
    before = plugin_process.cdi_spec.read_bytes()
    code, records = await sigterm(plugin_process)
    assert (code, plugin_process.cdi_spec.read_bytes(), plugin_process.socket.exists()) == (
        0,
        before,
        False,
    )
    record = stop_record(records)
    assert (record["level"], record["msg"]) == ("warning", KEPT_UNASKED)
    assert record["reason"] == f"{server.socket}: No such file or directory"


async def test_sigterm_when_list_fails_keeps_the_spec_and_logs_the_error(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    lister(kubelet).error = grpc.StatusCode.PERMISSION_DENIED
    code, records = await sigterm(plugin_process)
    assert (code, plugin_process.cdi_spec.exists()) == (0, True)
    record = stop_record(records)
    assert record["msg"] == KEPT_UNASKED
    assert "PERMISSION_DENIED: emulated kubelet fails List" in record["reason"]


async def test_a_kubelet_that_never_answers_list_keeps_the_spec_and_the_stop_bounded(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    lister(kubelet).delay = None
    started = time.monotonic()
    code, records = await sigterm(plugin_process)
    took = time.monotonic() - started
    assert (code, plugin_process.cdi_spec.exists(), took < STOP_SECONDS) == (0, True, True)
    assert "DEADLINE_EXCEEDED" in stop_record(records)["reason"]


async def test_a_list_answer_slower_than_a_second_is_still_waited_for(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    # Beyond the services' default one-second stop grace, within the List timeout.
    lister(kubelet).delay = 1.5
    code, _ = await sigterm(plugin_process)
    assert (code, plugin_process.cdi_spec.exists()) == (0, False)


async def test_the_kubelet_is_asked_only_once_our_socket_is_gone(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    # Then no allocation can reach us between the answer and the removal.
    socket_present_at_list: list[bool] = []
    lister(kubelet).on_list = lambda: socket_present_at_list.append(plugin_process.socket.exists())
    await sigterm(plugin_process)
    assert socket_present_at_list == [False]


async def test_the_next_plugin_registers_with_the_spec_on_disk_after_a_stop_removed_it(
    plugin_process: PluginProcess, kubelet: KubeletEmulator, plugin_dir: Path, cdi_dir: Path
) -> None:
    # A rollout on a node without GVirtuS pods: the spec goes and is back before registration.
    await sigterm(plugin_process)
    assert not plugin_process.cdi_spec.exists()
    async with running_plugin(plugin_dir, cdi_dir) as restarted:
        await kubelet.wait_for_registrations(2)
        assert kubelet.registrations[1].cdi_spec == restarted.cdi_spec.read_bytes()
