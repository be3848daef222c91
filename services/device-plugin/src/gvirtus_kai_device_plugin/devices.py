"""The virtual devices and what allocating them means: pure functions, no I/O.

Each virtual device is a GVirtuS slot on this node. Nothing on the node backs it: the CUDA calls of
a container holding a slot go to a GVirtuS backend over TCP. So allocating hands the container
environment variables naming its slots, plus CDI device names whose spec adds the same kind of
environment (and, deliberately, no device nodes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gvirtus_kai_device_plugin.api import api_pb2

DEVICE_ID_PREFIX = "gvirtus-vgpu-"
# Set by Allocate: the slots the container holds, comma-separated, lowest first.
ENV_DEVICE_IDS = "GVIRTUS_VGPU_IDS"
# Set by the CDI spec, one variable per slot (a shared name would be overwritten when a container
# holds several slots): GVIRTUS_VGPU_SLOT_<n>=gvirtus-vgpu-<n>.
CDI_ENV_PREFIX = "GVIRTUS_VGPU_SLOT_"
# containerd 1.7.0 bundles container-device-interface v0.5.4, which accepts spec versions 0.3.0 to
# 0.5.0; later libraries accept these too. Environment edits exist since 0.3.0, and 0.5.0 is also
# the floor newer runtimes warn about, so 0.5.0 is accepted by every containerd >= 1.7 and CRI-O.
CDI_VERSION = "0.5.0"


class UnknownDeviceError(ValueError):
    """The kubelet asked for a device id this plugin never advertised."""


def device_ids(count: int) -> list[str]:
    return [f"{DEVICE_ID_PREFIX}{index}" for index in range(count)]


def _slot(device_id: str) -> int:
    """The slot number of an id we advertise (sort key: numeric, so 2 comes before 10)."""
    return int(device_id.removeprefix(DEVICE_ID_PREFIX))


def sort_ids(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=_slot)


def cdi_device_name(cdi_kind: str, device_id: str) -> str:
    """A fully qualified CDI device name: ``vendor/class=device``."""
    return f"{cdi_kind}={device_id}"


def check_known(requested: Iterable[str], known: frozenset[str]) -> None:
    unknown = [device_id for device_id in requested if device_id not in known]
    if unknown:
        first, last = sort_ids(known)[0], sort_ids(known)[-1]
        raise UnknownDeviceError(
            f"unknown device id(s) {', '.join(repr(u) for u in unknown)}: this plugin "
            f"advertises {len(known)} devices, {first} to {last}"
        )


def container_allocation(
    requested: Sequence[str], known: frozenset[str], cdi_kind: str
) -> api_pb2.ContainerAllocateResponse:
    """What one container gets for the slots it was given; raises UnknownDeviceError."""
    check_known(requested, known)
    ids = sort_ids(set(requested))
    return api_pb2.ContainerAllocateResponse(
        envs={ENV_DEVICE_IDS: ",".join(ids)},
        cdi_devices=[api_pb2.CDIDevice(name=cdi_device_name(cdi_kind, i)) for i in ids],
    )


def allocate(
    request: api_pb2.AllocateRequest, known: frozenset[str], cdi_kind: str
) -> api_pb2.AllocateResponse:
    return api_pb2.AllocateResponse(
        container_responses=[
            container_allocation(list(container.devices_ids), known, cdi_kind)
            for container in request.container_requests
        ]
    )


def preferred_ids(
    available: Iterable[str], must_include: Iterable[str], size: int, known: frozenset[str]
) -> list[str]:
    """The ``must_include`` ids, topped up with the lowest free slots up to ``size``."""
    available = list(available)
    must_include = list(must_include)
    check_known([*available, *must_include], known)
    chosen = sort_ids(set(must_include))
    for device_id in sort_ids(set(available) - set(chosen)):
        if len(chosen) >= size:
            break
        chosen.append(device_id)
    return sort_ids(chosen)


def preferred_allocation(
    request: api_pb2.PreferredAllocationRequest, known: frozenset[str]
) -> api_pb2.PreferredAllocationResponse:
    return api_pb2.PreferredAllocationResponse(
        container_responses=[
            api_pb2.ContainerPreferredAllocationResponse(
                deviceIDs=preferred_ids(
                    container.available_deviceIDs,
                    container.must_include_deviceIDs,
                    container.allocation_size,
                    known,
                )
            )
            for container in request.container_requests
        ]
    )


def cdi_spec(cdi_kind: str, ids: Iterable[str]) -> dict[str, Any]:
    """The CDI spec describing our devices: environment edits only, no device nodes."""
    return {
        "cdiVersion": CDI_VERSION,
        "kind": cdi_kind,
        "devices": [
            {
                "name": device_id,
                "containerEdits": {"env": [f"{CDI_ENV_PREFIX}{_slot(device_id)}={device_id}"]},
            }
            for device_id in sort_ids(ids)
        ],
    }
