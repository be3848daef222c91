"""Pure allocation logic: device ids, Allocate responses, preferred allocations."""

from __future__ import annotations

import pytest
from gvirtus_kai_device_plugin import devices
from gvirtus_kai_device_plugin.api import api_pb2
from hypothesis import given
from hypothesis import strategies as st

KNOWN = frozenset(devices.device_ids(12))


def test_device_ids_are_numbered_from_zero() -> None:
    assert devices.device_ids(3) == ["gvirtus-vgpu-0", "gvirtus-vgpu-1", "gvirtus-vgpu-2"]


def test_device_ids_fit_the_kubelet_id_limit_of_63_characters() -> None:
    assert all(len(device_id) <= 63 for device_id in devices.device_ids(1024))


def test_ids_sort_by_slot_number_not_text() -> None:
    assert devices.sort_ids(["gvirtus-vgpu-10", "gvirtus-vgpu-2"]) == [
        "gvirtus-vgpu-2",
        "gvirtus-vgpu-10",
    ]


def test_container_allocation_lists_its_slots_lowest_first_in_env() -> None:
    response = devices.container_allocation(
        ["gvirtus-vgpu-10", "gvirtus-vgpu-3"], KNOWN, "gvirtus.io/vgpu"
    )
    assert dict(response.envs) == {"GVIRTUS_VGPU_IDS": "gvirtus-vgpu-3,gvirtus-vgpu-10"}


def test_container_allocation_names_one_cdi_device_per_slot() -> None:
    response = devices.container_allocation(
        ["gvirtus-vgpu-10", "gvirtus-vgpu-3"], KNOWN, "example.com/gpu"
    )
    assert [d.name for d in response.cdi_devices] == [
        "example.com/gpu=gvirtus-vgpu-3",
        "example.com/gpu=gvirtus-vgpu-10",
    ]


def test_container_allocation_adds_no_device_nodes_or_mounts() -> None:
    response = devices.container_allocation(["gvirtus-vgpu-0"], KNOWN, "gvirtus.io/vgpu")
    assert (len(response.devices), len(response.mounts)) == (0, 0)


def test_unknown_id_error_names_the_id_and_the_valid_range() -> None:
    with pytest.raises(devices.UnknownDeviceError) as raised:
        devices.container_allocation(["gvirtus-vgpu-0", "nvidia-0"], KNOWN, "gvirtus.io/vgpu")
    assert "'nvidia-0'" in str(raised.value)
    assert "gvirtus-vgpu-0 to gvirtus-vgpu-11" in str(raised.value)


def test_allocate_answers_each_container_in_request_order() -> None:
    request = api_pb2.AllocateRequest(
        container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=["gvirtus-vgpu-5"]),
            api_pb2.ContainerAllocateRequest(devices_ids=["gvirtus-vgpu-1"]),
        ]
    )
    response = devices.allocate(request, KNOWN, "gvirtus.io/vgpu")
    assert [c.envs["GVIRTUS_VGPU_IDS"] for c in response.container_responses] == [
        "gvirtus-vgpu-5",
        "gvirtus-vgpu-1",
    ]


def test_preferred_ids_are_the_lowest_available() -> None:
    available = ["gvirtus-vgpu-11", "gvirtus-vgpu-7", "gvirtus-vgpu-2", "gvirtus-vgpu-9"]
    assert devices.preferred_ids(available, [], 2, KNOWN) == ["gvirtus-vgpu-2", "gvirtus-vgpu-7"]


def test_preferred_ids_keep_must_include_and_top_up_with_lowest() -> None:
    available = ["gvirtus-vgpu-1", "gvirtus-vgpu-4", "gvirtus-vgpu-8"]
    assert devices.preferred_ids(available, ["gvirtus-vgpu-8"], 2, KNOWN) == [
        "gvirtus-vgpu-1",
        "gvirtus-vgpu-8",
    ]


def test_preferred_ids_never_exceed_what_is_available() -> None:
    assert devices.preferred_ids(["gvirtus-vgpu-3"], [], 4, KNOWN) == ["gvirtus-vgpu-3"]


def test_cdi_spec_gives_each_device_its_own_env_variable() -> None:
    spec = devices.cdi_spec("gvirtus.io/vgpu", ["gvirtus-vgpu-1", "gvirtus-vgpu-0"])
    assert spec["devices"] == [
        {
            "name": "gvirtus-vgpu-0",
            "containerEdits": {"env": ["GVIRTUS_VGPU_SLOT_0=gvirtus-vgpu-0"]},
        },
        {
            "name": "gvirtus-vgpu-1",
            "containerEdits": {"env": ["GVIRTUS_VGPU_SLOT_1=gvirtus-vgpu-1"]},
        },
    ]


@given(
    available=st.sets(st.integers(0, 11), min_size=1),
    size=st.integers(1, 12),
)
def test_preferred_ids_are_always_the_lowest_available_up_to_size(
    available: set[int], size: int
) -> None:
    ids = [f"gvirtus-vgpu-{i}" for i in available]
    expected = [f"gvirtus-vgpu-{i}" for i in sorted(available)[:size]]
    assert devices.preferred_ids(ids, [], size, KNOWN) == expected


@given(
    available=st.sets(st.integers(0, 11), min_size=1),
    data=st.data(),
)
def test_preferred_ids_always_hold_every_must_include_id(
    available: set[int], data: st.DataObject
) -> None:
    must = data.draw(st.sets(st.sampled_from(sorted(available))))
    size = data.draw(st.integers(len(must), 12))
    chosen = devices.preferred_ids(
        [f"gvirtus-vgpu-{i}" for i in available], [f"gvirtus-vgpu-{i}" for i in must], size, KNOWN
    )
    assert {f"gvirtus-vgpu-{i}" for i in must} <= set(chosen)
    assert len(chosen) == min(size, len(available))
