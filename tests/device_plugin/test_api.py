"""The protos match the kubelet's wire APIs, and the committed stubs match the protos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gvirtus_kai_device_plugin.api import api_pb2, podresources_pb2

SERVICE_ROOT = Path(__file__).resolve().parents[2] / "services" / "device-plugin"
PACKAGE_API = SERVICE_ROOT / "src" / "gvirtus_kai_device_plugin" / "api"

# (message, field, number) as in k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto.
KUBELET_FIELDS = [
    ("DevicePluginOptions", "pre_start_required", 1),
    ("DevicePluginOptions", "get_preferred_allocation_available", 2),
    ("RegisterRequest", "version", 1),
    ("RegisterRequest", "endpoint", 2),
    ("RegisterRequest", "resource_name", 3),
    ("RegisterRequest", "options", 4),
    ("ListAndWatchResponse", "devices", 1),
    ("TopologyInfo", "nodes", 1),
    ("NUMANode", "ID", 1),
    ("Device", "ID", 1),
    ("Device", "health", 2),
    ("Device", "topology", 3),
    ("PreStartContainerRequest", "devices_ids", 1),
    ("PreferredAllocationRequest", "container_requests", 1),
    ("ContainerPreferredAllocationRequest", "available_deviceIDs", 1),
    ("ContainerPreferredAllocationRequest", "must_include_deviceIDs", 2),
    ("ContainerPreferredAllocationRequest", "allocation_size", 3),
    ("PreferredAllocationResponse", "container_responses", 1),
    ("ContainerPreferredAllocationResponse", "deviceIDs", 1),
    ("AllocateRequest", "container_requests", 1),
    ("ContainerAllocateRequest", "devices_ids", 1),
    ("CDIDevice", "name", 1),
    ("AllocateResponse", "container_responses", 1),
    ("ContainerAllocateResponse", "envs", 1),
    ("ContainerAllocateResponse", "mounts", 2),
    ("ContainerAllocateResponse", "devices", 3),
    ("ContainerAllocateResponse", "annotations", 4),
    ("ContainerAllocateResponse", "cdi_devices", 5),
    ("Mount", "container_path", 1),
    ("Mount", "host_path", 2),
    ("Mount", "read_only", 3),
    ("DeviceSpec", "container_path", 1),
    ("DeviceSpec", "host_path", 2),
    ("DeviceSpec", "permissions", 3),
]


@pytest.mark.parametrize(("message", "field", "number"), KUBELET_FIELDS)
def test_field_numbers_match_the_kubelet_api(message: str, field: str, number: int) -> None:
    assert api_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field].number == number


def test_messages_have_no_fields_beyond_the_kubelet_api() -> None:
    ours = {
        (message.name, field.name)
        for message in api_pb2.DESCRIPTOR.message_types_by_name.values()
        for field in message.fields
    }
    assert ours == {(message, field) for message, field, _ in KUBELET_FIELDS}


def test_services_have_the_kubelet_rpc_paths() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for service in api_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == {
        "/v1beta1.Registration/Register",
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/PreStartContainer",
    }


# (message, field, number) as in k8s.io/kubelet/pkg/apis/podresources/v1/api.proto, for the
# messages List answers with.
POD_RESOURCES_FIELDS = [
    ("ListPodResourcesResponse", "pod_resources", 1),
    ("PodResources", "name", 1),
    ("PodResources", "namespace", 2),
    ("PodResources", "containers", 3),
    ("PodResources", "cpu_ids", 4),
    ("PodResources", "memory", 5),
    ("ContainerResources", "name", 1),
    ("ContainerResources", "devices", 2),
    ("ContainerResources", "cpu_ids", 3),
    ("ContainerResources", "memory", 4),
    ("ContainerResources", "dynamic_resources", 5),
    ("ContainerMemory", "memory_type", 1),
    ("ContainerMemory", "size", 2),
    ("ContainerMemory", "topology", 3),
    ("ContainerDevices", "resource_name", 1),
    ("ContainerDevices", "device_ids", 2),
    ("ContainerDevices", "topology", 3),
    ("TopologyInfo", "nodes", 1),
    ("NUMANode", "ID", 1),
    ("DynamicResource", "claim_name", 2),
    ("DynamicResource", "claim_namespace", 3),
    ("DynamicResource", "claim_resources", 4),
    ("ClaimResource", "cdi_devices", 1),
    ("ClaimResource", "driver_name", 2),
    ("ClaimResource", "pool_name", 3),
    ("ClaimResource", "device_name", 4),
    ("ClaimResource", "share_id", 5),
    ("CDIDevice", "name", 1),
]


@pytest.mark.parametrize(("message", "field", "number"), POD_RESOURCES_FIELDS)
def test_pod_resources_field_numbers_match_the_kubelet_api(
    message: str, field: str, number: int
) -> None:
    descriptor = podresources_pb2.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[field].number == number


def test_pod_resources_messages_have_no_fields_beyond_the_kubelet_api() -> None:
    ours = {
        (message.name, field.name)
        for message in podresources_pb2.DESCRIPTOR.message_types_by_name.values()
        for field in message.fields
    }
    assert ours == {(message, field) for message, field, _ in POD_RESOURCES_FIELDS}


def test_pod_resources_service_has_the_kubelet_list_path_only() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for service in podresources_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == {"/v1.PodResourcesLister/List"}


def test_committed_stubs_are_what_the_generator_produces(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SERVICE_ROOT / "generate_stubs.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    generated = tmp_path / "gvirtus_kai_device_plugin" / "api"
    names = sorted(path.name for path in generated.iterdir())
    # Both APIs' messages, type stubs and services; none committed that the generator drops.
    assert names == sorted(path.name for path in PACKAGE_API.glob("*_pb2*"))
    assert len(names) == 6
    stale = [n for n in names if (generated / n).read_text() != (PACKAGE_API / n).read_text()]
    assert not stale, f"stale stubs {stale}: run services/device-plugin/generate_stubs.py"


def test_service_stubs_import_the_messages_by_package_path() -> None:
    for proto in ("api", "podresources"):
        grpc_module = (PACKAGE_API / f"{proto}_pb2_grpc.py").read_text()
        assert f"from gvirtus_kai_device_plugin.api import {proto}_pb2" in grpc_module
